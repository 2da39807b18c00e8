"""`grace-hpc pull`: fill the shared Hugging Face cache from the login node, which reaches the hub, for the server
jobs, which read it offline (HF_HUB_OFFLINE=1). Only the files vLLM needs are fetched, after a disk-space check.

huggingface_hub is an optional extra (`pip install 'grace-hpc[pull]'`): the login node needs it, jobs do not."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from grace_hpc.errors import ConfigError, UpstreamError
from grace_hpc.launch.weights import check_disk_space, hub_ref, vllm_files


@dataclass(frozen=True)
class Pulled:
    repo: str
    files: tuple[str, ...]
    size_bytes: int
    snapshot: str  # the snapshot folder inside the cache


def _hub() -> ModuleType:
    try:
        import huggingface_hub
    except ModuleNotFoundError:
        raise ConfigError("`grace-hpc pull` needs huggingface_hub on this (login) node: "
                          "pip install 'grace-hpc[pull]'") from None
    return huggingface_hub


def pull(ref: str, hf_cache: Path) -> Pulled:
    """Download `ref` (`org/name`, or `org/name/FILE` for one file such as a GGUF) into `hf_cache` (HF_HOME)."""
    hub_id = hub_ref(ref)
    if hub_id is None:
        raise ConfigError(f"{ref!r} is not a Hugging Face repository id (org/name)")
    repo, file = hub_id
    hf = _hub()
    try:
        info = hf.HfApi().model_info(repo, files_metadata=True)
    except Exception as exc:  # huggingface_hub's errors differ by version (requests or httpx underneath)
        raise UpstreamError(f"{repo}: the Hugging Face hub did not answer ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'no message'}); run `pull` where the hub "
                            "is reachable (the login node), with HF_TOKEN set for gated models") from exc
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    files = [file] if file else vllm_files(sizes)
    missing = [f for f in files if f not in sizes]
    if not files or missing:
        raise ConfigError(f"{repo}: has no {', '.join(missing) or 'config.json or safetensors weights'} "
                          f"(files: {', '.join(sorted(sizes)[:20])})")
    hub_folder = hf_cache / "hub"
    hub_folder.mkdir(parents=True, exist_ok=True)
    needed = sum(sizes[f] for f in files)
    check_disk_space(repo, needed, shutil.disk_usage(hub_folder).free, hub_folder)
    try:
        snapshot = hf.snapshot_download(repo, revision=info.sha, cache_dir=hub_folder, allow_patterns=files)
    except Exception as exc:  # as above
        raise UpstreamError(f"{repo}: download failed ({type(exc).__name__}: {exc}); run `pull` again: the files "
                            "already in the cache are kept") from exc
    return Pulled(repo, tuple(files), needed, str(snapshot))
