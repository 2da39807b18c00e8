"""The model workbench's JSON API on the router: what the dashboard's Models page calls (docs/workbench.md).

    GET  /api/models           the catalog: complete entries and the incomplete ones (with what they lack)
    POST /api/models/parse     {"text": PAGE, "name"?, "model_id"?, "license"?, "bits"?}: the entry a pasted page
                               gives and its plan on every partition; nothing is written
    POST /api/models           the same body (or {"hf_id": ID} for a config.json in paths.hf_cache), plus
                               "dry_run"?: the entry written into models.yaml (201)

Every call needs an admin key as /api/dashboard does (admin.py); writing also needs a router started with keys (a keyless
loopback router is open to every user of a shared login node). Pasted text is parsed, never followed: no call
here fetches anything. The numbers are those of `grace-hpc models add --json` and `plan --json`, from the same
functions (grace_hpc/workbench.py), run off the event loop so routing never waits for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import ConfigError, GraceError
from grace_hpc.router.admin import admin_denied
from grace_hpc.router.errors import error_response
from grace_hpc.router.state import STATE
from grace_hpc.workbench import Overrides, add_entry, describe, entry_from_cache, entry_from_page_or_cache

__all__ = ["add_models_api"]


@dataclass
class ModelsApi:
    configs: ConfigDir
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)  # one catalog edit at a time from this router


MODELS_API = web.AppKey("grace_models_api", ModelsApi)


def add_models_api(app: web.Application, configs: ConfigDir) -> None:
    """Serve the workbench API from `app` over `configs` (`grace-hpc route` does)."""
    app[MODELS_API] = ModelsApi(configs)
    app.router.add_get("/api/models", _list)
    app.router.add_post("/api/models/parse", _parse)
    app.router.add_post("/api/models", _add)


def _denied(request: web.Request) -> web.Response | None:
    return admin_denied(request, f"{request.method} {request.path}")


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ConfigError("send the page as JSON: Content-Type: application/json, {\"text\": \"...\"}")
    try:
        body = await request.json()
    except ValueError:
        raise ConfigError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object")
    for key in ("text", "hf_id", "name", "model_id", "license"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ConfigError(f"{key!r} must be a string")
    if body.get("bits") is not None and not isinstance(body["bits"], int):
        raise ConfigError("'bits' must be an integer")
    if not (body.get("text") or body.get("hf_id")):
        raise ConfigError("give the pasted page as \"text\" (or a cached model as \"hf_id\")")
    return body


def _entry(api: ModelsApi, body: dict[str, Any]) -> Any:
    over = Overrides(name=body.get("name") or None, model_id=body.get("model_id") or None,
                     license=body.get("license") or None, bits=body.get("bits"))
    if body.get("text"):
        return entry_from_page_or_cache(body["text"], api.configs.cluster(), api.configs, over)
    return entry_from_cache(body["hf_id"], api.configs.cluster(), api.configs, over)


async def _off_loop(work: Callable[[], Any], status: int = 200, code: str = "unreadable_model") -> web.Response:
    """`work()` in a thread; a GraceError (unreadable page, taken name, bad catalog) answers 422 with its message."""
    try:
        return _json(await asyncio.to_thread(work), status)
    except GraceError as exc:
        return error_response(422, str(exc), code)


async def _list(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    api = request.app[MODELS_API]

    def listing() -> dict[str, Any]:
        catalog = api.configs.catalog()
        return {"models": [m.model_dump(mode="json", exclude_defaults=True) for m in catalog.models],
                "incomplete": [dict(i.model_dump(mode="json", exclude_defaults=True), reason=i.reason())
                               for i in catalog.incomplete]}

    return await _off_loop(listing, code="catalog_unreadable")


async def _parse(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    api = request.app[MODELS_API]
    try:
        body = await _body(request)
    except ConfigError as exc:
        return error_response(400, str(exc), "bad_request")
    return await _off_loop(lambda: describe(_entry(api, body), api.configs.cluster()))


async def _add(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    if not request.app[STATE].users.keyed:
        return error_response(403, "this router has no client keys, so anyone on the machine could write the "
                                   "catalog: restart `grace-hpc route` with keys (`grace-hpc keys create`, --keys-file or "
                                   "$GRACE_ROUTER_KEYS), or use `grace-hpc models add`", "catalog_read_only",
                              error_type="permission_error")
    api = request.app[MODELS_API]
    try:
        body = await _body(request)
    except ConfigError as exc:
        return error_response(400, str(exc), "bad_request")
    dry_run = body.get("dry_run") is True

    def add() -> dict[str, Any]:
        edit = add_entry(api.configs, _entry(api, body), dry_run=dry_run)
        return {**describe(edit.entry, api.configs.cluster()), "written": not dry_run, "completed": edit.completed,
                "backup": str(edit.backup) if edit.backup else None}

    async with api.writing:
        return await _off_loop(add, 200 if dry_run else 201, "model_not_added")
