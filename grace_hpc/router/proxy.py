"""POST /v1/chat/completions, /v1/completions, /v1/embeddings: resolve, check the context, try each attempt.

Each failure is attributed to the side that failed (failures.py): an upstream's is counted against it and the
request goes to the next attempt; a client's hang-up counts against nobody, is never retried, and closes the
upstream request at once (counted in `grace_router_client_disconnects_total`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field

from aiohttp import web

from grace_hpc.errors import GraceError
from grace_hpc.registry.records import EndpointRecord
from grace_hpc.router import coldstart, coldstream, policy, stream_usage
from grace_hpc.router.access_log import CLIENT_CLOSED, AccessRecord
from grace_hpc.router.errors import error_response
from grace_hpc.router.failures import CLIENT_ERROR, EJECT_AFTER, FailureKind, UpstreamFailure
from grace_hpc.router.state import REQUEST_ID, REQUEST_ID_KEY, STATE, RouterState
from grace_hpc.router.upstream import Relayed, StreamProgress, Target, relay
from grace_hpc.router.users import Tab
from grace_hpc.router.views import no_key

log = logging.getLogger("grace_hpc.router")

ROUTES = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    "/v1/embeddings": "/embeddings",
}


@dataclass(slots=True)
class Exchange:
    """One request as the access log and the metrics see it, filled in as it proceeds."""

    request_id: str
    route: str
    started: float
    category: str | None = None
    model: str | None = None
    served_by: str = "-"
    status: int = 0
    usage: object = None
    progress: StreamProgress = field(default_factory=StreamProgress)

    def access_record(self) -> AccessRecord:
        usage = self.usage if isinstance(self.usage, dict) else {}
        return AccessRecord(self.request_id, self.route, self.category, self.model, self.served_by, self.status,
                            round((time.perf_counter() - self.started) * 1000, 2),
                            usage.get("prompt_tokens"), usage.get("completion_tokens"))


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    exchange = Exchange(request[REQUEST_ID_KEY], request.path, time.perf_counter())
    try:
        response = await _serve(request, state, exchange)
    except asyncio.CancelledError:  # the client hung up (aiohttp's handler cancellation, see serve.py)
        if not exchange.progress.answered:
            exchange.status = CLIENT_CLOSED
            state.metrics.client_disconnect(request.path, exchange.served_by)
        raise
    finally:
        if state.access is not None:
            state.access.write(exchange.access_record())
    return response


def _refuse(state: RouterState, exchange: Exchange, status: int, kind: str, message: str, code: str,
            **kwargs: str) -> web.Response:
    state.metrics.error(kind, status)
    exchange.status = status
    return error_response(status, message, code, **kwargs)


async def _serve(request: web.Request, state: RouterState, exchange: Exchange) -> web.StreamResponse:
    if (tab := state.users.open(request.headers.get("Authorization"))) is None:
        state.metrics.error("auth", 401)
        exchange.status = 401
        return no_key()
    raw = await request.read()
    deadline = asyncio.get_running_loop().time() + state.routing.request_deadline_s
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return _refuse(state, exchange, 400, "malformed_json", "request body is not valid JSON", "invalid_json")
    if not isinstance(body, dict) or not isinstance(body.get("model", ""), str):
        return _refuse(state, exchange, 400, "invalid_request",
                       "request body must be a JSON object whose `model` is a string", "invalid_request")
    exchange.model = body.get("model")
    try:
        route = state.resolve(body.get("model"), request.headers.get("X-Grace-Category"))
    except policy.MissingModel as exc:
        return _refuse(state, exchange, 400, "missing_model", str(exc), "model_required")
    except policy.UnknownTarget as exc:
        return _refuse(state, exchange, 404, "unknown_model", exc.message(), "model_not_found")
    exchange.category = route.category.name
    prompt = policy.prompt_size(body)
    if (refused := state.users.admit(tab, route.category.name, route.requested, body, prompt.low)) is not None:
        exchange.status = refused.status
        return refused
    stale_before = state.stale_before()
    pending = policy.undecided(route, state.records, prompt, {}, stale_before)  # usually none: nothing to await
    counted = await _count_undecided(state, pending, body) if pending else {}

    def plan() -> list[policy.Attempt]:
        state.rotation += 1
        clouds = route.category.cloud
        cloud = state.cloud_ready() if clouds and state.users.may_use_cloud(tab, clouds) else []
        return policy.plan(route, state.routing, state.records, state.health.entries, prompt=prompt, counted=counted,
                           cloud_ready=cloud, rotation=state.rotation, stale_before=state.stale_before())

    attempts = plan()
    if not attempts and (too_long := policy.too_long(route, state.records, prompt, counted, stale_before)):
        state.users.finish(tab, 400)
        return _refuse(state, exchange, 400, "context_length_exceeded", too_long.message(), "context_length_exceeded")
    stream = body.get("stream") is True
    if route.models and not any(isinstance(a, policy.EndpointAttempt) for a in attempts):
        keepalive = coldstream.Keepalive(request, exchange.request_id, route.models[0], exchange.progress) \
            if stream else None
        if await _cold_start(state, route, attempts, keepalive):
            attempts = plan()
        else:
            state.demand.unserved(route.models[0])
    suffix = ROUTES[request.path]
    if stream and suffix != "/embeddings":  # ask for the real token counts, relay them only if the client asked
        body, raw, exchange.progress.tap = stream_usage.tapped(body)
    headers = {REQUEST_ID: exchange.request_id}
    failures: list[UpstreamFailure] = []
    for attempt in attempts:
        endpoint_id = attempt.record.id if isinstance(attempt, policy.EndpointAttempt) else None
        if endpoint_id and state.health.get(endpoint_id).ejected:
            continue  # ejected by a concurrent request since this one was planned
        try:
            target, payload = await _target(state, attempt, body, raw, suffix)
        except GraceError as exc:  # only an endpoint's key file can fail here: its record is broken, not the request
            if endpoint_id and state.health.failed(endpoint_id, str(exc)):
                log.warning("ejected %s: %s", endpoint_id, exc)
            continue
        if isinstance(attempt, policy.CloudAttempt) and not state.users.reserve(tab, attempt.provider):
            continue  # over the user's cloud budget (in-flight reservations included)
        if endpoint_id:
            state.health.started(endpoint_id)
        exchange.served_by = target.served_by
        try:
            relayed = await relay(request, state.wire, target, payload, stream, state.timeouts, deadline, headers,
                                  exchange.progress)
        except UpstreamFailure as exc:
            state.users.release(tab)
            failures.append(exc)
            if endpoint_id:
                state.samples.failed(endpoint_id)
            _blame(state, attempt, exc)
            if exc.kind is FailureKind.DEADLINE:
                break
            continue
        finally:
            if endpoint_id:
                state.health.finished(endpoint_id)
        _account(state, route, attempt, relayed, failures, exchange)
        _finish(state, tab, attempt, relayed)
        return relayed.response
    refused = _nothing_served(state, route, failures, exchange, tab)
    return refused if exchange.progress.begun is None else await coldstream.end_with(exchange.progress.begun, refused)


def _finish(state: RouterState, tab: Tab, attempt: policy.Attempt, relayed: Relayed) -> None:
    """The user's side of an answered request: settle a cloud reservation, count it, queue its ledger record."""
    if isinstance(attempt, policy.EndpointAttempt):
        state.users.finish(tab, relayed.status, endpoint=attempt.record, usage=relayed.usage)
    else:
        state.users.finish(tab, relayed.status, provider=attempt.provider, model=attempt.model, usage=relayed.usage)


async def _cold_start(state: RouterState, route: policy.Route, attempts: list[policy.Attempt],
                      keepalive: coldstream.Keepalive | None) -> bool:
    """Hold a request that nothing can serve (no replica, no cloud) up to its category's `cold_start_wait_s` for
    the first replica the fleet controller starts; True once one is routable. A streamed request's `keepalive`
    starts its answer and keeps it alive meanwhile (coldstream.py)."""
    wait_s = route.category.cold_start_wait_s
    if attempts or not wait_s:
        return False

    def ready() -> bool:
        stale_before = state.stale_before()
        return any(state.routable(r, stale_before) and policy.serves(r, m) for r in state.records for m in route.models)

    return await coldstart.wait_for_replica(state.demand, route.models[0], ready, wait_s, keepalive=keepalive)


async def _count_undecided(state: RouterState, pending: list[EndpointRecord], body: dict) -> dict[str, int]:
    """Exact counts for the endpoints whose fit the byte bounds cannot decide (`policy.undecided`): one /tokenize
    per model (endpoints of one model share its tokenizer), cached per endpoint."""
    assert state.wire is not None  # set by the lifespan before the server accepts requests
    text = policy.prompt_text(body)
    by_model: dict[str, int | None] = {}
    counted: dict[str, int] = {}
    for record in pending:
        if record.model not in by_model:
            try:
                key = await state.upstream_keys.get(record.api_key_file)
            except GraceError:
                continue  # the attempt itself will report the key file
            by_model[record.model] = await state.tokens.count(state.wire, record, key, text, state.short_timeouts)
        if (n := by_model.get(record.model)) is not None:
            counted[record.id] = n
    return counted


async def _target(
    state: RouterState, attempt: policy.Attempt, body: dict, raw: bytes, suffix: str
) -> tuple[Target, bytes]:
    """Where to send the request, and the body: the client's own bytes when the model name already matches."""
    if isinstance(attempt, policy.EndpointAttempt):
        rec = attempt.record
        key = await state.upstream_keys.get(rec.api_key_file)
        target = Target(rec.base_url.rstrip("/") + suffix, key, rec.id, rec.engine, rec.plan.quantization or "none")
        model = rec.served_model_name
    else:
        provider = attempt.provider
        target = Target(provider.base_url.rstrip("/") + suffix, state.environ.get(provider.api_key_env),
                        f"cloud:{provider.name}", "cloud", None)
        model = attempt.model
    return target, raw if body.get("model") == model else json.dumps({**body, "model": model}).encode()


def _blame(state: RouterState, attempt: policy.Attempt, failure: UpstreamFailure) -> None:
    """Count a failure against the upstream that failed, by its kind's rule; log what an admin must fix."""
    if isinstance(attempt, policy.EndpointAttempt):
        book, name, served_by = state.health, attempt.record.id, attempt.record.id
        key_source = (f"its key file {attempt.record.api_key_file}" if attempt.record.api_key_file
                      else "its registry record, which names no api_key_file")
    else:
        book, name, served_by = state.cloud_health, attempt.provider.name, f"cloud:{attempt.provider.name}"
        key_source = f"${attempt.provider.api_key_env}"
    eject_after = EJECT_AFTER.get(failure.kind)
    if eject_after is None:  # a provider's quota or the request's own deadline: nothing wrong with the upstream
        if failure.kind is FailureKind.RATE_LIMITED:
            log.info("%s (rate limited); trying the next upstream", failure)
        return
    if not book.failed(name, str(failure), eject_after):
        return
    state.metrics.ejection(served_by)
    if isinstance(attempt, policy.EndpointAttempt):
        state.samples.ejected(name)
    if failure.kind is FailureKind.AUTH:
        log.error("ejected %s: it refused the router's key (HTTP %s); check %s", served_by, failure.http_status,
                  key_source)
    else:
        log.warning("ejected %s: %s", served_by, failure)


def _account(state: RouterState, route: policy.Route, attempt: policy.Attempt, relayed: Relayed,
             failures: list[UpstreamFailure], exchange: Exchange) -> None:
    served_by = exchange.served_by
    exchange.status, exchange.usage = relayed.status, relayed.usage
    if isinstance(attempt, policy.EndpointAttempt):
        if relayed.broke_mid_stream:
            if state.health.failed(attempt.record.id, relayed.broke_mid_stream):
                state.metrics.ejection(attempt.record.id)
                state.samples.ejected(attempt.record.id)
                log.warning("ejected %s: its stream broke: %s", attempt.record.id, relayed.broke_mid_stream)
        else:
            state.health.succeeded(attempt.record.id)
    elif state.cloud_health.get(attempt.provider.name).ejected:
        state.cloud_health.restored(attempt.provider.name)  # the first request after its cooldown was accepted
    if relayed.client_gone:
        exchange.status = CLIENT_CLOSED
        state.metrics.client_disconnect(exchange.route, served_by)
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
    seconds = time.perf_counter() - exchange.started
    state.metrics.request(exchange.route, route.category.name, served_by, relayed.status, seconds)
    state.samples.served(route.category.name, served_by, isinstance(attempt, policy.CloudAttempt), relayed.status,
                         seconds)


def _what(route: policy.Route) -> str:
    """What the client asked for, in its own words: the model it named, else the category."""
    return f"model {route.requested!r}" if route.requested else f"category {route.category.name!r}"


def _nothing_served(state: RouterState, route: policy.Route, failures: list[UpstreamFailure],
                    exchange: Exchange, tab: Tab) -> web.Response:
    exchange.served_by = "-"
    state.samples.unserved(route.category.name)
    if tab.over_budget:
        state.metrics.error("budget_exceeded", 429)
        exchange.status = 429
        return state.users.budget_exceeded(tab)
    if failures:
        status, code = CLIENT_ERROR[failures[-1].kind]
        state.users.finish(tab, status)
        detail = "; ".join(str(f) for f in failures[-3:])
        error_type = "rate_limit_error" if status == 429 else "upstream_error"
        return _refuse(state, exchange, status, "upstream", f"every upstream for {_what(route)} failed: {detail}",
                       code, error_type=error_type)
    state.users.finish(tab, 503)
    clouds = [state.routing.provider(n) for n in route.category.cloud]
    unset = [f"${p.api_key_env}" for p in clouds if not state.environ.get(p.api_key_env)]
    cloud_hint = f"; cloud keys not set: {', '.join(unset)}" if unset else ("" if clouds else "; no cloud fallback")
    models = ", ".join(route.models) or "none (cloud only)"
    response = _refuse(
        state, exchange, 503, "no_endpoint",
        f"no ready, healthy endpoint with room for {_what(route)} (models: {models}){cloud_hint}; "
        "see GET /status and `grace-hpc status`",
        "no_endpoint_available", error_type="service_unavailable",
    )
    if route.category.cold_start_wait_s:  # a replica is on its way: the client may come back
        response.headers["Retry-After"] = str(math.ceil(route.category.cold_start_wait_s))
    return response
