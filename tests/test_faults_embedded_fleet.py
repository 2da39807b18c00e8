"""Faults injected into a running fleet, as a user runs it: two replicas of the real SmolLM2-135M on llama.cpp
(submitit's local executor) behind the router, under continuous load from the official `openai` client.

- An engine killed (SIGKILL) mid-load: every non-streamed request still gets its answer (the ones the dead engine
  held are retried on the other replica), the engine is restarted in place by its job, and the router sends it
  requests again.
- An engine that hangs (SIGSTOP: the process lives, its port accepts, nothing answers): within the liveness window
  its job publishes it `unresponsive`, new requests go to the other replica only, and when it answers again
  (SIGCONT) the requests it held complete and it is routed to again. No client sees an error.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
import yaml

from grace_hpc.config.loader import load_yaml_model
from grace_hpc.config.routing import Routing
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from tests.support.cli import engine_pids, grace

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "Name a colour."}]
TIMEOUT_S = 300  # a request held by a stopped engine waits for it: the client must not give up first


@pytest.fixture
def two_replicas(embedded_default: Path) -> Iterator[Path]:
    deployment = yaml.safe_load((embedded_default / "configs" / "deployments" / "local.yaml").read_text())
    chat = next(s for s in deployment["servers"] if s["name"] == "smollm2")
    (embedded_default / "configs" / "deployments" / "faults.yaml").write_text(yaml.safe_dump(
        {**deployment, "name": "faults", "servers": [{**chat, "replicas": 2}]}))
    launched = grace(embedded_default, "launch", "--deployment", "faults", "--wait", "--timeout", "300", timeout=400)
    try:
        assert launched.returncode == 0, launched.stdout + launched.stderr
        yield embedded_default
    finally:
        grace(embedded_default, "stop", "--deployment", "faults", timeout=120)


class Load:
    """Four threads of non-streamed requests with the official client until stopped; every outcome is kept."""

    def __init__(self, url: str) -> None:
        self.client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=TIMEOUT_S)
        self.answers: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(4)
        self.futures = [self.pool.submit(self.loop) for _ in range(4)]

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                r = self.client.chat.completions.create(model="default", messages=QUESTION, max_tokens=6)
                self.answers.append(r.choices[0].message.content or "")
            except openai.APIError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def finish(self) -> None:
        self.stop.set()
        for f in self.futures:
            f.result(timeout=TIMEOUT_S + 30)
        self.pool.shutdown()
        self.client.close()


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:g}s: {what}"
        time.sleep(0.2)


def served(base: str) -> dict[str, int]:
    """Requests the router sent each chat endpoint so far."""
    return {e["id"]: e["requests"] for e in requests.get(f"{base}/status", timeout=10).json()["endpoints"]}


def test_a_killed_engine_and_a_hung_engine_cost_the_clients_nothing(two_replicas: Path) -> None:
    registry_path = two_replicas / "logs" / "registry" / "registry.json"
    registry = Registry(registry_path)
    routing = load_yaml_model(two_replicas / "routing" / "local.yaml", Routing)
    [victim, other] = sorted(registry.list(), key=lambda r: r.id)

    def state() -> str:
        return next(r.state.value for r in registry.list() if r.id == victim.id)

    with serve_in_thread(create_app(routing, Registry(registry_path))) as base:
        load = Load(f"{base}/v1")
        try:
            wait_for(lambda: len(load.answers) >= 4, 120, "the first answers")

            # 1. killed: restarted in place by its job, and routed to again
            [engine] = engine_pids(victim.port)
            os.kill(engine, signal.SIGKILL)
            wait_for(lambda: engine_pids(victim.port) not in ([], [engine]) and state() == "ready", 120,
                     "the killed engine restarted and ready again")
            before = served(base)[victim.id]
            wait_for(lambda: served(base)[victim.id] > before + 2, 120, "requests reaching the restarted engine")

            # 2. hung: out of routing while silent, back when it answers; what it held completes
            [engine] = engine_pids(victim.port)
            os.kill(engine, signal.SIGSTOP)
            try:
                wait_for(lambda: state() == "unresponsive", 90, "the stopped engine published unresponsive")
                time.sleep(2)  # the router's registry poll
                held, answered = served(base)[victim.id], len(load.answers)
                wait_for(lambda: len(load.answers) >= answered + 8, 180, "answers from the other replica meanwhile")
                assert served(base)[victim.id] == held  # nothing new was sent to the silent engine
            finally:
                os.kill(engine, signal.SIGCONT)
            wait_for(lambda: state() == "ready", 90, "the engine back in routing once it answers")
            before = served(base)[victim.id]
            wait_for(lambda: served(base)[victim.id] > before + 2, 120, "requests reaching it again")
        finally:
            load.finish()
    assert load.errors == [], load.errors[:5]
    assert len(load.answers) > 20 and all(load.answers)
    assert {r.id for r in registry.list()} == {victim.id, other.id}  # the same two endpoints throughout
