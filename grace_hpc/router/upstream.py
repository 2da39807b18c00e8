"""One upstream call: POST the body to an endpoint or cloud provider and relay its answer.

Two sides, never confused: reading the *upstream* can fail (`UpstreamFailure`, raised only before a byte reached
the client, so the caller may try elsewhere; or `Relayed.broke_mid_stream` after), and writing to the *client* can
fail because the client hung up (`Relayed.client_gone`: nobody's fault, nothing is retried). aiohttp's
`ClientConnectionResetError` ("Cannot write to closing transport") is both a `ClientError` and a
`ConnectionResetError`, so the side is told by *which call* raised, not by the exception's type. When the server
runs with handler cancellation (serve.py) a hang-up usually arrives as `CancelledError` instead; either way the
upstream response is closed at once, which makes vLLM and llama.cpp abort the generation.

A stream that breaks after its first byte ends with an SSE error event (LiteLLM #40404: no fallback once
streaming started; production-stack #749: hanging on a dead backend).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from grace_hpc.router.failures import FailureKind, UpstreamFailure, classify_status
from grace_hpc.router.stream_usage import UsageTap

# Only Content-Type (and our X-Grace-* provenance headers) reach the client: hop-by-hop and length headers are the
# server's business (RFC 9110 section 7.6.1), and an upstream's server banner or cookies are nobody's.
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Target:
    url: str  # full URL, e.g. http://node:8000/v1/chat/completions
    api_key: str | None
    served_by: str  # endpoint id or "cloud:<provider>"
    engine: str  # the record's engine ("vllm", "llama.cpp", "external"), or "cloud"
    quantization: str | None  # the endpoint's plan quantization, "none" when unquantized; None for the cloud

    def provenance(self) -> dict[str, str]:
        """Who answered, for the client and for batch workers' result rows (grace_hpc/work/runner.py reads them)."""
        headers = {"X-Grace-Served-By": self.served_by, "X-Grace-Engine": self.engine}
        if self.quantization is not None:
            headers["X-Grace-Quantization"] = self.quantization
        return headers


@dataclass(slots=True)
class StreamProgress:
    """Shared with the caller, so it is known even when the handler is cancelled mid-write: whether the client
    already has the whole answer (`data: [DONE]`), after which its hang-up is an ordinary end, not a disconnect.
    `begun`: the client's stream, already started while the request waited for a replica (coldstream.py);
    `tap`: reads the stream's `usage` on the way (stream_usage.py)."""

    answered: bool = False
    begun: web.StreamResponse | None = None
    tap: UsageTap | None = None


@dataclass(slots=True)
class Relayed:
    response: web.StreamResponse
    status: int
    usage: object = None
    broke_mid_stream: str | None = None  # error text when the upstream failed after the first byte
    client_gone: bool = False  # the client hung up while the answer was being written


def sse_error(message: str) -> bytes:
    """The OpenAI-style error object as an SSE event, then the terminator clients wait for."""
    body = {"error": {"message": message, "type": "upstream_error", "code": "stream_interrupted"}}
    return b"data: " + json.dumps(body).encode() + b"\n\ndata: [DONE]\n\n"


def _describe(exc: BaseException) -> str:
    # aiohttp messages name host:port and the OS error, never request headers, so no key can leak through them
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timed out (connect_timeout_s)"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out: no byte within read_timeout_s"
    return f"{type(exc).__name__}: {exc}"[:300]


async def relay(
    request: web.Request,
    session: aiohttp.ClientSession,
    target: Target,
    payload: bytes,
    stream: bool,
    timeout: aiohttp.ClientTimeout,
    deadline: float,
    headers: Mapping[str, str],
    progress: StreamProgress,
) -> Relayed:
    """Send `payload`; return the client's response (already written when streamed), or raise UpstreamFailure
    with nothing written. `deadline` (event-loop time) bounds everything up to the first byte for the client."""
    guard = asyncio.timeout_at(deadline)
    try:
        async with guard:
            resp = await _post(session, target, payload, _headers(target, headers), timeout)
            try:
                kind = classify_status(resp.status)
                if kind is not None:  # the upstream's text stays here: it may quote a key or a traceback
                    raise UpstreamFailure(f"{target.served_by}: HTTP {resp.status}", kind, resp.status)
                content_type = resp.headers.get("Content-Type", "")
                if stream and resp.status == 200 and content_type.startswith("text/event-stream"):
                    first = await resp.content.readany()
                    if not first:
                        raise UpstreamFailure(f"{target.served_by}: stream closed before its first byte",
                                              FailureKind.UNREACHABLE)
                else:
                    body = await resp.read()
            except BaseException:
                resp.close()
                raise
    except UpstreamFailure:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if guard.expired():
            raise UpstreamFailure(f"{target.served_by}: the request's deadline passed", FailureKind.DEADLINE) from exc
        kind = FailureKind.TIMEOUT if isinstance(exc, asyncio.TimeoutError) else FailureKind.UNREACHABLE
        raise UpstreamFailure(f"{target.served_by}: {_describe(exc)}", kind) from exc
    if stream and resp.status == 200 and content_type.startswith("text/event-stream"):
        return await _relay_stream(request, resp, first, target, headers, progress)
    resp.release()
    if progress.begun is not None:  # the client's stream has started: the answer (an error) becomes its last event
        relayed = Relayed(progress.begun, resp.status)
        relayed.client_gone = not await end_stream(progress.begun, body)
        return relayed
    out = web.Response(body=body, status=resp.status,
                       headers={**headers, "Content-Type": content_type or "application/json", **target.provenance()})
    usage = _usage(body) if resp.status == 200 and content_type.startswith("application/json") else None
    return Relayed(out, resp.status, usage)


#: pooled connections the engine closed that one request may meet (several go idle together under bursty load)
STALE_RETRIES = 3


async def _post(session: aiohttp.ClientSession, target: Target, payload: bytes, headers: dict[str, str],
                timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
    """POST, again (up to STALE_RETRIES more times) when the server closed the connection before any answer: a
    pooled keep-alive connection the engine closed as it was reused never delivered the request (RFC 9112 section
    9.3.1). aiohttp retries that only for idempotent methods; generation has no side effects, so a POST may be sent
    again. The same race shows as "Can not write request body" (a ClientOSError) when the close lands while the
    request is written; under bursty load several pooled connections go stale together, so one retry is not
    enough. A server that really went away refuses the new connection (ClientConnectorError, not retried here),
    which counts against it as usual."""
    for _ in range(STALE_RETRIES):
        try:
            return await session.post(target.url, data=payload, headers=headers, timeout=timeout)
        except aiohttp.ClientConnectorError:
            raise  # no connection was made: nothing stale to replace
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            continue  # that pooled connection is discarded; the next try takes another, or a new one
    return await session.post(target.url, data=payload, headers=headers, timeout=timeout)


def _headers(target: Target, extra: Mapping[str, str]) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **extra}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    return headers


def _usage(body: bytes) -> object:
    """The `usage` object without parsing the whole answer (logprobs can make it large); engines put it last."""
    start = body.rfind(b'"usage"')
    colon = body.find(b":", start)
    if start < 0 or colon < 0:
        return None
    try:
        value, _ = _DECODER.raw_decode(body[colon + 1:].decode("utf-8").lstrip())
    except ValueError:
        return None
    return value


async def _relay_stream(
    request: web.Request, resp: aiohttp.ClientResponse, first: bytes, target: Target, headers: Mapping[str, str],
    progress: StreamProgress,
) -> Relayed:
    out = progress.begun
    if out is None:
        out = web.StreamResponse(status=200, headers=headers)
        out.headers["Content-Type"] = resp.headers.get("Content-Type", "text/event-stream")
        out.headers["Cache-Control"] = "no-cache"
        out.headers.update(target.provenance())
    relayed = Relayed(out, 200)
    tap = progress.tap
    try:
        if not out.prepared and not await _to_client(out.prepare(request)):
            relayed.client_gone = True
            return relayed
        chunk = first
        while chunk:
            data = tap.feed(chunk) if tap is not None else chunk
            if data and not await _to_client(out.write(data)):  # waits for the client to drain: backpressure
                relayed.client_gone = True
                return relayed
            progress.answered = data.rstrip().endswith(b"data: [DONE]")
            try:
                chunk = await resp.content.readany()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                relayed.broke_mid_stream = _describe(exc)
                message = f"upstream {target.served_by} failed mid-stream ({relayed.broke_mid_stream})"
                ended = await _to_client(out.write(sse_error(message))) and await _to_client(out.write_eof())
                relayed.client_gone = not ended
                return relayed
        progress.answered = True
        if tap is not None:
            relayed.usage = tap.usage
            await _to_client(out.write(tap.end()))
        await _to_client(out.write_eof())  # a client that closes after the last event has its whole answer
        return relayed
    finally:
        # never pooled again: cut short, vLLM and llama.cpp stop generating for a request whose socket closed;
        # complete, llama.cpp closes it after the last chunk, and a pooled connection that closes as it is reused
        # fails the next request (a fresh connection per stream costs nothing beside the generation)
        resp.close()


async def end_stream(out: web.StreamResponse, body: bytes) -> bool:
    """End a started stream with `body` (a JSON answer, usually an OpenAI error object) as its last event, then
    `[DONE]`: the OpenAI client raises an `APIError` with it. False when the client has gone."""
    return (await _to_client(out.write(b"data: " + body.replace(b"\n", b"") + b"\n\ndata: [DONE]\n\n"))
            and await _to_client(out.write_eof()))


async def _to_client(write: Awaitable[object]) -> bool:
    """Await one write to the client; False when the client has gone (aiohttp raises ConnectionResetError, or its
    ClientConnectionResetError subclass "Cannot write to closing transport")."""
    try:
        await write
    except ConnectionError:
        return False
    return True
