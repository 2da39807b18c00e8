"""The dashboard's view of the fleet's jobs: the launch manifests and one `squeue`, at most once per `ttl_s`.

Only read while someone has the dashboard open (the API asks; nothing polls), off the event loop, and one read at
a time however many pages are open: SLURM sees at most one `squeue` per `ttl_s` from a router.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from grace_hpc.config.cluster import Cluster
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import GraceError
from grace_hpc.launch.manifest import Submitted
from grace_hpc.launch.resources import slurm_time_minutes
from grace_hpc.registry.records import EndpointRecord
from grace_hpc.router.dashboard_view import JobTable
from grace_hpc.status import server_jobs

#: how old the jobs view may be: a page polls every few seconds, SLURM should not see a query that often
JOBS_TTL_S = 10.0


class JobsSource(Protocol):
    def read(self, records: list[EndpointRecord]) -> JobTable: ...


@dataclass(frozen=True)
class ManifestJobs:
    """The project's launch manifests (`<paths.logs>/*/jobs.json`) and SLURM's state of their jobs."""

    config: ConfigDir
    cluster: Cluster

    def read(self, records: list[EndpointRecord]) -> JobTable:
        try:
            jobs, states, scheduler_problem = server_jobs(self.config, self.cluster, records)
        except GraceError as exc:  # an unreadable manifest
            return JobTable(error=str(exc))
        return JobTable(tuple(jobs), states, self.time_limits(jobs), {p.name: p.gpu for p in self.cluster.partitions},
                        error=scheduler_problem)

    def time_limits(self, jobs: list[Submitted]) -> dict[str, float]:
        """Each SLURM job's time limit as launch asked for it: the server's `time`, else its partition's
        `max_time`. Local jobs have none; a deployment file changed or removed since the launch gives none."""
        limits = {}
        for j in jobs:
            if j.executor != "slurm":
                continue
            try:
                server = next(s for s in self.config.deployment(j.deployment).servers if s.name == j.server)
                limits[j.job_id] = 60.0 * slurm_time_minutes(server.time or self.cluster.partition(j.partition).max_time)
            except (GraceError, StopIteration, KeyError):  # KeyError: a partition no longer in cluster.yaml
                continue
        return limits


@dataclass
class CachedJobs:
    """`source.read` in a worker thread, reused for `ttl_s`; concurrent callers share one read."""

    source: JobsSource
    clock: Callable[[], float]
    ttl_s: float = JOBS_TTL_S
    table: JobTable | None = None
    read_at: float = float("-inf")
    pending: asyncio.Task[JobTable] | None = field(default=None, repr=False)

    async def get(self, records: list[EndpointRecord]) -> JobTable:
        if self.table is not None and self.clock() - self.read_at < self.ttl_s:
            return self.table
        if self.pending is None:
            self.pending = asyncio.create_task(asyncio.to_thread(self.source.read, list(records)))
        task = self.pending
        try:
            table = await asyncio.shield(task)  # a page closed mid-read must not cancel the read others await
        finally:
            if self.pending is task and task.done():
                self.pending = None
        self.table, self.read_at = table, self.clock()
        return table
