"""The router's HTTP/1.1 client: keep-alive connections to the upstreams, on asyncio protocols.

Every call the router makes to an engine or a cloud provider goes through `Wire` (relays in upstream.py, /tokenize
in tokens.py, probes in background.py). It speaks only what the router needs of HTTP/1.1 (RFC 9112): one request at
a time per connection, bodies framed by Content-Length, chunked transfer coding or the connection's close, interim
1xx answers skipped, TLS for `https` URLs. No cookies, no redirects, no decompression, no proxy from the
environment: none of them belongs between a router and its upstreams.

Why not aiohttp's client, which the router used before: it was the largest cost per request. Measured on the same
2-core VM against the nginx upstream of bench/router.py (`python bench/upstream_client.py`: both clients in one
process, interleaved rounds), aiohttp's `ClientSession.post` plus `read` takes 3-5x the CPU of this client per
call. The router's server side stays aiohttp's.

Connections: idle ones are kept per origin and reused most-recent first; one idle longer than `keepalive_s` is
closed instead (engines close theirs after 5 s, see app.py). A connection the server closed before a byte of its
answer came back never delivered the request (RFC 9112 section 9.3.1: a pooled one it closed as it was reused, or
a fresh one it closed at once), so the request is sent again on another, up to `STALE_RETRIES` times; generation
has no side effects, so a POST may be. After that, or once the answer has begun, a close is the server's failure
(`Disconnected`). A server that went away refuses the new connection (`ConnectFailed`), which is never retried.
A call cancelled or abandoned mid-answer closes its connection, which makes vLLM and llama.cpp stop generating.
A host name's addresses are kept for DNS_TTL_S, and forgotten when none of them accepts a connection.

Timeouts: connecting is bounded by `Timeouts.connect_s`; after the request is sent, `Timeouts.read_s` bounds the
silence between bytes (not the whole answer, so long streams are fine). A call may also carry a deadline (the
request's own, across attempts), which bounds everything until `Answer.drop_deadline`. One timer per wait, re-armed
lazily: a deadline costs no timer of its own (asyncio.timeout's came to ~10 us a request under py-spy).
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import cast
from urllib.parse import urlsplit

from grace_hpc import __version__
from grace_hpc.errors import GraceError

#: pooled connections the server closed that one request may meet (several go idle together under bursty load)
STALE_RETRIES = 3
#: an answer's status line and headers above this size are refused (aiohttp's default limit is 8 KiB per line)
MAX_HEAD_BYTES = 64 * 1024
#: a streamed answer's unread bytes above this pause reading from the upstream until the client catches up
PAUSE_AT_BYTES = 1 << 20
#: how long a host name's addresses are reused (aiohttp's default too): every stream opens a connection, and a
#: lookup each would put one DNS query per stream on the site's resolver and eject an engine on a resolver hiccup
DNS_TTL_S = 10.0

#: sent with every call: some cloud front ends refuse requests that name no client
USER_AGENT = f"grace-hpc/{__version__}"

Origin = tuple[str, int, bool]  # host, port, TLS


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float  # to open a connection
    read_s: float  # of silence from the upstream once the request is sent


class WireError(GraceError):
    """An upstream call failed. Messages name the URL's host and port and the OS error, never a header."""


class ConnectFailed(WireError):
    """No connection: refused, unreachable, no such host, TLS refused."""


class ConnectTimeout(ConnectFailed, TimeoutError):
    """No connection within `Timeouts.connect_s`."""


class ReadTimeout(WireError, TimeoutError):
    """No byte within `Timeouts.read_s`."""


class DeadlinePassed(WireError, TimeoutError):
    """The call's deadline passed (the caller's, not the upstream's fault)."""


class Disconnected(WireError):
    """The connection closed (or was reset) before the answer was complete."""


class BadAnswer(WireError):
    """What came back is not HTTP/1.1 the router can read."""


@lru_cache(maxsize=1024)
def _split(url: str) -> tuple[Origin, str, str]:
    """(origin, request target, Host header) of an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WireError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    default = 443 if tls else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (host, port, tls), target, shown if port == default else f"{shown}:{port}"


class _Phase(IntEnum):
    """Where the answer being read is: its head, then its body by its framing, then done (also: idle)."""

    HEAD = 0
    LENGTH = 1  # Content-Length bytes
    CHUNK_SIZE = 2  # chunked coding: a size line, its data, its CRLF, ..., a zero size, trailers
    CHUNK_DATA = 3
    CHUNK_END = 4
    TRAILER = 5
    UNTIL_CLOSE = 6  # no length: the body ends with the connection
    DONE = 7


# module names for the members: the parser compares them per received packet, a global lookup each
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = _Phase


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the answer being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.lost: asyncio.Future[None] = loop.create_future()  # done once the transport is gone
        self.error: WireError | None = None
        self.buf = bytearray()  # received, not yet parsed
        self.body = bytearray()  # parsed body bytes, not yet taken by the reader
        self.phase: _Phase = _DONE
        self.remaining = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.got_bytes = False  # any byte of this answer arrived
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.read_timeout_s = 0.0
        self.deadline = math.inf
        self.last_byte = 0.0
        self.idle_since = 0.0
        self.streaming = False  # read piece by piece (readany): unread bytes past PAUSE_AT_BYTES pause reading
        self.paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not asyncio's subclass

    def data_received(self, data: bytes) -> None:
        if self.phase == _DONE:  # nothing asked: an idle connection the server talks on (a 408) is not reused
            self.close()
            return
        self.last_byte = self.loop.time()
        self.got_bytes = True
        self.buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(BadAnswer(f"{self._where()}: unreadable HTTP answer ({exc})"))
            return
        if self.streaming and not self.paused and len(self.body) > PAUSE_AT_BYTES and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def eof_received(self) -> bool:
        if self.phase == _UNTIL_CLOSE:
            self.phase = _DONE
            self.keep_alive = False
            self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        if self.phase == _UNTIL_CLOSE:
            self.phase = _DONE
            self.keep_alive = False
        elif self.phase != _DONE and self.error is None:
            reason = f": {exc}" if exc else ""
            self.error = Disconnected(f"{self._where()}: server disconnected before the answer was complete{reason}")
        self._cancel_timer()
        self._wake()

    # the request and its answer
    def send(self, data: bytes, read_timeout_s: float, deadline: float = math.inf) -> None:
        assert self.transport is not None
        self.phase, self.status, self.headers, self.got_bytes, self.streaming = _HEAD, 0, {}, False, False
        self.body.clear()
        self.read_timeout_s, self.deadline = read_timeout_s, deadline
        self.last_byte = self.loop.time()
        self.transport.write(data)

    async def wait(self) -> None:
        """Until something changes (bytes, the end, an error); raises the connection's error."""
        if self.error is not None:
            raise self.error
        waiter = self.waiter = self.loop.create_future()
        if self.timer is None:
            self.timer = self.loop.call_at(min(self.last_byte + self.read_timeout_s, self.deadline),
                                           self._check_silence)
        try:
            await waiter
        finally:
            self.waiter = None
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        data = bytes(self.body)
        self.body.clear()
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def _where(self) -> str:
        return f"{self.origin[0]}:{self.origin[1]}"

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, error: WireError) -> None:
        self.error = error
        self.close()
        self._wake()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check_silence(self) -> None:
        self.timer = None
        if self.waiter is None or self.phase == _DONE:
            return
        now, due = self.loop.time(), min(self.last_byte + self.read_timeout_s, self.deadline)
        if now >= self.deadline:
            self._fail(DeadlinePassed(f"{self._where()}: the call's deadline passed"))
        elif now >= due:
            self._fail(ReadTimeout(f"{self._where()}: timed out after {self.read_timeout_s:g} s: "
                                   "no byte within read_timeout_s"))
        else:
            self.timer = self.loop.call_at(due, self._check_silence)

    def _parse(self) -> None:
        buf = self.buf
        while True:
            phase = self.phase
            if phase == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ValueError(f"status line and headers over {MAX_HEAD_BYTES} bytes")
                    return
                self._head(bytes(buf[:end]))
                del buf[:end + 4]
            elif phase == _LENGTH or phase == _CHUNK_DATA:
                if not buf:
                    return
                take = min(self.remaining, len(buf))
                self.body += buf[:take]
                del buf[:take]
                self.remaining -= take
                if not self.remaining:
                    self.phase = _DONE if phase == _LENGTH else _CHUNK_END
            elif phase == _CHUNK_SIZE or phase == _TRAILER or phase == _CHUNK_END:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ValueError("chunk line too long")
                    return
                line = bytes(buf[:end])
                del buf[:end + 2]
                if phase == _CHUNK_END:
                    if line:
                        raise ValueError("chunk data longer than its size")
                    self.phase = _CHUNK_SIZE
                elif phase == _TRAILER:
                    if not line:
                        self.phase = _DONE
                else:
                    self.remaining = int(line.split(b";", 1)[0].strip(), 16)
                    if self.remaining < 0:
                        raise ValueError("negative chunk size")
                    self.phase = _CHUNK_DATA if self.remaining else _TRAILER
            elif phase == _UNTIL_CLOSE:
                self.body += buf
                buf.clear()
                return
            else:  # _DONE: bytes after the answer mean the connection cannot be trusted with another request
                if buf:
                    self.keep_alive = False
                return

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, status, *_ = lines[0].split(b" ", 2)
        if not version.startswith(b"HTTP/1."):
            raise ValueError(f"status line {lines[0][:60]!r}")
        self.status = int(status)
        if 100 <= self.status < 200:  # interim answer (103 Early Hints): the real one follows
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ValueError(f"header line {line[:60]!r}")
            key = name.strip().lower().decode("latin-1")
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        connection = headers.get("connection", "").lower()
        self.keep_alive = version == b"HTTP/1.1" and "close" not in connection
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.phase = _CHUNK_SIZE
        elif self.status in (204, 304):
            self.phase = _DONE
        elif (length := headers.get("content-length")) is not None:
            self.remaining = int(length)
            if self.remaining < 0:
                raise ValueError("negative Content-Length")
            self.phase = _LENGTH if self.remaining else _DONE
        else:
            self.phase = _UNTIL_CLOSE
            self.keep_alive = False


class Answer:
    """An upstream's answer: status and headers (names lower-cased) at once, the body by `read` or `readany`.
    Give the connection back with `release` (after the whole body) or drop it with `close`; both are idempotent."""

    __slots__ = ("status", "headers", "_conn", "_wire")

    def __init__(self, wire: Wire, conn: _Connection) -> None:
        self._wire: Wire | None = wire
        self._conn = conn
        self.status = conn.status
        self.headers: Mapping[str, str] = conn.headers

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        conn = self._conn
        try:
            while conn.phase != _DONE:
                await conn.wait()
        except BaseException:
            self.close()
            raise
        body = conn.take()
        self.release()
        return body

    def drop_deadline(self) -> None:
        """From now on only the read timeout bounds this answer (a stream, once the client has its first byte)."""
        self._conn.deadline = math.inf

    async def readany(self) -> bytes:
        """The body's next bytes as they arrive (chunk framing removed); b"" at its end."""
        conn = self._conn
        conn.streaming = True
        while not conn.body and conn.phase != _DONE:
            await conn.wait()
        return conn.take()

    def release(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire._give_back(self._conn)

    def close(self) -> None:
        self._wire = None
        self._conn.close()


class Wire:
    """The router's keep-alive pool of upstream connections (one per application, created on its event loop)."""

    def __init__(self, keepalive_s: float) -> None:
        self.keepalive_s = keepalive_s
        self._idle: dict[Origin, deque[_Connection]] = {}  # oldest idle first
        self._tls: ssl.SSLContext | None = None
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[int, str]]]] = {}  # -> (expiry, (family, ip))

    async def request(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str],
                      timeouts: Timeouts, deadline: float = math.inf) -> Answer:
        """Send one request; return once the answer's status and headers are in. Raises WireError. `deadline`
        (event-loop time) bounds the call until `Answer.drop_deadline` (DeadlinePassed)."""
        origin, target, host = _split(url)
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise WireError(f"header {name} holds a line break; not sent")
            lines.append(f"{name}: {value}\r\n")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        try:
            data = "".join(lines).encode("latin-1") + (body or b"")
        except UnicodeEncodeError as exc:
            raise WireError("a header holds characters HTTP/1.1 cannot carry; not sent") from exc
        loop = asyncio.get_running_loop()
        for attempt in range(STALE_RETRIES + 1):
            conn = self._take_idle(origin, loop.time())
            if conn is None:
                conn = await self._connect(loop, origin, timeouts.connect_s, deadline)
            conn.send(data, timeouts.read_s, deadline)
            try:
                while conn.phase == _HEAD:
                    await conn.wait()
            except Disconnected:
                conn.close()
                if not conn.got_bytes and attempt < STALE_RETRIES:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return Answer(self, conn)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def fetch(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str],
                    timeouts: Timeouts) -> tuple[int, bytes]:
        """Status and whole body of one small call (a probe, /tokenize), bounded overall by the sum of `timeouts`
        (raises WireError, or TimeoutError past that bound)."""
        async with asyncio.timeout(timeouts.connect_s + timeouts.read_s):
            answer = await self.request(method, url, body, headers, timeouts)
            return answer.status, await answer.read()

    async def close(self) -> None:
        """Close the idle connections and wait (1 s at most) until they are gone: a TLS connection's close takes
        a round trip, and an event loop closed before it ends refuses to close (uvloop: EBUSY)."""
        conns = [conn for pool in self._idle.values() for conn in pool]
        self._idle.clear()
        for conn in conns:
            conn.close()
        if conns:
            await asyncio.wait([conn.lost for conn in conns], timeout=1.0)

    def _take_idle(self, origin: Origin, now: float) -> _Connection | None:
        conns = self._idle.get(origin)
        while conns:
            conn = conns.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return None

    def _give_back(self, conn: _Connection) -> None:
        if conn.closed or not conn.keep_alive or conn.phase != _DONE or conn.buf or conn.error is not None:
            conn.close()
            return
        conn._cancel_timer()
        conn.idle_since = now = conn.loop.time()
        conns = self._idle.setdefault(conn.origin, deque())
        conns.append(conn)
        # the oldest go once expired, though the newest keep being reused (after a burst, say): an upstream that
        # keeps idle connections open for minutes (nginx, cloud front ends) must not be left holding them
        while conns and (conns[0].closed or now - conns[0].idle_since >= self.keepalive_s):
            conns.popleft().close()

    async def _connect(self, loop: asyncio.AbstractEventLoop, origin: Origin, timeout_s: float,
                       deadline: float) -> _Connection:
        host, port, tls = origin
        context = None
        if tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            context = self._tls
        try:
            async with asyncio.timeout_at(min(loop.time() + timeout_s, deadline)):
                addresses = await self._addresses(loop, host, port)
                for n, (family, address) in enumerate(addresses, 1):  # in order, as create_connection would
                    try:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(loop, origin), address, port, family=family, ssl=context,
                            server_hostname=host if tls else None)
                        return conn
                    except OSError:
                        if n == len(addresses):
                            self._dns.pop((host, port), None)  # the next connection looks the name up again
                            raise
        except TimeoutError as exc:
            if loop.time() >= deadline:
                raise DeadlinePassed(f"{host}:{port}: the call's deadline passed while connecting") from exc
            raise ConnectTimeout(f"cannot connect to {host}:{port}: connect timed out (connect_timeout_s)") from exc
        except OSError as exc:  # refused, unreachable, no such host, TLS (ssl.SSLError is an OSError)
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        raise ConnectFailed(f"cannot connect to {host}:{port}: the name has no address")

    async def _addresses(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[tuple[int, str]]:
        """(family, IP) for `host`, looked up at most once per DNS_TTL_S."""
        now = loop.time()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos]
        self._dns[(host, port)] = (now + DNS_TTL_S, addresses)
        return addresses
