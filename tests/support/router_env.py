"""Helpers for the router tests: registry records for real servers, key files, a router, and real HTTP servers
standing in for engines and cloud providers (a canned answer, a scripted status, a slow SSE stream)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from aiohttp import web

from grace_hpc.config.routing import Routing
from grace_hpc.registry.records import EndpointRecord, EndpointState, PlanSummary
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread


def key_file(folder: Path, name: str, key: str) -> Path:
    path = folder / f"{name}.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def record(endpoint_id: str, base_url: str, model: str, *, served: str | None = None, key: Path | None = None,
           state: EndpointState = EndpointState.READY, max_num_seqs: int = 2,
           max_model_len: int | None = 1024, quantization: str | None = None,
           heartbeat_age_s: float = 0.0, external: bool = False) -> EndpointRecord:
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    now = time.time()
    return EndpointRecord(
        id=endpoint_id, model=model, served_model_name=served or model,
        engine="external" if external else "llama.cpp", host="127.0.0.1", port=port, base_url=base_url,
        started_at=now - heartbeat_age_s, heartbeat_at=now - heartbeat_age_s, state=state,
        plan=PlanSummary(max_num_seqs=max_num_seqs, max_model_len=max_model_len, quantization=quantization),
        api_key_file=str(key) if key else None, external=external,
    )


def routing(data: dict) -> Routing:
    return Routing.model_validate(data)


@contextmanager
def router(routing_table: Routing, registry_path: Path, records: list[EndpointRecord], *,
           environ: dict[str, str] | None = None, client_keys: frozenset[str] = frozenset(),
           poll_interval_s: float = 0.1, stale_after_s: float = 90.0, access_log: Path | None = None) -> Iterator[str]:
    """A real router on 127.0.0.1 over a real registry (written through `Registry`); yields its base URL."""
    registry = Registry(registry_path)
    for r in records:
        registry.register(r)
    app = create_app(routing_table, registry, environ=environ or {}, client_keys=client_keys,
                     poll_interval_s=poll_interval_s, stale_after_s=stale_after_s, access_log=access_log)
    with serve_in_thread(app) as url:
        yield f"{url}/v1"


CANNED = {"id": "cmpl-1", "object": "chat.completion", "created": 1, "model": "canned",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@contextmanager
def canned_upstream(api_key: str | None = None, port: int = 0) -> Iterator[str]:
    """A real HTTP server answering every POST under /v1 with one canned chat completion (401 without its key):
    the fast upstream of fuzzing and of tests about the router's own behaviour, where an engine adds only time."""
    body = json.dumps(CANNED).encode()

    async def answer(request: web.Request) -> web.Response:
        if api_key and request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        await request.read()  # drain the body: answering first can reset a client still sending a large one
        return web.Response(body=body, content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "canned", "object": "model"}]})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/{tail:.*}", answer)
    app.router.add_get("/v1/models", models)
    with serve_in_thread(app, port=port) as url:
        yield f"{url}/v1"


Answer = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class Standin:
    """A real HTTP server standing in for an engine or a cloud provider: `answer(request, n)` answers its n-th
    POST (from 0); `hits` counts them; `closed` is set when a stream it was writing lost its client (the router)."""

    url: str
    hits: list[str] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)


@contextmanager
def standin_upstream(answer: Answer) -> Iterator[Standin]:
    box: list[Standin] = []

    async def post(request: web.Request) -> web.StreamResponse:
        standin = box[0]
        n = len(standin.hits)
        standin.hits.append(request.path)
        await request.read()
        try:
            return await answer(request, n)
        except (asyncio.CancelledError, ConnectionError):
            standin.closed.set()  # the router dropped the connection: the engine would stop generating here
            raise

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "standin", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", post)
    app.router.add_get("/v1/models", models)
    with serve_in_thread(app) as url:
        box.append(Standin(f"{url}/v1"))
        yield box[0]


def json_answer(status: int, body: dict) -> Answer:
    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response(body, status=status)
    return answer


async def canned_answer(request: web.Request, n: int) -> web.StreamResponse:
    return web.json_response(CANNED)


def sse_answer(events: int, interval_s: float = 0.0, headers_after_s: float = 0.0) -> Answer:
    """A chat completion stream of `events` one-word chunks, `interval_s` apart, then `[DONE]`; the response headers
    only after `headers_after_s` (a slow prefill)."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(headers_after_s)
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(events):
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "standin",
                     "choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}
            await out.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await asyncio.sleep(interval_s)
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    return answer


def metric(base_url: str, name: str) -> float:
    """The sum of a Prometheus counter over all its label sets, read from the router's /metrics."""
    text = requests.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def raw_stream_request(url: str, body: dict, headers: dict[str, str] | None = None) -> socket.socket:
    """POST `body` to the router's /v1/chat/completions over a plain socket (so a test can hang up anywhere)."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    data = json.dumps(body).encode()
    lines = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "router", "Content-Type": "application/json",
                                                  "Content-Length": str(len(data)), **(headers or {})}.items())
    sock = socket.create_connection((host, int(port)), timeout=300)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\n{lines}\r\n".encode() + data)
    return sock


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    """Everything received until `marker` was seen `count` times; the answer must be a 200."""
    seen = b""
    while seen.count(marker) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {seen!r}"
        seen += chunk
        assert seen.startswith(b"HTTP/1.1 200"[:len(seen)]), seen
    return seen
