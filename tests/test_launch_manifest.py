"""The launch manifest on the real SLURM: a launch that fails half way loses no job, a second launch of a running
deployment submits nothing, and `stop` ends everything that was submitted."""

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from grace_hpc.config.cluster import LockMode
from grace_hpc.launch.manifest import Manifest, Submitted
from tests.support.cli import grace, grace_json

SERVER = ("  - {{name: {name}, partition: {partition}, models: [tiny], engine: llama.cpp, max_model_len: 1024, "
          "categories: [default]}}\n")


def manifest_rows(project: Path, deployment: str) -> list[dict]:
    path = project / "logs" / deployment / "jobs.json"
    return json.loads(path.read_text()) if path.exists() else []


def slurm_state(job_id: str, accept: tuple[str, ...], timeout_s: float = 30.0) -> str:
    """The job's state in SLURM's accounting once it is one of `accept` (or the last one seen at the timeout):
    slurmdbd records a submission, and a cancellation, a moment after slurmctld acts on it."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True,
                             check=True).stdout.split()
        state = out[0] if out else ""
        if state.startswith(accept) or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_rows_added_by_concurrent_writers_are_all_kept(tmp_path):
    manifest = Manifest(tmp_path / "d" / "jobs.json", LockMode.FLOCK)

    def add(i: int) -> None:
        manifest.add(Submitted("d", f"s{i}", 0, str(1000 + i), "slurm", "t4", ("tiny",), 1, 0.0, "f"))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.job_id for r in manifest.read()) == [str(1000 + i) for i in range(16)]


@pytest.mark.slurm
def test_a_launch_whose_third_submission_fails_records_the_first_two_and_stop_ends_them(slurm_cluster, tiny_project):
    cluster_file = tiny_project / "configs" / "cluster.yaml"
    cluster = yaml.safe_load(cluster_file.read_text())
    # a partition the site's cluster.yaml names but SLURM does not have: sbatch refuses the job
    cluster["partitions"].append({"name": "retired", "gpu": "T4", "gpus_per_node": 2, "cpus_per_gpu": 1,
                                  "mem_per_gpu_gb": 1})
    cluster_file.write_text(yaml.safe_dump(cluster))
    servers = [("s1", "t4"), ("s2", "l4"), ("s3", "retired"), ("s4", "t4"), ("s5", "l4")]
    (tiny_project / "configs" / "deployments" / "five.yaml").write_text(
        "name: five\nservers:\n" + "".join(SERVER.format(name=n, partition=p) for n, p in servers))

    proc = grace(tiny_project, "launch", "--deployment", "five", "--executor", "slurm")
    assert proc.returncode == 1
    assert "submitting s3 to partition retired failed" in proc.stderr
    assert "invalid partition" in proc.stderr.lower()
    rows = manifest_rows(tiny_project, "five")
    assert [r["server"] for r in rows] == ["s1", "s2"]
    ids = [r["job_id"] for r in rows]
    assert f"2 job(s) submitted before it ({', '.join(ids)})" in proc.stderr
    assert all(slurm_state(i, ("PENDING", "RUNNING")) in ("PENDING", "RUNNING") for i in ids)

    stopped = grace_json(tiny_project, "stop", "--deployment", "five")
    assert sorted(s["job_id"] for s in stopped) == sorted(ids)
    assert all(slurm_state(i, ("CANCELLED",)).startswith("CANCELLED") for i in ids)
    assert manifest_rows(tiny_project, "five") == []


@pytest.mark.slurm
@pytest.mark.engine
def test_a_second_launch_of_a_running_deployment_submits_nothing_and_replace_restarts(slurm_cluster, tiny_project):
    first = grace(tiny_project, "launch", "--deployment", "pair", "--executor", "slurm", "--wait", "--timeout", "120")
    assert first.returncode == 0, first.stdout + first.stderr
    before = {r["server"]: r["job_id"] for r in manifest_rows(tiny_project, "pair")}
    try:
        # what --dry-run prints is, byte for byte, the script submitit submitted
        for preview in grace_json(tiny_project, "launch", "--deployment", "pair", "--executor", "slurm", "--dry-run"):
            job_id = before[preview["server"]]
            script = tiny_project / "logs" / "pair" / "submitit" / f"{job_id}_submission.sh"
            assert preview["sbatch"] == script.read_text()

        again = grace(tiny_project, "launch", "--deployment", "pair", "--executor", "slurm", "--json")
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        assert sorted((r["server"], r["job_id"], r["kept"]) for r in report) == sorted(
            (server, job_id, True) for server, job_id in before.items())
        assert "submitted" not in again.stderr and again.stderr.count("already pending or running") == 2
        assert {r["server"]: r["job_id"] for r in manifest_rows(tiny_project, "pair")} == before
        assert all(slurm_state(i, ("RUNNING",)) == "RUNNING" for i in before.values())

        replaced = grace_json(tiny_project, "launch", "--deployment", "pair", "--only", "on-t4", "--replace",
                              "--executor", "slurm")
        [new] = replaced
        assert new["server"] == "on-t4" and not new["kept"] and new["job_id"] != before["on-t4"]
        assert slurm_state(before["on-t4"], ("CANCELLED",)).startswith("CANCELLED")
        assert slurm_state(before["on-l4"], ("RUNNING",)) == "RUNNING"  # not named: untouched
        assert sorted(r["job_id"] for r in manifest_rows(tiny_project, "pair")) == sorted(
            [before["on-l4"], new["job_id"]])
    finally:
        grace(tiny_project, "stop", "--deployment", "pair")
