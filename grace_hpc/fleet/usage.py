"""What the service costs: GPU-seconds held (SLURM's accounting) against GPU-seconds busy (the controller's ledger).

Held: each job's GPUs times the part of its run inside the window, from `sacct` (jobs named
`grace-<deployment>-<server>`, ended ones included: the manifest forgets stopped jobs). The GPUs are SLURM's
`gres/gpu` in AllocTRES where accounting tracks it (`AccountingStorageTRES=gres/gpu`), else the server's plan.
Busy: each pass the controller appends one line per server to `logs/<deployment>/fleet-usage.jsonl`: the running
replicas and how many of them the load needed (`ceil(outstanding / outstanding_per_replica)`); busy time is the
needed replicas' GPUs, integrated between passes (a gap longer than `MAX_GAP_S`, a stopped controller, counts only
up to it). Local-executor jobs are not in SLURM's accounting and count as neither.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from grace_hpc.errors import SchedulerError

MAX_GAP_S = 120.0
_GPUS = re.compile(r"(?:^|,)gres/gpu=(?P<n>[0-9]+)(?:,|$)")


@dataclass(frozen=True)
class UsageEntry:
    at: float
    server: str
    partition: str
    gpus_per_replica: int
    running: int
    needed: int  # replicas the load needed (at most `running`)


@dataclass(frozen=True)
class HeldJob:
    job_id: str
    name: str
    partition: str
    gpus: int | None  # None: accounting does not track GPUs
    start: float | None  # None: never started
    end: float | None  # None: still running


@dataclass(frozen=True)
class PartitionUsage:
    partition: str
    gpu_hours_held: float
    gpu_hours_busy: float

    @property
    def busy_share(self) -> float | None:
        return self.gpu_hours_busy / self.gpu_hours_held if self.gpu_hours_held else None


class UsageLedger:
    """`fleet-usage.jsonl`: appended by the one controller of the deployment, read by `fleet report`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, entries: Iterable[UsageEntry]) -> None:
        lines = "".join(json.dumps(asdict(e)) + "\n" for e in entries)
        with self.path.open("a") as f:  # a small append: a reader sees whole lines or misses the last one
            f.write(lines)

    def read(self) -> list[UsageEntry]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            try:
                entries.append(UsageEntry(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut short by a controller killed mid-write
        return entries


def _time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None  # "Unknown", "None": not started / not ended


def parse_held(text: str) -> list[HeldJob]:
    """`sacct -X -n -P -o JobID,JobName,Partition,AllocTRES,Start,End` lines (pure; tested on recorded output)."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split("|")
        if len(parts) != 6:
            raise SchedulerError(f"sacct: cannot parse {line!r} (expected JobID|JobName|Partition|AllocTRES|Start|"
                                 "End)")
        job_id, name, partition, tres, start, end = parts
        m = _GPUS.search(tres)
        jobs.append(HeldJob(job_id, name, partition, int(m["n"]) if m else None, _time(start), _time(end)))
    return jobs


def _overlap(start: float, end: float, lo: float, hi: float) -> float:
    return max(0.0, min(end, hi) - max(start, lo))


def held_seconds(jobs: Sequence[HeldJob], planned_gpus: Mapping[str, int], lo: float, hi: float
                 ) -> dict[str, float]:
    """GPU-seconds per partition; `planned_gpus`: job name -> GPUs of its server's plan."""
    out: dict[str, float] = {}
    for j in jobs:
        gpus = j.gpus if j.gpus is not None else planned_gpus.get(j.name, 0)
        if j.start is not None:
            out[j.partition] = out.get(j.partition, 0.0) + gpus * _overlap(j.start, j.end or hi, lo, hi)
    return out


def busy_seconds(entries: Sequence[UsageEntry], lo: float, hi: float) -> dict[str, float]:
    out: dict[str, float] = {}
    by_server: dict[str, list[UsageEntry]] = {}
    for e in entries:
        by_server.setdefault(e.server, []).append(e)
    for rows in by_server.values():
        rows.sort(key=lambda e: e.at)
        for e, nxt in zip(rows, [*rows[1:], None], strict=True):
            until = min(nxt.at if nxt else hi, e.at + MAX_GAP_S)
            gpus = min(e.needed, e.running) * e.gpus_per_replica
            out[e.partition] = out.get(e.partition, 0.0) + gpus * _overlap(e.at, until, lo, hi)
    return out


def report(held: Sequence[HeldJob], planned_gpus: Mapping[str, int], entries: Sequence[UsageEntry], lo: float,
           hi: float) -> list[PartitionUsage]:
    h, b = held_seconds(held, planned_gpus, lo, hi), busy_seconds(entries, lo, hi)
    return [PartitionUsage(p, round(h.get(p, 0.0) / 3600, 4), round(b.get(p, 0.0) / 3600, 4))
            for p in sorted(set(h) | set(b))]
