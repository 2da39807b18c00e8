"""Why a model has no ready replica: its servers' jobs and SLURM's pending reasons (`Priority`, `Resources`,
`QOSMaxGpuPerUserLimit`, ...), for `/status` and the comments of a streamed cold start (coldstream.py).

The one source is the dashboard's (fleet_jobs.CachedJobs): the launch manifests and one `squeue`, read at most once
per `JOBS_TTL_S` however many requests, pages and scripts ask. A router started without a project (no manifests)
has no jobs to name: it says so instead.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from grace_hpc.router.dashboard import DASHBOARD
from grace_hpc.router.dashboard_view import JobTable
from grace_hpc.router.state import STATE


async def job_table(app: web.Application) -> JobTable | None:
    """The cached jobs view; None when this router knows no launch manifests (`grace-hpc route` gives it them)."""
    jobs = app[DASHBOARD].jobs
    return None if jobs is None else await jobs.get(app[STATE].records)


def jobs_of(table: JobTable, model: str) -> list[dict[str, str | None]]:
    """The launched jobs of the servers that serve `model`, each with SLURM's state and pending reason."""
    out = []
    for j in table.jobs:
        if model in j.models:
            state, reason, _node = table.states.get(j.job_id, ("UNKNOWN", None, None))
            out.append({"job_id": j.job_id, "deployment": j.deployment, "server": j.server, "state": state,
                        "reason": reason})
    return out


def describe(model: str, table: JobTable | None) -> str:
    """One line: what a request for `model` waits for, e.g. `waiting for a replica of coder (job 123 PENDING:
    Resources)`."""
    if table is None:
        return f"waiting for a replica of {model}"
    jobs = jobs_of(table, model)
    if not jobs:
        detail = "SLURM's view unavailable: " + table.error if table.error else "no job submitted yet"
    else:
        detail = "; ".join(f"job {j['job_id']} {j['state']}" + (f": {j['reason']}" if j["reason"] else "")
                           for j in jobs)
    return f"waiting for a replica of {model} ({detail})".replace("\n", " ").replace("\r", " ")


def not_ready(table: JobTable | None, routable: Iterable[str], wanted: Iterable[str]) -> dict[str, object]:
    """`/status`'s `not_ready` section: per model launched or wanted (requests held or turned away) without a
    routable replica, its jobs; `jobs_source` says whether the jobs are known (`ok`), `absent` or `unavailable`."""
    launched = {m for j in table.jobs for m in j.models} if table is not None else set()
    missing = sorted((launched | set(wanted)) - set(routable))
    source = "absent" if table is None else "unavailable" if table.error else "ok"
    return {
        "jobs_source": source,
        "jobs_error": table.error if table is not None else None,
        "models": [{"model": m, "jobs": jobs_of(table, m) if table is not None else []} for m in missing],
    }
