"""Are the weights where the job will look? Compute nodes usually have no internet: a server job finds its weights
at a path, in the shared Hugging Face cache (`paths.hf_cache`, the jobs' HF_HOME, read with HF_HUB_OFFLINE=1) or
in an installed package (`pkg:DIST/FILE`), or it fails after waiting in the queue. `launch` checks first.

Also the pure half of `grace-hpc pull`: which files of a hub repository vLLM needs, and whether they fit."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from pathlib import Path

from grace_hpc.errors import ConfigError, EngineError
from grace_hpc.serve.resolve import resolve_weights

#: a hub repository (`org/name`), optionally with a file inside it (`org/name/model-Q4_K_M.gguf`)
_HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(?P<file>.+))?$")

#: the files of a checkpoint vLLM reads: config, tokenizer, weights (safetensors + their index), generation config
VLLM_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "*.safetensors", "model.safetensors.index.json",
)

#: free space kept beyond the download itself (the cache's own metadata, a partial file being written)
DISK_MARGIN = 1.05


def hub_ref(ref: str) -> tuple[str, str | None] | None:
    """`org/name` -> ("org/name", None); `org/name/file.gguf` -> ("org/name", "file.gguf"); a path -> None."""
    m = _HUB_REF.match(ref)
    return None if m is None or ref.startswith(("/", ".")) else (m["repo"], m["file"])


def hub_cache_folder(hf_cache: Path, repo: str) -> Path:
    """Where huggingface_hub keeps `repo` under HF_HOME (`hub/models--org--name`)."""
    return hf_cache / "hub" / ("models--" + repo.replace("/", "--"))


def _in_cache(hf_cache: Path, repo: str, file: str | None) -> bool:
    snapshots = hub_cache_folder(hf_cache, repo) / "snapshots"
    return any((snap / (file or "config.json")).exists() for snap in snapshots.glob("*"))


def weights_problem(model: str, ref: str, hf_cache: Path | None) -> str | None:
    """Why the job of `model` would not find `ref` (None: it will)."""
    if ref.startswith("pkg:"):
        try:
            resolve_weights(ref)
        except EngineError as exc:
            return f"{model}: {exc}"
        return None
    if Path(ref).exists():
        return None
    hub = hub_ref(ref)
    if hub is None:
        return f"{model}: weights {ref!r} do not exist"
    if hf_cache is not None and _in_cache(hf_cache, *hub):
        return None
    return _not_pulled([(model, ref)], hf_cache)


def _not_pulled(missing: list[tuple[str, str]], hf_cache: Path | None) -> str:
    """(model, hub ref) pairs the jobs cannot find, and the one `grace-hpc pull` that fetches them all."""
    one = len(missing) == 1
    # the hub ids are all in the one pull command: the listing names the models only
    listing = f"{missing[0][0]}: {missing[0][1]!r}" if one else (
        f"the weights of {len(missing)} models ({', '.join(model for model, _ in missing)})")
    pull = f"`grace-hpc pull {' '.join(dict.fromkeys(ref for _, ref in missing))}` on the login node"
    if hf_cache is None:
        return (f"{listing} {'comes' if one else 'come'} from the Hugging Face hub, which compute nodes cannot "
                f"reach: set paths.hf_cache in cluster.yaml to a shared folder, then {pull}")
    return (f"{listing} {'is' if one else 'are'} not in the shared Hugging Face cache {hf_cache}: {pull} fetches "
            f"{'it' if one else 'them'}")


def weights_problems(models: Iterable[tuple[str, str]], hf_cache: Path | None) -> list[str]:
    """Why jobs would not find their weights: one problem per missing path or package, and one for every hub
    checkpoint missing from the cache together (a fleet of seven models gets one `pull` command, not seven)."""
    problems, from_hub = [], []
    for model, ref in dict.fromkeys(models):
        problem = weights_problem(model, ref, hf_cache)
        if problem is None:
            continue
        if hub_ref(ref) is None:
            problems.append(problem)
        else:
            from_hub.append((model, ref))
    return problems + ([_not_pulled(from_hub, hf_cache)] if from_hub else [])


def vllm_files(repo_files: Iterable[str]) -> list[str]:
    """The files of a repository listing that vLLM needs (top level only: `original/`, `onnx/` are other formats)."""
    return sorted(f for f in repo_files if "/" not in f and any(fnmatch.fnmatchcase(f, p) for p in VLLM_FILES))


def check_disk_space(repo: str, needed_bytes: int, free_bytes: int, folder: Path) -> None:
    if needed_bytes * DISK_MARGIN > free_bytes:
        raise ConfigError(f"{repo}: needs {needed_bytes / 2**30:.1f} GiB but {folder} has {free_bytes / 2**30:.1f} "
                          "GiB free; free some space or point paths.hf_cache elsewhere")
