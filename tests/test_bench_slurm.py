"""`bench submit` on the real local SLURM: the job runs on the endpoint's node, writes its document and the
endpoint's measured capacity."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from grace_hpc.registry.store import Registry
from tests.support.cli import grace
from tests.support.router_env import record

pytestmark = [pytest.mark.slurm, pytest.mark.engine]


def test_a_submitted_bench_measures_the_endpoint_from_its_node(slurm_cluster, llama_server, tiny_project):
    server = llama_server(parallel=2)
    registry_path = tiny_project / "registry.json"
    Registry(registry_path).register(record("tiny-t4", server.base_url, "tiny").model_copy(
        update={"partition": "t4", "node": slurm_cluster}))
    proc = grace(tiny_project, "bench", "submit", "--registry", str(registry_path), "--endpoint", "tiny-t4",
                 "--concurrency", "1,2", "--requests", "4", "--output-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().rsplit(" ", 1)[1]
    results = tiny_project / "logs" / "bench"
    try:
        deadline = time.monotonic() + 120
        while not list(results.glob("tiny-t4-*.json")) and time.monotonic() < deadline:
            time.sleep(1)
        logs = "\n".join(p.read_text() for p in results.glob("*.out"))
        [document] = list(results.glob("tiny-t4-*.json")) or pytest.fail(f"no result from job {job_id}:\n{logs}")
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)  # only this test's own job; a no-op once done
    doc = json.loads(document.read_text())
    [target] = doc["targets"]
    assert [(lv["load"], lv["requests"], lv["errors"]) for lv in target["levels"]] == [(1, 4, 0), (2, 4, 0)]
    assert target["levels"][0]["gpu"] is None  # no nvidia-smi on this node: absent, not zero
    assert Registry(registry_path).get("tiny-t4").capacity is not None  # recorded before the document appeared
