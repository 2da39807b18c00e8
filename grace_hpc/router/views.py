"""The router's GET pages: /v1/models, /status, /metrics, /health (liveness) and /ready (readiness)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from grace_hpc.registry.records import EndpointState
from grace_hpc.registry.verdicts import read_verdicts, verdict_for_endpoint, verdict_path
from grace_hpc.router import pending, policy
from grace_hpc.router.admin import admin_denied
from grace_hpc.router.errors import error_response
from grace_hpc.router.state import STATE


def unauthorized(request: web.Request) -> web.Response | None:
    if request.app[STATE].users.open(request.headers.get("Authorization")) is not None:
        return None
    return no_key()


def no_key() -> web.Response:
    return error_response(401, "missing or invalid API key: send `Authorization: Bearer KEY` with a router key",
                          "invalid_api_key", error_type="authentication_error")


async def models(request: web.Request) -> web.Response:
    if (denied := unauthorized(request)) is not None:
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


async def status(request: web.Request) -> web.Response:
    if (denied := admin_denied(request, "GET /status")) is not None:
        return denied
    state = request.app[STATE]
    now, stale_before = state.wall_clock(), state.stale_before()
    registry_path = getattr(state.source, "path", None)  # the file-backed registry: its verdicts sit beside it
    verdicts = (await asyncio.to_thread(read_verdicts, verdict_path(registry_path))
                if isinstance(registry_path, Path) else [])
    endpoints = [
        {"id": r.id, "model": r.model, "served_model_name": r.served_model_name, "state": r.state.value,
         "base_url": r.base_url, "engine": r.engine, "quantization": r.plan.quantization,
         "max_num_seqs": r.plan.max_num_seqs, "stale": policy.stale(r, stale_before),
         "heartbeat_age_s": round(now - r.heartbeat_at, 1), **state.health.status(r.id),
         "logprobs": verdict_for_endpoint(verdicts, r.id, r.base_url, (r.model, r.served_model_name))}
        for r in state.records
    ]
    cloud = [{"name": p.name, "base_url": p.base_url, "key_env": p.api_key_env,
              "key_set": bool(state.environ.get(p.api_key_env)), **state.cloud_health.status(p.name)}
             for p in state.routing.cloud]
    routable = {m for r in state.records if state.routable(r, stale_before) for m in (r.model, r.served_model_name)}
    waiting = pending.not_ready(await pending.job_table(request.app), routable, state.demand.wanted())
    return web.json_response({"registry_error": state.registry_error, "endpoints": endpoints, "cloud": cloud,
                              "not_ready": waiting})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.users.metrics_need_key and (denied := admin_denied(request, "GET /metrics")) is not None:
        return denied
    ids = [r.id for r in state.records]
    text = state.metrics.render(
        {i: state.health.get(i).in_flight for i in ids}, {i: not state.health.get(i).ejected for i in ids}
    ) + state.users.metrics.render()
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Prometheus-Format": "0.0.4"})


async def health(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer (200 while it runs), whatever it can route to."""
    return web.json_response({"status": "ok", **_readiness(request)})


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 when at least one endpoint is routable or a cloud provider is usable, else 503."""
    body = _readiness(request)
    is_ready = bool(body["routable_endpoints"] or body["cloud_ready"])
    return web.json_response({"ready": is_ready, **body}, status=200 if is_ready else 503)


def _readiness(request: web.Request) -> dict[str, object]:
    state = request.app[STATE]
    stale_before = state.stale_before()
    routable = sum(1 for r in state.records if state.routable(r, stale_before))
    return {"routable_endpoints": routable, "cloud_ready": state.cloud_ready(), "registry_error": state.registry_error}
