"""Failover against real servers: kill -9 under load, cloud fallback, a stream broken mid-way, a silent upstream."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from tests.conftest import free_port
from tests.support.router_env import canned_upstream, key_file, record, router, routing

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "hello"}]


def table(**extra) -> object:
    return routing({
        "connect_timeout_s": 1.0, "read_timeout_s": 5.0,
        "categories": [
            {"name": "default", "models": ["chat"], "cloud": ["standin"]},
            {"name": "orchestration", "cloud_only": True, "cloud": ["standin"]},
            {"name": "local-only", "models": ["chat"]},
        ],
        "cloud": [{"name": "standin", "base_url": extra.pop("cloud_url", "http://127.0.0.1:9/v1"),
                   "api_key_env": "STANDIN_CLOUD_KEY", "default_model": "cloud-model"}],
        **extra,
    })


def status(url: str) -> dict:
    return requests.get(url.removesuffix("/v1") + "/status", timeout=10).json()


def test_kill_9_of_one_of_two_endpoints_under_load_loses_no_request(llama_server, tmp_path):
    a, b = llama_server(alias="chat", parallel=4), llama_server(alias="chat", parallel=4)
    records = [record("a", a.base_url, "chat", max_num_seqs=4), record("b", b.base_url, "chat", max_num_seqs=4)]
    done = threading.Event()
    served: list[str] = []
    with router(table(), tmp_path / "registry.json", records) as url, \
            openai.OpenAI(base_url=url, api_key="unused", max_retries=0) as client:

        def one(_: int) -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="local-only", messages=QUESTION, max_tokens=16)
            raw.parse()
            served.append(raw.headers["X-Grace-Served-By"])
            if len(served) == 20:
                done.set()
            return raw.headers["X-Grace-Served-By"]

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, i) for i in range(120)]
            assert done.wait(60)
            a.process.kill()  # SIGKILL with requests in flight on it
            results = [f.result() for f in futures]  # any client-visible error would raise here
        assert len(results) == 120
        assert set(results[:20]) == {"a", "b"}  # load was spread before the kill
        assert results[-20:] == ["b"] * 20
        report = {e["id"]: e for e in status(url)["endpoints"]}
        assert report["a"]["healthy"] is False and report["a"]["ejections"] == 1
        assert report["a"]["last_error"] and report["b"]["healthy"] is True


def test_with_no_local_endpoint_alive_the_cloud_serves_and_the_response_says_so(llama_server, tmp_path):
    cloud = llama_server(alias="cloud-model", api_key="cloud-secret")
    dead = record("dead", "http://127.0.0.1:9/v1", "chat")  # port 9 (discard): connection refused
    environ = {"STANDIN_CLOUD_KEY": "cloud-secret"}
    with router(table(cloud_url=cloud.base_url), tmp_path / "registry.json", [dead], environ=environ) as url, \
            openai.OpenAI(base_url=url, api_key="unused", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="default", messages=QUESTION, max_tokens=2)
        assert raw.headers["X-Grace-Served-By"] == "cloud:standin" and raw.parse().choices
        only = client.chat.completions.with_raw_response.create(model="orchestration", messages=QUESTION, max_tokens=2)
        assert only.headers["X-Grace-Served-By"] == "cloud:standin"
        streamed = list(client.chat.completions.create(model="default", messages=QUESTION, max_tokens=3, stream=True))
        assert streamed
        metrics = requests.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
        assert 'grace_router_fallbacks_total{category="default",reason="failover",to="cloud:standin"} 1' in metrics
        assert 'reason="cloud_only",to="cloud:standin"} 1' in metrics
        assert 'reason="no_local_endpoint",to="cloud:standin"} 1' in metrics  # `dead` was ejected by then
        assert 'grace_router_ejections_total{endpoint="dead"} 1' in metrics
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="local-only", messages=QUESTION, max_tokens=2)
        assert info.value.status_code == 503
    assert "cloud-secret" not in info.value.message


def test_a_stream_broken_mid_way_ends_with_an_sse_error_event_not_a_hang(llama_server, tmp_path):
    server = llama_server(alias="chat")
    with router(table(), tmp_path / "registry.json", [record("only", server.base_url, "chat")]) as url, \
            openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30) as client:
        stream = client.chat.completions.create(model="local-only", messages=QUESTION, max_tokens=900, stream=True,
                                                extra_body={"ignore_eos": True})
        started = time.monotonic()
        with pytest.raises(openai.APIError, match="failed mid-stream"):
            for n, _ in enumerate(stream):
                if n == 1:
                    server.process.kill()
        assert time.monotonic() - started < 20
        assert status(url)["endpoints"][0]["healthy"] is False


def test_an_upstream_that_accepts_but_never_answers_times_out_with_504(tmp_path):
    with socket.socket() as silent:  # a real listener that never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        rt = table(read_timeout_s=0.5)
        with router(rt, tmp_path / "registry.json", [record("mute", f"http://127.0.0.1:{port}/v1", "chat")]) as url:
            started = time.monotonic()
            r = requests.post(f"{url}/chat/completions", json={"model": "local-only", "messages": QUESTION}, timeout=30)
            assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
            assert time.monotonic() - started < 10
            assert status(url)["endpoints"][0]["last_error"].endswith("no byte within read_timeout_s")


def test_the_endpoint_key_file_is_read_and_injected(llama_server, tmp_path):
    server = llama_server(alias="chat", api_key="endpoint-secret")
    good = record("good", server.base_url, "chat", key=key_file(tmp_path, "good", "endpoint-secret"))
    with router(table(), tmp_path / "registry.json", [good]) as url:
        r = requests.post(f"{url}/completions", json={"model": "chat", "prompt": "a", "max_tokens": 1}, timeout=30)
        assert r.status_code == 200 and r.headers["X-Grace-Served-By"] == "good"


def test_an_ejected_endpoint_is_probed_and_restored_once_it_answers_again(tmp_path):
    port = free_port()
    records = [record("flaky", f"http://127.0.0.1:{port}/v1", "chat")]
    with router(table(), tmp_path / "registry.json", records) as url:
        body = {"model": "local-only", "messages": QUESTION}
        assert requests.post(f"{url}/chat/completions", json=body, timeout=10).status_code == 502  # refused
        assert status(url)["endpoints"][0]["healthy"] is False
        assert requests.post(f"{url}/chat/completions", json=body, timeout=10).status_code == 503  # not retried
        with canned_upstream(port=port):
            deadline = time.monotonic() + 10  # first probe after the 1 s cooldown
            while not status(url)["endpoints"][0]["healthy"] and time.monotonic() < deadline:
                time.sleep(0.1)
            r = requests.post(f"{url}/chat/completions", json=body, timeout=10)
            assert r.status_code == 200 and r.headers["X-Grace-Served-By"] == "flaky"


def test_a_corrupt_registry_keeps_the_last_good_snapshot_and_says_so(tmp_path):
    path = tmp_path / "registry.json"
    with canned_upstream() as upstream, router(table(), path, [record("canned", upstream, "chat")]) as url:
        path.write_text("{ half a registry")  # a writer that bypassed Registry's atomic replace
        deadline = time.monotonic() + 10
        health = requests.get(url.removesuffix("/v1") + "/health", timeout=10).json()
        while not health["registry_error"] and time.monotonic() < deadline:
            time.sleep(0.05)
            health = requests.get(url.removesuffix("/v1") + "/health", timeout=10).json()
        assert "corrupt registry" in health["registry_error"] and health["routable_endpoints"] == 1
        r = requests.post(f"{url}/chat/completions", json={"model": "chat", "messages": QUESTION}, timeout=10)
        assert r.status_code == 200
