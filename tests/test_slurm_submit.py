"""A real job through submitit on the real local SLURM, asking for a typed GPU."""

import os
import time

import pytest
import submitit


def _where_am_i() -> dict[str, str]:
    keys = ("SLURM_JOB_PARTITION", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")
    return {k: os.environ.get(k, "") for k in keys}


@pytest.mark.slurm
def test_submitit_job_on_t4_gets_one_t4_gpu_and_returns_its_result(slurm_cluster, submitit_folder):
    executor = submitit.AutoExecutor(folder=submitit_folder, cluster="slurm")
    executor.update_parameters(
        slurm_partition="t4", slurm_gres="gpu:t4:1", timeout_min=5, cpus_per_task=1, slurm_mem="200M"
    )
    job = executor.submit(_where_am_i)
    env = job.result()
    assert env["SLURM_JOB_PARTITION"] == "t4"
    assert env["SLURM_JOB_ID"] == str(job.job_id)
    # one GPU index granted (fake devices 6-7 are the t4 ones in the test cluster's gres.conf)
    assert len(env["SLURM_JOB_GPUS"].split(",")) == 1
    # from sacct (accounting is on), which records the end a moment after the job's result file appears
    deadline = time.monotonic() + 30
    while (state := job.get_info(mode="force").get("State")) != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state == "COMPLETED"
