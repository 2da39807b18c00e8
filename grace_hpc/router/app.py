"""The aiohttp application: its routes, its lifespan and the request-id and error middleware.

    POST /v1/chat/completions, /v1/completions, /v1/embeddings    routed by model / category (proxy.py)
    GET  /v1/models  /status  /metrics                             views.py
    GET  /health (the process answers)  /ready (something can serve)

The app owns one `Wire`, its upstream connections (wire.py, opened and closed by its cleanup context), and its
background tasks (background.py). Every response carries `X-Request-Id`: the client's own when it sent a sane one,
else a new one.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web

from grace_hpc.config.routing import Routing
from grace_hpc.fleet.demand import DemandFile
from grace_hpc.router import proxy, views
from grace_hpc.router.access_log import AccessLog
from grace_hpc.router.background import start_tasks, stop_tasks
from grace_hpc.router.dashboard import add_dashboard
from grace_hpc.router.errors import error_response
from grace_hpc.router.health import HealthBook
from grace_hpc.router.source import RegistrySource
from grace_hpc.router.state import REQUEST_ID, REQUEST_ID_KEY, STATE, RouterState
from grace_hpc.router.users import Users
from grace_hpc.router.wire import Wire

log = logging.getLogger("grace_hpc.router")

UPSTREAM_KEEPALIVE_S = 4.0
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")  # echoed into headers and logs: no spaces or controls


def create_app(
    routing: Routing,
    registry: RegistrySource,
    *,
    environ: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.monotonic,
    client_keys: frozenset[str] = frozenset(),
    poll_interval_s: float = 1.0,
    stale_after_s: float = 90.0,
    wall_clock: Callable[[], float] = time.time,
    access_log: Path | None = None,
    users: Users | None = None,
    demand_file: DemandFile | None = None,
) -> web.Application:
    """The router as an aiohttp application (serve it with `run_router` or `serve_in_thread`).

    `stale_after_s`: a `ready` record whose heartbeat is older than this is skipped like an ejected endpoint
    (pass the cluster's `stale_after_s`; the registry's reap only reports such records). `access_log`: a file
    to append one JSON line per request to (off when None). `users`: per-user keys, limits, budgets and the
    ledger (default: only `client_keys`, no ledger). `demand_file`: where the fleet controller reads demand."""
    state = RouterState(routing, registry, environ, clock, client_keys, poll_interval_s, HealthBook(clock),
                        HealthBook(clock), stale_after_s=stale_after_s, wall_clock=wall_clock,
                        access_log_path=access_log, demand_file=demand_file,
                        users=users or Users(client_keys, poll_interval_s=poll_interval_s, wall_clock=wall_clock))
    app = web.Application(client_max_size=routing.max_body_bytes, middlewares=[_request_id_and_json_errors])
    app[STATE] = state
    app.cleanup_ctx.append(_lifespan)
    app.cleanup_ctx.append(state.users.lifespan)
    for path in proxy.ROUTES:
        app.router.add_post(path, proxy.handle)
    app.router.add_get("/v1/models", views.models)
    app.router.add_get("/status", views.status)
    app.router.add_get("/metrics", views.metrics)
    app.router.add_get("/health", views.health)
    app.router.add_get("/ready", views.ready)
    add_dashboard(app, state)
    return app


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    # no per-host connection cap: engines batch, and the policy already bounds each endpoint's queue. Idle
    # connections are dropped before the engines drop them (vLLM: VLLM_HTTP_TIMEOUT_KEEP_ALIVE = 5 s in
    # vllm/envs.py; llama.cpp's cpp-httplib: CPPHTTPLIB_KEEPALIVE_TIMEOUT_SECOND = 5), so a request is rarely sent
    # on a connection the engine is closing. No cookies: one upstream's (cloud APIs behind a CDN set them) must not
    # ride along with every later client's request.
    state.wire = Wire(keepalive_s=UPSTREAM_KEEPALIVE_S)
    if state.access_log_path is not None:
        state.access = AccessLog(state.access_log_path).__enter__()
    tasks = await start_tasks(state)
    yield
    await stop_tasks(tasks)
    await state.wire.close()
    if state.access is not None:
        state.access.__exit__(None, None, None)


@web.middleware
async def _request_id_and_json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID)
    request[REQUEST_ID_KEY] = (given if given and _SANE_REQUEST_ID.fullmatch(given)
                               else request.app[STATE].new_request_id())
    try:
        response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[STATE].routing.max_body_bytes
        response = error_response(413, f"request body over the router's limit of {limit} bytes (max_body_bytes)",
                                  "request_too_large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, f"{request.method} {request.path}: {exc.reason}", "invalid_request")
    except Exception:  # a router bug: log it with its traceback, answer in the API's shape
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path, request[REQUEST_ID_KEY])
        response = error_response(500, "internal router error; see the router's log", "internal_error",
                                  error_type="server_error")
    if not response.prepared:  # a stream carries the id from its first byte (proxy.py)
        response.headers[REQUEST_ID] = request[REQUEST_ID_KEY]
    return response
