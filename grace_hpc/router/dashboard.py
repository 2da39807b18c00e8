"""The live dashboard on the router's own port: a static page and the JSON API it polls (docs/dashboard.md).

    GET /ui/                   the page (static files shipped in the package; they hold no data)
    GET /api/dashboard         every section the router has a source for, in one object
    GET /api/fleet             servers: jobs, SLURM state and pending reason, endpoint state, plan summary
    GET /api/load              per endpoint: in flight vs capacity, req/s, p50/p95, errors, ejections (15 min)
    GET /api/routing           requests per category, local vs cloud share (15 min)

The API needs an admin key, as /status does (admin.py; none on a loopback router started without keys); the page
itself holds no data and asks for the key. Nothing
here runs unless a page or a script asks: the request path only records samples (`samples.py`).
A new panel is one more entry in `SECTIONS`: a builder that returns its section, or None when its source is
absent (the section is then left out of /api/dashboard and its own URL answers 404).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import BaseModel

from grace_hpc.router.admin import admin_denied
from grace_hpc.router.dashboard_view import fleet_section, load_section, routing_section
from grace_hpc.router.errors import error_response
from grace_hpc.router.fleet_jobs import CachedJobs, JobsSource
from grace_hpc.router.samples import BUCKET_S

if TYPE_CHECKING:
    from grace_hpc.router.state import RouterState

#: how often the page polls /api/dashboard; the fleet's jobs are re-read at most every fleet_jobs.JOBS_TTL_S
REFRESH_S = 2.0
STATIC = {"index.html": "text/html", "dashboard.js": "text/javascript", "dashboard.css": "text/css",
          "models.html": "text/html", "models.js": "text/javascript", "models.css": "text/css"}  # models_api.py
#: the page loads nothing from elsewhere (it works through an SSH tunnel) and runs no inline script
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass
class Dashboard:
    state: RouterState
    jobs: CachedJobs | None = None  # None: no launch manifests or SLURM known to this router (fleet = registry)


DASHBOARD = web.AppKey("grace_dashboard", Dashboard)


def add_dashboard(app: web.Application, state: RouterState) -> None:
    """Serve the page and its API from `app` (create_app does this)."""
    app[DASHBOARD] = Dashboard(state)
    app.router.add_get("/ui", _to_page)
    app.router.add_get("/ui/", _page)
    app.router.add_get("/ui/{name}", _page)
    app.router.add_get("/api/dashboard", _everything)
    for name in SECTIONS:
        app.router.add_get(f"/api/{name}", _one_section)


def use_jobs(app: web.Application, source: JobsSource) -> None:
    """Show the launch manifests' jobs and SLURM's view of them in the fleet panel (`grace-hpc route` does)."""
    dash = app[DASHBOARD]
    dash.jobs = CachedJobs(source, dash.state.clock)


async def _fleet(dash: Dashboard) -> BaseModel:
    state = dash.state
    records = state.records
    table = await dash.jobs.get(records) if dash.jobs else None
    return fleet_section(records, {r.id: state.health.status(r.id) for r in records}, table,
                         now=state.wall_clock(), stale_after_s=state.stale_after_s, registry_error=state.registry_error)


async def _load(dash: Dashboard) -> BaseModel:
    state, samples = dash.state, dash.state.samples
    registered = [r.id for r in state.records]
    # then cloud providers and endpoints that left the registry but served in the window
    ids = registered + [k for k in samples.endpoints if k not in set(registered)]
    health = {i: state.health.status(i) for i in ids if i in state.health.entries}
    return load_section(state.records, health, samples.summaries(samples.endpoints, ids), window_s=samples.window_s,
                        bucket_s=BUCKET_S)


async def _routing(dash: Dashboard) -> BaseModel:
    state, samples = dash.state, dash.state.samples
    names = [c.name for c in state.routing.categories]
    return routing_section(state.routing, samples.summaries(samples.categories, names), window_s=samples.window_s)


async def _usage(dash: Dashboard) -> BaseModel | None:
    return dash.state.users.usage_section()  # None without a ledger (router/users.py)


SECTIONS: dict[str, Callable[[Dashboard], Awaitable[BaseModel | None]]] = {
    "fleet": _fleet,
    "load": _load,
    "routing": _routing,
    "usage": _usage,
}


def _denied(request: web.Request) -> web.Response | None:
    return admin_denied(request, f"GET {request.path}", " (the page asks for it once per browser tab)")


def _json(data: dict[str, object]) -> web.Response:
    return web.json_response(data, headers={"Cache-Control": "no-store"})


async def _everything(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    dash = request.app[DASHBOARD]
    body: dict[str, object] = {"generated_at": round(dash.state.wall_clock(), 3), "refresh_s": REFRESH_S}
    for name, build in SECTIONS.items():
        section = await build(dash)
        if section is not None:
            body[name] = section.model_dump(mode="json")
    return _json(body)


async def _one_section(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    name = request.path.rsplit("/", 1)[-1]
    section = await SECTIONS[name](request.app[DASHBOARD])
    if section is None:
        return error_response(404, f"{name}: this router has no source for it", "section_absent")
    return _json(section.model_dump(mode="json"))


async def _to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("ui/")  # relative: right behind a reverse proxy's path prefix too


async def _page(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index.html")
    if name not in STATIC:  # a fixed list: no path from the URL ever reaches the file system
        raise web.HTTPNotFound()
    body = resources.files("grace_hpc.router").joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=STATIC[name], charset="utf-8", headers=PAGE_HEADERS)
