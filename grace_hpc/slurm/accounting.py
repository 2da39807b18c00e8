"""GPU-hours per partition from `sacct` (one call for all of the fleet's jobs; pure parser, recorded-output tests).

    sacct -X -n -P -S 2026-11-24T00:00:00 -o JobID,Partition,ElapsedRaw,AllocTRES -j 4,8
    8_1|t4|3600|billing=2,cpu=2,gres/gpu=2,gres/gpu:t4=2,mem=2G,node=1

A job counts its whole elapsed time times its GPUs: `gres/gpu=N` in AllocTRES when accounting tracks GPUs
(`AccountingStorageTRES=gres/gpu`), else the count launch asked for (from its manifest).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime

from grace_hpc.errors import SchedulerError
from grace_hpc.slurm.queue import Runner, _failure, _run, is_slurm_job_id

FIELDS = "JobID,Partition,ElapsedRaw,AllocTRES"
_LINE = re.compile(r"^(?P<job>[0-9_\[\]%,-]+)\|(?P<partition>[^|]*)\|(?P<elapsed>\d*)\|(?P<tres>[^|]*)$")
_GPUS = re.compile(r"(?:^|,)gres/gpu=(?P<n>\d+)(?:,|$)")


def gpu_hours_argv(job_ids: list[str], since: float) -> list[str]:
    start = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    bases = sorted({j.split("_", 1)[0] for j in job_ids})
    return ["sacct", "-X", "-n", "-P", "-S", start, "-o", FIELDS, "-j", ",".join(bases)]


def parse_gpu_hours(text: str, asked_gpus: Mapping[str, int]) -> dict[str, float]:
    """GPU-hours per partition from `sacct -P -o FIELDS` output; `asked_gpus` (job id -> GPUs) covers clusters
    whose accounting does not track GPUs. A line that does not parse raises rather than guessing."""
    hours: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise SchedulerError(f"sacct: cannot parse line {line!r} (expected JOBID|PARTITION|ELAPSEDRAW|ALLOCTRES)")
        tracked = _GPUS.search(m["tres"])
        gpus = int(tracked["n"]) if tracked else asked_gpus.get(m["job"], asked_gpus.get(m["job"].split("_")[0], 0))
        hours[m["partition"] or "?"] += int(m["elapsed"] or 0) * gpus / 3600.0
    return dict(hours)


def gpu_hours(asked_gpus: Mapping[str, int], since: float, *, run: Runner = _run) -> dict[str, float]:
    """GPU-hours per partition of these SLURM jobs (id -> GPUs asked) since `since`; SchedulerError when sacct
    fails or is absent."""
    ids = [j for j in asked_gpus if is_slurm_job_id(j)]
    if not ids:
        return {}
    proc = run(gpu_hours_argv(ids, since))
    if proc.returncode != 0:
        raise _failure(proc)
    return parse_gpu_hours(proc.stdout, asked_gpus)
