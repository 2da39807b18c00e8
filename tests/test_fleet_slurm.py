"""The fleet controller on the real local SLURM: demand grows and shrinks the replicas; a controller SIGKILLed at
random points and restarted leaves no duplicate and no orphan job; a 2-minute server under load is handed over to
its successors with no client-visible error; a preempted replica is replaced within one reconcile period."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import openai
import pytest
import requests

from grace_hpc.config.loader import ConfigDir
from grace_hpc.fleet.demand import DemandFile
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from tests.support.cli import grace, grace_json
from tests.support.router_env import routing

pytestmark = [pytest.mark.slurm, pytest.mark.engine]


def deployment_of_tiny(project: Path, prefix: str, policy: str) -> str:
    """A deployment with a unique name (its job names are how orphans are found): one llama.cpp server `s` of the
    tiny model on t4, with `policy` (YAML lines of the server); returns its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    (project / "configs" / "deployments" / f"{name}.yaml").write_text(
        f"name: {name}\nservers:\n  - name: s\n    partition: t4\n    models: [tiny]\n    engine: llama.cpp\n"
        "    max_model_len: 1024\n" + policy)
    return name


def clean_env() -> dict[str, str]:
    """This environment without the grace/SLURM/submitit variables of whoever runs the tests."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("GRACE_", "SLURM_", "SUBMITIT_"))}


@pytest.fixture
def elastic(tiny_project: Path, slurm_cluster: str):
    """Scaling 1..3, fast."""
    name = deployment_of_tiny(tiny_project, "elastic", "    replicas: {min: 1, max: 3}\n"
                              "    scale_up: {outstanding_per_replica: 2, for_s: 0}\n    scale_down: {idle_timeout_s: 3}\n")
    yield name
    grace(tiny_project, "stop", "--deployment", name)
    subprocess.run(["scancel", "--me", "--name", f"grace-{name}-s"], check=False)  # an orphan a failure left


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
    env = clean_env()
    for load in (6, 0, 6, 0):
        demand(tiny_project, load)
        proc = subprocess.Popen([sys.executable, "-m", "grace_hpc", "fleet", "run", "--deployment", elastic,
                                 "--executor", "slurm", "--period", "0.2"], cwd=tiny_project, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 4.0))  # interpreter start-up is ~1 s: kills land inside passes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # a killed controller's sbatch child lives on and may submit after the restart looked (slurmctld busy): the
    # passes of the settle window cancel what it submits, so the fleet converges within a few passes
    deadline = time.monotonic() + 60
    while True:
        once(tiny_project, elastic)
        time.sleep(1)  # scancel'd jobs leave squeue's PENDING/RUNNING list
        if my_jobs(elastic) == manifest_ids(tiny_project, elastic) or time.monotonic() > deadline:
            break
    row = status_row(tiny_project, elastic)
    assert my_jobs(elastic) == manifest_ids(tiny_project, elastic), "a live job no record knows, or the reverse"
    assert row["running"] + len(row["pending"]) == row["desired"] == len(my_jobs(elastic))
    assert row["action_under_way"] is None


def test_a_scaled_to_zero_server_starts_on_the_first_request_answers_it_and_returns_to_zero(tiny_project,
                                                                                             slurm_cluster):
    name = deployment_of_tiny(tiny_project, "zero", "    replicas: {min: 0, max: 1}\n    scale_down: {idle_timeout_s: 3}\n")
    config = ConfigDir(tiny_project / "configs")
    registry = Registry.from_cluster(config.cluster(), config, environ={})
    table = routing({"categories": [{"name": "default", "models": ["tiny"], "cold_start_wait_s": 120}]})
    env = clean_env()
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


@pytest.fixture
def short_lived(tiny_project: Path, slurm_cluster: str):
    """One replica of a server whose jobs get a 2-minute wall time and a successor 60 s before it ends."""
    name = deployment_of_tiny(tiny_project, "handover", "    categories: [default]\n    replicas: 1\n    time: '2'\n"
                              "    handover_lead_s: 60\n")
    controller = subprocess.Popen([sys.executable, "-m", "grace_hpc", "fleet", "run", "--deployment", name,
                                   "--executor", "slurm", "--period", "2"], cwd=tiny_project, env=clean_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield name
    finally:
        controller.terminate()
        out, _ = controller.communicate(timeout=60)
        print(out[-6000:])
        grace(tiny_project, "stop", "--deployment", name)


@pytest.fixture
def router_url(tiny_project: Path):
    """`grace-hpc route` over the project's registry, as a user runs it."""
    config = ConfigDir(tiny_project / "configs")
    registry = Registry.from_cluster(config.cluster(), config, environ={})
    table = tiny_project / "routing.yaml"
    table.write_text("categories:\n  - {name: default, models: [tiny]}\n")
    proc = subprocess.Popen([sys.executable, "-m", "grace_hpc", "route", "--port", "0", "--print-url", "--routing",
                             str(table), "--registry", str(registry.path)], cwd=tiny_project, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc.stdout.readline().strip(), registry
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def ready_jobs(registry: Registry, name: str) -> set[str]:
    return {r.job_id for r in registry.list() if r.deployment == name and r.state.value == "ready" and r.job_id}


def failure_counters(url: str) -> list[str]:
    """The router's counters of errors, ejections and fallbacks (/metrics lines), as they stand."""
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    return [line for line in metrics.splitlines() if line.startswith(
        ("grace_router_errors_total", "grace_router_ejections_total", "grace_router_fallbacks_total"))]


class Load:
    """Continuous requests through the router from the official client, streamed and not, on three threads."""

    def __init__(self, url: str) -> None:
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
        self.stop, self.errors, self.answered = threading.Event(), [], 0
        self.threads = [threading.Thread(target=self.loop, args=(i % 2 == 0,), daemon=True) for i in range(3)]

    def loop(self, stream: bool) -> None:
        messages = [{"role": "user", "content": "Count to twenty."}]
        while not self.stop.is_set():
            try:
                if stream:
                    chunks = list(self.client.chat.completions.create(model="default", messages=messages,
                                                                      max_tokens=48, stream=True))
                    finished = [c.choices[0].finish_reason for c in chunks if c.choices]
                    assert finished and finished[-1] in ("stop", "length"), f"a stream cut short: {finished}"
                else:
                    reply = self.client.chat.completions.create(model="default", messages=messages, max_tokens=48)
                    assert reply.choices[0].finish_reason in ("stop", "length")
                self.answered += 1
            except Exception as exc:  # every failure a client would see, recorded for the assertion
                self.errors.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)


def test_a_two_minute_server_under_load_is_handed_over_twice_with_no_client_visible_error(tiny_project, short_lived,
                                                                                         router_url):
    url, registry = router_url
    deadline = time.monotonic() + 120
    while not ready_jobs(registry, short_lived) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ready_jobs(registry, short_lived), "the first replica never became ready"
    while requests.post(f"{url}/v1/chat/completions", json={"model": "default", "max_tokens": 1, "messages": [
            {"role": "user", "content": "hi"}]}, timeout=60).status_code != 200:  # the router has re-read the registry
        time.sleep(0.2)
    warm_up = failure_counters(url)  # the 503s of the loop above, before the router had read the registry
    served: list[str] = []  # the jobs that served, in order
    started = time.monotonic()
    with Load(url) as load:
        # two handovers: a third job ready and the first two gone (their wall time is 2 minutes, the lead 60 s)
        while time.monotonic() < started + 300:
            served += sorted(ready_jobs(registry, short_lived) - set(served))
            if len(served) >= 3 and not set(served[:2]) & set(my_jobs(short_lived)):
                break
            time.sleep(0.5)
        time.sleep(5)  # requests on the newest replica after the second handover
    print(f"jobs served in turn: {served}; {load.answered} answers in {time.monotonic() - started:.0f}s")
    assert len(served) >= 3 and not set(served[:2]) & set(my_jobs(short_lived)), served
    assert load.errors == [], (len(load.errors), load.errors[:3], load.errors[-3:])
    assert load.answered > 30
    assert failure_counters(url) == warm_up, "the router met a vanished endpoint (an upstream failure, retried " \
                                             "elsewhere)"
    assert my_jobs(short_lived) == manifest_ids(tiny_project, short_lived)


def test_a_preempted_replica_is_replaced_within_one_reconcile_period(tiny_project, elastic):
    once(tiny_project, elastic)
    [job] = my_jobs(elastic)
    config = ConfigDir(tiny_project / "configs")
    registry = Registry.from_cluster(config.cluster(), config, environ={})
    deadline = time.monotonic() + 120
    while job not in ready_jobs(registry, elastic) and time.monotonic() < deadline:
        time.sleep(0.5)
    # what SLURM does to a preempted job (PreemptMode=CANCEL/REQUEUE): SIGTERM to its steps, with time left
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    deadline = time.monotonic() + 30
    while job in ready_jobs(registry, elastic) and time.monotonic() < deadline:
        time.sleep(0.2)
    once(tiny_project, elastic)  # one reconcile period later
    row = status_row(tiny_project, elastic)
    [replacement] = [j for j in my_jobs(elastic) if j != job]
    assert row["reason"] == "replace" and job in row["detail"], row
    once(tiny_project, elastic)  # the ended job is forgotten, not replaced twice
    deadline = time.monotonic() + 30
    while job in my_jobs(elastic) and time.monotonic() < deadline:
        time.sleep(0.5)
    once(tiny_project, elastic)
    assert my_jobs(elastic) == [replacement] == manifest_ids(tiny_project, elastic)
