"""`grace-hpc launch`: plan a deployment and submit one server job per server (the user's main job)."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from grace_hpc.cli.common import add_common, config_dir, print_json
from grace_hpc.errors import EngineError

if TYPE_CHECKING:
    from grace_hpc.launch.launcher import LaunchResult


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="submit the model servers of a deployment (SLURM, or locally without it)")
    add_common(p)
    p.add_argument("--deployment", default="local",
                   help="name in configs/deployments/ or a YAML path (default: local, the embedded default)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these servers or models")
    p.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto",
                   help="auto: the deployment's choice; SLURM where sbatch exists, else local processes")
    p.add_argument("--replace", action="store_true",
                   help="stop servers of this deployment that are already pending or running and submit them again "
                        "(default: leave them alone)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plans, the engine commands and the sbatch scripts exactly as they run; submit "
                        "nothing (needs no SLURM)")
    p.add_argument("--emit-sbatch", metavar="DIR", help="write one plain sbatch script per server into DIR")
    p.add_argument("--wait", action="store_true", help="show progress until every server is ready or failed")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds --wait waits (default 1800)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from grace_hpc.launch.launcher import launch
    from grace_hpc.launch.sbatch_files import write_sbatch_files

    config = config_dir(args)
    deployment = config.deployment(args.deployment)
    if args.only:
        deployment = deployment.only(args.only)
    if args.emit_sbatch:
        for path in write_sbatch_files(config, deployment, config.deployment_path(args.deployment),
                                       Path(args.emit_sbatch)):
            print(path)
        return 0
    result = launch(config, deployment, executor_kind=args.executor, dry_run=args.dry_run, replace=args.replace)
    if args.dry_run:
        print_dry_run(result, args.json)
        return 0
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout carries only the JSON document
    for s in result.kept:
        print(f"already pending or running: {s.server} ({', '.join(s.models)}) as job {s.job_id} on {s.partition}: "
              "left alone (--replace submits it again)", file=out)
    for s in result.submitted:
        print(f"submitted {s.server} ({', '.join(s.models)}) as job {s.job_id} on {s.partition} [{s.executor}]",
              file=out)
    if not args.wait:
        if args.json:
            print_json([{**asdict(s), "kept": s in result.kept} for s in [*result.kept, *result.submitted]])
        return 0
    from grace_hpc.cli.progress_view import watch_launch

    final = watch_launch(result, timeout_s=args.timeout)
    failed = [p for p in final if p.state == "failed"]
    if args.json:
        print_json([{"server": p.job.server, "job_id": p.job.job_id, "state": p.state, "detail": p.detail}
                    for p in final])
    if failed:
        raise EngineError("; ".join(f"{p.job.server} (job {p.job.job_id}): {p.detail}" for p in failed))
    not_ready = [p for p in final if p.state != "ready"]
    if not_ready:
        raise EngineError(f"not ready after {args.timeout:.0f}s: {', '.join(p.job.server for p in not_ready)}; "
                          "`grace-hpc status` shows where they are")
    return 0


def print_dry_run(result: LaunchResult, as_json: bool) -> None:
    """Each server's plan, the engine argv its job runs (`{host}` and `{port}` are filled in the job, on the port
    it finds free) and the sbatch script submitit submits, byte for byte."""
    if as_json:
        print_json([{"server": ps.server.name, "plan": ps.plan.to_json(),
                     "argv": {m.model: list(m.argv_template) for m in result.specs[ps.server.name].models},
                     "sbatch": result.previews[ps.server.name]} for ps in result.planned])
        for problem in result.missing_weights:
            print(f"launch would refuse: {problem}", file=sys.stderr)
        return
    for ps in result.planned:
        print(f"=== {ps.server.name} on {ps.resources.partition} ({ps.plan.num_gpus} x {ps.plan.gpu}) ===")
        argv = {m.model: m.argv_template for m in result.specs[ps.server.name].models}
        for plan in ps.plan.plans:
            print(f"{plan.model}: engine={plan.engine} dtype={plan.dtype} quantization={plan.quantization} "
                  f"tp={plan.tensor_parallel_size} max_model_len={plan.max_model_len} "
                  f"gpu_memory_utilization={plan.gpu_memory_utilization}")
            print("  engine argv: " + shlex.join(argv[plan.model]))
            for reason in plan.reasons:
                print(f"  - {reason}")
        print(result.previews[ps.server.name])
    for problem in result.missing_weights:  # last, where a reader of a long dry run looks
        print(f"launch would refuse: {problem}")
