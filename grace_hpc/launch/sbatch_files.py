"""`launch --emit-sbatch DIR`: the same server jobs as plain sbatch scripts, for users who prefer `sbatch`.

The script runs `python -m grace_hpc serve`, which plans again from the same files and runs the same supervisor."""

from __future__ import annotations

import sys
from pathlib import Path

from grace_hpc.config.deployment import Deployment
from grace_hpc.config.loader import ConfigDir
from grace_hpc.launch.launcher import plan_deployment
from grace_hpc.launch.resources import render_sbatch


def serve_command(config: ConfigDir, deployment_file: Path, server: str, python: str = sys.executable) -> list[str]:
    """The job's command: this Python (the environment grace-hpc is installed in, as submitit's jobs use) and the
    deployment's file, by absolute path (its `name:` need not be its file name, nor the file in configs/)."""
    return [python, "-m", "grace_hpc", "serve", "--config-dir", str(config.root),
            "--deployment", str(deployment_file.resolve()), "--server", server]


def render_server_scripts(config: ConfigDir, deployment: Deployment, deployment_file: Path) -> dict[str, str]:
    """Script name -> script: one per server, or one per replica (`web-replica0`, ...) as `launch` submits them."""
    cluster, catalog = config.cluster(), config.catalog()
    log_dir = str(config.resolve(cluster.paths.logs) / deployment.name)
    scripts = {}
    for ps in plan_deployment(cluster, catalog, deployment):
        text = render_sbatch(ps.resources, serve_command(config, deployment_file, ps.server.name), log_dir=log_dir,
                             setup=cluster.engines.setup)
        # `launch` submits `replicas.min`; a plain script cannot scale, so a scale-to-zero server still gets one
        replicas = max(ps.server.replicas.min, 1)
        scripts.update({ps.server.name + (f"-replica{i}" if replicas > 1 else ""): text for i in range(replicas)})
    return scripts


def write_sbatch_files(config: ConfigDir, deployment: Deployment, deployment_file: Path, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    # sbatch does not create the --output folder: a job whose log folder is missing fails before it starts
    (config.resolve(config.cluster().paths.logs) / deployment.name).mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_server_scripts(config, deployment, deployment_file).items():
        path = folder / f"{deployment.name}-{name}.sbatch"
        path.write_text(text)
        paths.append(path)
    return paths
