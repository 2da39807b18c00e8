"""GPU-hours per partition from `sacct` (one call for all of the fleet's jobs; pure parser, recorded-output tests).

    sacct -X -n -P -S 2026-11-24T00:00:00 -o JobID,Partition,ElapsedRaw,AllocTRES -j 4,8
    8_1|t4|3600|billing=2,cpu=2,gres/gpu=2,gres/gpu:t4=2,mem=2G,node=1

A job counts its whole elapsed time times its allocated GPUs (`gres/gpu=N` in AllocTRES; none: 0 GPU-hours).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone

from grace_hpc.errors import SchedulerError
from grace_hpc.slurm.queue import Runner, _failure, _run, is_slurm_job_id

FIELDS = "JobID,Partition,ElapsedRaw,AllocTRES"
_LINE = re.compile(r"^(?P<job>[0-9_\[\]%,-]+)\|(?P<partition>[^|]*)\|(?P<elapsed>\d*)\|(?P<tres>[^|]*)$")
_GPUS = re.compile(r"(?:^|,)gres/gpu=(?P<n>\d+)(?:,|$)")


def gpu_hours_argv(job_ids: Sequence[str], since: float) -> list[str]:
    start = datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    bases = sorted({j.split("_", 1)[0] for j in job_ids})
    return ["sacct", "-X", "-n", "-P", "-S", start, "-o", FIELDS, "-j", ",".join(bases)]


def parse_gpu_hours(text: str) -> dict[str, float]:
    """GPU-hours per partition from `sacct -P -o FIELDS` output; an unknown line raises rather than guessing."""
    hours: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise SchedulerError(f"sacct: cannot parse line {line!r} (expected JOBID|PARTITION|ELAPSEDRAW|ALLOCTRES)")
        gpus = _GPUS.search(m["tres"])
        hours[m["partition"] or "?"] += int(m["elapsed"] or 0) * (int(gpus["n"]) if gpus else 0) / 3600.0
    return dict(hours)


def gpu_hours(job_ids: Sequence[str], since: float, *, run: Runner = _run) -> dict[str, float]:
    """GPU-hours per partition of these SLURM jobs since `since`; SchedulerError when sacct fails or is absent."""
    ids = [j for j in job_ids if is_slurm_job_id(j)]
    if not ids:
        return {}
    proc = run(gpu_hours_argv(ids, since))
    if proc.returncode != 0:
        raise _failure(proc)
    return parse_gpu_hours(proc.stdout)
