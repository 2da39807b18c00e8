"""The controller's hands on the real world: the manifest, one squeue per pass, the launcher and `stop`."""

from __future__ import annotations

from collections.abc import Sequence

from grace_hpc.config.deployment import Deployment
from grace_hpc.config.loader import ConfigDir
from grace_hpc.fleet.controller import Live
from grace_hpc.launch.launcher import job_name_of, launch, manifest_of
from grace_hpc.launch.manifest import is_alive, job_states_of
from grace_hpc.launch.stopping import scancel, stop_rows
from grace_hpc.registry.store import Registry
from grace_hpc.slurm.queue import jobs_named


class SlurmFleet:
    """A deployment's replicas as the manifest records them (SLURM or local executor)."""

    def __init__(self, config: ConfigDir, deployment: Deployment, executor_kind: str, registry: Registry,
                 drain_wait_s: float = 0.0):
        self.config, self.deployment, self.executor_kind = config, deployment, executor_kind
        self.registry, self.drain_wait_s = registry, drain_wait_s
        self.manifest = manifest_of(config, config.cluster(), deployment.name)

    def observe(self) -> dict[str, list[Live]]:
        rows = [r for r in self.manifest.read() if r.deployment == self.deployment.name]
        views = job_states_of([r.job_id for r in rows])
        live: dict[str, list[Live]] = {}
        for r in rows:
            if is_alive(views.get(r.job_id)):
                live.setdefault(r.server, []).append(Live(r, views[r.job_id]))
        return live

    def submit(self, server: str, count: int) -> None:
        launch(self.config, self.deployment.only([server]), executor_kind=self.executor_kind,
               replicas={server: count})

    def drain(self, job_ids: Sequence[str]) -> None:
        ids = set(job_ids)
        rows = [r for r in self.manifest.read() if r.job_id in ids]
        # a job no manifest row knows (see controller.py) is cancelled by id
        scancel(sorted(ids - {r.job_id for r in rows} - {i for i in ids if i.startswith("local:")}))
        stop_rows(self.registry, self.manifest, rows, timeout_s=self.drain_wait_s)

    def unrecorded(self, server: str) -> list[str]:
        if self.executor_kind != "slurm":
            return []  # local jobs have no name to find them by: the local executor is for laptops and CI
        known = {r.job_id for r in self.manifest.read()}
        return [j.job_id for j in jobs_named(job_name_of(self.deployment.name, server))
                if not j.state.finished and j.job_id not in known]
