"""Running the router: in the foreground (`grace-hpc route`) or in a background thread (tests, demos, bench)."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiohttp import web

from grace_hpc.errors import GraceError

#: allocations of container objects between two young-generation collections (CPython's default is 700)
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running proxy: it was the largest single cost per request.

    Measured under bench/router.py's load (a gc.callbacks hook timing the collector's thread CPU): with CPython's
    defaults the collector took ~80 us of each request, about a fifth of its CPU. Requests in flight survive young
    collections, are promoted, and trigger full collections that each scan the ~110,000 objects imports and
    configuration left behind. `gc.freeze()` moves those to the permanent generation, which no collection scans
    again; a young threshold of 10,000 instead of 700 runs young collections 14 times less often, so far fewer
    in-flight objects are promoted. Together: 6-10 us a request. Cycles are still collected, only less often.
    (docs.python.org/3/library/gc.html: `freeze` since 3.7; with the incremental collector, retargeted to 3.14 by
    python/cpython#125453, `set_threshold`'s first value is still the young threshold, the only one changed here.)"""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed (extra `fast`): measured by bench/router.py, it is the largest single speed-up."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    # access_log=None: one log line per request costs more than routing it, and logs would carry client addresses
    # (the router's own JSON access log is opt-in, access_log.py). handler_cancellation: a client that hangs up
    # cancels its handler at once, which closes the upstream request; aiohttp's docs recommend it for servers
    # that scale ("Peer disconnection", docs.aiohttp.org/en/stable/web_advanced.html). Off, a hang-up is only
    # noticed at the next write.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise GraceError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from exc
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}"


def run_router(app: web.Application, host: str = "127.0.0.1", port: int = 8000,
               on_listening: Callable[[str], None] | None = None) -> None:
    """Serve `app` until interrupted; `on_listening(url)` is called once the socket accepts connections."""

    async def main() -> None:
        runner, url = await _start(app, host, port)
        tune_gc()  # after start-up: the app, its session and its background tasks are what freeze() keeps
        stop = asyncio.Event()
        # SIGTERM (scancel, systemd, a test's terminate()) stops accepting, lets in-flight requests finish
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        if on_listening is not None:
            on_listening(url)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(main())
    except KeyboardInterrupt:
        print("router stopped", file=sys.stderr)


@contextmanager
def serve_in_thread(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """`with serve_in_thread(app) as url:` the router listens on `url` (e.g. http://127.0.0.1:41234) in a
    daemon thread with its own event loop; leaving the block stops it and closes its client session."""
    loop = event_loop_factory()()
    thread = threading.Thread(target=loop.run_forever, name="grace-router", daemon=True)
    thread.start()
    runner, url = asyncio.run_coroutine_threadsafe(_start(app, host, port), loop).result(timeout=30)
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
