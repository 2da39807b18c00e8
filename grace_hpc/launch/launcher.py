"""launch / stop: plan every server of a deployment, submit one job per server (and replica) through submitit,
and remember what was submitted in a manifest beside the logs (`logs/<deployment>/jobs.json`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import submitit

from grace_hpc.config.catalog import Catalog
from grace_hpc.config.cluster import Cluster
from grace_hpc.config.deployment import Deployment, ServerSpec
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import ConfigError, PlanError, SchedulerError, SubmissionError
from grace_hpc.launch.resources import JobResources, job_resources, submitit_parameters
from grace_hpc.launch.specs import serve_spec
from grace_hpc.planner import ServerPlan, plan_server
from grace_hpc.registry.store import Registry
from grace_hpc.serve.supervisor import ServerJob


@dataclass(frozen=True)
class Submitted:
    deployment: str
    server: str
    replica: int
    job_id: str  # SLURM job id, or local:<pid>
    executor: str
    partition: str
    models: tuple[str, ...]
    num_gpus: int
    submitted_at: float
    folder: str


@dataclass(frozen=True)
class LaunchResult:
    planned: list[PlannedServer]
    submitted: list[Submitted]
    previews: dict[str, str]  # server name -> the sbatch script submitit would submit (dry run)
    jobs: dict[str, submitit.Job]  # job id -> submitit handle (for waiting on readiness or failure)
    registry: Registry


@dataclass(frozen=True)
class PlannedServer:
    server: ServerSpec
    plan: ServerPlan
    resources: JobResources


def choose_executor(requested: str) -> str:
    """`auto` means SLURM where `sbatch` exists, the local executor otherwise (a laptop, CI)."""
    if requested == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if requested == "slurm" and shutil.which("sbatch") is None:
        raise SubmissionError("--executor slurm: `sbatch` is not on PATH; run on a login node or use --executor local")
    return requested


def plan_deployment(cluster: Cluster, catalog: Catalog, deployment: Deployment) -> list[PlannedServer]:
    """Plan every server; PlanError naming each server that does not fit and why."""
    planned, problems = [], []
    for server in deployment.servers:
        try:
            partition = cluster.partition(server.partition)
        except KeyError:
            known = ", ".join(p.name for p in cluster.partitions)
            raise ConfigError(f"server {server.name!r}: unknown partition {server.partition!r}; known: {known}") from None
        plan = plan_server(server, partition, catalog, cluster.engines.vllm_version)
        if not plan.fits:
            problems.append(f"{server.name} on {partition.name}: " + "; ".join(plan.reasons))
            continue
        res = job_resources(partition, job_name=f"grace-{deployment.name}-{server.name}",
                            num_gpus=plan.num_gpus, time=server.time)
        planned.append(PlannedServer(server, plan, res))
    if problems:
        raise PlanError("does not fit: " + " | ".join(problems))
    return planned


def manifest_path(config: ConfigDir, cluster: Cluster, deployment: str) -> Path:
    return config.resolve(cluster.paths.logs) / deployment / "jobs.json"


def read_manifest(path: Path) -> list[Submitted]:
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable launch manifest ({exc}); delete it after `scancel`ing its jobs") from exc
    return [Submitted(**{**r, "models": tuple(r["models"])}) for r in rows]


def write_manifest(path: Path, rows: list[Submitted]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    os.replace(tmp, path)


@contextmanager
def detached_stdio(log: Path) -> Iterator[None]:
    """Local jobs outlive `launch`: their controller must not inherit our stdout/stderr (a caller reading our
    output to its end, like `$(grace-hpc launch)` or subprocess.run, would wait for the whole fleet to stop)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with log.open("ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def make_executor(kind: str, folder: Path, res: JobResources, setup: tuple[str, ...]) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster=kind)
    executor.update_parameters(**submitit_parameters(res, setup))
    return executor


def sbatch_preview(executor: submitit.AutoExecutor) -> str:
    """The exact script submitit would hand to sbatch (submitit renders it; we only show it)."""
    inner = executor._executor  # noqa: SLF001 - submitit has no public "render only" call
    return inner._make_submission_file_text(inner._submitit_command_str, "<uid>")  # noqa: SLF001


def launch(
    config: ConfigDir,
    deployment: Deployment,
    *,
    executor_kind: str,
    dry_run: bool = False,
    environ: dict[str, str] | None = None,
) -> LaunchResult:
    """Plan every server, then submit one job per server replica (or only render them, with `dry_run`)."""
    cluster, catalog = config.cluster(), config.catalog()
    planned = plan_deployment(cluster, catalog, deployment)
    requested = deployment.executor if executor_kind == "auto" else executor_kind
    # a dry run shows the SLURM script even on a laptop
    kind = ("slurm" if requested == "auto" else requested) if dry_run else choose_executor(requested)
    registry = Registry.from_cluster(cluster, config, environ=os.environ if environ is None else environ)
    logs = config.resolve(cluster.paths.logs) / deployment.name
    folder = logs / "submitit" / "%j"
    previews: dict[str, str] = {}
    submitted: list[Submitted] = []
    jobs: dict[str, submitit.Job] = {}
    for ps in planned:
        spec = serve_spec(config, cluster, catalog, deployment, ps.server, ps.plan,
                          registry_path=str(registry.path), local=kind == "local")
        executor = make_executor(kind, folder, ps.resources, cluster.engines.setup)
        if dry_run:
            previews[ps.server.name] = sbatch_preview(executor) if kind == "slurm" else "(local executor: no script)"
            continue
        for replica in range(ps.server.replicas):
            try:
                # a launch from inside a job must not leak SLURM_* into it
                with submitit.helpers.clean_env(), (
                        detached_stdio(logs / "local-controllers.log") if kind == "local" else nullcontext()):
                    job = executor.submit(ServerJob(spec))
            except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as exc:
                raise SubmissionError(f"submitting {ps.server.name} to partition {ps.resources.partition} "
                                      f"failed: {exc}") from exc
            job_id = str(job.job_id) if kind == "slurm" else f"local:{job.job_id}"
            jobs[job_id] = job
            submitted.append(Submitted(
                deployment.name, ps.server.name, replica, job_id, kind, ps.resources.partition,
                tuple(p.model for p in ps.plan.plans), ps.plan.num_gpus, time.time(), str(folder)))
    if submitted:
        path = manifest_path(config, cluster, deployment.name)
        write_manifest(path, read_manifest(path) + submitted)
    return LaunchResult(planned, submitted, previews, jobs, registry)


def cancel(jobs: list[Submitted], supervisor_pids: dict[str, list[int]]) -> None:
    """One `scancel` for all SLURM jobs. Local jobs: SIGTERM to their supervisors (pids from the registry), which
    drain and exit cleanly; a job that has not registered yet gets SIGTERM on its submitit controller."""
    slurm_ids = [j.job_id for j in jobs if j.executor == "slurm"]
    if slurm_ids:
        proc = subprocess.run(["scancel", *slurm_ids], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SchedulerError(f"scancel {' '.join(slurm_ids)} exited {proc.returncode}: {proc.stderr.strip()}")
    for j in jobs:
        if j.executor == "local":
            for pid in supervisor_pids.get(j.job_id) or [int(j.job_id.removeprefix("local:"))]:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
