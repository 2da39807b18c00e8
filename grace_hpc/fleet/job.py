"""The controller as a small CPU job of its own: an sbatch script rendered by the project's one renderer."""

from __future__ import annotations

from grace_hpc.config.deployment import Deployment
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import ConfigError
from grace_hpc.launch.resources import job_resources, render_sbatch


def controller_job_name(deployment: str) -> str:
    # `+` cannot appear in a server name, so no server's job (launcher.job_name_of) is ever called this
    return f"grace-{deployment}+fleet"


def controller_command(config: ConfigDir, deployment: Deployment, python: str = "python3") -> list[str]:
    return [python, "-m", "grace_hpc", "fleet", "run", "--config-dir", str(config.root),
            "--deployment", deployment.name]


def controller_script(config: ConfigDir, deployment: Deployment, partition: str, time: str) -> str:
    cluster = config.cluster()
    try:
        part = cluster.partition(partition)
    except KeyError:
        known = ", ".join(p.name for p in cluster.partitions)
        raise ConfigError(f"--partition {partition!r}: unknown partition; known: {known}") from None
    res = job_resources(part, job_name=controller_job_name(deployment.name), num_gpus=0, time=time)
    log_dir = str(config.resolve(cluster.paths.logs) / deployment.name)
    return render_sbatch(res, controller_command(config, deployment), log_dir=log_dir, setup=cluster.engines.setup)
