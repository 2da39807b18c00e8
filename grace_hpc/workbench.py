"""The model workbench (seed 003): a catalog entry from a pasted model page, a local folder or .gguf file, or a
config.json in the shared Hugging Face cache; its plan on every partition of cluster.yaml; adding it to and
removing it from configs/models.yaml. Shared by `grace-hpc models` and the router's /api/models.

A page never states everything config.json does, so an entry from a page is an `IncompleteModel` naming the numbers
it lacks, and is never planned; a folder, a .gguf file or the cached config.json completes it (keeping the name,
license and quantized variants the page gave). Nothing here fetches anything: pasted text is only parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grace_hpc.config.catalog import Catalog, IncompleteModel, ModelSpec, QuantizedVariant, QuantMethod
from grace_hpc.config.catalog_edit import checked_edit, entry_yaml, insert_entry, remove_entry, write_catalog
from grace_hpc.config.cluster import Cluster
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import ConfigError
from grace_hpc.planner import PlanRequest, plan_model
from grace_hpc.planner.importers import (
    ARCHITECTURE_FIELDS,
    cached_config_folder,
    parse_model_page,
    spec_from_folder,
    spec_from_gguf,
)
from grace_hpc.planner.packing import partition_device

__all__ = ["MAX_PAGE_CHARS", "Overrides", "Entry", "Edit", "entry_from_page", "entry_from_page_or_cache", "entry_from_path",
           "entry_from_cache",
           "plan_on_partitions", "describe", "add_entry", "remove_named"]

#: a model page's text is 5-60 kB; anything far larger is not one
MAX_PAGE_CHARS = 400_000
#: config.json keys no model page states (so a page alone never completes an entry)
NEVER_ON_A_PAGE = ("model_type", "max_position_embeddings", "tie_word_embeddings", "torch_dtype")

Entry = ModelSpec | IncompleteModel


@dataclass(frozen=True)
class Overrides:
    """What the user says instead of (or on top of) what the source states: CLI flags or the API's fields."""

    name: str | None = None
    model_id: str | None = None
    license: str | None = None
    bits: int | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")


def entry_from_page(text: str, over: Overrides = Overrides()) -> IncompleteModel:
    """The incomplete entry a pasted page gives; ConfigError naming every field it could not find (and its flag)."""
    if len(text) > MAX_PAGE_CHARS:
        raise ConfigError(f"the pasted text is {len(text):,} characters; a model page is under {MAX_PAGE_CHARS:,}")
    page = parse_model_page(text, over.model_id)
    model_id = page.model_id
    license_ = over.license or page.license
    bits = over.bits or page.bits or _gguf_bits(page.gguf_type)
    unread = ["the model id (--model-id ORG/NAME)"] if not model_id else []
    unread += ["the license (--license ID, as the model card says)"] if not license_ else []
    unread += ["the weight bits of the quantized checkpoint (--bits N)"] if page.quantization and not bits else []
    unread += ["which .gguf file (--model-id of a repo whose name carries the type, e.g. ...-Q4_K_M-GGUF)"] if (
        page.quantization == "gguf" and not page.gguf_type) else []
    if unread or not (model_id and license_):
        raise ConfigError(f"the page does not say {'; '.join(unread)}: give them as flags")
    quantized = page.quantization in {m.value for m in QuantMethod}
    hf_id = page.base_model if quantized and page.base_model else model_id
    variants = (QuantizedVariant(method=QuantMethod(page.quantization), hf_id=model_id, bits=bits or 16,
                                 group_size=page.group_size, gguf_type=page.gguf_type, file=page.gguf_file),
                ) if quantized else ()
    missing = tuple(f for f in ARCHITECTURE_FIELDS if f not in page.architecture) + NEVER_ON_A_PAGE
    return IncompleteModel(
        name=over.name or _slug(hf_id.split("/")[-1]) or "pasted-model", hf_id=hf_id, license=license_,
        missing=missing, stated=page.architecture, context_length=page.context_length,
        params_billions=page.params_billions, moe=page.moe, variants=variants,
        source=f"pasted model page of https://huggingface.co/{model_id}",
    )


def _gguf_bits(gguf_type: str | None) -> int | None:
    """The bits a GGUF type is named for (Q4_K_M: 4, F16: 16); the planner sizes it by the type itself."""
    found = re.search(r"(\d+)", gguf_type or "")
    return int(found.group(1)) if found else None


def entry_from_path(path: Path, over: Overrides = Overrides()) -> ModelSpec:
    """A complete entry for a local Hugging Face folder (config.json), a .gguf file, or a folder with one .gguf."""
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ConfigError(f"{path}: neither config.json nor a single .gguf file in it "
                              f"({len(ggufs)} .gguf files); give the file itself")
        path = ggufs[0]
    if path.is_file() and path.suffix.lower() == ".gguf":
        spec = spec_from_gguf(path)
    elif path.is_dir():
        spec = spec_from_folder(path)
    else:
        raise ConfigError(f"{path}: not a model folder (config.json) nor a .gguf file")
    return _named(spec, over)


def entry_from_cache(hf_id: str, cluster: Cluster, configs: ConfigDir, over: Overrides = Overrides()) -> ModelSpec:
    """A complete entry from `hf_id`'s config.json in cluster.yaml's paths.hf_cache, served by its hub id."""
    if cluster.paths.hf_cache is None:
        raise ConfigError("--hf-id reads the shared Hugging Face cache: set paths.hf_cache in cluster.yaml")
    return _named(_from_snapshot(hf_id, cached_config_folder(hf_id, configs.resolve(cluster.paths.hf_cache))), over)


def _from_snapshot(hf_id: str, folder: Path) -> ModelSpec:
    return spec_from_folder(folder).model_copy(update={
        "name": _slug(hf_id.split("/")[-1]), "hf_id": hf_id, "weights": None,
        "source": f"https://huggingface.co/{hf_id}/blob/main/config.json (cached in {folder})",
    })


def entry_from_page_or_cache(text: str, cluster: Cluster, configs: ConfigDir, over: Overrides = Overrides()) -> Entry:
    """The page's entry, completed at once when paths.hf_cache already holds its model's config.json."""
    page = entry_from_page(text, over)
    if cluster.paths.hf_cache is None:
        return page
    try:
        folder = cached_config_folder(page.hf_id, configs.resolve(cluster.paths.hf_cache))
    except ConfigError:
        return page
    return merged(_from_snapshot(page.hf_id, folder), page)


def _named(spec: ModelSpec, over: Overrides) -> ModelSpec:
    update = {k: v for k, v in (("name", over.name), ("license", over.license)) if v}
    return ModelSpec.model_validate({**spec.model_dump(), **update}) if update else spec


def completing(catalog: Catalog, spec: ModelSpec) -> IncompleteModel | None:
    """The incomplete entry `spec` completes: the same name, or the same Hugging Face id."""
    return next((i for i in catalog.incomplete if spec.name == i.name or spec.hf_id.lower() == i.hf_id.lower()), None)


def merged(spec: ModelSpec, page: IncompleteModel) -> ModelSpec:
    """`spec`'s numbers under the page entry's name, id, license and variants (a local path stays the weights)."""
    hf_id = page.hf_id if spec.weights else spec.hf_id
    return ModelSpec.model_validate({**spec.model_dump(), "name": page.name, "hf_id": hf_id, "license": page.license,
                                     "variants": [v.model_dump() for v in (*page.variants, *spec.variants)]})


def plan_on_partitions(spec: ModelSpec, cluster: Cluster) -> list[dict[str, Any]]:
    """One row per partition: `plan` is exactly `plan --model NAME --gpu GPU --json` on that partition's node
    (its GPUs per node, cluster.yaml's vLLM release); `lever` the planner's what-would-fit advice when short."""
    request = PlanRequest(vllm_version=cluster.engines.vllm_version)
    rows = []
    for partition in cluster.partitions:
        device, per_node = partition_device(partition)
        plan = plan_model(spec, device, per_node, request)
        lever = next((r for r in plan.reasons if r.startswith("what would fit")), None)
        rows.append({"partition": partition.name, "gpu": device.name, "gpus_per_node": per_node, "fits": plan.fits,
                     "lever": None if plan.fits else lever, "plan": plan.to_json()})
    return rows


def describe(entry: Entry, cluster: Cluster) -> dict[str, Any]:
    """What the CLI shows and the API returns: the entry, whether it is complete, and its plans (none if not)."""
    incomplete = isinstance(entry, IncompleteModel)
    return {
        "complete": not incomplete, "entry": entry.model_dump(mode="json", exclude_defaults=True),
        "missing": list(entry.missing) if incomplete else [],
        "reason": entry.reason() if incomplete else None,
        "plans": [] if incomplete else plan_on_partitions(entry, cluster),
    }


@dataclass(frozen=True)
class Edit:
    """A checked edit of models.yaml: the entry as written, the new text, and the backup (None on a dry run)."""

    entry: Entry
    text: str
    completed: str | None  # the incomplete entry this one replaced
    backup: Path | None


def add_entry(configs: ConfigDir, entry: Entry, *, dry_run: bool = False) -> Edit:
    """Write `entry` into models.yaml (an entry from a folder or config.json replaces the incomplete one it
    completes); ConfigError when the name is taken."""
    path = configs.root / "models.yaml"
    old = path.read_text(encoding="utf-8")
    catalog = configs.catalog()
    text, completed = old, None
    if isinstance(entry, ModelSpec) and (page := completing(catalog, entry)) is not None:
        entry, completed = merged(entry, page), page.name
        text, _ = remove_entry(text, page.name)
        checked_edit(old, text, "incomplete", removed=page.name)
    if entry.name in catalog.names() or (completed is None and entry.name in {i.name for i in catalog.incomplete}):
        raise ConfigError(f"{path}: a model named {entry.name!r} is already in the catalog; choose another --name, "
                          f"or `grace-hpc models remove {entry.name}` first")
    section = "incomplete" if isinstance(entry, IncompleteModel) else "models"
    block = entry_yaml(entry, f"added by `grace-hpc models add`; source: {entry.source}")
    new, inserted = insert_entry(text, section, block)
    checked_edit(text, new, section, added=entry.model_dump(mode="json", exclude_defaults=True), inserted=inserted)
    backup = None if dry_run else write_catalog(path, old, new)
    return Edit(entry, new, completed, backup)


def remove_named(configs: ConfigDir, name: str, *, dry_run: bool = False) -> Edit:
    """Cut the entry called `name` (complete or not) out of models.yaml, its comment lines with it."""
    path = configs.root / "models.yaml"
    old = path.read_text(encoding="utf-8")
    catalog = configs.catalog()
    entry: Entry | None = next((m for m in (*catalog.models, *catalog.incomplete) if m.name == name), None)
    if entry is None:
        raise ConfigError(catalog.unknown_model(name, str(path)))
    new, section = remove_entry(old, name)
    checked_edit(old, new, section, removed=name)
    backup = None if dry_run else write_catalog(path, old, new)
    return Edit(entry, new, None, backup)

