"""Async calls to an OpenAI-compatible base URL (the router, or one engine) with bounded concurrency and retries.

`concurrency` bounds the HTTP requests in flight across the whole worker (one semaphore), so `--concurrency K`
means exactly K requests at the upstream, whatever mix of generations and option scorings is running.
Transient failures (connection errors, timeouts, HTTP 408/409/425/429/5xx) are retried with exponential backoff;
other HTTP errors are the request's fault and fail at once.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from grace_hpc.errors import UpstreamError

__all__ = ["Reply", "Upstream", "RETRYABLE_STATUS", "gather_all"]

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Reply:
    body: dict[str, Any]
    headers: dict[str, str]
    attempts: int


@dataclass
class Upstream:
    """One aiohttp session to `base_url` (".../v1"); use as `async with Upstream(...) as up:`."""

    base_url: str
    api_key: str | None = None
    concurrency: int = 8
    retries: int = 4  # attempts after the first
    timeout_s: float = 300.0
    backoff_s: float = 0.5
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _slots: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

    async def __aenter__(self) -> Upstream:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.concurrency),
        )
        self._slots = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, path: str, payload: dict[str, Any]) -> Reply:
        """POST JSON to base_url + path; the parsed JSON body, retrying transient failures."""
        return await self._call("POST", path, payload)

    async def get(self, path: str, *, root: bool = False) -> Reply:
        """GET base_url + path; `root`: relative to the server's root instead (vLLM's /version is not under /v1)."""
        return await self._call("GET", path, None, root=root)

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None, *, root: bool = False) -> Reply:
        base = self.base_url.rstrip("/")
        url = (base.removesuffix("/v1") if root else base) + path
        what = f"{method} {url}" + (f" (model {payload.get('model')!r})" if payload else "")
        last = ""
        for attempt in range(1, self.retries + 2):
            reply = await self.send(method, url, payload, attempt=attempt)
            if isinstance(reply, Reply):
                return reply
            last = reply
            await self.backoff(attempt)
        raise UpstreamError(
            f"{what} failed {self.retries + 1} times; last: {last}; "
            "is the router (or engine) up? check `grace-hpc status`"
        )

    async def send(self, method: str, url: str, payload: dict[str, Any] | None, *, attempt: int = 1,
                   headers: dict[str, str] | None = None) -> Reply | str:
        """One request: the Reply on HTTP 200, else the transient failure's description (to retry); raises
        UpstreamError at once for an answer that retrying cannot fix (4xx other than RETRYABLE_STATUS)."""
        assert self._slots is not None, "use Upstream as an async context manager"
        async with self._slots:
            return await self.send_in_slot(method, url, payload, attempt=attempt, headers=headers)

    async def send_in_slot(self, method: str, url: str, payload: dict[str, Any] | None, *, attempt: int = 1,
                           headers: dict[str, str] | None = None) -> Reply | str:
        """`send`, for a caller that already holds one of the `concurrency` slots."""
        assert self._session is not None, "use Upstream as an async context manager"
        what = f"{method} {url}" + (f" (model {payload.get('model')!r})" if payload else "")
        try:
            async with self._session.request(method, url, json=payload, headers=headers) as resp:
                text = await resp.text()
                if resp.status == 200:
                    return Reply(_json(text, what), {k.lower(): v for k, v in resp.headers.items()}, attempt)
                last = f"HTTP {resp.status}: {text[:300]}"
                if resp.status not in RETRYABLE_STATUS:
                    raise UpstreamError(f"{what} failed: {last}")
                return last
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"{type(exc).__name__}: {exc}"

    async def backoff(self, attempt: int) -> None:
        if attempt <= self.retries:
            # jittered exponential backoff, outside the semaphore so waiting requests do not hold a slot
            await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))


async def gather_all(*calls: Awaitable[T]) -> list[T]:
    """Run `calls` concurrently; the first failure cancels the others and waits until they are gone (no request of
    theirs is left running on the upstream), then is raised. (asyncio.gather alone leaves them running.)"""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _json(text: str, what: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UpstreamError(f"{what}: answer is not JSON: {text[:200]!r}") from exc
    if not isinstance(body, dict):
        raise UpstreamError(f"{what}: answer is not a JSON object: {text[:200]!r}")
    return body
