"""Helpers for tests on the real one-node SLURM: a deployment SLURM cannot start while its partition is taken."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.cli import grace


@contextmanager
def blocked_server(project: Path) -> Iterator[None]:
    """Deployment `busy` (server `big`: model `tiny` on one h100) in `project`, and a job holding every h100 GPU of
    the node (2 or 4, as tests/slurm/start-local-slurm.sh was started), so `big` stays pending; both stopped after."""
    (project / "configs" / "deployments" / "busy.yaml").write_text(
        "name: busy\nservers:\n  - {name: big, partition: h100, models: [tiny], engine: llama.cpp, "
        "max_model_len: 1024}\n")
    gres = subprocess.run(["sinfo", "-h", "-p", "h100", "-o", "%G"], capture_output=True, text=True,
                          check=True).stdout
    gpus = re.search(r"gpu:h100:(\d+)", gres)
    assert gpus, f"no h100 GPUs in sinfo's GRES: {gres!r}"
    hog = subprocess.run(["sbatch", "--parsable", "-p", "h100", f"--gres=gpu:h100:{gpus[1]}", "-o", "/dev/null",
                          "--wrap", "sleep 120"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield
    finally:
        subprocess.run(["scancel", hog], check=True)
        grace(project, "stop", "--deployment", "busy")
