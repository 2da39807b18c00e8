"""The aiohttp application: OpenAI-compatible routes over the pure policy, the health book and the relay.

    POST /v1/chat/completions, /v1/completions, /v1/embeddings    routed by model / category
    GET  /v1/models  /status  /metrics  /health

The app owns one `aiohttp.ClientSession` (created and closed by its cleanup context) and two background tasks:
re-reading the registry when its file changes, and probing ejected endpoints.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import aiohttp
from aiohttp import web

from grace_hpc.config.routing import Routing
from grace_hpc.errors import GraceError
from grace_hpc.fleet.demand import DemandFile
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.registry.verdicts import read_verdicts, verdict_for_endpoint, verdict_path
from grace_hpc.router import coldstart, policy
from grace_hpc.router.auth import UpstreamKeys
from grace_hpc.router.dashboard import add_dashboard
from grace_hpc.router.errors import error_response
from grace_hpc.router.health import HealthBook
from grace_hpc.router.metrics import Metrics
from grace_hpc.router.samples import LoadSamples
from grace_hpc.router.source import RegistrySource, Snapshot
from grace_hpc.router.upstream import Relayed, Target, UpstreamFailure, relay
from grace_hpc.router.users import Tab, Users

log = logging.getLogger("grace_hpc.router")

ROUTES = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    "/v1/embeddings": "/embeddings",
}
PROBE_INTERVAL_S = 0.25
#: a dead socket or a timeout ejects at once; HTTP 5xx only when consecutive (one client's odd request must not
#: eject every endpoint in turn)
CONSECUTIVE_5XX_TO_EJECT = 3


@dataclass
class RouterState:
    routing: Routing
    source: RegistrySource
    environ: Mapping[str, str]
    clock: Callable[[], float]
    client_keys: frozenset[str]
    poll_interval_s: float
    health: HealthBook
    stale_after_s: float = 90.0
    wall_clock: Callable[[], float] = time.time  # heartbeats are unix times; `clock` is monotonic
    metrics: Metrics = field(default_factory=Metrics)
    samples: LoadSamples = field(default_factory=lambda: LoadSamples(time.monotonic))  # the dashboard's 15 minutes
    upstream_keys: UpstreamKeys = field(default_factory=UpstreamKeys)
    users: Users = field(default_factory=Users)  # keys, limits, budgets, ledger (router/users.py)
    records: list[EndpointRecord] = field(default_factory=list)
    known: frozenset[str] = frozenset()  # names a request may use, recomputed per snapshot
    version: object = None
    registry_error: str | None = None
    rotation: int = 0
    session: aiohttp.ClientSession | None = None
    demand: coldstart.DemandBook = field(default_factory=coldstart.DemandBook)
    demand_file: DemandFile | None = None  # where the fleet controller reads demand (None: not published)

    def apply(self, snap: Snapshot) -> None:
        """Swap in a new snapshot (on the event loop); requests in flight keep the records they already chose."""
        self.records, self.version, self.registry_error = list(snap.records), snap.version, None
        self.known = frozenset(policy.known_models(self.routing, self.records))
        self.health.forget_except(r.id for r in self.records)

    def stale_before(self) -> float:
        """Records whose last heartbeat is older than this are not routed to (see policy.stale)."""
        return self.wall_clock() - self.stale_after_s

    def routable(self, record: EndpointRecord, stale_before: float) -> bool:
        """Ready, not ejected, not stale: what /health counts as routable (load and context aside)."""
        return (record.state is EndpointState.READY and not self.health.get(record.id).ejected
                and not policy.stale(record, stale_before))

    def cloud_ready(self) -> list[str]:
        return [p.name for p in self.routing.cloud if self.environ.get(p.api_key_env)]

    @cached_property
    def timeout(self) -> aiohttp.ClientTimeout:
        # sock_read bounds the silence between bytes, not the whole generation, so long streams are fine
        return aiohttp.ClientTimeout(
            total=None, connect=self.routing.connect_timeout_s, sock_read=self.routing.read_timeout_s
        )


STATE = web.AppKey("grace_router_state", RouterState)


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
    users: Users | None = None,
    demand_file: DemandFile | None = None,
) -> web.Application:
    """The router as an aiohttp application (serve it with `run_router` or `serve_in_thread`).

    `stale_after_s`: a `ready` record whose heartbeat is older than this is skipped like an ejected endpoint
    (pass the cluster's `stale_after_s`; the registry's reap only reports such records). `users`: per-user keys,
    limits, budgets and the ledger (default: only `client_keys`, no ledger)."""
    state = RouterState(routing, registry, environ, clock, client_keys, poll_interval_s, HealthBook(clock),
                        stale_after_s=stale_after_s, wall_clock=wall_clock, demand_file=demand_file,
                        users=users or Users(client_keys, poll_interval_s=poll_interval_s, wall_clock=wall_clock))
    app = web.Application(client_max_size=routing.max_body_bytes, middlewares=[_errors_as_json])
    app[STATE] = state
    app.cleanup_ctx.append(_lifespan)
    app.cleanup_ctx.append(state.users.lifespan)
    for path in ROUTES:
        app.router.add_post(path, _proxy)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    add_dashboard(app, state)
    return app


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    # no per-host connection cap: engines batch, and the policy already bounds each endpoint's queue
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    state.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    await _refresh(state)
    tasks = [asyncio.create_task(_watch_registry(state)), asyncio.create_task(_probe_ejected(state))]
    if state.demand_file is not None:
        tasks.append(asyncio.create_task(coldstart.publish(state.demand, state.demand_file, lambda: state.records,
                                                           lambda i: state.health.get(i).in_flight)))
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await state.session.close()


async def _refresh(state: RouterState) -> None:
    try:
        # read and parse off the loop (a shared file system can be slow); apply on it (no locks needed)
        snap = await asyncio.to_thread(state.source.snapshot)
    except GraceError as exc:
        state.registry_error = str(exc)  # keep routing on the last good snapshot
        return
    state.apply(snap)


async def _watch_registry(state: RouterState) -> None:
    while True:
        await asyncio.sleep(state.poll_interval_s)
        try:
            changed = state.source.changed_since(state.version)
        except GraceError as exc:
            state.registry_error = str(exc)
            continue
        if changed:
            await _refresh(state)


async def _probe_ejected(state: RouterState) -> None:
    while True:
        await asyncio.sleep(PROBE_INTERVAL_S)
        by_id = {r.id: r for r in state.records}
        due = [by_id[i] for i in state.health.due_probes() if i in by_id]
        await asyncio.gather(*(_probe(state, r) for r in due))


async def _probe(state: RouterState, record: EndpointRecord) -> None:
    """GET /v1/models with the endpoint's key: cheap on vLLM and llama.cpp, and proves the HTTP server answers."""
    assert state.session is not None  # set by the lifespan before any task runs
    timeout = aiohttp.ClientTimeout(total=state.routing.connect_timeout_s * 2, connect=state.routing.connect_timeout_s)
    try:
        key = state.upstream_keys.get(record.api_key_file)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with state.session.get(f"{record.base_url}/models", headers=headers, timeout=timeout) as resp:
            ok = resp.status == 200
            error = f"probe: HTTP {resp.status}"
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, GraceError) as exc:
        ok, error = False, f"probe: {type(exc).__name__}: {exc}"[:300]
    if ok:
        state.health.restored(record.id)
    else:
        state.health.failed(record.id, error)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[STATE].routing.max_body_bytes
        return error_response(413, f"request body over the router's limit of {limit} bytes (max_body_bytes)",
                              "request_too_large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, f"{request.method} {request.path}: {exc.reason}", "invalid_request")
    except Exception:  # a router bug: log it with its traceback, answer in the API's shape
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal router error; see the router's log", "internal_error",
                              error_type="server_error")


def _unauthorized(request: web.Request) -> web.Response | None:
    if request.app[STATE].users.open(request.headers.get("Authorization")) is not None:
        return None
    return _no_key()


def _no_key() -> web.Response:
    return error_response(401, "missing or invalid API key: send `Authorization: Bearer KEY` with a router key",
                          "invalid_api_key", error_type="authentication_error")


async def _proxy(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    state = request.app[STATE]
    if (tab := state.users.open(request.headers.get("Authorization"))) is None:
        state.metrics.error("auth", 401)
        return _no_key()
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        state.metrics.error("malformed_json", 400)
        return error_response(400, "request body is not valid JSON", "invalid_json")
    if not isinstance(body, dict) or not isinstance(body.get("model", ""), str):
        state.metrics.error("invalid_request", 400)
        return error_response(400, "request body must be a JSON object whose `model` is a string", "invalid_request")
    try:
        route = policy.resolve(state.routing, state.records, body.get("model"), request.headers.get("X-Grace-Category"),
                               state.known)
    except policy.UnknownTarget as exc:
        state.metrics.error("unknown_model", 404)
        return error_response(404, exc.message(), "model_not_found")
    prompt_tokens = policy.estimate_prompt_tokens(body)
    if (refused := state.users.admit(tab, route.category.name, route.requested, body, prompt_tokens)) is not None:
        return refused

    def plan() -> list[policy.Attempt]:
        state.rotation += 1
        return policy.plan(
            route, state.routing, state.records, state.health.entries, prompt_tokens=prompt_tokens,
            cloud_ready=state.cloud_ready() if state.users.may_use_cloud(tab, route.category.cloud) else (),
            rotation=state.rotation, stale_before=state.stale_before(),
        )

    attempts = plan()
    if route.models and not any(isinstance(a, policy.EndpointAttempt) for a in attempts):
        if await _cold_start(state, route, attempts):
            attempts = plan()
        else:
            state.demand.unserved(route.models[0])
    suffix = ROUTES[request.path]
    stream = body.get("stream") is True
    failures: list[UpstreamFailure] = []
    for attempt in attempts:
        endpoint_id = attempt.record.id if isinstance(attempt, policy.EndpointAttempt) else None
        if endpoint_id and state.health.get(endpoint_id).ejected:
            continue  # ejected by a concurrent request since this one was planned
        target, payload = _target(state, attempt, body, raw, suffix)
        if target is None:
            continue
        if isinstance(attempt, policy.CloudAttempt) and not state.users.reserve(tab, attempt.provider):
            continue  # over the user's cloud budget (in-flight reservations included)
        if endpoint_id:
            state.health.started(endpoint_id)
        try:
            relayed = await relay(request, state.session, target, payload, stream, state.timeout)
        except UpstreamFailure as exc:
            state.users.release(tab)
            failures.append(exc)
            eject_after = 1 if exc.http_status is None else CONSECUTIVE_5XX_TO_EJECT
            if endpoint_id:
                state.samples.failed(endpoint_id)
            if endpoint_id and state.health.failed(endpoint_id, str(exc), eject_after):
                state.metrics.ejection(endpoint_id)
                state.samples.ejected(endpoint_id)
                log.warning("ejected %s: %s", endpoint_id, exc)
            continue
        finally:
            if endpoint_id:
                state.health.finished(endpoint_id)
        _account(state, route, attempt, relayed, failures, request.path, started, endpoint_id)
        _finish(state, tab, attempt, relayed)
        return relayed.response
    return _nothing_served(state, route, failures, tab)


def _finish(state: RouterState, tab: Tab, attempt: policy.Attempt, relayed: Relayed) -> None:
    if isinstance(attempt, policy.EndpointAttempt):
        state.users.finish(tab, relayed.status, endpoint=attempt.record, usage=relayed.usage)
    else:
        state.users.finish(tab, relayed.status, provider=attempt.provider, model=attempt.model, usage=relayed.usage)


async def _cold_start(state: RouterState, route: policy.Route, attempts: list[policy.Attempt]) -> bool:
    """Hold a request that nothing can serve (no replica, no cloud) up to its category's `cold_start_wait_s` for
    the first replica the fleet controller starts; True once one is routable."""
    wait_s = route.category.cold_start_wait_s
    if attempts or not wait_s:
        return False

    def ready() -> bool:
        stale_before = state.stale_before()
        return any(state.routable(r, stale_before) and policy.serves(r, m) for r in state.records for m in route.models)

    return await coldstart.wait_for_replica(state.demand, route.models[0], ready, wait_s)


def _target(
    state: RouterState, attempt: policy.Attempt, body: dict, raw: bytes, suffix: str
) -> tuple[Target | None, bytes]:
    """Where to send the request, and the body: the client's own bytes when the model name already matches."""
    if isinstance(attempt, policy.EndpointAttempt):
        rec = attempt.record
        try:
            key = state.upstream_keys.get(rec.api_key_file)
        except GraceError as exc:
            state.health.failed(rec.id, str(exc))
            return None, b""
        target = Target(rec.base_url.rstrip("/") + suffix, key, rec.id, rec.engine, rec.plan.quantization or "none")
        model = rec.served_model_name
    else:
        provider = attempt.provider
        target = Target(provider.base_url.rstrip("/") + suffix, state.environ.get(provider.api_key_env),
                        f"cloud:{provider.name}", "cloud", None)
        model = attempt.model
    return target, raw if body.get("model") == model else json.dumps({**body, "model": model}).encode()


def _account(
    state: RouterState, route: policy.Route, attempt: policy.Attempt, relayed: Relayed,
    failures: list[UpstreamFailure], path: str, started: float, endpoint_id: str | None,
) -> None:
    served_by = relayed.response.headers.get("X-Grace-Served-By", "?")
    if endpoint_id:
        if relayed.broke_mid_stream:
            if state.health.failed(endpoint_id, relayed.broke_mid_stream):
                state.metrics.ejection(endpoint_id)
                state.samples.ejected(endpoint_id)
        else:
            state.health.succeeded(endpoint_id)
    reason = None
    if isinstance(attempt, policy.CloudAttempt):
        reason = "cloud_only" if route.category.cloud_only else ("failover" if failures else "no_local_endpoint")
    elif failures:
        reason = "failover"
    elif route.models and not policy.serves(attempt.record, route.models[0]):
        reason = "next_model"
    if reason:
        state.metrics.fallback(route.category.name, reason, served_by)
    state.metrics.usage(served_by, relayed.usage)
    seconds = time.perf_counter() - started
    state.metrics.request(path, route.category.name, served_by, relayed.status, seconds)
    state.samples.served(route.category.name, served_by, endpoint_id is None, relayed.status, seconds)


def _nothing_served(state: RouterState, route: policy.Route, failures: list[UpstreamFailure],
                    tab: Tab) -> web.Response:
    state.samples.unserved(route.category.name)
    if tab.over_budget:
        state.metrics.error("budget_exceeded", 429)
        return state.users.budget_exceeded(tab)
    if failures:
        status = 504 if failures[-1].timeout else 502
        state.metrics.error("upstream", status)
        state.users.finish(tab, status)
        detail = "; ".join(str(f) for f in failures[-3:])
        return error_response(status, f"every endpoint for category {route.category.name!r} failed: {detail}",
                              "upstream_timeout" if status == 504 else "upstream_error", error_type="upstream_error")
    state.metrics.error("no_endpoint", 503)
    state.users.finish(tab, 503)
    clouds = [state.routing.provider(n) for n in route.category.cloud]
    unset = [f"${p.api_key_env}" for p in clouds if not state.environ.get(p.api_key_env)]
    cloud_hint = f"; cloud keys not set: {', '.join(unset)}" if unset else ("" if clouds else "; no cloud fallback")
    models = ", ".join(route.models) or "none (cloud only)"
    response = error_response(
        503,
        f"no ready, healthy endpoint with room for category {route.category.name!r} (models: {models}){cloud_hint}; "
        "see GET /status and `grace-hpc status`",
        "no_endpoint_available", error_type="service_unavailable",
    )
    if route.category.cold_start_wait_s:  # a replica is on its way: the client may come back
        response.headers["Retry-After"] = str(math.ceil(route.category.cold_start_wait_s))
    return response


async def _models(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    state = request.app[STATE]
    stale_before = state.stale_before()
    ready = [r for r in state.records if r.state is EndpointState.READY and not policy.stale(r, stale_before)]
    live = {n for r in ready for n in (r.model, r.served_model_name)}
    cloud = set(state.cloud_ready())
    data = [{"id": n, "object": "model", "owned_by": "grace-hpc", "grace": {"kind": "model"}} for n in sorted(live)]
    for c in state.routing.categories:
        local = [m for m in ([] if c.cloud_only else c.models) if m in live]
        clouds = [p for p in c.cloud if p in cloud]
        if local or clouds:
            data.append({"id": f"category:{c.name}", "object": "model", "owned_by": "grace-hpc",
                         "grace": {"kind": "category", "models": local, "cloud": clouds}})
    return web.json_response({"object": "list", "data": data})


async def _status(request: web.Request) -> web.Response:
    if (denied := _unauthorized(request)) is not None:
        return denied
    state = request.app[STATE]
    now, stale_before = state.wall_clock(), state.stale_before()
    registry_path = getattr(state.source, "path", None)  # the file-backed registry: its verdicts sit beside it
    verdicts = read_verdicts(verdict_path(registry_path)) if isinstance(registry_path, Path) else []
    endpoints = [
        {"id": r.id, "model": r.model, "served_model_name": r.served_model_name, "state": r.state.value,
         "base_url": r.base_url, "engine": r.engine, "quantization": r.plan.quantization,
         "max_num_seqs": r.plan.max_num_seqs, "stale": policy.stale(r, stale_before),
         "heartbeat_age_s": round(now - r.heartbeat_at, 1), **state.health.status(r.id),
         "logprobs": verdict_for_endpoint(verdicts, r.id, r.base_url, (r.model, r.served_model_name))}
        for r in state.records
    ]
    cloud = [{"name": p.name, "base_url": p.base_url, "key_env": p.api_key_env,
              "key_set": bool(state.environ.get(p.api_key_env))} for p in state.routing.cloud]
    return web.json_response({"registry_error": state.registry_error, "endpoints": endpoints, "cloud": cloud})


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.users.metrics_need_key and (denied := _unauthorized(request)) is not None:
        return denied
    ids = [r.id for r in state.records]
    text = state.metrics.render(
        {i: state.health.get(i).in_flight for i in ids}, {i: not state.health.get(i).ejected for i in ids}
    ) + state.users.metrics.render()
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Prometheus-Format": "0.0.4"})


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stale_before = state.stale_before()
    ready = sum(1 for r in state.records if state.routable(r, stale_before))
    return web.json_response({"status": "ok", "routable_endpoints": ready, "registry_error": state.registry_error})
