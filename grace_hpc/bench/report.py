"""A BenchRun as the documented JSON document (docs/bench.md), as rich tables, and beside seed 001's table.

Tables and plots are drawn from the JSON document, so `bench --compare a.json b.json` shows earlier runs (say the
same model on T4 and on H100, each measured by `bench submit` next to its server) exactly as a live run."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from grace_hpc.bench.runner import BenchRun, TargetResult
from grace_hpc.bench.stats import LevelStats
from grace_hpc.errors import ConfigError

SCHEMA = "grace-hpc.bench/1"


@dataclass(frozen=True)
class SeedRow:
    """One row of seed 001's "Expected Performance" table (batch size 1, max_tokens 50, one A100 per row)."""

    label: str
    models: tuple[str, ...]  # catalog names it describes
    gpu_prefix: str
    requests_per_s: tuple[float, float]
    ttft_ms: tuple[float, float]
    tpot_ms: tuple[float, float]


SEED_001 = (
    SeedRow("Gemma 2-2B, 1x A100", ("gemma-2-2b-it",), "A100", (50, 80), (50, 100), (10, 20)),
    SeedRow("Gemma 2-9B, 1x A100", ("gemma-2-9b-it",), "A100", (20, 40), (100, 200), (20, 30)),
    SeedRow("Llama 8B, 1x A100", ("llama-3.1-8b-instruct",), "A100", (20, 40), (100, 200), (20, 30)),
    SeedRow("Llama 70B, 4x A100", ("llama-3-70b-instruct", "llama-3.1-70b-instruct"), "A100", (5, 10), (200, 400),
            (40, 60)),
)


def file_stem(name: str) -> str:
    """A model or endpoint name as a safe file name (no `/` from `org/model` aliases, no shell metacharacters)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def seed_row(catalog_model: str | None, gpu_type: str | None) -> SeedRow | None:
    """Seed 001's expectation for this model on this GPU, when the seed has one."""
    return next((row for row in SEED_001 if catalog_model in row.models and (gpu_type or "").startswith(
        row.gpu_prefix)), None)


# -- the JSON document ---------------------------------------------------------------------------------------
def _level(stats: LevelStats) -> dict[str, Any]:
    data = asdict(stats)
    data["mode"] = stats.mode.value
    for name in ("ttft", "tpot", "itl", "e2e"):
        data[f"{name}_ms"] = data.pop(name)
    data["error_samples"] = list(stats.error_samples)
    return data


def _target(result: TargetResult) -> dict[str, Any]:
    t = result.target
    seed = seed_row(t.catalog_model, t.gpu_type)
    return {
        "name": t.name, "base_url": t.base_url, "model": t.model, "catalog_model": t.catalog_model,
        "engine": t.engine, "gpu_type": t.gpu_type, "partition": t.partition, "endpoint_id": t.endpoint_id,
        "capacity": result.capacity.model_dump(mode="json") if result.capacity else None,
        "seed_expected": asdict(seed) if seed else None,
        "levels": [_level(s) for s in result.levels],
    }


def document(run: BenchRun) -> dict[str, Any]:
    """The JSON document of docs/bench.md (API keys are not part of it)."""
    plan = run.plan
    return {
        "schema": SCHEMA,
        "started_at": run.started_at,
        "mode": plan.mode.value,
        "loads": list(plan.loads),
        "budget": {"duration_s": plan.budget.duration_s, "requests": plan.budget.requests},
        "workload": {"api": plan.workload.api.value, "prompt_tokens": plan.workload.prompt_tokens,
                     "output_tokens": plan.workload.output_tokens, "dataset_prompts": len(plan.workload.dataset),
                     "ignore_eos": plan.workload.ignore_eos, "stream": plan.workload.stream},
        "ttft_p90_target_ms": plan.ttft_p90_target_ms,
        "targets": [_target(r) for r in run.results],
    }


def write_document(doc: dict[str, Any], path: Path) -> None:
    """Atomically (temp file + rename): a job's document appears whole or not at all, so it can be waited for."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def load_document(path: Path) -> dict[str, Any]:
    """A document written by `bench --json` or `--output`; ConfigError when it is not one."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--compare {path}: cannot read a bench result ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ConfigError(f"--compare {path}: not a `grace-hpc bench` result (expected \"schema\": \"{SCHEMA}\"; "
                          "write one with `grace-hpc bench ... --output FILE.json`)")
    return doc


# -- tables ----------------------------------------------------------------------------------------------------
def _ms(p: dict[str, float] | None, key: str) -> str:
    return "-" if p is None else f"{p[key]:.0f}" if p[key] >= 10 else f"{p[key]:.1f}"


def _triple(p: dict[str, float] | None) -> str:
    return "-" if p is None else " / ".join(_ms(p, k) for k in ("p50", "p90", "p99"))


def _load_label(mode: str, load: float) -> str:
    return f"{load:g} in flight" if mode == "closed" else f"{load:g} req/s"


def target_table(doc: dict[str, Any], target: dict[str, Any]):  # type: ignore[no-untyped-def]
    from rich.table import Table

    where = " on ".join(x for x in (target["catalog_model"] or target["model"], target["gpu_type"]) if x)
    cap = target["capacity"]
    caption = (f"sustainable at p90 TTFT <= {doc['ttft_p90_target_ms']:g} ms: "
               + (f"{cap['output_tokens_per_s']:.1f} output tok/s, {cap['requests_per_s']:.2f} req/s "
                  f"(at {cap['concurrency']} in flight)" if cap else "no closed-loop level met it"))
    table = Table(title=f"{target['name']} ({where}, {target['engine'] or 'via router'})", caption=caption)
    for col in ("load", "req/s", "out tok/s", "TTFT ms p50/p90/p99", "TPOT ms p50/p90/p99", "E2E ms p50/p90/p99",
                "errors", "running/waiting", "KV cache", "GPU util"):
        table.add_column(col, justify="right")
    for lv in target["levels"]:
        eng, gpu = lv["engine"] or {}, lv["gpu"]
        queue = "-" if not eng else f"{_num(eng.get('running_max'))}/{_num(eng.get('waiting_max'))}"
        kv = "-" if eng.get("kv_cache_usage_max") is None else _percent(eng["kv_cache_usage_max"] * 100)
        table.add_row(
            _load_label(lv["mode"], lv["load"]), f"{lv['requests_per_s']:.2f}", f"{lv['output_tokens_per_s']:.1f}",
            _triple(lv["ttft_ms"]), _triple(lv["tpot_ms"]), _triple(lv["e2e_ms"]),
            f"[red]{lv['errors']}" if lv["errors"] else "0", queue, kv,
            "-" if gpu is None else f"{gpu['utilization_mean']:.0f}%",
        )
    seed = target["seed_expected"]
    if seed:
        rng = "{0:g}-{1:g}".format
        table.add_row(f"[dim]seed 001: {seed['label']}", f"[dim]{rng(*seed['requests_per_s'])}", "",
                      f"[dim]{rng(*seed['ttft_ms'])}", f"[dim]{rng(*seed['tpot_ms'])}", "", "", "", "", "")
    return table


def _percent(value: float) -> str:
    return f"{value:.0f}%" if value >= 1 else f"{value:.2g}%"  # a tiny model's KV use is a fraction of a percent


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def compare_table(docs: Sequence[dict[str, Any]]):  # type: ignore[no-untyped-def]
    """Every target of every document side by side, one row per load level: throughput and p90 latencies."""
    from rich.table import Table

    targets = [(doc, t) for doc in docs for t in doc["targets"]]
    table = Table(title="grace-hpc bench: side by side (out tok/s | TTFT p90 ms | E2E p90 ms)")
    table.add_column("load", justify="right")
    for _, t in targets:
        table.add_column(f"{t['name']}\n{t['gpu_type'] or t['engine'] or ''}", justify="right")
    rows: dict[str, list[str]] = {}
    for i, (_, t) in enumerate(targets):
        for lv in t["levels"]:
            cells = rows.setdefault(_load_label(lv["mode"], lv["load"]), ["-"] * len(targets))
            cells[i] = f"{lv['output_tokens_per_s']:.1f} | {_ms(lv['ttft_ms'], 'p90')} | {_ms(lv['e2e_ms'], 'p90')}"
    for label, cells in rows.items():
        table.add_row(label, *cells)
    return table
