"""A deployment server's `allow_cpu_offload`: validated where the YAML is read, honoured for that server only, and
held to the host RAM its job gets (issue 12: deployments could not allow offload, only `plan --allow-cpu-offload`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from grace_hpc.config.cluster import Cluster, Partition
from grace_hpc.config.deployment import Deployment, ServerSpec
from grace_hpc.config.loader import PROJECT_ROOT, ConfigDir, load_yaml_model
from grace_hpc.errors import ConfigError
from grace_hpc.planner import plan_server
from tests.support.cli import grace

CATALOG = ConfigDir(PROJECT_ROOT / "configs").catalog()
# OLMo-2-7B in bf16 (14.6 GiB) is short of an RTX 4080's 15.7 GiB: it fits only with weights in host RAM
OLMO = "olmo-2-1124-7b-instruct"


def rtx4080(mem_per_gpu_gb: int = 64) -> Partition:
    return Partition(name="rtx4080", gpu="RTX-4080", gpus_per_node=1, mem_per_gpu_gb=mem_per_gpu_gb)


def server(name: str, **pins: object) -> ServerSpec:
    return ServerSpec(name=name, partition="rtx4080", models=(OLMO,), quantization="none", **pins)


def test_only_the_server_that_allows_offload_gets_cpu_offload() -> None:
    allowed = plan_server(server("slow-ok", allow_cpu_offload=True), rtx4080(), CATALOG)
    default = plan_server(server("fast-only"), rtx4080(), CATALOG)
    (offloaded,) = allowed.plans
    assert allowed.fits and offloaded.cpu_offload_gb > 0 and "--cpu-offload-gb" in offloaded.to_json()["argv"]
    (kept,) = default.plans
    assert not default.fits and kept.cpu_offload_gb == 0 and "--cpu-offload-gb" not in kept.to_json()["argv"]


def test_offload_beyond_the_job_s_memory_does_not_fit_and_says_which_setting_to_raise() -> None:
    # the pinned weights plus the vLLM processes (~2.5 GiB) need more than 4 GiB of --mem
    sp = plan_server(server("slow-ok", allow_cpu_offload=True), rtx4080(mem_per_gpu_gb=4), CATALOG)
    assert not sp.fits
    assert "more than the job's 4 GiB (mem_per_gpu_gb 4 x 1 GPU(s) on partition 'rtx4080')" in sp.reasons[-1]
    assert plan_server(server("slow-ok", allow_cpu_offload=True), rtx4080(mem_per_gpu_gb=16), CATALOG).fits


def _deployment_yaml(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "offload.yaml"
    entry = {"name": "olmo", "partition": "rtx4080", "models": [OLMO], **extra}
    path.write_text(yaml.safe_dump({"name": "offload", "servers": [entry]}))
    return path


def test_allow_cpu_offload_must_be_a_yaml_boolean(tmp_path: Path) -> None:
    # a quoted "false" is a non-empty string: coerced, it would have allowed offload
    path = _deployment_yaml(tmp_path, allow_cpu_offload="false")
    with pytest.raises(ConfigError, match=r"servers\[0\]\.allow_cpu_offload .*valid boolean"):
        load_yaml_model(path, Deployment)
    assert load_yaml_model(_deployment_yaml(tmp_path, allow_cpu_offload=True), Deployment).servers[0].allow_cpu_offload


def test_the_scoring_engine_refuses_allow_cpu_offload(tmp_path: Path) -> None:
    path = _deployment_yaml(tmp_path, engine="scoring", allow_cpu_offload=True)
    with pytest.raises(ConfigError, match="allow_cpu_offload does not apply to engine 'scoring'"):
        load_yaml_model(path, Deployment)


def test_a_partition_without_gpus_refuses_allow_cpu_offload() -> None:
    cluster = Cluster(partitions=(Partition(name="cpu", gpu="CPU", gpus_per_node=0),))
    spec = ServerSpec(name="olmo", partition="cpu", models=(OLMO,), allow_cpu_offload=True)
    with pytest.raises(ConfigError, match="server 'olmo': allow_cpu_offload on partition 'cpu', which has no GPUs"):
        cluster.partition_of(spec, "offload")


def test_plan_deployment_refuses_the_model_only_flag_instead_of_ignoring_it() -> None:
    # `launch` reads only the YAML: a flag honoured by `plan --deployment` would plan what launch does not run
    proc = grace(PROJECT_ROOT, "plan", "--deployment", "local", "--allow-cpu-offload")
    assert proc.returncode == 1
    assert "set `allow_cpu_offload: true` on the servers that may offload" in proc.stderr
