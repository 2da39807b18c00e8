"""Helpers for the keys, ledger and budget tests: a real router with per-user keys and a ledger, a priced cloud
stand-in (a real aiohttp server on 127.0.0.1 that reports token usage), and ledger targets (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from grace_hpc.config.routing import Routing
from grace_hpc.registry.records import EndpointRecord
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from grace_hpc.router.users import Users, open_users
from grace_hpc.users.keys import KeyStore


def key_store(folder: Path) -> KeyStore:
    return KeyStore(folder / "keys" / "keys.json", time.time)


@contextmanager
def users_router(routing: Routing, registry_path: Path, records: list[EndpointRecord], store: KeyStore, *,
                 ledger: str | None = None, environ: dict[str, str] | None = None,
                 client_keys: frozenset[str] = frozenset(), metrics_need_key: bool = False,
                 poll_interval_s: float = 0.1) -> Iterator[tuple[str, Users]]:
    """A real router on 127.0.0.1 with the key store and ledger; yields (its /v1 URL, its Users)."""
    registry = Registry(registry_path)
    for r in records:
        registry.register(r)
    users = open_users(client_keys, store, ledger, metrics_need_key=metrics_need_key, poll_interval_s=poll_interval_s)
    app = create_app(routing, registry, environ=environ or {}, client_keys=client_keys,
                     poll_interval_s=poll_interval_s, users=users)
    with serve_in_thread(app) as url:
        yield f"{url}/v1", users


@dataclass
class CloudStandin:
    url: str
    calls: list[float] = field(default_factory=list)  # arrival times (monotonic)


@contextmanager
def priced_cloud(api_key: str, *, delay_s: float = 0.0, prompt_tokens: int = 1000,
                 completion_tokens: int = 1000) -> Iterator[CloudStandin]:
    """A cloud provider stand-in: answers chat completions after `delay_s` with the given `usage`."""
    standin = CloudStandin("")
    body = json.dumps({
        "id": "cloud-1", "object": "chat.completion", "created": 1, "model": "cloud-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the cloud"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}}).encode()

    async def answer(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        await request.read()
        standin.calls.append(time.monotonic())
        await asyncio.sleep(delay_s)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", answer)
    with serve_in_thread(app) as url:
        standin.url = f"{url}/v1"
        yield standin
