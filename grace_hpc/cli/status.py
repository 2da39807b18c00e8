"""`grace-hpc status`: servers, their jobs and endpoints, health and load, at a glance (login node)."""

from __future__ import annotations

import argparse
import os
import time

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
    p.set_defaults(handler=run)


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


def run(args: argparse.Namespace) -> int:
    from grace_hpc.status import collect, router_view, rows_as_json

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
            console.print(_table(rows, line))
        if not args.watch:
            return 0
        time.sleep(2.0)
