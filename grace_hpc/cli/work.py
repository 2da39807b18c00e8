"""`grace-hpc work`: push a dataset through the router (one shard), `work submit` (a SLURM array), `work merge`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import submitit

from grace_hpc.cli.common import add_common, config_dir, positive_int, print_json
from grace_hpc.errors import WorkError
from grace_hpc.registry.store import Registry
from grace_hpc.registry.verdicts import verdict_path

if TYPE_CHECKING:
    from grace_hpc.work.runner import WorkSpec

# The worker's modules (pandas, pyarrow, aiohttp: ~1 s to import) are imported by the handlers that use them, so
# that every other command (`status`, `plan`, `--help`) does not pay for them.


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=Path, metavar="DATA", help="rows to process: .csv, .jsonl or .parquet")
    p.add_argument("--task", metavar="TASK", help="a task name under configs/tasks/ or a task YAML file")
    p.add_argument("--output", type=Path, metavar="DIR", help="results folder (shard-I-of-N/part-*.parquet)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--models", metavar="M1,M2", help="send every row to each of these models")
    who.add_argument("--category", metavar="C", help="send every row to the router's category C")
    p.add_argument("--router", metavar="URL", help="send requests to this OpenAI-compatible base URL (a router or "
                   "one engine; default: $GRACE_ROUTER_URL; key from $GRACE_ROUTER_KEY); without it the worker routes "
                   "each request itself over the registry's ready endpoints (works on compute nodes: no router hop)")
    p.add_argument("--registry", metavar="PATH",
                   help="registry file (default: $GRACE_REGISTRY, else paths.registry in cluster.yaml)")
    p.add_argument("--routing", default="default", metavar="NAME|FILE",
                   help="routing table for in-process routing: a name under routing/ or a YAML file (default: default)")
    p.add_argument("--concurrency", type=int, default=8, metavar="K", help="requests in flight (default 8)")
    p.add_argument("--retries", type=int, default=4, help="retries of a transient failure per request (default 4)")
    p.add_argument("--part-rows", type=int, default=200, help="rows per result part (default 200)")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]  # argparse's private type
    p = sub.add_parser("work", help="run a task over a dataset through the router (one shard)",
                       description="Run TASK over DATA's rows of this shard; rerun to finish an interrupted shard.")
    add_common(p)
    _run_arguments(p)
    p.add_argument("--shard", metavar="I/N", help="this shard (0-based); default: the SLURM array task, else 0/1")
    p.set_defaults(handler=run)
    actions = p.add_subparsers(dest="work_action", metavar="ACTION")

    s = actions.add_parser("submit", help="run every shard as a SLURM array (submitit)")
    add_common(s)
    _run_arguments(s)
    s.add_argument("--shards", type=positive_int, default=4, help="array tasks (default 4)")
    s.add_argument("--parallelism", type=positive_int, default=4, help="array tasks running at once (default 4)")
    s.add_argument("--partition", help="SLURM partition of the workers")
    s.add_argument("--time-min", type=positive_int, default=240, help="time limit per task in minutes (default 240)")
    s.add_argument("--mem-gb", type=positive_int, default=2)
    s.add_argument("--cpus-per-task", type=positive_int, default=1)
    s.add_argument("--account")
    s.add_argument("--qos")
    s.add_argument("--folder", type=Path, help="submitit logs (default: OUTPUT/_submitit)")
    s.add_argument("--wait", action="store_true", help="wait for every shard, then merge")
    s.add_argument("--render-only", action="store_true",
                   help="print the equivalent sbatch array script instead of submitting")
    s.set_defaults(handler=run_submit)

    m = actions.add_parser("merge", help="merge a run's shards into one parquet file with a summary")
    add_common(m)
    m.add_argument("dir", type=Path, metavar="DIR", help="the --output folder of the run")
    m.add_argument("--out", type=Path, metavar="FILE", help="merged file (default: DIR/merged.parquet)")
    m.add_argument("--flat", action="store_true", help="also write FILE-flat.parquet: one column per input field, "
                   "option probability and grid value (ready for pandas)")
    m.set_defaults(handler=run_merge)


def _spec(args: argparse.Namespace, resolve: bool = True) -> WorkSpec:
    from grace_hpc.work.fleet import FleetSpec
    from grace_hpc.work.runner import WorkSpec
    from grace_hpc.work.tasks import load_task

    missing = [f"--{n}" for n in ("input", "task", "output") if getattr(args, n) is None]
    if missing:
        raise WorkError(f"missing {', '.join(missing)} (see `grace-hpc work --help`)")
    if not (args.models or args.category):
        raise WorkError("say where to send rows: --models M1,M2 or --category C")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else (args.category,)
    if args.concurrency < 1 or args.part_rows < 1 or args.retries < 0:
        raise WorkError("--concurrency and --part-rows must be >= 1, --retries >= 0")
    config = config_dir(args)
    task = load_task(args.task, config.root / "tasks")
    cluster = config.cluster()
    registry = Path(args.registry).absolute() if args.registry else Registry.from_cluster(cluster, config).path
    router = args.router or os.environ.get("GRACE_ROUTER_URL")
    fleet = None if router else FleetSpec(registry=registry, lock_mode=cluster.lock_mode,
                                          routing=config.routing(args.routing), stale_after_s=cluster.stale_after_s)
    # resolved for a run; a rendered script keeps paths as typed (relative to where it is submitted from)
    where = (lambda p: p.resolve()) if resolve else (lambda p: p)
    return WorkSpec(input=where(args.input), task=task, output=where(args.output), models=models,
                    base_url=router, fleet=fleet, concurrency=args.concurrency, retries=args.retries,
                    part_rows=args.part_rows, verdicts=verdict_path(registry))


def run(args: argparse.Namespace) -> int:
    from grace_hpc.work.runner import run_shard
    from grace_hpc.work.shards import parse_shard, shard_from_env

    spec = _spec(args)
    shard = parse_shard(args.shard) if args.shard else shard_from_env(os.environ)
    summary = asyncio.run(run_shard(spec, shard, os.environ.get("GRACE_ROUTER_KEY")))
    if args.json:
        print_json(summary.model_dump())
    else:
        print(f"shard {summary.shard}: {summary.ok} answered, {summary.failed} failed, {summary.skipped_done} "
              f"already done, of {summary.rows_in_shard}; {summary.parts_written} part(s) in {spec.output}")
    return 0


def run_submit(args: argparse.Namespace) -> int:
    from grace_hpc.work.submit import ArrayOptions, render_sbatch, submit_array, worker_argv

    spec = _spec(args, resolve=not args.render_only)
    options = ArrayOptions(shards=args.shards, parallelism=args.parallelism, partition=args.partition,
                           time_min=args.time_min, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                           account=args.account, qos=args.qos)
    if args.render_only:
        argv = worker_argv(spec, args.task, args.category, args.routing)
        sys.stdout.write(render_sbatch(argv, options, {"PYTHONUNBUFFERED": "1"}))
        return 0
    jobs = submit_array(spec, options, (args.folder or spec.output / "_submitit").resolve())
    print(f"submitted {len(jobs)} worker task(s): {', '.join(j.job_id for j in jobs)}")
    if not args.wait:
        print(f"when they finish: grace-hpc work merge {spec.output}")
        return 0
    _watch(jobs, spec)
    for job in jobs:
        try:
            job.result()
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as exc:
            raise WorkError(f"worker task {job.job_id} failed; its log: {job.paths.stderr}\n{exc}") from exc
    return run_merge(argparse.Namespace(dir=spec.output, out=None, flat=False, json=args.json))


def _watch(jobs: list[submitit.Job[object]], spec: WorkSpec, every_s: float = 5.0) -> None:
    """A progress line on stderr every `every_s` until every shard finished: shards done, rows written, rows/s."""
    from grace_hpc.work.inputs import iter_rows
    from grace_hpc.work.results import rows_written

    total = sum(1 for _ in iter_rows(spec.input)) * len(spec.models)
    before, started = rows_written(spec.output), time.monotonic()
    while True:
        done = sum(1 for j in jobs if j.done())
        written = rows_written(spec.output)
        rate = (written - before) / max(time.monotonic() - started, 1e-9)
        print(f"{done}/{len(jobs)} shards done, {written}/{total} rows written, {rate:.1f} rows/s",
              file=sys.stderr, flush=True)
        if done == len(jobs):
            return
        time.sleep(every_s)


def run_merge(args: argparse.Namespace) -> int:
    from grace_hpc.work.merge import failures, flat_path, merge

    summary = merge(args.dir, args.out, flat=args.flat)
    if args.json:
        print_json({**summary.model_dump(), "complete": summary.complete})
        return 0
    print(f"merged {summary.rows} rows into {summary.output}: {summary.ok} answered, {summary.failed} failed "
          f"({summary.superseded_failures} earlier failures superseded by reruns)")
    if args.flat:
        print(f"  flat table: {flat_path(Path(summary.output))}")
    for model, counts in summary.by_model.items():
        print(f"  {model}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for f in failures(Path(summary.output)):
        print(f"  failed {f['row_id']} ({f['model']}): {f['error']}")
    if summary.incomplete_shards:
        print(f"  not finished: {', '.join(summary.incomplete_shards)} (rerun them; done rows are skipped)")
    return 0
