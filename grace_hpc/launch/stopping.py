"""stop: cancel server jobs, then wait until their endpoints have left the registry."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

from grace_hpc.errors import SchedulerError
from grace_hpc.launch.manifest import Manifest, Submitted
from grace_hpc.registry.store import Registry
from grace_hpc.serve.supervisor import DRAIN_SIGNAL


@dataclass(frozen=True)
class Stopped:
    server: str
    job_id: str
    models: tuple[str, ...]
    deregistered: bool


def scancel_argv(slurm_ids: list[str], *, drain: bool = False) -> list[str]:
    # --signal alone signals the job's steps (where submitit's srun runs the supervisor) and ends nothing
    # by number: Slurm 22.05's scancel knows no WINCH by name (it is 28 on every Linux)
    return ["scancel", *([f"--signal={int(DRAIN_SIGNAL)}"] if drain else []), *slurm_ids]


def scancel(slurm_ids: list[str], *, drain: bool = False) -> None:
    """One `scancel` for all these SLURM job ids (none: nothing runs); `drain`: DRAIN_SIGNAL instead, the supervisors
    drain their in-flight requests and exit (serve/supervisor.py)."""
    if slurm_ids:
        proc = subprocess.run(scancel_argv(slurm_ids, drain=drain), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SchedulerError(f"{' '.join(proc.args)} exited {proc.returncode}: {proc.stderr.strip()}")


def cancel(jobs: list[Submitted], supervisor_pids: dict[str, list[int]], *, drain: bool = False) -> None:
    """One `scancel` for all SLURM jobs. Local jobs: SIGTERM to their supervisors (pids from the registry), which
    drain and exit cleanly; a job that has not registered yet gets SIGTERM on its submitit controller. `drain`
    (running jobs only): DRAIN_SIGNAL, the fleet controller's unhurried drain, instead of SIGTERM."""
    scancel([j.job_id for j in jobs if j.executor == "slurm"], drain=drain)
    for j in jobs:
        if j.executor == "local":
            pids = supervisor_pids.get(j.job_id)
            for pid in pids or [int(j.job_id.removeprefix("local:"))]:
                try:
                    os.kill(pid, DRAIN_SIGNAL if drain and pids else signal.SIGTERM)
                except ProcessLookupError:
                    pass


def stop_rows(registry: Registry, manifest: Manifest, chosen: list[Submitted], timeout_s: float, *,
              drain: bool = False) -> list[Stopped]:
    """Cancel (or `drain`, see `cancel`) exactly these jobs of `manifest`, wait up to `timeout_s` for their
    endpoints to deregister, and forget them in the manifest."""
    if not chosen:
        return []
    pids: dict[str, list[int]] = {}
    for r in registry.list():
        if r.job_id and r.pid:
            pids.setdefault(r.job_id, []).append(r.pid)
    cancel(chosen, pids, drain=drain)
    ids = {j.job_id for j in chosen}
    deadline = time.monotonic() + timeout_s
    while any(r.job_id in ids for r in registry.list()) and time.monotonic() < deadline:
        time.sleep(0.25)
    left = {r.job_id for r in registry.list()}
    manifest.remove(ids)
    return [Stopped(j.server, j.job_id, j.models, j.job_id not in left) for j in chosen]


def stop_jobs(registry: Registry, manifests: list[Manifest], only: list[str] | None, timeout_s: float) -> list[Stopped]:
    """Cancel the jobs of `manifests` (all, or the servers/models named in `only`)."""
    stopped: list[Stopped] = []
    for manifest in manifests:
        chosen = [j for j in manifest.read() if not only or j.server in only or set(only) & set(j.models)]
        stopped += stop_rows(registry, manifest, chosen, timeout_s)
    return stopped
