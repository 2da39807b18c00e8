"""What an operator relies on: liveness vs readiness, one deadline per request across attempts, background tasks
that survive their own bugs, a rotated endpoint key picked up without a restart, and request ids end to end."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time

import requests
from aiohttp import web

from grace_hpc.registry.records import EndpointState
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from tests.support.router_env import (
    canned_answer,
    key_file,
    record,
    router,
    routing,
    sse_answer,
    standin_upstream,
)

QUESTION = {"messages": [{"role": "user", "content": "hello"}]}


def table(**extra: object) -> object:
    return routing({"connect_timeout_s": 1.0, "read_timeout_s": 10.0, **extra,
                    "categories": [{"name": "default", "models": ["chat"]}]})


def base(url: str) -> str:
    return url.removesuffix("/v1")


def test_health_says_the_process_answers_and_ready_says_something_can_serve(tmp_path):
    starting = record("e", "http://127.0.0.1:9/v1", "chat", state=EndpointState.STARTING)
    with router(table(), tmp_path / "registry.json", [starting]) as url:
        assert requests.get(f"{base(url)}/health", timeout=10).status_code == 200
        not_ready = requests.get(f"{base(url)}/ready", timeout=10)
        assert not_ready.status_code == 503 and not_ready.json()["ready"] is False
        Registry(tmp_path / "registry.json").set_state("e", EndpointState.READY)
        deadline = time.monotonic() + 10
        while requests.get(f"{base(url)}/ready", timeout=10).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert requests.get(f"{base(url)}/ready", timeout=10).json() == {
            "ready": True, "routable_endpoints": 1, "cloud_ready": [], "registry_error": None}


def test_one_deadline_bounds_a_request_across_all_its_attempts_and_ejects_nobody(tmp_path):
    slow = sse_answer(1, headers_after_s=5.0)  # a slow prefill: no byte for 5 s, well within read_timeout_s
    with standin_upstream(slow) as a, standin_upstream(slow) as b:
        records = [record("a", a.url, "chat"), record("b", b.url, "chat")]
        with router(table(request_deadline_s=1.0), tmp_path / "registry.json", records) as url:
            started = time.monotonic()
            r = requests.post(f"{url}/chat/completions", json={"model": "chat", "stream": True, **QUESTION},
                              timeout=30)
            elapsed = time.monotonic() - started
            assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
            assert 0.9 < elapsed < 2.5  # one deadline, not one per attempt
            report = requests.get(f"{base(url)}/status", timeout=10).json()["endpoints"]
            assert all(e["healthy"] and e["consecutive_failures"] == 0 for e in report)
            assert len(a.hits) + len(b.hits) == 1  # the deadline passed during the first attempt: no second


class FlakyRegistry(Registry):
    """A real registry whose change check hits an unexpected bug once (as a driver or NFS quirk might)."""

    broke = False

    def changed_since(self, version: object) -> bool:
        if not self.broke:
            self.broke = True
            raise RuntimeError("unexpected bug in the change check")
        return super().changed_since(version)


def test_a_background_task_that_fails_unexpectedly_is_logged_and_restarted(tmp_path, caplog):
    with standin_upstream(canned_answer) as upstream:
        registry = FlakyRegistry(tmp_path / "registry.json")
        registry.register(record("e", upstream.url, "chat", state=EndpointState.STARTING))
        app = create_app(table(), registry, environ={}, poll_interval_s=0.05)
        with caplog.at_level(logging.ERROR, logger="grace_hpc.router"), serve_in_thread(app) as url:
            time.sleep(0.2)
            registry.set_state("e", EndpointState.READY)
            deadline = time.monotonic() + 10
            while requests.get(f"{url}/ready", timeout=10).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            r = requests.post(f"{url}/v1/chat/completions", json={"model": "chat", **QUESTION}, timeout=10)
            assert r.status_code == 200  # the watch came back and saw the change
    failures = [r for r in caplog.records if "background task 'registry watch' failed" in r.getMessage()]
    assert len(failures) == 1 and "unexpected bug" in failures[0].exc_text


def test_a_rotated_endpoint_key_is_used_after_one_registry_poll_without_a_restart(tmp_path):
    seen: list[str] = []

    async def keyed(request: web.Request, n: int) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        return await canned_answer(request, n)

    with standin_upstream(keyed) as upstream:
        key = key_file(tmp_path, "e", "old-key")
        with router(table(), tmp_path / "registry.json", [record("e", upstream.url, "chat", key=key)]) as url:
            assert requests.post(f"{url}/chat/completions", json={"model": "chat", **QUESTION}, timeout=10).ok
            key_file(tmp_path, "e", "new-key-longer")  # rewritten in place, as a supervisor restart would
            time.sleep(0.5)  # the router polls every 0.1 s here
            assert requests.post(f"{url}/chat/completions", json={"model": "chat", **QUESTION}, timeout=10).ok
    assert seen == ["Bearer old-key", "Bearer new-key-longer"]


def test_request_ids_are_accepted_echoed_and_forwarded_or_made_up_when_missing_or_unsafe(tmp_path):
    forwarded: list[str | None] = []

    async def remember(request: web.Request, n: int) -> web.StreamResponse:
        forwarded.append(request.headers.get("X-Request-Id"))
        return await (canned_answer if n == 0 else sse_answer(2))(request, n)

    with standin_upstream(remember) as upstream, \
            router(table(), tmp_path / "registry.json", [record("e", upstream.url, "chat")]) as url:
        plain = requests.post(f"{url}/chat/completions", json={"model": "chat", **QUESTION}, timeout=10,
                              headers={"X-Request-Id": "job-7/row-3"})
        streamed = requests.post(f"{url}/chat/completions", json={"model": "chat", "stream": True, **QUESTION},
                                 timeout=10, headers={"X-Request-Id": "job-7/row-4"})
        refused = requests.post(f"{url}/chat/completions", json={"model": "nope"}, timeout=10,
                                headers={"X-Request-Id": "job-7/row-5"})
        unsafe = requests.post(f"{url}/chat/completions", json={"model": "nope"}, timeout=10,
                               headers={"X-Request-Id": "bad id\twith spaces"})
        made_up = requests.get(f"{base(url)}/health", timeout=10)
    assert [plain.headers["X-Request-Id"], streamed.headers["X-Request-Id"], refused.headers["X-Request-Id"]] == [
        "job-7/row-3", "job-7/row-4", "job-7/row-5"]
    assert forwarded == ["job-7/row-3", "job-7/row-4"]
    made = [unsafe.headers["X-Request-Id"], made_up.headers["X-Request-Id"]]
    assert all(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", m) for m in made) and made[0] != made[1]


class SlowRegistry(Registry):
    """A real registry on a slow shared file system: every change check takes 0.1 s."""

    def changed_since(self, version: object) -> bool:
        time.sleep(0.1)
        return super().changed_since(version)


def test_a_cookie_an_upstream_sets_never_rides_along_with_later_requests(tmp_path):
    seen: list[str | None] = []

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        seen.append(request.headers.get("Cookie"))
        response = await canned_answer(request, n)
        response.set_cookie("__cf_bm", f"set-for-request-{n}")  # what a cloud API behind a CDN sends
        return response

    with standin_upstream(answer) as upstream:
        by_name = upstream.url.replace("127.0.0.1", "localhost")  # a client cookie jar refuses IP-address hosts
        with router(table(), tmp_path / "registry.json", [record("e", by_name, "chat")]) as url:
            for _ in range(3):
                assert requests.post(f"{url}/chat/completions", json={"model": "chat", **QUESTION}, timeout=10).ok
    assert seen == [None, None, None]  # one client's upstream cookie is never sent on another client's behalf


def test_an_answer_reaches_its_client_before_the_routers_own_accounting(tmp_path, monkeypatch):
    from grace_hpc.router.samples import LoadSamples

    served = LoadSamples.served

    def slow_bookkeeping(self, *args):  # the dashboard's samples, taken after the answer is written
        time.sleep(2.0)
        served(self, *args)

    monkeypatch.setattr(LoadSamples, "served", slow_bookkeeping)
    with standin_upstream(canned_answer) as upstream:
        with router(table(), tmp_path / "registry.json", [record("e", upstream.url, "chat")]) as url:
            started = time.monotonic()
            r = requests.post(f"{url}/chat/completions", json={"model": "chat", **QUESTION}, timeout=10)
            assert r.ok and time.monotonic() - started < 1.5  # the client did not wait for the bookkeeping
            time.sleep(2.5)
            assert requests.get(f"{base(url)}/status", timeout=10).ok  # and the router went on afterwards


def test_the_event_loop_never_waits_on_the_file_system(tmp_path):
    """Registry polls run in worker threads: were the 0.1 s check on the event loop, polled every 0.01 s, the loop
    would be blocked 90 % of the time and many answers would wait for a whole check."""
    registry = SlowRegistry(tmp_path / "registry.json")
    registry.register(record("e", "http://127.0.0.1:9/v1", "chat"))
    with serve_in_thread(create_app(table(), registry, environ={}, poll_interval_s=0.01)) as url:
        timings = []
        for _ in range(40):
            started = time.monotonic()
            assert requests.get(f"{url}/health", timeout=10).ok
            timings.append(time.monotonic() - started)
    assert sum(t > 0.05 for t in timings) <= 2  # measured on the loop: 15 of 40 (each one a whole check)


def test_a_router_run_in_the_foreground_leaves_its_start_up_objects_to_no_collection(tmp_path):
    # a process of its own: run_router tunes the collector of the whole process (serve.py, tune_gc)
    script = f"""
import gc, os, signal, sys
from grace_hpc.config.routing import Routing
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, run_router
from grace_hpc.router.serve import GC_YOUNG_THRESHOLD

def listening(url):
    print(gc.get_freeze_count(), gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

routing = Routing.model_validate({{"categories": [{{"name": "default", "models": ["chat"]}}]}})
run_router(create_app(routing, Registry({str(tmp_path / "registry.json")!r})), port=0, on_listening=listening)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    frozen, raised = out.stdout.split()
    assert int(frozen) > 10_000 and raised == "True", out.stdout  # imports, config and app: frozen, never rescanned
