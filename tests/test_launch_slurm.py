"""Server jobs on the real local SLURM: launch, serve, status, stop; preemption; an engine that cannot start."""

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from grace_hpc.config.loader import ConfigDir
from grace_hpc.launch.launcher import launch
from grace_hpc.launch.waiting import wait_until_settled
from tests.support.cli import engine_pids, grace, grace_json, wait_gone
from tests.support.slurm_env import blocked_server

pytestmark = [pytest.mark.slurm, pytest.mark.engine]


def records(project: Path) -> list[dict]:
    path = project / "logs" / "registry" / "registry.json"
    return list(json.loads(path.read_text())["endpoints"].values()) if path.exists() else []


def complete(record: dict) -> requests.Response:
    key = Path(record["api_key_file"]).read_text().strip()
    return requests.post(f"{record['base_url']}/completions", headers={"Authorization": f"Bearer {key}"},
                         json={"model": record["served_model_name"], "prompt": "Hello", "max_tokens": 2}, timeout=30)


def test_two_servers_on_t4_and_l4_become_ready_answer_and_stop_cleanly(slurm_cluster, tiny_project):
    launched = grace(tiny_project, "launch", "--deployment", "pair", "--executor", "slurm", "--wait",
                     "--timeout", "120")
    assert launched.returncode == 0, launched.stdout + launched.stderr
    ready = records(tiny_project)
    assert sorted(r["partition"] for r in ready) == ["l4", "t4"]
    assert all(r["state"] == "ready" for r in ready)
    engines = [pid for r in ready for pid in engine_pids(r["port"])]
    assert len(engines) == 2
    for r in ready:
        assert complete(r).status_code == 200
    status = grace_json(tiny_project, "status")
    assert status["summary"].startswith("2/2 endpoints ready, 2 GPU(s) held")
    assert {row["job_state"] for row in status["servers"]} == {"RUNNING"}

    stopped = grace_json(tiny_project, "stop", "--deployment", "pair")
    assert sorted(s["server"] for s in stopped) == ["on-l4", "on-t4"]
    assert all(s["deregistered"] for s in stopped)
    assert records(tiny_project) == []
    assert wait_gone([*(r["pid"] for r in ready), *engines]) == []


def test_preempted_server_drains_deregisters_requeues_and_registers_again(slurm_cluster, tiny_project):
    config = ConfigDir(tiny_project / "configs")
    result = launch(config, config.deployment("pair").only(["on-t4"]), executor_kind="slurm")
    [first] = wait_until_settled(result.registry, result.submitted, result.jobs, timeout_s=120)
    assert first.state == "ready", first.detail
    [before] = result.registry.list()
    t0 = time.monotonic()
    result.jobs[first.job.job_id]._interrupt()  # what SLURM does on preemption: SIGTERM, then USR2
    deadline = time.monotonic() + 120
    while any(r.id == before.id for r in result.registry.list()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(r.id != before.id for r in result.registry.list()), "the preempted endpoint did not deregister"
    [again] = wait_until_settled(result.registry, result.submitted, result.jobs, timeout_s=120)
    elapsed = time.monotonic() - t0
    print(f"preempted -> ready again in {elapsed:.1f}s")
    assert again.state == "ready", again.detail
    [after] = result.registry.list()
    assert after.job_id == before.job_id and after.id != before.id and after.started_at > before.started_at
    assert complete(after.model_dump(mode="json")).status_code == 200
    grace(tiny_project, "stop", "--deployment", "pair")


def test_an_engine_that_cannot_start_fails_the_job_with_the_engines_own_error(slurm_cluster, tiny_project):
    proc = grace(tiny_project, "launch", "--deployment", "broken", "--executor", "slurm", "--wait",
                 "--timeout", "120")
    assert proc.returncode == 1
    assert "engine exited with code" in proc.stderr and "corrupt.gguf" in proc.stderr
    status = grace_json(tiny_project, "status")
    [row] = status["servers"]
    assert row["registry_state"] == "gone"
    assert any("engine exited with code" in f for f in row["flags"])


def test_the_emitted_plain_sbatch_script_serves_the_same_way(slurm_cluster, tiny_project, tmp_path):
    emitted = grace(tiny_project, "launch", "--deployment", "pair", "--only", "on-t4", "--emit-sbatch",
                    str(tmp_path / "scripts"))
    assert emitted.returncode == 0, emitted.stderr
    [script] = [Path(line) for line in emitted.stdout.split()]
    assert "#SBATCH --gres=gpu:t4:1" in script.read_text()
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not [r for r in records(tiny_project) if r["state"] == "ready"]:
            time.sleep(0.25)
        [record] = records(tiny_project)
        assert record["state"] == "ready" and record["job_id"] == job_id and record["partition"] == "t4"
        assert complete(record).status_code == 200
    finally:
        subprocess.run(["scancel", job_id], check=True)
    deadline = time.monotonic() + 30
    while records(tiny_project) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert records(tiny_project) == []  # scancel's SIGTERM drained and deregistered it


def test_wait_shows_slurm_pending_reason_while_a_server_cannot_start(slurm_cluster, tiny_project):
    with blocked_server(tiny_project):
        proc = grace(tiny_project, "launch", "--deployment", "busy", "--executor", "slurm", "--wait",
                     "--timeout", "8", "--json")
        assert proc.returncode == 1
        [row] = json.loads(proc.stdout)
        assert row["state"] == "waiting" and row["detail"] == "PENDING (Resources)"
        assert "not ready after 8s" in proc.stderr
