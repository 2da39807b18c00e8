"""One upstream call: POST the body to an endpoint or cloud provider and relay its answer.

Two sides, never confused: reading the *upstream* can fail (`UpstreamFailure`, raised only before a byte reached
the client, so the caller may try elsewhere; or `Relayed.broke_mid_stream` after), and writing to the *client* can
fail because the client hung up (`Relayed.client_gone`: nobody's fault, nothing is retried). The upstream side
raises only wire.py's `WireError` (and the request's own deadline), the client side only `ConnectionError`, so the
side is told by the exception. When the server runs with handler cancellation (serve.py) a hang-up usually arrives
as `CancelledError` instead; either way the upstream connection is closed at once, which makes vLLM and llama.cpp
abort the generation.

A stream that breaks after its first byte ends with an SSE error event (LiteLLM #40404: no fallback once
streaming started; production-stack #749: hanging on a dead backend).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

from aiohttp import web

from grace_hpc.router.failures import FailureKind, UpstreamFailure, classify_status
from grace_hpc.router.stream_usage import UsageTap
from grace_hpc.router.wire import Answer, DeadlinePassed, Timeouts, Wire, WireError

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


def _describe(exc: WireError) -> str:
    # wire.py's messages name host:port and the OS error, never request headers, so no key can leak through them
    return str(exc)[:300] or type(exc).__name__


async def relay(
    request: web.Request,
    wire: Wire,
    target: Target,
    payload: bytes,
    stream: bool,
    timeouts: Timeouts,
    deadline: float,
    headers: Mapping[str, str],
    progress: StreamProgress,
) -> Relayed:
    """Send `payload`; return the client's response, already written, or raise UpstreamFailure with nothing
    written. `deadline` (event-loop time) bounds everything up to the first byte for the client."""
    try:
        resp = await wire.request("POST", target.url, payload, _headers(target, headers), timeouts, deadline)
        try:
            kind = classify_status(resp.status)
            if kind is not None:  # the upstream's text stays here: it may quote a key or a traceback
                raise UpstreamFailure(f"{target.served_by}: HTTP {resp.status}", kind, resp.status)
            content_type = resp.headers.get("content-type", "")
            if stream and resp.status == 200 and content_type.startswith("text/event-stream"):
                first = await resp.readany()
                if not first:
                    raise UpstreamFailure(f"{target.served_by}: stream closed before its first byte",
                                          FailureKind.UNREACHABLE)
                resp.drop_deadline()
            else:
                body = await resp.read()
        except BaseException:
            resp.close()
            raise
    except DeadlinePassed as exc:
        raise UpstreamFailure(f"{target.served_by}: the request's deadline passed", FailureKind.DEADLINE) from exc
    except WireError as exc:
        kind = FailureKind.TIMEOUT if isinstance(exc, TimeoutError) else FailureKind.UNREACHABLE
        raise UpstreamFailure(f"{target.served_by}: {_describe(exc)}", kind) from exc
    if stream and resp.status == 200 and content_type.startswith("text/event-stream"):
        return await _relay_stream(request, resp, first, target, headers, progress)
    if progress.begun is not None:  # the client's stream has started: the answer (an error) becomes its last event
        relayed = Relayed(progress.begun, resp.status)
        relayed.client_gone = not await end_stream(progress.begun, body)
        return relayed
    out = web.Response(body=body, status=resp.status,
                       headers={**headers, "Content-Type": content_type or "application/json", **target.provenance()})
    relayed = Relayed(out, resp.status)
    # written now, like a stream: the router's own accounting (proxy.py) comes after, and no client waits for it
    relayed.client_gone = not await _to_client(_send(request, out))
    if resp.status == 200 and content_type.startswith("application/json"):
        relayed.usage = _usage(body)
    return relayed


async def _send(request: web.Request, out: web.Response) -> None:
    await out.prepare(request)
    await out.write_eof()


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
    request: web.Request, resp: Answer, first: bytes, target: Target, headers: Mapping[str, str],
    progress: StreamProgress,
) -> Relayed:
    out = progress.begun
    if out is None:
        out = web.StreamResponse(status=200, headers=headers)
        out.headers["Content-Type"] = resp.headers.get("content-type", "text/event-stream")
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
                chunk = await resp.readany()
            except WireError as exc:
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
