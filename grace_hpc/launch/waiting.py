"""Wait until submitted servers are ready (registered and proven to serve) or have failed, and say why."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import submitit

from grace_hpc.errors import SchedulerError
from grace_hpc.launch.manifest import Submitted
from grace_hpc.registry.records import EndpointState
from grace_hpc.registry.store import Registry
from grace_hpc.slurm.queue import job_states


@dataclass(frozen=True)
class Progress:
    job: Submitted
    state: str  # waiting | starting | ready | failed
    detail: str


def job_failure(job: submitit.Job | None) -> str | None:
    """The error a finished job died with (its last traceback line and engine log tail), if it did."""
    if job is None or not job.done():
        return None
    try:
        exc = job.exception()
    except Exception as err:  # submitit raises when the job left no result at all
        return f"job ended without a result: {err}"
    if exc is None:
        return "job ended"
    text = str(exc)
    # submitit wraps the job's traceback: keep from our own error message on
    marker = text.rfind("EngineError: ")
    return text[marker + len("EngineError: "):].strip() if marker >= 0 else text.strip()[-1500:]


def progress(
    registry: Registry,
    submitted: list[Submitted],
    jobs: dict[str, submitit.Job],
    queue: dict[str, str] | None = None,  # SLURM job id -> "PENDING (Resources)" etc.
) -> list[Progress]:
    records = registry.list()
    out = []
    for s in submitted:
        mine = [r for r in records if r.job_id == s.job_id]
        failure = job_failure(jobs.get(s.job_id))
        if failure:
            out.append(Progress(s, "failed", failure))
        elif mine and len(mine) >= len(s.models) and all(r.state is EndpointState.READY for r in mine):
            out.append(Progress(s, "ready", ", ".join(r.base_url for r in mine)))
        elif mine:
            out.append(Progress(s, "starting", ", ".join(f"{r.model}: {r.state.value}" for r in mine)))
        else:
            where = (queue or {}).get(s.job_id)
            out.append(Progress(s, "waiting", where or "submitted, not registered yet"))
    return out


def slurm_positions(job_ids: list[str]) -> dict[str, str]:
    """job id -> "PENDING (Priority)" from one scheduler query; {} when the query fails (progress is best effort)."""
    try:
        infos = job_states(job_ids)
    except SchedulerError:
        return {}
    return {jid: f"{i.state.value}" + (f" ({i.reason})" if i.reason and i.reason != "None" else "")
            for jid, i in infos.items()}


def wait_until_settled(
    registry: Registry,
    submitted: list[Submitted],
    jobs: dict[str, submitit.Job],
    *,
    timeout_s: float,
    on_tick: Callable[[list[Progress]], None] = lambda _: None,
    poll_s: float = 0.5,
) -> list[Progress]:
    """Until every job is ready or failed, or `timeout_s` passes; returns the last progress."""
    deadline = time.monotonic() + timeout_s
    queue: dict[str, str] = {}
    last_query = 0.0
    current: list[Progress] = []
    while True:
        waiting = [p.job.job_id for p in current if p.state == "waiting" and p.job.executor == "slurm"]
        if waiting and time.monotonic() - last_query > 2.0:  # one squeue call every 2 s, for all waiting jobs
            last_query = time.monotonic()
            queue = slurm_positions(waiting)
        current = progress(registry, submitted, jobs, queue)
        on_tick(current)
        if all(p.state in ("ready", "failed") for p in current) or time.monotonic() > deadline:
            return current
        time.sleep(poll_s)
