"""`grace-hpc stop`: cancel server jobs and wait until their endpoints have left the registry."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from grace_hpc.cli.common import add_common, config_dir, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stop", help="cancel the server jobs of a deployment and wait for deregistration")
    add_common(p)
    p.add_argument("--deployment", help="only this deployment")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these servers or models")
    p.add_argument("--all", action="store_true", help="every deployment launched from this project")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for deregistration")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from grace_hpc.errors import ConfigError
    from grace_hpc.launch.launcher import all_manifests, manifest_of
    from grace_hpc.launch.stopping import stop_jobs
    from grace_hpc.registry.store import Registry

    if not args.deployment and not args.all:
        raise ConfigError("say what to stop: --deployment NAME, or --all")
    config = config_dir(args)
    cluster = config.cluster()
    manifests = ([manifest_of(config, cluster, config.deployment(args.deployment).name)] if args.deployment
                 else all_manifests(config, cluster))
    stopped = stop_jobs(Registry.from_cluster(cluster, config), manifests, args.only, args.timeout)
    if args.json:
        print_json([asdict(s) for s in stopped])
        return 0
    for s in stopped:
        print(f"stopped {s.server} (job {s.job_id}: {', '.join(s.models)})"
              + ("" if s.deregistered else " - still registered: `grace-hpc registry reap` removes it"))
    if not stopped:
        print("nothing to stop")
    return 0
