"""`grace-hpc serve`: run one server's supervisor in the current (sbatch) job. `launch` does this through
submitit; the scripts of `launch --emit-sbatch` do it through this command."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess

from grace_hpc.cli.common import add_common, config_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one server of a deployment in this job (used by sbatch scripts)")
    add_common(p, json_output=False)
    p.add_argument("--deployment", required=True)
    p.add_argument("--server", required=True, help="server name in the deployment")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from grace_hpc.errors import ConfigError
    from grace_hpc.launch.launcher import plan_deployment
    from grace_hpc.launch.specs import serve_spec
    from grace_hpc.logging_setup import configure_logging
    from grace_hpc.registry.store import Registry
    from grace_hpc.serve.supervisor import Supervisor

    configure_logging()
    config = config_dir(args)
    cluster, catalog = config.cluster(), config.catalog()
    deployment = config.deployment(args.deployment)
    planned = [ps for ps in plan_deployment(cluster, catalog, deployment.only([args.server]))
               if ps.server.name == args.server]
    if not planned:
        names = ", ".join(s.name for s in deployment.servers)
        raise ConfigError(f"no server {args.server!r} in deployment {deployment.name!r}; servers: {names}")
    in_slurm = bool(os.environ.get("SLURM_JOB_ID"))
    registry = Registry.from_cluster(cluster, config)
    spec = serve_spec(config, cluster, catalog, deployment, planned[0].server, planned[0].plan,
                      registry_path=str(registry.path), local=not in_slurm)
    supervisor = Supervisor(spec, registry)

    def requeue(signum: int, frame: object) -> None:  # USR2: time limit or preemption warning
        supervisor.shutdown("requeued before the time limit")
        subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
        raise SystemExit(0)

    if in_slurm:
        signal.signal(signal.SIGUSR2, requeue)
    supervisor.run()
    return 0
