"""The bench's outputs: the documented JSON document, the tables (with seed 001's row) and the PNG plots."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from grace_hpc.bench.loadgen import Budget
from grace_hpc.bench.plots import LATENCY_LABEL, THROUGHPUT_LABEL, X_LABEL, figure, write_plots
from grace_hpc.bench.report import SCHEMA, compare_table, document, load_document, target_table
from grace_hpc.bench.runner import BenchRun, LoadPlan, TargetResult
from grace_hpc.bench.stats import LoadMode, RequestResult, summarize
from grace_hpc.bench.targets import Target
from grace_hpc.bench.workload import Workload
from grace_hpc.errors import ConfigError
from grace_hpc.registry.records import MeasuredCapacity
from tests.support.cli import grace

PLAN = LoadPlan(mode=LoadMode.CLOSED, loads=(1, 4), budget=Budget(duration_s=5.0),
                workload=Workload(prompt_tokens=50, output_tokens=50), ttft_p90_target_ms=2000)


def fake_level(load: int, scale: float):
    results = [RequestResult(i * 0.1, i * 0.1, i * 0.1 + scale, first_token_s=i * 0.1 + scale / 10,
                             token_times_s=tuple(i * 0.1 + scale / 10 + j * 0.01 for j in range(50)),
                             output_tokens=50, prompt_tokens=50) for i in range(load * 3)]
    return summarize(LoadMode.CLOSED, load, results)


def fake_run() -> BenchRun:
    a100 = Target(name="gemma-a100", base_url="http://n1:8000/v1", model="gemma-2-2b-it",
                  catalog_model="gemma-2-2b-it", engine="vllm", gpu_type="A100-40GB", endpoint_id="gemma-a100",
                  api_key="sk-never-printed")
    t4 = Target(name="gemma-t4", base_url="http://n2:8000/v1", model="gemma-2-2b-it", catalog_model="gemma-2-2b-it",
                engine="vllm", gpu_type="T4", endpoint_id="gemma-t4")
    cap = MeasuredCapacity(output_tokens_per_s=900.0, requests_per_s=18.0, concurrency=4, ttft_p90_target_ms=2000,
                           measured_at=1.0)
    return BenchRun(1.0, PLAN, (
        TargetResult(a100, (fake_level(1, 0.2), fake_level(4, 0.3)), cap),
        TargetResult(t4, (fake_level(1, 0.8), fake_level(4, 1.5)), None),
    ))


def rendered(renderable) -> str:
    out = io.StringIO()
    Console(file=out, width=250).print(renderable)
    return out.getvalue()


def test_the_document_has_the_documented_shape_and_never_the_key():
    text = json.dumps(document(fake_run()))
    assert "sk-never-printed" not in text
    doc = json.loads(text)
    assert doc["schema"] == SCHEMA and doc["mode"] == "closed" and doc["loads"] == [1, 4]
    a100, t4 = doc["targets"]
    assert a100["capacity"]["output_tokens_per_s"] == 900.0 and t4["capacity"] is None
    assert a100["seed_expected"]["requests_per_s"] == [50, 80] and t4["seed_expected"] is None
    level = a100["levels"][0]
    assert set(level) >= {"mode", "load", "requests", "errors", "span_s", "requests_per_s", "output_tokens_per_s",
                          "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "error_samples", "engine", "gpu"}
    assert set(level["ttft_ms"]) == {"mean", "p50", "p90", "p95", "p99"}
    assert level["engine"] is None and level["gpu"] is None  # absent, not zero


def test_a_saved_document_compares_side_by_side_and_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(document(fake_run())))
    doc = load_document(path)
    table = rendered(compare_table([doc]))
    assert "gemma-a100" in table and "gemma-t4" in table and "4 in flight" in table
    (tmp_path / "other.json").write_text('{"endpoints": {}}')
    with pytest.raises(ConfigError, match="not a `grace-hpc bench` result"):
        load_document(tmp_path / "other.json")


def test_the_table_prints_the_seed_row_beside_a_matching_gpu_and_the_capacity():
    doc = document(fake_run())
    a100 = rendered(target_table(doc, doc["targets"][0]))
    assert "seed 001: Gemma 2-2B, 1x A100" in a100 and "50-80" in a100 and "900.0 output tok/s" in a100
    t4 = rendered(target_table(doc, doc["targets"][1]))
    assert "seed 001" not in t4 and "no closed-loop level met it" in t4


def test_plots_are_one_png_per_model_with_throughput_and_latency_against_load(tmp_path):
    doc = document(fake_run())
    other = json.loads(json.dumps(doc))
    other["targets"] = [dict(other["targets"][1], name="llama-t4", catalog_model="llama-3.1-8b-instruct")]
    paths = write_plots([doc, other], tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["gemma-2-2b-it.png", "llama-3.1-8b-instruct.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    fig = figure("gemma-2-2b-it", doc["targets"])
    thr, lat = fig.axes
    assert (thr.get_xlabel(), thr.get_ylabel()) == (X_LABEL["closed"], THROUGHPUT_LABEL)
    assert (lat.get_xlabel(), lat.get_ylabel(), lat.get_yscale()) == (X_LABEL["closed"], LATENCY_LABEL, "log")
    assert len(thr.get_lines()) == 2  # one throughput line per endpoint
    assert [line.get_xdata().tolist() for line in thr.get_lines()] == [[1, 4], [1, 4]]
    labels = [t.get_text() for t in lat.get_legend().get_texts()]
    assert "gemma-a100 (A100-40GB) TTFT p99" in labels and "gemma-t4 (T4) E2E p50" in labels
    fig.clf()


def test_bench_compare_shows_saved_runs_side_by_side_and_plots_them(tmp_path):
    doc = document(fake_run())
    t4_only = json.loads(json.dumps(doc))
    t4_only["targets"] = t4_only["targets"][1:]
    for name, d in (("a100.json", doc), ("t4.json", t4_only)):
        (tmp_path / name).write_text(json.dumps(d))
    proc = grace(tmp_path, "bench", "--compare", "a100.json", "t4.json", "--plot", "plots")
    assert proc.returncode == 0, proc.stderr
    assert "side by side" in proc.stdout and proc.stdout.count("gemma-t4") >= 2
    assert (tmp_path / "plots" / "gemma-2-2b-it.png").exists()
    missing = grace(tmp_path, "bench", "--compare", "nope.json")
    assert missing.returncode == 1 and "cannot read a bench result" in missing.stderr
