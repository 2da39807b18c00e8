"""`grace-hpc usage`: requests, tokens, cloud spend, local share and GPU-hours from the ledger (docs/usage.md)."""

from __future__ import annotations

import argparse
import csv
import sys
import time

from grace_hpc.cli.common import add_common, config_dir, console, print_json
from grace_hpc.cli.users_common import add_ledger, ledger_target
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import ConfigError, GraceError
from grace_hpc.usage import By, UsageReport, UsageRow, parse_since, reference_price, summarize

COLUMNS = ("requests", "errors", "local_share", "prompt_tokens", "completion_tokens", "cloud_usd",
           "cloud_equivalent_usd")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("usage", help="who used what: requests, tokens, cloud spend, local share, GPU-hours")
    add_common(p)
    p.add_argument("--since", default="7d", help="7d, 12h, 30m or a date YYYY-MM-DD (UTC); default 7d")
    p.add_argument("--by", type=By, choices=list(By), default=By.USER, help="group rows by (default user)")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--routing", default="default", metavar="NAME|FILE", help="routing table whose prices apply")
    p.add_argument("--registry", metavar="PATH", help="registry file (locates the default ledger)")
    add_ledger(p, off=False)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from grace_hpc.ledger.sql import open_ledger

    if args.json and args.csv:
        raise ConfigError("usage: choose --json or --csv, not both")
    config = config_dir(args)
    since = parse_since(args.since, time.time())
    ledger = open_ledger(ledger_target(args) or "", create=False)
    try:
        records = ledger.read(since)
    finally:
        ledger.close()
    report = summarize(records, args.by, since, reference_price(config.routing(args.routing)))
    report.gpu_hours, report.gpu_note = _gpu_hours(config, since)
    if args.json:
        print_json({"since": since, "by": args.by.value, "rows": [r.as_dict() for r in report.rows],
                    "total": report.total.as_dict(), "gpu_hours": report.gpu_hours, "gpu_note": report.gpu_note})
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow([args.by.value, *COLUMNS])
        for row in [*report.rows, report.total]:
            data = row.as_dict()
            writer.writerow([row.group, *(data[c] for c in COLUMNS)])
    else:
        _print(report)
    return 0


def _gpu_hours(config: ConfigDir, since: float) -> tuple[dict[str, float], str | None]:
    """Best effort: the launch manifests' SLURM jobs, one sacct call; a note instead when that is not possible."""
    from grace_hpc.launch.launcher import all_manifests
    from grace_hpc.slurm.accounting import gpu_hours

    try:
        asked = {j.job_id: j.num_gpus for m in all_manifests(config, config.cluster()) for j in m.read()
                 if not j.job_id.startswith("local:")}
        if not asked:
            return {}, "no SLURM jobs in the launch manifests"
        return gpu_hours(asked, since), None
    except GraceError as exc:
        return {}, f"GPU-hours unavailable: {exc}"


def _print(report: UsageReport) -> None:
    from rich.table import Table

    table = Table(report.by.value, *COLUMNS)
    for row in [*report.rows, report.total]:
        table.add_row(row.group, *_cells(row), style="bold" if row is report.total else None)
    out = console()
    out.print(table)
    t = report.total
    share = "-" if t.local_share is None else f"{t.local_share:.0%}"
    out.print(f"{t.prompt_tokens + t.completion_tokens:,} tokens; cloud spend ${t.cloud_usd:,.2f}; served locally "
              f"{share}. The same tokens would have cost ${t.cloud_equivalent_usd:,.2f} in the cloud.")
    if report.gpu_hours:
        parts = ", ".join(f"{p} {h:,.1f}" for p, h in sorted(report.gpu_hours.items()))
        out.print(f"GPU-hours of the fleet's jobs: {parts}")
    elif report.gpu_note:
        out.print(f"GPU-hours: {report.gpu_note}")


def _cells(row: UsageRow) -> list[str]:
    share = row.local_share
    return [str(row.requests), str(row.errors), "-" if share is None else f"{share:.0%}", f"{row.prompt_tokens:,}",
            f"{row.completion_tokens:,}", f"{row.cloud_usd:.4f}", f"{row.cloud_equivalent_usd:.4f}"]
