"""The controller's hands on the real world: the manifest, one squeue per pass, the registry, the launcher and
`stop`."""

from __future__ import annotations

from collections.abc import Sequence

from grace_hpc.config.deployment import Deployment
from grace_hpc.config.loader import ConfigDir
from grace_hpc.fleet.lifecycle import Replica
from grace_hpc.launch.launcher import job_name_of, launch, manifest_of
from grace_hpc.launch.manifest import JobView, Submitted, is_alive, job_states_of
from grace_hpc.launch.stopping import scancel, stop_rows
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.registry.store import Registry
from grace_hpc.slurm.queue import jobs_named


def replica_of(row: Submitted, view: JobView | None, records: Sequence[EndpointRecord]) -> Replica:
    """A manifest row with what the scheduler and the registry say about its job."""
    mine = [r for r in records if r.job_id == row.job_id]
    ready = {r.model for r in mine if r.state is EndpointState.READY}
    leaving = next((r.last_error or "draining" for r in mine if r.state is EndpointState.DRAINING), None)
    error = next((r.last_error or "engine gone" for r in mine if r.state is EndpointState.GONE), None)
    return Replica(row, view, ready=bool(row.models) and ready >= set(row.models), leaving=leaving, error=error)


class SlurmFleet:
    """A deployment's replicas as the manifest records them (SLURM or local executor)."""

    def __init__(self, config: ConfigDir, deployment: Deployment, executor_kind: str, registry: Registry,
                 drain_wait_s: float = 0.0):
        self.config, self.deployment, self.executor_kind = config, deployment, executor_kind
        self.registry, self.drain_wait_s = registry, drain_wait_s
        self.manifest = manifest_of(config, config.cluster(), deployment.name)

    def observe(self) -> dict[str, list[Replica]]:
        rows = [r for r in self.manifest.read() if r.deployment == self.deployment.name]
        views = job_states_of([r.job_id for r in rows])
        records = self.registry.list()
        out: dict[str, list[Replica]] = {}
        for r in rows:
            out.setdefault(r.server, []).append(replica_of(r, views.get(r.job_id), records))
        return out

    def submit(self, server: str, count: int) -> list[str]:
        result = launch(self.config, self.deployment.only([server]), executor_kind=self.executor_kind,
                        replicas={server: count}, handover=True)
        return [row.job_id for row in result.submitted]

    def drain(self, job_ids: Sequence[str], *, gracefully: bool = False) -> None:
        """Cancel these jobs; `gracefully`: the running ones get WINCH and drain (SLURM refuses a signal to a pending
        job: those are cancelled). Jobs that ended are only forgotten."""
        ids = set(job_ids)
        views = job_states_of(sorted(ids))
        alive = {i for i in ids if is_alive(views.get(i))}
        running = {i for i in alive if gracefully and views[i].state == "RUNNING"}
        rows = [r for r in self.manifest.read() if r.job_id in ids]
        # a job no manifest row knows (see controller.py) is signalled by id
        unknown = sorted(alive - {r.job_id for r in rows} - {i for i in ids if i.startswith("local:")})
        scancel([i for i in unknown if i not in running])
        scancel([i for i in unknown if i in running], drain=True)
        stop_rows(self.registry, self.manifest, [r for r in rows if r.job_id in running], timeout_s=self.drain_wait_s,
                  drain=True)
        stop_rows(self.registry, self.manifest, [r for r in rows if r.job_id in alive - running],
                  timeout_s=self.drain_wait_s)
        self.forget([r.job_id for r in rows if r.job_id not in alive])

    def forget(self, job_ids: Sequence[str]) -> None:
        self.manifest.remove(set(job_ids))

    def unrecorded(self, server: str) -> list[str]:
        if self.executor_kind != "slurm":
            return []  # local jobs have no name to find them by: the local executor is for laptops and CI
        known = {r.job_id for r in self.manifest.read()}
        return [j.job_id for j in jobs_named(job_name_of(self.deployment.name, server))
                if not j.state.finished and j.job_id not in known]
