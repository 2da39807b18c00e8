"""`grace-hpc status`: servers, their jobs and endpoints, health and load, at a glance (login node)."""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from grace_hpc.cli.common import add_common, config_dir, print_json
from grace_hpc.cli.common import console as make_console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show server jobs, endpoints, health and load")
    add_common(p)
    p.add_argument("--watch", action="store_true", help="refresh every 2 s until Ctrl-C")
    p.add_argument("--no-probe", action="store_true", help="do not contact the endpoints")
    p.add_argument("--router", metavar="URL", default=os.environ.get("GRACE_ROUTER_URL"),
                   help="also show the router's load and health per endpoint (default: $GRACE_ROUTER_URL; "
                        "key from $GRACE_ROUTER_KEY)")
    p.add_argument("--web", action="store_true",
                   help="print the router's dashboard URL (and the SSH tunnel to reach it from your laptop)")
    p.set_defaults(handler=run)


@dataclass(frozen=True)
class WebAccess:
    url: str  # what to open in a browser
    tunnel: str | None  # the ssh command to run on the laptop first; None when the browser can reach the router


def web_access(router_url: str, *, this_host: str, user: str, over_ssh: bool, local_port: int | None = None
               ) -> WebAccess:
    """Where the dashboard of the router at `router_url` is. From a laptop, a router on a login or compute node is
    reached through an SSH tunnel to the host `status` runs on; the URL is then the tunnel's local end."""
    from grace_hpc.router.auth import is_loopback

    parts = urlsplit(router_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    prefix = parts.path.rstrip("/").removesuffix("/v1")
    if not over_ssh and is_loopback(host):
        return WebAccess(f"{parts.scheme}://{parts.netloc}{prefix}/ui/", None)
    local = local_port or port
    target = f"[{host}]" if ":" in host else host
    tunnel = f"ssh -N -L {local}:{target}:{port} {user}@{this_host}"
    return WebAccess(f"http://127.0.0.1:{local}{prefix}/ui/", tunnel)


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def _table(rows, summary_line):  # type: ignore[no-untyped-def]
    from rich.table import Table

    table = Table(title="grace-hpc status", caption=summary_line)
    for col in ("model", "server", "partition", "gpu", "job", "job state", "node", "endpoint", "registry",
                "reachable", "load", "log-probs", "uptime", "heartbeat", "flags"):
        table.add_column(col)
    for r in rows:
        reach = {True: "[green]yes", False: "[red]no", None: ""}[r.reachable]
        state = r.job_state + (f" ({r.reason})" if r.reason and r.reason != "None" else "")
        table.add_row(r.model, r.server or "", r.partition or "", r.gpu or "", r.job_id or "", state, r.node or "",
                      r.endpoint or "", r.registry_state, reach,
                      "" if r.in_flight is None else f"{r.in_flight}/{r.capacity or '?'}",
                      {"passed": "[green]passed", "FAILED": "[red]FAILED", None: ""}[r.logprobs],
                      _fmt_age(r.uptime_s), _fmt_age(r.heartbeat_age_s),
                      "[red]" + "; ".join(r.flags) if r.flags else "")
    return table


def _print_web(router_url: str | None, as_json: bool) -> int:
    from grace_hpc.errors import GraceError

    if not router_url:
        raise GraceError("--web needs the router's URL: pass --router URL or set $GRACE_ROUTER_URL")
    access = web_access(router_url, this_host=socket.getfqdn(), user=getpass.getuser(),
                        over_ssh=bool(os.environ.get("SSH_CONNECTION")))
    if as_json:
        print_json({"url": access.url, "tunnel": access.tunnel})
    elif access.tunnel:
        print(f"on your laptop, run: {access.tunnel}\nthen open: {access.url}")
    else:
        print(access.url)
    return 0


def run(args: argparse.Namespace) -> int:
    from grace_hpc.status import collect, router_view, rows_as_json

    if args.web:
        return _print_web(args.router, args.json)
    config = config_dir(args)
    cluster = config.cluster()
    console = make_console()
    while True:
        router = router_view(args.router, os.environ.get("GRACE_ROUTER_KEY")) if args.router else None
        rows, line = collect(config, cluster, probe=not args.no_probe, router=router)
        if args.json:
            print_json({"summary": line, "servers": rows_as_json(rows)})
        else:
            if args.watch:
                console.clear()
            console.print(_table(rows, line) if rows else line)  # no empty 14-column table: say what to do
        if not args.watch:
            return 0
        time.sleep(2.0)
