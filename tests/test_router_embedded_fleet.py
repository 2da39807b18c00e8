"""The issue's acceptance run, on the embedded fleet as a user launches it (configs/deployments/local.yaml: the real
SmolLM2-135M on llama.cpp, through submitit's local executor) behind the router with routing/local.yaml:

100 streamed chat completions with the official `openai` client (back to back, then 16 at a time), interleaved
with 20 raw HTTP clients that hang up at random points, then 16 streams from its async client at once, 4 of them
closed by the client after their first chunk, give zero client-visible errors and zero ejections, and /metrics
counts exactly the 24 hang-ups as client disconnects.
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

from grace_hpc.config.loader import load_yaml_model
from grace_hpc.config.routing import Routing
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from tests.support.cli import grace
from tests.support.router_env import metric, raw_stream_request, read_until

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "Name three colours."}]
#: the embedded server runs one sequence at a time (-np 1) on a shared 2-core machine: 16 queued streams can wait
TIMEOUT_S = 300


@pytest.fixture
def embedded_fleet(embedded_default):
    """The local deployment launched from a copy of this repository's configs; stopped afterwards."""
    launched = grace(embedded_default, "launch", "--deployment", "local", "--wait", "--timeout", "300", timeout=400)
    try:
        assert launched.returncode == 0, launched.stdout + launched.stderr
        yield embedded_default / "logs" / "registry" / "registry.json"
    finally:
        grace(embedded_default, "stop", "--deployment", "local", timeout=120)


def hang_up(url: str, rng: random.Random) -> None:
    """A client that sends a streamed request and closes its socket after reading 1-6 events. It asks for far more
    tokens than it reads: with 16, a fast engine had written the whole answer into the socket before the client
    closed it, and a client that has its whole answer has not hung up."""
    body = {"model": "default", "messages": QUESTION, "stream": True, "max_tokens": 512, "ignore_eos": True}
    with raw_stream_request(url, body) as sock:
        read_until(sock, b"data: ", rng.randint(1, 6))


def test_100_official_client_streams_with_20_hang_ups_between_them_lose_nothing_and_eject_nothing(embedded_fleet):
    routing = load_yaml_model(ROOT / "routing" / "local.yaml", Routing)
    with serve_in_thread(create_app(routing, Registry(embedded_fleet))) as base:
        url = f"{base}/v1"
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=TIMEOUT_S) as client:

            def task(i: int) -> str:
                if i % 6 == 5:  # every sixth client hangs up instead: 20 of 120
                    hang_up(url, random.Random(i))
                    return "hung up"
                chunks = client.chat.completions.create(
                    model="default", messages=QUESTION, max_tokens=4 + i % 12, stream=True)
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

            back_to_back = [task(i) for i in range(60)]
            with ThreadPoolExecutor(16) as pool:
                concurrent = list(pool.map(task, range(60, 120)))  # 16 at a time
            async_answers = asyncio.run(async_streams(url))
        answers = [t for t in back_to_back + concurrent if t != "hung up"]
        assert len(answers) == 100 and all(answers)  # any client-visible error would have raised above
        assert len(async_answers) == 16 and all(async_answers)
        assert metric(url, "grace_router_ejections_total") == 0
        assert metric(url, "grace_router_errors_total") == 0
        endpoints = requests.get(f"{base}/status", timeout=10).json()["endpoints"]
        # the embedded fleet's chat server and its embeddings server: both healthy, neither ever ejected
        assert sorted((e["model"], e["healthy"], e["ejections"]) for e in endpoints) == [
            ("smollm2-135m-embed", True, 0), ("smollm2-135m-instruct", True, 0)]
        deadline = time.monotonic() + 10  # a hang-up is counted when its handler notices, a moment later
        while metric(url, "grace_router_client_disconnects_total") < 24 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(url, "grace_router_client_disconnects_total") == 24  # 20 raw, 4 async


async def async_streams(url: str) -> list[str]:
    """16 streams from the async client at once; every fourth closes its stream after the first chunk."""
    async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=TIMEOUT_S) as client:

        async def one(i: int) -> str:
            hangs_up = i % 4 == 3
            stream = await client.chat.completions.create(
                model="default", messages=QUESTION, stream=True,
                **({"max_tokens": 512, "extra_body": {"ignore_eos": True}} if hangs_up else {"max_tokens": 8}))
            text = ""
            async for chunk in stream:
                text += "".join(c.delta.content or "" for c in chunk.choices)
                if hangs_up and text:
                    await stream.close()
                    return "closed: " + text
            return text

        return list(await asyncio.gather(*(one(i) for i in range(16))))
