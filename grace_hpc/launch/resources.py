"""Pure: what a server job asks SLURM for, and the two ways of saying it (submitit parameters, an sbatch script)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from grace_hpc.config.cluster import Partition
from grace_hpc.errors import ConfigError
from grace_hpc.slurm.directives import directive, directive_value

_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")

#: seconds before the time limit at which SLURM sends USR2, so the server drains and requeues in time
SIGNAL_DELAY_S = 120


def signal_delay_s(time_min: int) -> int:
    """SIGNAL_DELAY_S, but at most a quarter of a short job's time: SLURM sends the signal at its first check once
    the time left is below the delay, which for a 2-minute job would be while Python is still starting, before the
    supervisor has installed its handler."""
    return min(SIGNAL_DELAY_S, time_min * 60 // 4)


def slurm_time_minutes(value: str) -> int:
    """SLURM time strings (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`) -> whole minutes."""
    m = _TIME.match(value.strip())
    if not m:
        raise ConfigError(f"time {value!r} is not a SLURM time (examples: 90, 04:00:00, 1-00:00:00)")
    d, a, b, c = (int(x) if x else None for x in m.group("d", "a", "b", "c"))
    if d is not None:  # D-HH[:MM[:SS]]
        return d * 1440 + a * 60 + (b or 0) + ((c or 0) + 59) // 60
    if c is not None:  # HH:MM:SS
        return a * 60 + b + (c + 59) // 60  # type: ignore[operator]  # b is set when c is
    if b is not None:  # MM:SS
        return a + (b + 59) // 60
    return a


@dataclass(frozen=True)
class JobResources:
    job_name: str
    partition: str
    gres: str | None  # gpu:TYPE:N, or None for CPU-only partitions
    cpus_per_task: int
    mem_gb: int
    time_min: int
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra: tuple[tuple[str, str | None], ...] = ()  # parsed extra_directives: (--key, value|None)


def parse_directive(text: str) -> tuple[str, str | None]:
    """`--reservation=llm` -> ("reservation", "llm"); `--exclusive` -> ("exclusive", None)."""
    m = re.match(r"^--([a-z][a-z0-9-]*)(?:[= ](.+))?$", text.strip())
    if not m:
        raise ConfigError(f"extra_directives entry {text!r} is not of the form --name[=value]")
    return m.group(1), m.group(2)


def job_resources(
    partition: Partition, *, job_name: str, num_gpus: int, time: str | None = None
) -> JobResources:
    units = max(num_gpus, 1)
    return JobResources(
        job_name=job_name,
        partition=partition.name,
        gres=f"gpu:{partition.gres_name}:{num_gpus}" if num_gpus else None,
        cpus_per_task=partition.cpus_per_gpu * units,
        mem_gb=partition.mem_per_gpu_gb * units,
        time_min=slurm_time_minutes(time or partition.max_time),
        account=partition.account,
        qos=partition.qos,
        constraint=partition.constraint,
        extra=tuple(parse_directive(d) for d in partition.extra_directives),
    )


def _check_submittable(name: str, value: str) -> None:
    """submitit shell-quotes #SBATCH values (`'...'`), which sbatch reads right except for a backslash, which it
    takes as an escape inside quotes too; a control character breaks any #SBATCH line."""
    directive_value(name, value)
    if "\\" in value:
        raise ConfigError(f"SLURM option --{name}={value!r}: submitit cannot pass a backslash to sbatch; "
                          "submit the script of `launch --emit-sbatch` instead")


def slurm_parameters(res: JobResources, setup: tuple[str, ...] = (), *, handover: bool = False) -> dict[str, object]:
    """Parameters for `submitit.SlurmExecutor.update_parameters`, in its own names (sbatch's, `_` for `-`).
    `handover`: a job of the fleet controller, which a successor replaces before its time limit: SLURM must not
    requeue it, and it needs no time-limit warning. submitit always asks for one (USR2), which SLURM sends to every
    process of the step, the engine too (it would die of it): such a job asks for SIGURG instead, which every
    process ignores by default."""
    delay = signal_delay_s(res.time_min)
    params: dict[str, object] = {
        "job_name": res.job_name,
        "partition": res.partition,
        "cpus_per_task": res.cpus_per_task,
        "mem": f"{res.mem_gb}G",
        "time": res.time_min,
        "signal_delay_s": delay,
        # a flag (`--exclusive`) is True: submitit writes `#SBATCH --exclusive`
        "additional_parameters": {**({"no-requeue": True, "signal": f"URG@{delay}"} if handover else {"requeue": True}),
                                  **{k: True if v is None else v for k, v in res.extra}},
    }
    for key, value in (("gres", res.gres), ("account", res.account), ("qos", res.qos),
                       ("constraint", res.constraint)):
        if value:
            params[key] = value
    for key, value in [*params.items(), *dict(res.extra).items()]:
        if isinstance(value, str):
            _check_submittable(key, value)
    if setup:
        params["setup"] = list(setup)
    return params


def render_sbatch(res: JobResources, command: list[str], *, log_dir: str, setup: tuple[str, ...] = ()) -> str:
    """A plain sbatch script for the same job: directives as sbatch reads them, the command shell-quoted."""
    directives = [
        directive("job-name", res.job_name),
        directive("partition", res.partition),
        directive("cpus-per-task", res.cpus_per_task),
        directive("mem", f"{res.mem_gb}G"),
        directive("time", res.time_min),
        directive("requeue"),
        # B: the signal goes to the batch shell, which `exec`s the supervisor
        directive("signal", f"B:USR2@{signal_delay_s(res.time_min)}"),
        directive("output", log_dir + "/%x-%j.out"),
    ]
    if res.gres:
        directives.append(directive("gres", res.gres))
    for name, value in (("account", res.account), ("qos", res.qos), ("constraint", res.constraint)):
        if value:
            directives.append(directive(name, value))
    directives += [directive(k, v) for k, v in res.extra]
    lines = ["#!/bin/bash", "# generated by grace-hpc: edit the deployment, not this file", *directives]
    lines += ["set -euo pipefail", *setup, "exec " + shlex.join(command), ""]
    return "\n".join(lines)
