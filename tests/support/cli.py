"""Run the grace-hpc CLI as a user would: a subprocess in the project folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def grace(project: Path, *args: str, timeout: float = 300, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in `project`; `path` replaces PATH (e.g. a folder without SLURM's commands, as on a laptop)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRACE_", "SLURM_", "SUBMITIT_"))}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "grace_hpc", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)


def grace_without_slurm(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI with a PATH that holds no command at all: no srun, sbatch, squeue or scancel."""
    empty = project / "empty-bin"
    empty.mkdir(exist_ok=True)
    return grace(project, *args, timeout=timeout, path=str(empty))


def grace_json(project: Path, *args: str, timeout: float = 300) -> Any:
    proc = grace(project, *args, "--json", timeout=timeout)
    assert proc.returncode == 0, f"grace-hpc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def engine_pids(port: int) -> list[int]:
    """Processes whose command line serves `--port PORT` (the engine of an endpoint)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in argv and str(port).encode() in argv and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def wait_gone(pids: list[int], timeout_s: float = 15.0) -> list[int]:
    """The pids still alive after waiting up to `timeout_s` for them to exit."""
    import time

    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]
