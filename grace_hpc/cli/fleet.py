"""`grace-hpc fleet run|status`: the elastic fleet controller of a deployment, and what it decided."""

from __future__ import annotations

import argparse
import getpass
import shlex
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from grace_hpc.cli.common import add_common, config_dir, print_json

if TYPE_CHECKING:
    from grace_hpc.config.deployment import Deployment
    from grace_hpc.config.loader import ConfigDir
    from grace_hpc.fleet.state import StateFile

USAGE_FILE = "fleet-usage.jsonl"
#: seconds between reconcile passes (each is one squeue call, plus the launcher's own when it submits)
DEFAULT_PERIOD_S = 15.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="grow and shrink each server's replicas with demand (elastic fleet)")
    fleet = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    run_p = fleet.add_parser("run", help="run the controller: reconcile replicas with demand every --period seconds")
    add_common(run_p, json_output=False)
    run_p.add_argument("--deployment", required=True, help="name in configs/deployments/ or a YAML path")
    run_p.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto")
    run_p.add_argument("--period", type=float, default=DEFAULT_PERIOD_S, help="seconds between passes (default 15)")
    run_p.add_argument("--once", action="store_true", help="one pass, then exit")
    run_p.add_argument("--emit-sbatch", metavar="FILE",
                       help="write the sbatch script that runs this controller as a small CPU job; run nothing")
    run_p.add_argument("--partition", default="cpu", help="--emit-sbatch: the controller job's partition")
    run_p.add_argument("--time", default="1-00:00:00", help="--emit-sbatch: the controller job's wall time")
    run_p.set_defaults(handler=run)
    status_p = fleet.add_parser("status", help="per server: desired, running, pending (and why), last decision")
    add_common(status_p)
    status_p.add_argument("--deployment", required=True, help="name in configs/deployments/ or a YAML path")
    status_p.set_defaults(handler=status)
    report_p = fleet.add_parser("report", help="GPU-hours held vs busy per partition over a window (sacct + ledger)")
    add_common(report_p)
    report_p.add_argument("--deployment", required=True, help="name in configs/deployments/ or a YAML path")
    report_p.add_argument("--hours", type=float, default=24.0, help="the window: this many hours up to now")
    report_p.set_defaults(handler=report)


def journal_of(args: argparse.Namespace) -> tuple[ConfigDir, Deployment, StateFile]:
    from grace_hpc.fleet.state import StateFile
    from grace_hpc.launch.launcher import manifest_path

    config = config_dir(args)
    deployment = config.deployment(args.deployment)
    return config, deployment, StateFile(manifest_path(config, config.cluster(), deployment.name)
                                         .with_name("fleet.json"))


def run(args: argparse.Namespace) -> int:
    from grace_hpc.fleet.controller import Controller
    from grace_hpc.fleet.demand import DemandFile
    from grace_hpc.fleet.handover import handover_lead, supervisor_logs
    from grace_hpc.fleet.limits import parse_limits
    from grace_hpc.fleet.usage import UsageLedger
    from grace_hpc.fleet.world import SlurmFleet
    from grace_hpc.launch.launcher import choose_executor, plan_deployment
    from grace_hpc.registry.store import Registry
    from grace_hpc.slurm.queue import association_limits

    config, deployment, journal = journal_of(args)
    if args.emit_sbatch:
        from grace_hpc.fleet.job import controller_script

        Path(args.emit_sbatch).write_text(controller_script(config, deployment, args.partition, args.time))
        print(args.emit_sbatch)
        return 0
    cluster = config.cluster()
    registry = Registry.from_cluster(cluster, config)
    gpus = {ps.server.name: ps.plan.num_gpus for ps in plan_deployment(cluster, config.catalog(), deployment)}
    kind = choose_executor(deployment.executor if args.executor == "auto" else args.executor)
    def leads() -> dict[str, float]:  # measured from the logged start-ups, so re-read at each pass
        logs = supervisor_logs(journal.path.parent)
        return {s.name: handover_lead(s, logs).seconds for s in deployment.servers}

    controller = Controller(deployment, SlurmFleet(config, deployment, kind, registry), journal,
                            DemandFile(registry.path.parent).read, gpus,
                            usage=UsageLedger(journal.path.with_name(USAGE_FILE)),
                            partition_limits=parse_limits(association_limits(getpass.getuser()) or ""),
                            leads=leads)
    stopped = threading.Event()
    with journal.exclusive():
        if args.once:
            for server, d in controller.reconcile().decisions.items():
                print(f"{server}: desired {d.desired} ({d.reason.value}: {d.detail})")
            return 0
        # SIGTERM (scancel), USR2 (SLURM's time-limit warning) and Ctrl-C end the loop between passes
        for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
            signal.signal(sig, lambda *_: stopped.set())
        controller.run(args.period, stopped.is_set, stopped.wait, report=lambda line: print(line, flush=True))
    return 0


def status(args: argparse.Namespace) -> int:
    from grace_hpc.fleet.handover import handover_lead, supervisor_logs
    from grace_hpc.fleet.status import fleet_rows
    from grace_hpc.fleet.world import SlurmFleet
    from grace_hpc.registry.store import Registry

    config, deployment, journal = journal_of(args)
    registry = Registry.from_cluster(config.cluster(), config)
    live = SlurmFleet(config, deployment, deployment.executor, registry).observe()
    logs = supervisor_logs(journal.path.parent)
    leads = {s.name: handover_lead(s, logs) for s in deployment.servers}
    rows = fleet_rows(deployment, journal.read(), live, leads, time.time())
    if args.json:
        print_json([asdict(r) for r in rows])
        return 0
    out = sys.stdout
    for r in rows:
        desired = "?" if r.desired is None else r.desired
        print(f"{r.server}: desired {desired} (min {r.min}, max {r.max}), running {r.running}, "
              f"pending {len(r.pending)}", file=out)
        for job_id, reason in r.pending.items():
            print(f"  pending job {job_id}: {reason}", file=out)
        if r.reason:
            print(f"  last decision {r.decided_age_s:g}s ago: {r.reason} ({r.detail})", file=out)
        else:
            print("  no decision yet: is `grace-hpc fleet run --deployment " + shlex.quote(deployment.name)
                  + "` running?", file=out)
        if r.action_under_way:
            print(f"  under way: {r.action_under_way}", file=out)
        print(f"  handover lead {r.handover_lead_s:g}s ({r.handover_lead_source})", file=out)
        for h in r.handovers:
            reason = f" ({h['successor_reason']})" if h["successor_reason"] else ""
            print(f"  handover: job {h['old']} ({h['old_time_left_s']}s left) -> successor {h['successor']} "
                  f"{h['successor_state']}{reason}", file=out)
        if r.failures:
            wait = f", next try in {r.retry_in_s:g}s" if r.retry_in_s else ""
            print(f"  {r.failures} start-up failure(s) in a row{wait}: {r.last_failure}", file=out)
        for note in r.notes:
            print(f"  note: {note}", file=out)
    return 0


def report(args: argparse.Namespace) -> int:
    from datetime import datetime

    from grace_hpc.fleet.usage import UsageLedger, parse_held
    from grace_hpc.fleet.usage import report as usage_report
    from grace_hpc.launch.launcher import job_name_of, plan_deployment
    from grace_hpc.slurm.queue import accounting

    config, deployment, journal = journal_of(args)
    hi = time.time()
    lo = hi - args.hours * 3600
    planned = {job_name_of(deployment.name, ps.server.name): ps.plan.num_gpus
               for ps in plan_deployment(config.cluster(), config.catalog(), deployment)}
    start = datetime.fromtimestamp(lo).strftime("%Y-%m-%dT%H:%M:%S")
    held = parse_held(accounting(sorted(planned), start, getpass.getuser()))
    rows = usage_report(held, planned, UsageLedger(journal.path.with_name(USAGE_FILE)).read(), lo, hi)
    if args.json:
        print_json([{**asdict(r), "busy_share": r.busy_share} for r in rows])
        return 0
    print(f"{deployment.name}: GPU-hours over the last {args.hours:g} h (held: SLURM accounting; busy: the "
          "replicas the load needed)")
    for r in rows:
        share = "" if r.busy_share is None else f" ({r.busy_share:.0%} busy)"
        print(f"  {r.partition}: held {r.gpu_hours_held:.2f}, busy {r.gpu_hours_busy:.2f}{share}")
    if not rows:
        print("  no jobs in the window")
    return 0
