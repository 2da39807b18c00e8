"""`grace-hpc bench`: TTFT, TPOT, throughput and latency percentiles per endpoint against load (docs/bench.md);
`bench submit` runs the same as a SLURM job next to each server."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from grace_hpc.cli.common import add_common, config_dir, print_json
from grace_hpc.cli.common import console as make_console
from grace_hpc.errors import ConfigError

DEFAULT_CONCURRENCY = "1,4,16,64"


def _options(p: argparse.ArgumentParser) -> None:
    add_common(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="every ready endpoint of this model (catalog name or served alias)")
    which.add_argument("--category", help="every ready endpoint serving this task category")
    which.add_argument("--endpoint", metavar="ID", help="one endpoint by registry id")
    which.add_argument("--all", action="store_true", help="every ready endpoint (the default)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", metavar="N,N,...",
                      help=f"closed loop: requests kept in flight, one level each (default {DEFAULT_CONCURRENCY})")
    load.add_argument("--rate", metavar="R,R,...",
                      help="open loop: requests started per second, one level each; latency counts from the "
                           "scheduled send time")
    p.add_argument("--duration", type=float, metavar="S", help="seconds per level (default 30 unless --requests)")
    p.add_argument("--requests", type=int, metavar="N", help="requests per level (with --duration: whichever first)")
    p.add_argument("--prompt-tokens", type=int, default=128, metavar="P", help="synthetic prompt length (default 128)")
    p.add_argument("--output-tokens", type=int, default=64, metavar="O",
                   help="tokens generated per request, EOS ignored (default 64)")
    p.add_argument("--dataset", type=Path, metavar="FILE",
                   help="JSONL prompts instead of synthetic ones: {\"prompt\": ...} or {\"messages\": [...]}, "
                        "optional \"output_tokens\"")
    p.add_argument("--api", choices=("chat", "completions"), default="chat", help="which OpenAI API (default chat)")
    p.add_argument("--no-stream", action="store_true",
                   help="ask for whole answers: end-to-end latency and throughput only, no TTFT or TPOT")
    p.add_argument("--through-router", metavar="URL",
                   help="measure the router at URL for --model/--category (key: $GRACE_ROUTER_KEY)")
    p.add_argument("--registry", metavar="PATH",
                   help="registry file (default: $GRACE_REGISTRY, else paths.registry in cluster.yaml)")
    p.add_argument("--ttft-target", type=float, metavar="MS",
                   help="latency target for the measured capacity: p90 TTFT in ms (default 2000)")
    p.add_argument("--no-record", action="store_true",
                   help="do not write the measured capacity into the registry (the router weighs endpoints by it)")
    p.add_argument("--output", type=Path, metavar="FILE", help="also write the JSON document to FILE")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write one PNG per model into DIR (needs matplotlib)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure TTFT, TPOT and throughput of endpoints against load")
    _options(p)
    p.add_argument("--compare", nargs="+", type=Path, metavar="RESULT.json",
                   help="show earlier results (--output files) side by side instead of measuring")
    p.set_defaults(handler=run)
    actions = p.add_subparsers(dest="bench_action", metavar="ACTION")
    s = actions.add_parser("submit", help="run the benchmark as a SLURM job on each endpoint's node")
    _options(s)
    s.add_argument("--time", default="00:30:00", help="the job's time limit (default 00:30:00)")
    s.add_argument("--dry-run", action="store_true", help="print the sbatch scripts; submit nothing")
    s.set_defaults(handler=run_submit)


def parse_levels(text: str, option: str, integer: bool) -> tuple[float, ...]:
    try:
        values = tuple(int(v) if integer else float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        kind = "positive integers" if integer else "positive numbers"
        raise ConfigError(f"{option} {text!r}: expected comma-separated {kind}, e.g. {option} "
                          + ("1,4,16,64" if integer else "0.5,1,2"))
    return values


def _registry(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from grace_hpc.registry.store import Registry

    config = config_dir(args)
    cluster = config.cluster()
    if args.registry:
        return Registry(Path(args.registry).absolute(), lock_mode=cluster.lock_mode)
    return Registry.from_cluster(cluster, config)


def _selection(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from grace_hpc.bench.targets import Selection

    return Selection(model=args.model, category=args.category, endpoint=args.endpoint)  # none of them: --all


def load_plan(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from grace_hpc.bench.capacity import DEFAULT_TTFT_P90_TARGET_MS
    from grace_hpc.bench.loadgen import Budget
    from grace_hpc.bench.runner import LoadPlan
    from grace_hpc.bench.stats import LoadMode
    from grace_hpc.bench.workload import Api, Workload, load_dataset

    for name in ("duration", "requests", "prompt_tokens", "output_tokens", "ttft_target"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.rate:
        mode, loads = LoadMode.OPEN, parse_levels(args.rate, "--rate", integer=False)
    else:
        mode, loads = LoadMode.CLOSED, parse_levels(args.concurrency or DEFAULT_CONCURRENCY, "--concurrency", True)
    duration = args.duration if args.duration is not None or args.requests is not None else 30.0
    workload = Workload(api=Api(args.api), prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
                        dataset=load_dataset(args.dataset) if args.dataset else (), stream=not args.no_stream)
    return LoadPlan(mode=mode, loads=loads, budget=Budget(duration_s=duration, requests=args.requests),
                    workload=workload, ttft_p90_target_ms=args.ttft_target or DEFAULT_TTFT_P90_TARGET_MS)


def _progress(target, stats) -> None:  # type: ignore[no-untyped-def]
    ttft = "-" if stats.ttft is None else f"{stats.ttft.p90:.0f} ms"
    print(f"  {target.name}: load {stats.load:g}: {stats.requests} requests, {stats.errors} errors, "
          f"{stats.output_tokens_per_s:.1f} out tok/s, p90 TTFT {ttft}", file=sys.stderr, flush=True)


def _show(args: argparse.Namespace, docs: list[dict]) -> None:
    from grace_hpc.bench.report import compare_table, target_table

    if args.plot:
        from grace_hpc.bench.plots import write_plots

        for path in write_plots(docs, args.plot):
            print(f"plot: {path}", file=sys.stderr)
    if args.json:
        print_json(docs[0] if len(docs) == 1 else docs)
        return
    console = make_console()
    for doc in docs:
        for target in doc["targets"]:
            console.print(target_table(doc, target))
    if sum(len(d["targets"]) for d in docs) > 1:
        console.print(compare_table(docs))


def run(args: argparse.Namespace) -> int:
    from grace_hpc.bench import runner
    from grace_hpc.bench.report import document, load_document, write_document
    from grace_hpc.bench.stats import LoadMode
    from grace_hpc.bench.targets import endpoint_target, router_target, select

    if args.compare:
        _show(args, [load_document(p) for p in args.compare])
        return 0
    plan = load_plan(args)
    registry = None
    if args.through_router:
        targets = [router_target(args.through_router, _selection(args), os.environ)]
    else:
        registry = _registry(args)
        targets = [endpoint_target(r) for r in select(registry.snapshot().records, _selection(args))]
    print(f"grace-hpc bench: {len(targets)} target(s), {plan.mode.value} loop at {list(plan.loads)}, "
          f"{plan.workload.describe()}", file=sys.stderr, flush=True)
    result = runner.run(targets, plan, on_level=_progress)
    doc = document(result)
    if registry is not None and not args.no_record and plan.mode is LoadMode.CLOSED:
        for r in result.results:
            if r.capacity is not None and r.target.endpoint_id is not None:
                registry.set_capacity(r.target.endpoint_id, r.capacity)
                print(f"recorded capacity of {r.target.endpoint_id}: {r.capacity.output_tokens_per_s:.1f} output "
                      f"tok/s (router weight)", file=sys.stderr)
    if args.output:  # last: `bench submit` jobs are done when it appears
        write_document(doc, args.output)
    _show(args, [doc])
    return 0


def run_submit(args: argparse.Namespace) -> int:
    from grace_hpc.bench.submit import bench_scripts, submit_script
    from grace_hpc.bench.targets import select

    if args.through_router or args.compare:
        raise ConfigError("bench submit measures endpoints next to their servers: drop --through-router/--compare")
    load_plan(args)  # validate every option here, not in a job that fails minutes later
    config = config_dir(args)
    records = select(_registry(args).snapshot().records, _selection(args))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if not args.dry_run:  # sbatch does not create the --output folder: the job would fail before it starts
        (config.resolve(config.cluster().paths.logs) / "bench").mkdir(parents=True, exist_ok=True)
    for record, script in bench_scripts(config, records, args, stamp):
        if args.dry_run:
            print(f"# {record.id}\n{script}")
        else:
            print(f"{record.id}: submitted job {submit_script(script)}")
    return 0
