"""The embedded default path: launch through submitit's local executor, serve, status, stop: no SLURM needed."""

import json
from pathlib import Path

import pytest
import requests

from tests.support.cli import engine_pids, grace, grace_json, wait_gone


def registry_records(project: Path) -> list[dict]:
    path = project / "logs" / "registry" / "registry.json"
    return list(json.loads(path.read_text())["endpoints"].values()) if path.exists() else []


@pytest.mark.engine
def test_local_launch_serves_registers_reports_and_stops_without_leftovers(tiny_project):
    launched = grace(tiny_project, "launch", "--deployment", "solo", "--wait", "--timeout", "120")
    assert launched.returncode == 0, launched.stderr
    [record] = registry_records(tiny_project)
    assert record["state"] == "ready" and record["job_id"].startswith("local:")
    engines = engine_pids(record["port"])
    assert len(engines) == 1
    key = Path(record["api_key_file"]).read_text().strip()
    assert key not in launched.stdout + launched.stderr
    answer = requests.post(f"{record['base_url']}/chat/completions", timeout=30,
                           headers={"Authorization": f"Bearer {key}"},
                           json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    assert requests.post(f"{record['base_url']}/completions", json={"model": "tiny", "prompt": "x"},
                         timeout=10).status_code == 401  # the endpoint's own key is required

    status = grace_json(tiny_project, "status")
    assert status["summary"].startswith("1/1 endpoints ready")
    [row] = status["servers"]
    assert (row["model"], row["registry_state"], row["reachable"], row["job_state"]) == ("tiny", "ready", True,
                                                                                          "RUNNING")
    assert key not in json.dumps(status)
    engine_log = next((tiny_project / "logs" / "solo").glob("tiny-local-*.log"))
    assert "llama.cpp server listening" in engine_log.read_text()

    stopped = grace_json(tiny_project, "stop", "--deployment", "solo")
    assert [s["deregistered"] for s in stopped] == [True]
    assert registry_records(tiny_project) == []
    assert wait_gone([record["pid"], *engines]) == []  # neither the supervisor nor its engine is left


def test_dry_run_of_the_seed_000_lineup_prints_six_plans_and_six_sbatch_scripts(tmp_path):
    root = Path(__file__).resolve().parents[1]
    proc = grace(tmp_path, "launch", "--config-dir", str(root / "configs"), "--deployment", "grace", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("#!/bin/bash") == 6
    assert out.count("engine argv: vllm serve ") == 6
    assert "--trust-remote-code" not in out  # seed 000 passed it to gpt-oss, which does not need it
    assert "--dtype float16" not in out  # seed 000 ran gemma-2 in float16, which vLLM refuses
    assert out.count("#SBATCH --gres=gpu:a100:4") == 2  # llama-3-70b and gpt-oss-120b need a whole node
    assert not (root / "logs" / "grace" / "jobs.json").exists()
