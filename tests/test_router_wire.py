"""The router's HTTP/1.1 client (grace_hpc/router/wire.py), against real sockets scripted byte by byte.

Each scripted server answers connection by connection: `script(i, sock)` serves the i-th accepted connection, so a
test states exactly what the upstream does (answer and keep the connection, close it unanswered, go silent, break
midway) and counts the connections the client opened. The answer parser is also fed every split of one answer, as
TCP may deliver it.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

import pytest

from grace_hpc.router import wire
from grace_hpc.router.serve import event_loop_factory
from grace_hpc.router.wire import ConnectFailed, DeadlinePassed, Disconnected, ReadTimeout, Timeouts, Wire, WireError

QUICK = Timeouts(connect_s=2.0, read_s=2.0)
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


def read_request(sock: socket.socket) -> bytes:
    """One request (head and Content-Length body) off `sock`; b"" when the client closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            return b""
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
        b"content-length:")), 0)
    while len(body) < length:
        body += sock.recv(65536)
    return data


class Scripted:
    def __init__(self, script: Callable[[int, socket.socket], None]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1/chat/completions"
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = threading.Event()  # a connection read EOF: the client closed it
        self.closes = 0  # connections the client closed

    def serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            index, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._one, args=(index, sock), daemon=True).start()

    def _one(self, index: int, sock: socket.socket) -> None:
        with sock:
            self.script(index, sock)

    def answer_each(self, sock: socket.socket, answer: bytes) -> None:
        """Answer every request on this connection until the client closes it."""
        while request := read_request(sock):
            self.requests.append(request)
            sock.sendall(answer)
        self.closes += 1
        self.closed_by_client.set()

    def wait_for_close(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            return
        self.closed_by_client.set()


@contextmanager
def scripted(script: Callable[[Scripted, int, socket.socket], None]) -> Iterator[Scripted]:
    server = Scripted(lambda i, sock: script(server, i, sock))
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        yield server
    finally:
        server.listener.close()


def run(coro_fn: Callable[[Wire], object], keepalive_s: float = 4.0) -> object:
    """Run `coro_fn(wire)` on the router's own event loop (uvloop when installed), then close the wire."""
    async def main() -> object:
        pool = Wire(keepalive_s)
        try:
            return await coro_fn(pool)
        finally:
            await pool.close()

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(main())


async def post(pool: Wire, url: str, body: bytes = b'{"q":1}') -> tuple[int, bytes]:
    answer = await pool.request("POST", url, body, {"Content-Type": "application/json"}, QUICK)
    return answer.status, await answer.read()


def test_requests_in_turn_share_one_keep_alive_connection_and_are_sent_as_written():
    with scripted(lambda srv, i, sock: srv.answer_each(sock, OK)) as server:
        async def five(pool):
            return [await post(pool, server.url) for _ in range(5)]

        assert run(five) == [(200, b'{"ok":true}')] * 5
        assert server.connections == 1
        port = server.url.split(":")[2].split("/")[0]
        assert server.requests[0] == (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                      f"User-Agent: {wire.USER_AGENT}\r\nContent-Type: application/json\r\n"
                                      "Content-Length: 7\r\n\r\n{\"q\":1}").encode()


def test_an_answer_that_says_connection_close_or_ends_at_close_is_never_reused():
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end"

    def script(srv, i, sock):
        srv.requests.append(read_request(sock))
        sock.sendall(closing if i % 2 == 0 else until_close)

    with scripted(script) as server:
        async def four(pool):
            return [await post(pool, server.url) for _ in range(4)]

        assert run(four) == [(200, b"hi"), (200, b"to the end")] * 2
        assert server.connections == 4


def test_a_connection_closed_before_any_byte_of_the_answer_is_replaced_and_the_request_sent_again():
    """A pooled connection the engine closes as it is reused (llama.cpp does after each stream), or a fresh one
    closed at once: the request never reached the engine, so it goes out again on a new connection."""
    def script(srv, i, sock):
        if i == 0:  # answers once, then takes the next request and closes without a word
            read_request(sock)
            sock.sendall(OK)
            read_request(sock)
        elif i == 1:
            read_request(sock)  # a fresh connection closed unanswered
        else:
            srv.answer_each(sock, OK)

    with scripted(script) as server:
        async def two(pool):
            return [await post(pool, server.url), await post(pool, server.url)]

        assert run(two) == [(200, b'{"ok":true}')] * 2
        assert server.connections == 3


def test_a_server_that_closes_every_connection_unanswered_fails_after_the_retries():
    with scripted(lambda srv, i, sock: read_request(sock)) as server:
        with pytest.raises(Disconnected, match=r"127\.0\.0\.1:\d+: server disconnected before the answer"):
            run(lambda pool: post(pool, server.url))
        assert server.connections == wire.STALE_RETRIES + 1


def test_an_answer_that_breaks_midway_fails_and_is_not_sent_again():
    def script(srv, i, sock):
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":")

    with scripted(script) as server:
        with pytest.raises(Disconnected):
            run(lambda pool: post(pool, server.url))
        assert server.connections == 1


def test_a_refused_connection_fails_at_once_and_is_not_retried():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(ConnectFailed, match=rf"cannot connect to 127\.0\.0\.1:{port}: ") as info:
            run(lambda pool: post(pool, f"http://127.0.0.1:{port}/v1/chat/completions"))
    assert not isinstance(info.value, TimeoutError)


def test_silence_longer_than_the_read_timeout_fails_the_call_and_closes_the_connection():
    def script(srv, i, sock):
        read_request(sock)
        srv.wait_for_close(sock)  # never answers

    with scripted(script) as server:
        async def silent(pool):
            started = time.monotonic()
            with pytest.raises(ReadTimeout, match="no byte within read_timeout_s"):
                await pool.request("POST", server.url, b"{}", {}, Timeouts(connect_s=2.0, read_s=0.3))
            return time.monotonic() - started

        assert 0.25 < run(silent) < 2.0
        assert server.closed_by_client.wait(5)


def test_silence_is_counted_between_bytes_so_a_slow_steady_stream_is_not_cut():
    events = [b"data: %d\n\n" % n for n in range(6)]

    def script(srv, i, sock):
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for event in events:
            time.sleep(0.15)  # 0.9 s in all, each gap under the 0.4 s read timeout
            sock.sendall(b"%x\r\n%s\r\n" % (len(event), event))
        sock.sendall(b"0\r\n\r\n")
        srv.wait_for_close(sock)

    with scripted(script) as server:
        async def stream(pool):
            answer = await pool.request("POST", server.url, b"{}", {}, Timeouts(connect_s=2.0, read_s=0.4))
            got = b""
            while chunk := await answer.readany():
                got += chunk
            answer.close()
            return got

        assert run(stream) == b"".join(events)


def test_the_deadline_bounds_the_call_until_it_is_dropped_then_only_silence_counts():
    def script(srv, i, sock):
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        if i == 0:
            srv.wait_for_close(sock)  # headers, then nothing: the deadline ends it
            return
        for n in range(4):
            sock.sendall(b"7\r\ndata: %d\r\n" % n)
            time.sleep(0.2)
        sock.sendall(b"0\r\n\r\n")
        srv.wait_for_close(sock)

    with scripted(script) as server:
        async def calls(pool):
            loop = asyncio.get_running_loop()
            answer = await pool.request("POST", server.url, b"{}", {}, QUICK, deadline=loop.time() + 0.3)
            with pytest.raises(DeadlinePassed):
                await answer.readany()
            answer.close()
            answer = await pool.request("POST", server.url, b"{}", {}, QUICK, deadline=loop.time() + 0.3)
            first = await answer.readany()
            answer.drop_deadline()  # 0.8 s of stream in all: past the deadline, each gap within the read timeout
            rest = b""
            while chunk := await answer.readany():
                rest += chunk
            answer.close()
            return first + rest

        assert run(calls) == b"data: 0data: 1data: 2data: 3"
        assert server.closed_by_client.wait(5)


def test_a_cancelled_call_closes_its_connection_so_the_engine_stops_generating():
    def script(srv, i, sock):
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"7\r\ndata: 1\r\n")
        srv.wait_for_close(sock)

    with scripted(script) as server:
        async def cancel_midway(pool):
            answer = await pool.request("POST", server.url, b"{}", {}, QUICK)
            assert await answer.readany() == b"data: 1"
            reader = asyncio.ensure_future(answer.readany())
            await asyncio.sleep(0.05)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            answer.close()
            await asyncio.sleep(0.05)

        run(cancel_midway)
        assert server.closed_by_client.wait(5)


def test_after_a_burst_the_connections_left_idle_are_closed_once_expired_while_one_stays_in_use():
    with scripted(lambda srv, i, sock: srv.answer_each(sock, OK)) as server:
        async def burst_then_steady(pool):
            await asyncio.gather(*(post(pool, server.url) for _ in range(5)))  # five connections
            steady_until = asyncio.get_running_loop().time() + 0.6
            while asyncio.get_running_loop().time() < steady_until:  # one at a time: the newest is reused
                await post(pool, server.url)
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            return server.closes

        assert run(burst_then_steady, keepalive_s=0.3) == 4
        assert server.connections == 5


def test_a_host_name_is_looked_up_once_for_many_connections_and_again_after_a_failed_connect(monkeypatch):
    lookups = []
    real = socket.getaddrinfo

    def counting(host, *args, **kwargs):
        lookups.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)  # the standard event loop looks names up through it
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"

    def script(srv, i, sock):
        read_request(sock)
        sock.sendall(closing)

    with scripted(script) as server:
        url = server.url.replace("127.0.0.1", "localhost")

        async def three_connections():
            pool = Wire(keepalive_s=4.0)
            answers = [await post(pool, url) for _ in range(3)]
            server.listener.shutdown(socket.SHUT_RDWR)  # now refused: the failed connect forgets the addresses
            with pytest.raises(ConnectFailed):
                await post(pool, url)
            with pytest.raises(ConnectFailed):
                await post(pool, url)
            await pool.close()
            return answers

        assert asyncio.run(three_connections()) == [(200, b"hi")] * 3
    assert server.connections == 3 and lookups == ["localhost"] * 2  # the first connection, and the last


def test_a_connection_idle_past_the_keepalive_is_closed_not_reused():
    with scripted(lambda srv, i, sock: srv.answer_each(sock, OK)) as server:
        async def with_a_pause(pool):
            await post(pool, server.url)
            await asyncio.sleep(0.3)
            return await post(pool, server.url)

        assert run(with_a_pause, keepalive_s=0.2) == (200, b'{"ok":true}')
        assert server.connections == 2


def test_a_large_answer_is_read_whole_and_a_stream_the_client_has_not_taken_pauses_the_upstream():
    big = b"x" * (3 * wire.PAUSE_AT_BYTES)

    def script(srv, i, sock):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big)
        read_request(sock)
        sock.sendall(head + big)  # the first answer at once
        read_request(sock)
        sock.sendall(head + big[:10])  # the second: its head, then the rest once the client has read a piece
        time.sleep(0.1)
        sock.sendall(big[10:])
        srv.wait_for_close(sock)

    with scripted(script) as server:
        async def whole_then_piecewise(pool):
            whole = await post(pool, server.url)
            answer = await pool.request("POST", server.url, b"{}", {}, QUICK)
            first = await answer.readany()  # reading piece by piece: past PAUSE_AT_BYTES unread, reading pauses
            await asyncio.sleep(0.2)
            paused = answer._conn.paused
            rest = b""
            while chunk := await answer.readany():
                rest += chunk
            answer.release()
            return whole, first + rest, paused

        whole, pieces, paused = run(whole_then_piecewise)
        assert whole == (200, big) and pieces == big and paused
        assert server.connections == 1  # both answers complete: the connection went back to the pool


@pytest.fixture
def tls_server(tmp_path):
    """A scripted HTTPS server for `localhost` with a self-signed certificate; yields (server, certificate)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (Debian: openssl, a dependency of ca-certificates)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def script(srv, i, sock):
        try:
            with context.wrap_socket(sock, server_side=True) as tls:
                srv.answer_each(tls, OK)
        except OSError:  # ssl.SSLError included: a client that refused the certificate
            pass

    with scripted(script) as server:
        yield server, cert


def test_https_is_spoken_over_tls_and_an_untrusted_certificate_is_refused(tls_server, monkeypatch):
    server, cert = tls_server
    url = server.url.replace("http://127.0.0.1", "https://localhost")
    with pytest.raises(ConnectFailed, match="certificate verify failed"):
        run(lambda pool: post(pool, url))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # OpenSSL's default verify paths: now the certificate is trusted
    assert run(lambda pool: post(pool, url)) == (200, b'{"ok":true}')


def test_a_header_value_with_a_line_break_is_never_sent():
    async def inject(pool):
        await pool.request("POST", "http://127.0.0.1:9/v1", b"{}", {"Authorization": "Bearer k\r\nX-Evil: 1"},
                           QUICK)

    with pytest.raises(WireError, match="header Authorization holds a line break; not sent") as info:
        run(inject)
    assert "k\r\n" not in str(info.value)


# --- the answer parser, fed as TCP may split it ----------------------------------------------------------------

CHUNKED = (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
           b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
           b"6;ext=1\r\ndata: \r\nc\r\n{\"n\":1}\n\ndat\r\n5\r\na: 2\n\r\n0\r\nTrailer: x\r\n\r\n")
DECODED = b"data: {\"n\":1}\n\ndata: 2\n"


def feed(pieces: list[bytes]) -> wire._Connection:
    conn = wire._Connection(mock.Mock(time=lambda: 0.0), ("h", 1, False))
    conn.connection_made(mock.Mock())
    conn.send(b"request", read_timeout_s=1.0)
    for piece in pieces:
        conn.data_received(piece)
    return conn


@pytest.mark.parametrize("split", range(len(CHUNKED) + 1))
def test_a_chunked_answer_after_an_interim_one_decodes_the_same_wherever_it_is_split(split):
    conn = feed([CHUNKED[:split], CHUNKED[split:]] if 0 < split < len(CHUNKED) else [CHUNKED])
    assert conn.error is None and conn.phase == wire._DONE and conn.keep_alive
    assert (conn.status, conn.take()) == (200, DECODED)
    assert conn.headers["content-type"] == "text/event-stream" and conn.headers["set-cookie"] == "a=1, b=2"


def test_a_chunked_answer_fed_one_byte_at_a_time_decodes_the_same():
    conn = feed([CHUNKED[i:i + 1] for i in range(len(CHUNKED))])
    assert (conn.phase, conn.take()) == (wire._DONE, DECODED)


@pytest.mark.parametrize("garbage", [
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",  # not HTTP
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # chunk size not hex
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
])
def test_an_unreadable_answer_is_a_bad_answer_and_closes_the_connection(garbage):
    conn = feed([garbage])
    assert isinstance(conn.error, wire.BadAnswer) and conn.closed
