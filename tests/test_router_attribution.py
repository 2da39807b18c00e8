"""Every failure is attributed to the side that failed, against real HTTP servers standing in for engines and clouds.

One test per upstream status class (401, cloud 429, a single 500, a dead port, request-caused 4xx) checks the
client's outcome, the ejection decision and that no upstream text reaches the client; then a client hanging up at
each point of a stream counts against nobody, is never replayed and closes the upstream at once.
"""

from __future__ import annotations

import logging
import socket
import time

import openai
import pytest
import requests

from tests.support.router_env import (
    canned_answer,
    json_answer,
    key_file,
    metric,
    raw_stream_request,
    read_until,
    record,
    router,
    routing,
    sse_answer,
    standin_upstream,
)

QUESTION = [{"role": "user", "content": "hello"}]
#: what upstream error bodies look like: a masked key (OpenAI's own 401 text) and a server-side traceback
AUTH_TEXT = "Incorrect API key provided: sk-proj-ab**********************wxyz"
TRACEBACK = "Traceback (most recent call last): File /srv/engine/secret_internal.py"


def table(cloud: list[str] | None = None) -> object:
    providers = [{"name": n, "base_url": u, "api_key_env": f"{n.upper()}_KEY", "default_model": "cloud-model"}
                 for n, u in (cloud or [])]
    names = [p["name"] for p in providers]
    return routing({
        "connect_timeout_s": 1.0, "read_timeout_s": 5.0,
        "categories": [
            {"name": "default", "models": ["first", "second"]},
            {"name": "first-only", "models": ["first"]},
            *([{"name": "clouds", "cloud_only": True, "cloud": names},
               {"name": "first-cloud", "cloud_only": True, "cloud": names[:1]}] if names else []),
        ],
        "cloud": providers,
    })


def status(url: str) -> dict:
    return requests.get(url.removesuffix("/v1") + "/status", timeout=10).json()


def endpoint(url: str, endpoint_id: str) -> dict:
    return next(e for e in status(url)["endpoints"] if e["id"] == endpoint_id)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)


def test_an_endpoint_refusing_the_routers_key_is_ejected_its_key_file_logged_and_its_text_never_shown(
        tmp_path, caplog):
    with standin_upstream(json_answer(401, {"error": {"message": AUTH_TEXT}})) as refusing, \
            standin_upstream(canned_answer) as good:
        key = key_file(tmp_path, "first", "endpoint-key")
        records = [record("a", refusing.url, "first", key=key), record("b", good.url, "second")]
        with caplog.at_level(logging.INFO, logger="grace_hpc.router"), \
                router(table(), tmp_path / "registry.json", records) as url, client(url) as c:
            raw = c.chat.completions.with_raw_response.create(model="default", messages=QUESTION)
            assert raw.headers["X-Grace-Served-By"] == "b"  # failed over, the client never saw the 401
            assert endpoint(url, "a")["healthy"] is False and endpoint(url, "a")["ejections"] == 1
            c.chat.completions.create(model="default", messages=QUESTION)
            assert len(refusing.hits) == 1  # ejected: not tried again
        with router(table(), tmp_path / "alone.json", records[:1]) as url, client(url) as c, \
                pytest.raises(openai.InternalServerError) as alone:  # 502: the router's upstream failed, not the client
            c.chat.completions.create(model="first-only", messages=QUESTION)
    assert alone.value.status_code == 502
    assert "sk-proj" not in str(alone.value.body) and "Incorrect API key" not in str(alone.value.body)
    logged = [r.getMessage() for r in caplog.records if "ejected a" in r.getMessage()]
    assert logged == [f"ejected a: it refused the router's key (HTTP 401); check its key file {key}"] * 2
    assert not any("sk-proj" in r.getMessage() or "endpoint-key" in r.getMessage() for r in caplog.records)


def test_a_rate_limited_cloud_passes_to_the_next_provider_without_ejection_and_alone_is_a_429(tmp_path):
    with standin_upstream(json_answer(429, {"error": {"message": "quota exceeded for org-SECRET"}})) as limited, \
            standin_upstream(canned_answer) as spare:
        environ = {"LIMITED_KEY": "k1", "SPARE_KEY": "k2"}
        rt = table(cloud=[("limited", limited.url), ("spare", spare.url)])
        with router(rt, tmp_path / "registry.json", [], environ=environ) as url, client(url) as c:
            for _ in range(2):
                raw = c.chat.completions.with_raw_response.create(model="clouds", messages=QUESTION)
                assert raw.headers["X-Grace-Served-By"] == "cloud:spare"
            assert len(limited.hits) == 2  # not ejected: tried first again
            with pytest.raises(openai.RateLimitError) as info:
                c.chat.completions.create(model="first-cloud", messages=QUESTION)
            cloud = {p["name"]: p for p in status(url)["cloud"]}
    assert "org-SECRET" not in str(info.value.body)
    assert cloud["limited"]["healthy"] is True and cloud["limited"]["ejections"] == 0


def test_a_cloud_refusing_its_key_is_ejected_and_the_log_names_its_variable(tmp_path, caplog):
    with standin_upstream(json_answer(401, {"error": {"message": AUTH_TEXT}})) as refusing, \
            standin_upstream(canned_answer) as spare:
        rt = table(cloud=[("refusing", refusing.url), ("spare", spare.url)])
        with caplog.at_level(logging.INFO, logger="grace_hpc.router"), \
                router(rt, tmp_path / "registry.json", [], environ={"REFUSING_KEY": "x", "SPARE_KEY": "y"}) as url, \
                client(url) as c:
            for _ in range(2):
                raw = c.chat.completions.with_raw_response.create(model="clouds", messages=QUESTION)
                assert raw.headers["X-Grace-Served-By"] == "cloud:spare"
    assert len(refusing.hits) == 1  # cooling down after its ejection
    assert any("check $REFUSING_KEY" in r.getMessage() for r in caplog.records)


def test_one_500_fails_over_without_ejection_and_its_text_stays_upstream(tmp_path):
    async def once(request, n):
        if n == 0:
            return await json_answer(500, {"error": TRACEBACK})(request, n)
        return await canned_answer(request, n)

    with standin_upstream(once) as flaky, standin_upstream(canned_answer) as good:
        records = [record("a", flaky.url, "first"), record("b", good.url, "second")]
        with router(table(), tmp_path / "registry.json", records) as url, client(url) as c:
            raw = c.chat.completions.with_raw_response.create(model="default", messages=QUESTION)
            assert raw.headers["X-Grace-Served-By"] == "b"
            assert endpoint(url, "a")["healthy"] is True and endpoint(url, "a")["consecutive_failures"] == 1
            again = c.chat.completions.with_raw_response.create(model="default", messages=QUESTION)
            assert again.headers["X-Grace-Served-By"] == "a"  # still first choice, and it answers now
            assert endpoint(url, "a")["consecutive_failures"] == 0
    with standin_upstream(json_answer(500, {"error": TRACEBACK})) as broken:
        with router(table(), tmp_path / "registry2.json", [record("a", broken.url, "first")]) as url, \
                client(url) as c:
            with pytest.raises(openai.InternalServerError) as info:
                c.chat.completions.create(model="first-only", messages=QUESTION)
            assert info.value.status_code == 502 and endpoint(url, "a")["healthy"] is True
    assert "Traceback" not in str(info.value.body) and "secret_internal" not in str(info.value.body)


def test_a_dead_endpoint_is_ejected_and_the_request_served_by_the_next(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with standin_upstream(canned_answer) as good:
        records = [record("dead", f"http://127.0.0.1:{dead_port}/v1", "first"), record("b", good.url, "second")]
        with router(table(), tmp_path / "registry.json", records) as url, client(url) as c:
            raw = c.chat.completions.with_raw_response.create(model="default", messages=QUESTION)
            assert raw.headers["X-Grace-Served-By"] == "b"
            assert endpoint(url, "dead")["healthy"] is False and metric(url, "grace_router_ejections_total") == 1


def test_a_connection_the_engine_closes_without_answering_is_tried_once_more_before_anything_counts(tmp_path):
    async def drop_first(request, n):
        if n == 0:
            request.transport.close()
            raise ConnectionResetError("closed without an answer")
        return await canned_answer(request, n)

    with standin_upstream(drop_first) as engine:
        with router(table(), tmp_path / "registry.json", [record("a", engine.url, "first")]) as url, client(url) as c:
            raw = c.chat.completions.with_raw_response.create(model="first-only", messages=QUESTION)
            assert raw.headers["X-Grace-Served-By"] == "a" and len(engine.hits) == 2
            assert endpoint(url, "a")["healthy"] is True and metric(url, "grace_router_ejections_total") == 0


@pytest.mark.parametrize("code, exception", [
    (400, openai.BadRequestError), (404, openai.NotFoundError), (413, openai.APIStatusError),
    (422, openai.UnprocessableEntityError),
])
def test_a_4xx_caused_by_the_request_passes_through_unchanged_and_is_not_retried(tmp_path, code, exception):
    upstream_body = {"error": {"message": f"engine says {code}", "type": "invalid_request_error", "code": None}}
    with standin_upstream(json_answer(code, upstream_body)) as strict, standin_upstream(canned_answer) as other:
        records = [record("a", strict.url, "first"), record("b", other.url, "second")]
        with router(table(), tmp_path / "registry.json", records) as url:
            r = requests.post(f"{url}/chat/completions", json={"model": "default", "messages": QUESTION}, timeout=10)
            assert (r.status_code, r.json()) == (code, upstream_body)
            assert endpoint(url, "a")["healthy"] is True and endpoint(url, "a")["consecutive_failures"] == 0
            with client(url) as c, pytest.raises(exception) as info:
                c.chat.completions.create(model="default", messages=QUESTION)
            assert info.value.status_code == code
    assert len(strict.hits) == 2 and other.hits == []


# --- a client hanging up, at each point of a stream -----------------------------------------------------------

HANG_UPS = {  # point of the stream -> (upstream stream, what the client reads before it closes)
    "before-headers": (sse_answer(50, 0.05, headers_after_s=1.0), lambda s: time.sleep(0.3)),
    "after-headers": (sse_answer(50, 0.05), lambda s: read_until(s, b"\r\n\r\n")),
    "mid-stream": (sse_answer(50, 0.05), lambda s: read_until(s, b"data: ", 3)),
}


@pytest.mark.parametrize("point", list(HANG_UPS))
def test_a_client_hanging_up_counts_against_nobody_is_not_replayed_and_closes_the_upstream(tmp_path, point):
    stream, read = HANG_UPS[point]
    with standin_upstream(stream) as upstream:
        with router(table(), tmp_path / "registry.json", [record("a", upstream.url, "first")]) as url:
            sock = raw_stream_request(url, {"model": "first-only", "messages": QUESTION, "stream": True})
            read(sock)
            sock.close()
            assert upstream.closed.wait(2.0), "the upstream request was not closed after the client left"
            deadline = time.monotonic() + 5
            while endpoint(url, "a")["in_flight"] and time.monotonic() < deadline:  # the handler has finished
                time.sleep(0.05)
            assert metric(url, "grace_router_ejections_total") == 0
            assert endpoint(url, "a")["healthy"] is True and endpoint(url, "a")["consecutive_failures"] == 0
            assert upstream.hits == ["/v1/chat/completions"]  # never replayed for a client that is gone
            assert metric(url, "grace_router_client_disconnects_total") == 1


def test_a_client_closing_right_after_done_is_an_ordinary_end(tmp_path):
    with standin_upstream(sse_answer(3)) as upstream:
        with router(table(), tmp_path / "registry.json", [record("a", upstream.url, "first")]) as url:
            for _ in range(5):
                sock = raw_stream_request(url, {"model": "first-only", "messages": QUESTION, "stream": True})
                read_until(sock, b"data: [DONE]")
                sock.close()
            with client(url) as c:  # and the official client, which may close before the chunked terminator
                for _ in range(5):
                    assert len(list(c.chat.completions.create(model="first-only", messages=QUESTION,
                                                              stream=True))) == 3
            time.sleep(0.2)
            assert metric(url, "grace_router_client_disconnects_total") == 0
            assert metric(url, "grace_router_ejections_total") == 0 and len(upstream.hits) == 10
