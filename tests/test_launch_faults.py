"""Faults injected into a running fleet: a dead engine (restarted in place, until it keeps dying), a dead
supervisor. Nothing hangs, nothing is orphaned, and `status` says what happened."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.cli import engine_pids, grace, grace_json, wait_gone

pytestmark = pytest.mark.engine


def records(project: Path) -> list[dict]:
    path = project / "logs" / "registry" / "registry.json"
    return list(json.loads(path.read_text())["endpoints"].values()) if path.exists() else []


def launch_solo(project: Path) -> dict:
    proc = grace(project, "launch", "--deployment", "solo", "--wait", "--timeout", "120")
    assert proc.returncode == 0, proc.stderr
    [record] = records(project)
    return record


def wait_state(project: Path, state: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s  # the supervisor checks its engine every heartbeat (5 s here)
    while time.monotonic() < deadline and records(project)[0]["state"] != state:
        time.sleep(0.2)
    [record] = records(project)
    assert record["state"] == state, record
    return record


def test_a_killed_engine_is_restarted_in_place_and_one_that_keeps_dying_fails_its_server(tiny_project):
    record = launch_solo(tiny_project)
    for _ in range(3):  # three exits in ten minutes are restarted (serve/restarts.py)
        [engine] = engine_pids(record["port"])
        os.kill(engine, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and engine_pids(record["port"]) in ([], [engine]):
            time.sleep(0.2)
        again = wait_state(tiny_project, "ready")
        assert (again["id"], again["port"]) == (record["id"], record["port"])  # the same endpoint: routers see no gap
        assert "engine exited with code -9" in again["last_error"]
    [engine] = engine_pids(record["port"])
    os.kill(engine, signal.SIGKILL)  # the fourth: the job gives up and says why
    gone = wait_state(tiny_project, "gone")
    assert "engine exited with code -9" in gone["last_error"]
    assert wait_gone([record["pid"]]) == []  # the supervisor ended its job
    [row] = grace_json(tiny_project, "status")["servers"]
    assert row["registry_state"] == "gone" and row["job_state"] == "ENDED"
    assert any("engine exited with code -9" in f for f in row["flags"])
    reaped = grace(tiny_project, "registry", "reap")
    assert reaped.returncode == 0, reaped.stderr
    assert records(tiny_project) == []


def test_a_killed_supervisor_takes_its_engine_with_it_and_reap_removes_the_entry(tiny_project):
    record = launch_solo(tiny_project)
    [engine] = engine_pids(record["port"])
    os.kill(record["pid"], signal.SIGKILL)
    assert wait_gone([record["pid"], engine]) == []  # PR_SET_PDEATHSIG: no orphan engine
    assert records(tiny_project)[0]["state"] == "ready"  # nobody deregistered it...
    [row] = grace_json(tiny_project, "status")["servers"]
    assert row["reachable"] is False and "unreachable" in row["flags"]  # ...but status does not hide it
    assert grace(tiny_project, "registry", "reap").returncode == 0
    assert records(tiny_project) == []
