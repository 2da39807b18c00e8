"""How long before a job's wall time ends its successor must be submitted: `handover_lead_s` when the deployment
sets it, else measured from this server's own past start-ups (the supervisor logs `<model> ready at <url> after
<s>s` in each job's submitit log) plus a margin for the scheduler; a fixed default until one start-up is logged."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from grace_hpc.config.deployment import ServerSpec

#: added to the slowest start-up seen: time in SLURM's queue and the drain of the old replica
MARGIN_S = 60.0
#: before any start-up of the server is logged
DEFAULT_LEAD_S = 600.0
#: the start-ups that count: the most recent ones (a cache warmed up, an engine upgraded)
RECENT = 10

_READY = re.compile(r"^grace-hpc supervisor: (?P<model>\S+) ready at \S+ after (?P<s>[0-9]+(?:\.[0-9]+)?)s$",
                    re.MULTILINE)


@dataclass(frozen=True)
class Lead:
    seconds: float
    source: str  # "configured", "measured from N start-ups (slowest Xs)" or "default"


def startup_times(log_text: str, models: Iterable[str]) -> list[float]:
    """Start-up seconds of these models in one supervisor log (a job that packs several logs each)."""
    wanted = set(models)
    return [float(m["s"]) for m in _READY.finditer(log_text) if m["model"] in wanted]


def handover_lead(server: ServerSpec, log_texts: Iterable[str]) -> Lead:
    """`log_texts`: the server's deployment's supervisor logs, oldest first."""
    if server.handover_lead_s is not None:
        return Lead(server.handover_lead_s, "configured")
    # a job packing several models is ready when its slowest is
    per_job = [max(t) for text in log_texts if (t := startup_times(text, server.models))][-RECENT:]
    if not per_job:
        return Lead(DEFAULT_LEAD_S, "default: no start-up logged yet")
    slowest = max(per_job)
    return Lead(slowest + MARGIN_S, f"measured from {len(per_job)} start-up(s), slowest {slowest:g}s")


def supervisor_logs(logs_dir: Path) -> list[str]:
    """The submitit logs of a deployment's jobs (`logs/<deployment>/submitit/<job>_<task>_log.out`), oldest first."""
    paths = sorted(logs_dir.glob("submitit/*_log.out"), key=lambda p: p.stat().st_mtime)
    texts = []
    for p in paths:
        try:
            texts.append(p.read_text(errors="replace"))
        except OSError:
            continue  # a log removed while we read: one start-up fewer
    return texts
