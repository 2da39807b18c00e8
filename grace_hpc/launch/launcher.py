"""launch: plan every server of a deployment, submit one job per server (and replica) through submitit that is not
already pending or running, and record each job in the manifest beside the logs (`logs/<deployment>/jobs.json`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import submitit

from grace_hpc.config.catalog import Catalog
from grace_hpc.config.cluster import Cluster
from grace_hpc.config.deployment import Deployment, ServerSpec
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import ConfigError, PlanError, SubmissionError
from grace_hpc.launch.manifest import Manifest, Submitted, is_alive, job_states_of
from grace_hpc.launch.resources import JobResources, job_resources, slurm_parameters
from grace_hpc.launch.specs import serve_spec
from grace_hpc.launch.stopping import stop_rows
from grace_hpc.launch.weights import weights_problems
from grace_hpc.planner import ServerPlan, plan_server
from grace_hpc.registry.store import Registry
from grace_hpc.serve.spec import ServeSpec
from grace_hpc.serve.supervisor import ServerJob


@dataclass(frozen=True)
class LaunchResult:
    planned: list[PlannedServer]
    submitted: list[Submitted]
    kept: list[Submitted]  # already pending or running before this launch: left alone
    specs: dict[str, ServeSpec]  # server name -> what its job runs (the engine argv templates among it)
    previews: dict[str, str]  # server name -> the exact sbatch script submitit submits (dry run)
    jobs: dict[str, submitit.Job]  # job id -> submitit handle (for waiting on readiness or failure)
    registry: Registry
    missing_weights: list[str]  # why jobs would not find their weights (a dry run shows it; a launch refuses)


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


def job_name_of(deployment: str, server: str) -> str:
    """The SLURM job name of a server's jobs (the fleet controller finds unrecorded ones by it)."""
    return f"grace-{deployment}-{server}"


def plan_deployment(cluster: Cluster, catalog: Catalog, deployment: Deployment) -> list[PlannedServer]:
    """Plan every server; PlanError naming each server that does not fit and why."""
    planned, problems = [], []
    for server in deployment.servers:
        partition = cluster.partition_of(server, deployment.name)
        plan = plan_server(server, partition, catalog, cluster.engines.vllm_version)
        if not plan.fits:
            problems.append(f"{server.name} on {partition.name}: {_headline(plan)}")
            continue
        res = job_resources(partition, job_name=job_name_of(deployment.name, server.name),
                            num_gpus=plan.num_gpus, time=server.time)
        planned.append(PlannedServer(server, plan, res))
    if problems:
        raise PlanError("does not fit: " + " | ".join(problems) + f" (`grace-hpc plan --deployment {deployment.name}` "
                        "shows every reason and what would fit)")
    return planned


def _headline(plan: ServerPlan) -> str:
    """Why a server does not fit, in brief: the planner's first reason and its cheapest lever (all of them, with
    the notes on every precision tried, are in `plan --deployment`)."""
    lever = next((r.split("; ")[0] for r in plan.reasons if r.startswith("what would fit")), None)
    first = plan.reasons[0] if plan.reasons else "no configuration fits"
    return f"{first}; {lever}" if lever else first


def manifest_path(config: ConfigDir, cluster: Cluster, deployment: str) -> Path:
    return config.resolve(cluster.paths.logs) / deployment / "jobs.json"


def manifest_of(config: ConfigDir, cluster: Cluster, deployment: str) -> Manifest:
    return Manifest(manifest_path(config, cluster, deployment), cluster.lock_mode)


def all_manifests(config: ConfigDir, cluster: Cluster) -> list[Manifest]:
    """The manifest of every deployment launched from this project."""
    return [Manifest(p, cluster.lock_mode) for p in sorted(config.resolve(cluster.paths.logs).glob("*/jobs.json"))]


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


class RenderOnlySlurmExecutor(submitit.SlurmExecutor):
    """submitit's own SLURM executor, used only to render the script it would submit (`launch --dry-run`): that
    needs no SLURM, but submitit's constructor refuses to run where `srun` is missing."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def slurm_executor(
    folder: Path, res: JobResources, setup: tuple[str, ...], *, render_only: bool = False, handover: bool = False
) -> submitit.SlurmExecutor:
    executor = (RenderOnlySlurmExecutor if render_only else submitit.SlurmExecutor)(folder=folder)
    executor.update_parameters(**slurm_parameters(res, setup, handover=handover))
    return executor


def make_executor(kind: str, folder: Path, res: JobResources, setup: tuple[str, ...], *, handover: bool = False
                  ) -> submitit.Executor:
    if kind == "slurm":
        return slurm_executor(folder, res, setup, handover=handover)
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=res.time_min)
    return executor


def sbatch_preview(executor: submitit.SlurmExecutor) -> str:
    """The exact script submitit writes when it submits: the same call with the same command (submitit has no
    public "render only" call)."""
    return executor._make_submission_file_text(executor._submitit_command_str, "<uid>")


def submission_failure(server: str, partition: str, exc: Exception, recorded: list[Submitted], manifest: Path,
                       deployment: str) -> str:
    done = (f"{len(recorded)} job(s) submitted before it ({', '.join(r.job_id for r in recorded)}) are recorded in "
            f"{manifest}: `grace-hpc launch` again submits only what is missing, `grace-hpc stop --deployment "
            f"{deployment}` ends them") if recorded else "nothing was submitted"
    # submitit's FailedJobError carries sbatch's stderr as its message
    return f"submitting {server} to partition {partition} failed: {str(exc).strip()}; {done}"


def already_running(manifest: Manifest, deployment: Deployment) -> dict[tuple[str, int], Submitted]:
    """(server, replica) -> its job recorded in the manifest that is still pending or running (one scheduler
    query for all)."""
    rows = [r for r in manifest.read() if r.deployment == deployment.name]
    states = job_states_of([r.job_id for r in rows])
    return {(r.server, r.replica): r for r in rows if is_alive(states.get(r.job_id))}


def launch(
    config: ConfigDir,
    deployment: Deployment,
    *,
    executor_kind: str,
    dry_run: bool = False,
    replace: bool = False,
    environ: dict[str, str] | None = None,
    replicas: Mapping[str, int] | None = None,
    handover: bool = False,
) -> LaunchResult:
    """Plan every server, then submit one job per server replica that is not already pending or running (with
    `replace`, those are stopped and submitted again); with `dry_run`, only render what would be submitted.
    Each server gets `replicas.min` replicas, or as many as `replicas` (server name -> count) says (the fleet
    controller's choice). `handover`: the fleet controller's jobs, which it replaces with a successor before their
    time limit (they neither requeue nor stop at SLURM's time-limit warning; serve/supervisor.py).

    Each job is recorded in the manifest as soon as it is submitted, so a submission that fails half way leaves
    every job submitted before it where `stop` finds it."""
    cluster, catalog = config.cluster(), config.catalog()
    planned = plan_deployment(cluster, catalog, deployment)
    requested = deployment.executor if executor_kind == "auto" else executor_kind
    # a dry run shows the SLURM script even on a laptop
    kind = ("slurm" if requested == "auto" else requested) if dry_run else choose_executor(requested)
    registry = Registry.from_cluster(cluster, config, environ=os.environ if environ is None else environ)
    logs = config.resolve(cluster.paths.logs) / deployment.name
    # one flat folder that exists before sbatch runs: submitit creates a `%j` folder only after sbatch returns, and a
    # job that starts at once on an idle node finds no folder for its output and fails with no trace (slurmd:
    # "Could not open stdout file ... No such file or directory", exit signal 53; seen in CI)
    folder = logs / "submitit"
    manifest = manifest_of(config, cluster, deployment.name)
    specs = {ps.server.name: serve_spec(config, cluster, catalog, deployment, ps.server, ps.plan,
                                        registry_path=str(registry.path), local=kind == "local", handover=handover)
             for ps in planned}
    missing_weights = weights_problems(((p.model, p.weights_ref) for ps in planned for p in ps.plan.plans),
                                       config.resolve(cluster.paths.hf_cache) if cluster.paths.hf_cache else None)
    if dry_run:
        previews = {ps.server.name: sbatch_preview(slurm_executor(folder, ps.resources, cluster.engines.setup,
                                                                  render_only=True))
                    if kind == "slurm" else "(local executor: no script)" for ps in planned}
        return LaunchResult(planned, [], [], specs, previews, {}, registry, missing_weights)
    if missing_weights:
        raise ConfigError("; ".join(missing_weights))
    running = already_running(manifest, deployment)
    count = {ps.server.name: (replicas or {}).get(ps.server.name, ps.server.replicas.min) for ps in planned}
    wanted = {(ps.server.name, replica) for ps in planned for replica in range(count[ps.server.name])}
    kept = [row for key, row in running.items() if key in wanted]
    if replace and kept:
        stop_rows(registry, manifest, kept, timeout_s=60)
        kept = []
    kept_keys = {(k.server, k.replica) for k in kept}
    submitted: list[Submitted] = []
    jobs: dict[str, submitit.Job] = {}
    for ps in planned:
        executor = make_executor(kind, folder, ps.resources, cluster.engines.setup, handover=handover)
        for replica in range(count[ps.server.name]):
            if (ps.server.name, replica) in kept_keys:
                continue
            try:
                # a launch from inside a job must not leak SLURM_* into it
                with submitit.helpers.clean_env(), (
                        detached_stdio(logs / "local-controllers.log") if kind == "local" else nullcontext()):
                    job = executor.submit(ServerJob(specs[ps.server.name]))
            except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as exc:
                raise SubmissionError(submission_failure(ps.server.name, ps.resources.partition, exc, submitted,
                                                         manifest.path, deployment.name)) from exc
            job_id = str(job.job_id) if kind == "slurm" else f"local:{job.job_id}"
            row = Submitted(deployment.name, ps.server.name, replica, job_id, kind, ps.resources.partition,
                            tuple(p.model for p in ps.plan.plans), ps.plan.num_gpus, time.time(), str(folder))
            manifest.add(row)
            jobs[job_id] = job
            submitted.append(row)
    return LaunchResult(planned, submitted, kept, specs, {}, jobs, registry, [])
