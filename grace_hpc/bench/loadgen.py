"""The benchmark's only HTTP: streamed requests under closed-loop or open-loop load, one RequestResult each.

Closed loop: `concurrency` clients, each sending its next request as soon as its last one ends (what a batch
worker does). Open loop: requests start on a fixed schedule, `rate` per second, whatever the server does, and
latency counts from the scheduled time, so a server that falls behind shows it as growing TTFT instead of quietly
receiving fewer requests (the coordinated-omission trap of closed-loop benchmarks).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from grace_hpc.bench.stats import RequestResult
from grace_hpc.bench.stream import DONE, parse_line
from grace_hpc.bench.targets import Target
from grace_hpc.bench.workload import Api

Clock = Callable[[], float]
Send = Callable[[float], Awaitable[RequestResult]]  # scheduled time (s from the level's start) -> result


@dataclass(frozen=True)
class Budget:
    """How long one load level lasts: a duration (no request starts after it; started ones finish) and/or a
    number of requests, whichever comes first."""

    duration_s: float | None = None
    requests: int | None = None

    def __post_init__(self) -> None:
        if self.duration_s is None and self.requests is None:
            raise ValueError("a Budget needs duration_s or requests")


def session(request_timeout_s: float) -> aiohttp.ClientSession:
    """No connection limit (open loop must not queue in the client), a fresh connection per request, and explicit
    timeouts: connecting, and the longest silence between two chunks of a stream.

    Fresh connections because llama.cpp's server closes a connection after a streamed answer: a pooled one would
    fail the next request half the time ("Server disconnected"), an error of the client, not of the server. On
    loopback or a cluster network a TCP handshake adds well under a millisecond to TTFT."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=request_timeout_s),
    )


def sender(http: aiohttp.ClientSession, target: Target, api: Api, bodies: Iterator[dict[str, Any]],
           start: float, clock: Clock = time.perf_counter) -> Send:
    """A function sending the next body of `bodies` to `target`, timed from `start` (a `clock` reading). Bodies
    that do not ask for a stream are timed end to end only (no TTFT, no TPOT)."""
    url = target.base_url + api.path
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}

    async def send(scheduled_s: float) -> RequestResult:
        body = next(bodies)
        sent = clock() - start
        try:
            async with http.post(url, json=body, headers=headers) as resp:
                if resp.status != 200:
                    text = (await resp.text(errors="replace"))[:200]
                    return RequestResult(scheduled_s, sent, clock() - start, error=f"HTTP {resp.status}: {text}")
                if body.get("stream"):
                    return await _read_stream(resp, scheduled_s, sent, start, clock)
                answer = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            # aiohttp's messages name host:port and the OS error, never request headers: no key in them
            return RequestResult(scheduled_s, sent, clock() - start, error=f"{type(exc).__name__}: {exc}")
        usage = (answer.get("usage") or {}) if isinstance(answer, dict) else {}
        tokens = usage.get("completion_tokens") or 0
        return RequestResult(scheduled_s, sent, clock() - start, output_tokens=tokens,
                             prompt_tokens=usage.get("prompt_tokens"),
                             error=None if tokens else "the answer has no usage.completion_tokens")

    return send


async def _read_stream(resp: aiohttp.ClientResponse, scheduled_s: float, sent: float, start: float,
                       clock: Clock) -> RequestResult:
    times: list[float] = []
    completion_tokens = prompt_tokens = None
    error: str | None = None
    finished = False
    async for line in resp.content:
        now = clock() - start
        event = parse_line(line)
        if event is DONE:
            finished = True
            break
        if event is None:
            continue
        if event.error is not None:
            error = event.error
        if event.text:
            times.append(now)
        completion_tokens = event.completion_tokens or completion_tokens
        prompt_tokens = event.prompt_tokens or prompt_tokens
    end = clock() - start
    if error is None and not finished:
        error = "the stream ended without [DONE]"
    if error is None and not times:
        error = "no token was streamed"
    return RequestResult(
        scheduled_s, sent, end, first_token_s=times[0] if times else None, token_times_s=tuple(times),
        output_tokens=completion_tokens or len(times), prompt_tokens=prompt_tokens, error=error,
    )


async def closed_loop(send: Send, concurrency: int, budget: Budget, start: float,
                      clock: Clock = time.perf_counter) -> list[RequestResult]:
    """`concurrency` clients back to back until the budget is spent; each request is scheduled when it is sent.
    `start` is the `clock` reading the sender times from."""
    issued = 0
    results: list[RequestResult] = []

    def more() -> bool:
        return ((budget.requests is None or issued < budget.requests)
                and (budget.duration_s is None or clock() - start < budget.duration_s))

    async def client() -> None:
        nonlocal issued
        while more():
            issued += 1
            results.append(await send(clock() - start))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


def open_loop_count(rate: float, budget: Budget) -> int:
    """Requests an open-loop level sends: the budget's count, or its duration's worth at `rate`, the smaller."""
    counts = [budget.requests] if budget.requests is not None else []
    if budget.duration_s is not None:
        counts.append(max(1, math.floor(rate * budget.duration_s)))
    return min(counts)


async def open_loop(send: Send, rate: float, budget: Budget, start: float,
                    clock: Clock = time.perf_counter) -> list[RequestResult]:
    """Request i is scheduled at i / rate seconds after `start` and sent then (or as soon as the event loop can),
    never waiting for earlier answers."""
    tasks = []
    for i in range(open_loop_count(rate, budget)):
        scheduled = i / rate
        delay = scheduled - (clock() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(scheduled)))
    return list(await asyncio.gather(*tasks))
