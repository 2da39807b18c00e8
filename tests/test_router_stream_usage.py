"""Streamed answers record their real tokens: the router asks the upstream for the final usage chunk, reads it on the
way, and relays it only when the client asked; a cloud stream is charged its real usage, not its estimate. Against a
real llama.cpp server and a priced cloud stand-in (a real HTTP server), with the official openai client."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from aiohttp import web
from openai import OpenAI

from grace_hpc.router import policy
from grace_hpc.users.budget import cost_usd, estimate_usd
from tests.support.router_env import record, routing, standin_upstream
from tests.support.users_env import key_store, users_router

QUESTION = [{"role": "user", "content": "count to three"}]
CLOUD_USAGE = {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47}


def table(cloud_url: str = "http://127.0.0.1:9/v1") -> object:
    return routing({
        "categories": [{"name": "default", "models": ["tiny"]},
                       {"name": "remote", "cloud_only": True, "cloud": ["standin"]}],
        "cloud": [{"name": "standin", "base_url": cloud_url, "api_key_env": "STANDIN_KEY",
                   "default_model": "cloud-model", "price_in_per_mtok": 1000.0, "price_out_per_mtok": 3000.0}],
    })


def stream(client: OpenAI, model: str, **extra) -> list:
    return list(client.chat.completions.create(model=model, messages=QUESTION, max_tokens=3, temperature=0,
                                               stream=True, **extra))


def as_seen(chunks: list) -> list:
    """What a client reads from a stream: each chunk's choices and usage (ids and timestamps differ per request)."""
    return [([(c.delta.content, c.finish_reason) for c in ch.choices], ch.usage and ch.usage.completion_tokens)
            for ch in chunks]


def ledger_rows(path, users, count: int) -> list[tuple]:
    deadline = time.monotonic() + 10
    while users.writer.written < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return sqlite3.connect(path).execute(
        "SELECT served, prompt_tokens, completion_tokens, cost_usd FROM grace_ledger ORDER BY ts").fetchall()


@pytest.mark.engine
def test_a_streamed_answer_is_recorded_with_its_real_tokens_and_the_client_sees_what_it_asked_for(llama_server,
                                                                                                  tmp_path):
    server = llama_server(alias="tiny")
    store = key_store(tmp_path)
    key, _ = store.create("ada")
    ledger = tmp_path / "ledger.sqlite"
    with OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as direct:
        plain, with_usage = stream(direct, "tiny"), stream(direct, "tiny", stream_options={"include_usage": True})
    with users_router(table(), tmp_path / "registry.json", [record("tiny-1", server.base_url, "tiny")], store,
                      ledger=str(ledger)) as (url, users), OpenAI(base_url=url, api_key=key, max_retries=0) as client:
        routed_plain = stream(client, "default")
        routed_usage = stream(client, "default", stream_options={"include_usage": True})
        rows = ledger_rows(ledger, users, 2)
    # without stream_options the client gets exactly the engine's chunks: no extra usage-only chunk
    assert as_seen(routed_plain) == as_seen(plain) and all(ch.usage is None for ch in routed_plain)
    # with it, the engine's usage chunk arrives last, as from the engine itself
    assert as_seen(routed_usage) == as_seen(with_usage)
    assert routed_usage[-1].choices == [] and routed_usage[-1].usage.completion_tokens == 3
    prompt_tokens = with_usage[-1].usage.prompt_tokens
    assert prompt_tokens > 0
    assert rows == [("local", prompt_tokens, 3, 0.0), ("local", prompt_tokens, 3, 0.0)]


def test_a_cloud_stream_is_charged_from_its_real_usage_not_its_estimate(tmp_path):
    asked: list[object] = []

    async def cloud_stream(request: web.Request, n: int) -> web.StreamResponse:
        body = await request.json()
        asked.append(body.get("stream_options"))
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        delta = {"object": "chat.completion.chunk", "model": "cloud-model", "id": "c", "created": 1,
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
        await out.write(b"data: " + json.dumps(delta).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):  # what OpenAI does
            await out.write(b"data: " + json.dumps({**delta, "choices": [], "usage": CLOUD_USAGE}).encode() + b"\n\n")
        await out.write(b"data: [DONE]\n\n")
        return out

    store = key_store(tmp_path)
    key, _ = store.create("ada", budget_usd_month=100.0)
    ledger = tmp_path / "ledger.sqlite"
    with standin_upstream(cloud_stream) as cloud:
        routes = table(cloud.url)
        with users_router(routes, tmp_path / "registry.json", [], store, ledger=str(ledger),
                          environ={"STANDIN_KEY": "k"}) as (url, users), \
                OpenAI(base_url=url, api_key=key, max_retries=0) as client:
            chunks = stream(client, "remote")
            rows = ledger_rows(ledger, users, 1)
    provider = routes.provider("standin")
    real = cost_usd(provider, CLOUD_USAGE["prompt_tokens"], CLOUD_USAGE["completion_tokens"])
    assert asked == [{"include_usage": True}]
    assert [c.choices[0].delta.content for c in chunks] == ["hi"]  # the client did not ask for usage
    assert rows == [("cloud", 40, 7, pytest.approx(real))]
    reserved = estimate_usd(provider, {"max_tokens": 3}, policy.prompt_size({"messages": QUESTION}).low)
    assert real != pytest.approx(reserved)  # what a stream was charged before
