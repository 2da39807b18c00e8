"""Who may see the fleet and change it: the router's admin-only pages (docs/usage.md, "Admin keys").

`/status`, the dashboard's API (`/api/*`, the workbench's included) and `/metrics` when the router requires a key
for it show every endpoint, job, user and budget, and `POST /api/models` writes the catalog: on a keyed router they
need an admin key (`grace-hpc keys create --user NAME --admin`). Shared keys (`$GRACE_ROUTER_KEYS`, `--keys-file`)
are admin keys, as they were the only keys before per-user keys existed; a loopback router without keys is open to
its host's users, as before. A valid key that is not an admin's gets a 403 that says how to get one.
"""

from __future__ import annotations

from aiohttp import web

from grace_hpc.router.errors import error_response
from grace_hpc.router.state import STATE


def admin_denied(request: web.Request, what: str, how: str = "") -> web.Response | None:
    """None when the caller may use `what` (e.g. "GET /status"); else the 401 (no valid key; `how` says where
    the key goes) or the 403 (a valid key that is not an admin's)."""
    tab = request.app[STATE].users.open(request.headers.get("Authorization"))
    if tab is None:
        return error_response(401, f"{what} needs an admin router key: send `Authorization: Bearer KEY`{how}",
                              "invalid_api_key", error_type="authentication_error")
    if tab.admin:
        return None
    key_id = tab.key.key_id if tab.key is not None else "-"
    return error_response(403, f"{what} needs an admin key; key {key_id} (user {tab.user}) may only send requests "
                               "to /v1. An admin creates one with `grace-hpc keys create --user NAME --admin`",
                          "admin_key_required", error_type="permission_error")
