"""The fleet controller on the real local SLURM: demand grows and shrinks the replicas; a controller SIGKILLed at
random points and restarted leaves no duplicate and no orphan job."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import openai
import pytest

from grace_hpc.config.loader import ConfigDir
from grace_hpc.fleet.demand import DemandFile
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from tests.support.cli import grace, grace_json
from tests.support.router_env import routing

pytestmark = [pytest.mark.slurm, pytest.mark.engine]


@pytest.fixture
def elastic(tiny_project: Path, slurm_cluster: str):
    """A deployment with a unique name (its job names are how orphans are found) scaling 1..3 on t4, fast."""
    name = f"elastic-{uuid.uuid4().hex[:6]}"
    (tiny_project / "configs" / "deployments" / f"{name}.yaml").write_text(
        f"name: {name}\nservers:\n  - name: s\n    partition: t4\n    models: [tiny]\n    engine: llama.cpp\n"
        "    max_model_len: 1024\n    replicas: {min: 1, max: 3}\n"
        "    scale_up: {outstanding_per_replica: 2, for_s: 0}\n    scale_down: {idle_timeout_s: 3}\n")
    yield name
    grace(tiny_project, "stop", "--deployment", name)


def demand(project: Path, outstanding: int) -> None:
    """What the router writes beside the registry."""
    folder = project / "logs" / "registry"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".demand.json.tmp"
    tmp.write_text(json.dumps({"schema_version": 1, "at": time.time(),
                               "models": {"tiny": {"outstanding": outstanding, "waiting": 0}}}))
    os.replace(tmp, folder / "demand.json")


def once(project: Path, name: str) -> None:
    proc = grace(project, "fleet", "run", "--deployment", name, "--executor", "slurm", "--once")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def my_jobs(name: str, server: str = "s") -> list[str]:
    out = subprocess.run(["squeue", "--me", "-h", "-o", "%i", "-t", "PENDING,RUNNING,CONFIGURING", "--name",
                          f"grace-{name}-{server}"], capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


def manifest_ids(project: Path, name: str) -> list[str]:
    path = project / "logs" / name / "jobs.json"
    return sorted(r["job_id"] for r in json.loads(path.read_text())) if path.exists() else []


def status_row(project: Path, name: str) -> dict:
    [row] = grace_json(project, "fleet", "status", "--deployment", name)
    return row


def test_demand_raises_replicas_from_one_to_three_and_idleness_brings_them_back(tiny_project, elastic):
    once(tiny_project, elastic)
    assert len(my_jobs(elastic)) == 1
    assert status_row(tiny_project, elastic)["reason"] == "below-min"
    demand(tiny_project, 6)
    once(tiny_project, elastic)
    row = status_row(tiny_project, elastic)
    assert (row["desired"], row["reason"]) == (3, "overloaded")
    assert len(my_jobs(elastic)) == 3 and my_jobs(elastic) == manifest_ids(tiny_project, elastic)
    lull = time.monotonic()
    reasons = []
    while status_row(tiny_project, elastic)["desired"] != 1 and time.monotonic() < lull + 60:
        demand(tiny_project, 0)
        once(tiny_project, elastic)
        reasons.append(status_row(tiny_project, elastic)["reason"])
    assert reasons[-1] == "idle", reasons
    deadline = time.monotonic() + 30
    while len(my_jobs(elastic)) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(my_jobs(elastic)) == 1 and my_jobs(elastic) == manifest_ids(tiny_project, elastic)
    [t4] = grace_json(tiny_project, "fleet", "report", "--deployment", elastic, "--hours", "1")
    assert t4["partition"] == "t4" and 0 <= t4["gpu_hours_busy"] <= t4["gpu_hours_held"] and t4["gpu_hours_held"] > 0


def test_a_controller_sigkilled_at_random_points_restarts_without_duplicates_or_orphans(tiny_project, elastic):
    rng = random.Random(14)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRACE_", "SLURM_", "SUBMITIT_"))}
    for load in (6, 0, 6, 0):
        demand(tiny_project, load)
        proc = subprocess.Popen([sys.executable, "-m", "grace_hpc", "fleet", "run", "--deployment", elastic,
                                 "--executor", "slurm", "--period", "0.2"], cwd=tiny_project, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 4.0))  # interpreter start-up is ~1 s: kills land inside passes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    once(tiny_project, elastic)  # one reconcile period after the last kill
    row = status_row(tiny_project, elastic)
    time.sleep(1)  # scancel'd jobs leave squeue's PENDING/RUNNING list
    assert my_jobs(elastic) == manifest_ids(tiny_project, elastic), "a live job no record knows, or the reverse"
    assert row["running"] + len(row["pending"]) == row["desired"] == len(my_jobs(elastic))
    assert row["action_under_way"] is None


def test_a_scaled_to_zero_server_starts_on_the_first_request_answers_it_and_returns_to_zero(tiny_project,
                                                                                             slurm_cluster):
    name = f"zero-{uuid.uuid4().hex[:6]}"
    (tiny_project / "configs" / "deployments" / f"{name}.yaml").write_text(
        f"name: {name}\nservers:\n  - name: s\n    partition: t4\n    models: [tiny]\n    engine: llama.cpp\n"
        "    max_model_len: 1024\n    replicas: {min: 0, max: 1}\n    scale_down: {idle_timeout_s: 3}\n")
    config = ConfigDir(tiny_project / "configs")
    registry = Registry.from_cluster(config.cluster(), config, environ={})
    table = routing({"categories": [{"name": "default", "models": ["tiny"], "cold_start_wait_s": 120}]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRACE_", "SLURM_", "SUBMITIT_"))}
    controller = subprocess.Popen([sys.executable, "-m", "grace_hpc", "fleet", "run", "--deployment", name,
                                   "--executor", "slurm", "--period", "1"], cwd=tiny_project, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    app = create_app(table, registry, environ={}, poll_interval_s=0.2, demand_file=DemandFile(registry.path.parent))
    try:
        with serve_in_thread(app) as url, openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0,
                                                        timeout=150) as client:
            time.sleep(3)  # the controller's first passes: min 0, nothing submitted
            assert my_jobs(name, "s") == []
            started = time.monotonic()
            reply = client.chat.completions.create(model="default", max_tokens=2,
                                                   messages=[{"role": "user", "content": "hi"}])
            print(f"cold start answered in {time.monotonic() - started:.1f}s")
            assert reply.choices[0].message.content is not None
            deadline = time.monotonic() + 60
            while my_jobs(name, "s") and time.monotonic() < deadline:
                time.sleep(0.5)
            assert my_jobs(name, "s") == [] and manifest_ids(tiny_project, name) == []
    finally:
        controller.terminate()
        _, err = controller.communicate(timeout=30)
        grace(tiny_project, "stop", "--deployment", name)
    assert controller.returncode == 0, err
