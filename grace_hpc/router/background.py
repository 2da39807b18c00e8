"""The router's background tasks: re-reading the registry when it changes (and key files with it), probing ejected
endpoints. Each runs under `supervised`: an unexpected error is logged with its traceback and the task restarts,
instead of dying silently and leaving the router on a frozen snapshot. No file is touched on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from grace_hpc.errors import GraceError
from grace_hpc.registry.records import EndpointRecord
from grace_hpc.router import coldstart
from grace_hpc.router.state import RouterState

log = logging.getLogger("grace_hpc.router")

PROBE_INTERVAL_S = 0.25
RESTART_PAUSE_S = 1.0


async def start_tasks(state: RouterState) -> list[asyncio.Task[None]]:
    await refresh(state)
    tasks = [
        asyncio.create_task(supervised("registry watch", lambda: watch_registry(state))),
        asyncio.create_task(supervised("probes", lambda: probe_ejected(state))),
    ]
    if state.demand_file is not None:  # what `fleet run` scales by (fleet/demand.py)
        demand_file = state.demand_file
        tasks.append(asyncio.create_task(supervised("demand", lambda: coldstart.publish(
            state.demand, demand_file, lambda: state.records, lambda i: state.health.get(i).in_flight))))
    return tasks


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def supervised(name: str, loop: Callable[[], Awaitable[None]], pause_s: float = RESTART_PAUSE_S) -> None:
    """Run `loop()` for ever: restart it (after `pause_s`) whenever it raises or returns."""
    while True:
        try:
            await loop()
            log.error("background task %r returned; restarting it", name)
        except Exception:
            log.exception("background task %r failed; restarting it in %.1f s", name, pause_s)
        await asyncio.sleep(pause_s)


async def refresh(state: RouterState) -> None:
    try:
        # read and parse off the loop (a shared file system can be slow); apply on it (no locks needed)
        snap = await asyncio.to_thread(state.source.snapshot)
    except GraceError as exc:
        state.registry_error = str(exc)  # keep routing on the last good snapshot
        log.warning("registry unreadable, routing on the last good snapshot: %s", exc)
        return
    state.apply(snap)


async def watch_registry(state: RouterState) -> None:
    while True:
        await asyncio.sleep(state.poll_interval_s)
        try:
            changed = await asyncio.to_thread(state.source.changed_since, state.version)
        except GraceError as exc:
            state.registry_error = str(exc)
            continue
        if changed:
            await refresh(state)
        await asyncio.to_thread(state.upstream_keys.refresh)  # a rotated endpoint key, within one poll


async def probe_ejected(state: RouterState) -> None:
    while True:
        await asyncio.sleep(PROBE_INTERVAL_S)
        by_id = {r.id: r for r in state.records}
        due = [by_id[i] for i in state.health.due_probes() if i in by_id]
        await asyncio.gather(*(probe(state, r) for r in due))


async def probe(state: RouterState, record: EndpointRecord) -> None:
    """GET /v1/models with the endpoint's key: cheap on vLLM and llama.cpp, and proves the HTTP server answers
    and accepts the key (a 401 keeps an endpoint ejected for its key, as a request would)."""
    assert state.wire is not None  # set by the lifespan before any task runs
    try:
        key = await state.upstream_keys.get(record.api_key_file)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        status, _ = await state.wire.fetch("GET", f"{record.base_url}/models", None, headers, state.short_timeouts)
        ok, error = status == 200, f"probe: HTTP {status}"
    except TimeoutError:
        ok, error = False, "probe: no answer within twice connect_timeout_s"
    except GraceError as exc:  # wire.py's errors, or the endpoint's key file
        ok, error = False, f"probe: {exc}"[:300]
    if ok:
        state.health.restored(record.id)
        log.info("endpoint %s restored: a probe succeeded", record.id)
    else:
        state.health.failed(record.id, error)
