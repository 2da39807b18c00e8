"""Running shards as a SLURM array: through submitit (`submit_array`), or as a rendered sbatch script.

Both read the shard from the array: submitit passes `Shard(i, N)` to task i; the sbatch script lets the worker
read SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (shards.shard_from_env). Either way a requeued or rerun task
redoes only its missing rows (results.py), so preemption costs at most the rows that were in flight.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
from pydantic import BaseModel, ConfigDict, Field

from grace_hpc.errors import ConfigError, SubmissionError
from grace_hpc.work.runner import ShardSummary, WorkSpec, run_shard_sync
from grace_hpc.work.shards import Shard

__all__ = ["ArrayOptions", "ShardJob", "submit_array", "render_sbatch", "worker_argv"]

# What may appear after `#SBATCH --key=`: sbatch reads these lines itself, not through a shell, so values are
# restricted to characters that need no quoting instead of being quoted (a space would end the value).
_SBATCH_SAFE = re.compile(r"^[A-Za-z0-9_.,:%@+=/-]+$")


class ArrayOptions(BaseModel):
    """SLURM resources of one worker task. Workers only make HTTP calls: CPUs and memory, no GPU."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shards: int = Field(default=4, ge=1)
    parallelism: int = Field(default=4, ge=1)  # array tasks running at once (`--array=...%P`)
    partition: str | None = None
    time_min: int = Field(default=240, ge=1)
    cpus_per_task: int = Field(default=1, ge=1)
    mem_gb: int = Field(default=2, ge=1)
    account: str | None = None
    qos: str | None = None
    job_name: str = "grace-work"


class ShardJob(submitit.helpers.Checkpointable):
    """The callable submitit runs per array task. Checkpointable: on preemption or timeout submitit requeues it
    with the same arguments, which is all a restart needs (the done rows are on disk)."""

    def __call__(self, spec: WorkSpec, shard: Shard) -> ShardSummary:
        return run_shard_sync(spec, shard)


def submit_array(spec: WorkSpec, options: ArrayOptions, folder: Path, *, cluster: str | None = None
                 ) -> list[submitit.Job[ShardSummary]]:
    """Submit one array task per shard; returns the jobs (job.result() is the shard's ShardSummary)."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {
        "name": options.job_name, "timeout_min": options.time_min, "cpus_per_task": options.cpus_per_task,
        "mem_gb": options.mem_gb, "slurm_array_parallelism": options.parallelism,
    }
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.account:
        params["slurm_account"] = options.account
    if options.qos:
        params["slurm_qos"] = options.qos
    if executor.cluster != "slurm":  # the local/debug executors know no slurm_* options
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    shards = [Shard(index=i, count=options.shards) for i in range(options.shards)]
    try:
        return executor.map_array(ShardJob(), [spec] * options.shards, shards)
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as exc:
        stderr = getattr(exc, "stderr", None) or getattr(exc, "output", None) or ""
        raise SubmissionError(
            f"submitting {options.shards} worker tasks to SLURM failed: {exc}"
            + (f"; sbatch said: {stderr.decode() if isinstance(stderr, bytes) else stderr}" if stderr else "")
        ) from exc


def worker_argv(spec: WorkSpec, task_ref: str, category: str | None = None, routing: str = "default") -> list[str]:
    """`python -m grace_hpc work ...` for one array task (the shard comes from the SLURM environment). Without a
    router URL the task routes over the registry itself (the compute node's loopback has no router)."""
    argv = ["python", "-m", "grace_hpc", "work", "--input", str(spec.input), "--task", task_ref,
            "--output", str(spec.output)]
    if spec.base_url is not None:
        argv += ["--router", spec.base_url]
    elif spec.fleet is not None:
        argv += ["--registry", str(spec.fleet.registry), "--routing", routing]
    argv += ["--concurrency", str(spec.concurrency)]
    argv += ["--category", category] if category else ["--models", ",".join(spec.models)]
    return argv


def _sbatch_line(key: str, value: object) -> str:
    text = str(value)
    if not _SBATCH_SAFE.match(text):
        raise ConfigError(
            f"SLURM option --{key}={text!r}: only letters, digits and _.,:%@+=/- are allowed in #SBATCH values"
        )
    return f"#SBATCH --{key}={text}"


def render_sbatch(argv: Sequence[str], options: ArrayOptions, environment: dict[str, str]) -> str:
    """The array script, as text. `argv` and `environment` are shell-quoted; #SBATCH values are validated.

    Paths in `argv` are used as given: relative ones are relative to where the script is submitted from."""
    lines = ["#!/bin/bash",
             "# Generated by `grace-hpc work submit ... --render-only`: change that command, not this file.",
             _sbatch_line("job-name", options.job_name),
             _sbatch_line("array", f"0-{options.shards - 1}%{options.parallelism}"),
             _sbatch_line("time", options.time_min),
             _sbatch_line("cpus-per-task", options.cpus_per_task),
             _sbatch_line("mem", f"{options.mem_gb}G"),
             # in the submission folder, which exists (SLURM does not create a missing log folder)
             _sbatch_line("output", "%x-%A_%a.out"),
             # preemption requeues the task; a rerun skips what is written
             "#SBATCH --requeue",
             # SIGTERM to the worker 60 s before the time limit: it writes its finished rows and exits
             _sbatch_line("signal", "B:TERM@60")]
    for key, value in (("partition", options.partition), ("account", options.account), ("qos", options.qos)):
        if value:
            lines.append(_sbatch_line(key, value))
    lines += ["", "set -euo pipefail"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(environment.items()) if _env_name(k)]
    # exec: the worker is the batch shell's process, so `--signal=B:TERM` reaches it
    lines += ["exec " + shlex.join(argv), ""]
    return "\n".join(lines)


def _env_name(name: str) -> bool:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"environment variable name {name!r} is not valid in a shell")
    return True
