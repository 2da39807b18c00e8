"""`grace-hpc route`: one OpenAI-compatible URL in front of every live endpoint (see docs/router.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from grace_hpc.cli.common import add_common, config_dir, port_number
from grace_hpc.cli.users_common import add_key_store, add_ledger, key_store, ledger_target


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("route", help="run the OpenAI-compatible router over the endpoint registry")
    add_common(p, json_output=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback requires client keys)")
    p.add_argument("--port", type=port_number, default=8000, help="port to bind; 0 picks a free one (default 8000)")
    p.add_argument("--routing", default="default", metavar="NAME|FILE",
                   help="routing table: a name under routing/ or a YAML file (default: routing/default.yaml)")
    p.add_argument("--registry", metavar="PATH",
                   help="registry file (default: $GRACE_REGISTRY, else paths.registry in cluster.yaml)")
    p.add_argument("--keys-file", type=Path, metavar="FILE",
                   help="owner-only file of client keys, one a line (also: $GRACE_ROUTER_KEYS, comma-separated)")
    add_key_store(p)
    add_ledger(p, off=True)
    p.add_argument("--metrics-need-key", action="store_true", help="GET /metrics needs a router key too")
    p.add_argument("--access-log", type=Path, metavar="FILE",
                   help="append one JSON line per request to FILE (request id, category, model, server, status, "
                        "latency, tokens; never prompts or keys); off by default")
    p.add_argument("--print-url", action="store_true", help="print the URL on stdout once listening (for scripts)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from grace_hpc.fleet.demand import DemandFile
    from grace_hpc.logging_setup import configure_logging
    from grace_hpc.registry.store import Registry
    from grace_hpc.router import create_app, run_router
    from grace_hpc.router.auth import client_keys, require_keys_off_loopback
    from grace_hpc.router.dashboard import use_jobs
    from grace_hpc.router.fleet_jobs import ManifestJobs
    from grace_hpc.router.models_api import add_models_api
    from grace_hpc.router.users import open_users

    configure_logging()
    config = config_dir(args)
    routing = config.routing(args.routing)
    cluster = config.cluster()
    if args.registry:
        registry = Registry(Path(args.registry).absolute(), lock_mode=cluster.lock_mode)
    else:
        registry = Registry.from_cluster(cluster, config)
    keys = client_keys(args.keys_file, os.environ)
    users = open_users(keys, key_store(args), ledger_target(args), metrics_need_key=args.metrics_need_key)
    require_keys_off_loopback(args.host, keys | frozenset(users.table.by_id))
    app = create_app(routing, registry, client_keys=keys, stale_after_s=cluster.stale_after_s, users=users,
                     demand_file=DemandFile(registry.path.parent),  # what `fleet run` scales by
                     access_log=args.access_log)
    use_jobs(app, ManifestJobs(config, cluster))  # the dashboard's fleet panel: manifests and SLURM
    add_models_api(app, config)  # the workbench: /api/models (the dashboard's Models page)

    def listening(url: str) -> None:
        if args.print_url:
            print(url, flush=True)
        print(f"grace-hpc router on {url}/v1, dashboard {url}/ui/ (registry {registry.path}, "
              f"routing {config.routing_path(args.routing)}, "
              f"{'client keys required' if keys or users.table.by_id else 'no client keys'}, "
              f"ledger {users.ledger.where if users.ledger else 'off'})", file=sys.stderr, flush=True)

    run_router(app, args.host, args.port, on_listening=listening)
    return 0
