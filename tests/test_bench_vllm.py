"""`grace-hpc bench` once against vLLM's own server (the CPU build in .venv-vllm): the same streams measured, and the
engine's queue and KV-cache gauges read from its `/metrics` while the load runs. Slow (about a minute of vLLM
startup); skipped where .venv-vllm is not installed, like tests/test_vllm_cpu.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from grace_hpc.bench import runner
from grace_hpc.bench.loadgen import Budget
from grace_hpc.bench.stats import LoadMode
from grace_hpc.bench.targets import Target
from grace_hpc.bench.workload import Workload
from tests.conftest import Server, free_port, wait_until_serving
from tests.test_vllm_cpu import API_SERVER, pytestmark, tiny_hf  # noqa: F401  (the fixture and the vLLM skip)

OUTPUT_TOKENS = 48  # long enough that a 0.2 s poll of /metrics sees requests running


@pytest.fixture
def vllm_server(tmp_path: Path, tiny_hf: Path) -> Iterator[Server]:  # noqa: F811  (the imported fixture)
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(tmp_path / "cache"),
               TMPDIR=str(tmp_path), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    argv = [*API_SERVER, str(tiny_hf), "--served-model-name", "tiny-hf", "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", "512", "--max-num-seqs", "4", "--enforce-eager"]
    with open(tmp_path / "vllm.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(proc, port, "tiny-hf", None)
    try:
        wait_until_serving(server, timeout_s=300)
        yield server
    finally:
        os.killpg(proc.pid, 9)  # its own session: the API server and the engine core it starts
        proc.wait(timeout=30)


def test_vllm_streams_are_measured_and_its_queue_and_kv_cache_are_read(vllm_server):
    target = Target(name="vllm", base_url=vllm_server.base_url, model="tiny-hf", engine="vllm", endpoint_id="vllm")
    plan = runner.LoadPlan(mode=LoadMode.CLOSED, loads=(1, 8), budget=Budget(requests=24),
                           workload=Workload(prompt_tokens=32, output_tokens=OUTPUT_TOKENS), ttft_p90_target_ms=60_000,
                           sample_interval_s=0.2)
    [result] = runner.run([target], plan).results
    for level in result.levels:
        assert (level.requests, level.errors, level.mean_output_tokens) == (24, 0, OUTPUT_TOKENS)
        assert 0 < level.ttft.p50 < level.e2e.p50 and level.tpot.p50 > 0
        assert level.engine is not None and level.engine.kv_cache_usage_max is not None
    one, eight = result.levels
    # batched, never past --max-num-seqs 4; a poll may fall between steps, so the peak is only bounded, and seen once
    assert one.engine.running_max <= 1 and eight.engine.running_max <= 4
    assert max(one.engine.running_max, eight.engine.running_max) >= 1
    # 8 clients, 4 sequences at a time: the rest wait in vLLM's queue, but a 0.2 s poll on a loaded 2-core machine
    # can fall between the moments they wait, so the check is that the queue gauge is read, not its peak
    assert eight.engine.waiting_max is not None
    assert result.capacity is not None
