"""The memory model against real vLLM startup logs (bench/data/vllm_startup_logs.yaml, a source URL per row)."""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest
import yaml

from bench.planner_accuracy import DATA, OLDER, check, evaluate
from grace_hpc.config.loader import PROJECT_ROOT, ConfigDir
from grace_hpc.planner import PlanRequest, get_gpu, plan_model
from grace_hpc.planner import memory as mem
from grace_hpc.vllm_version import VllmVersion

CATALOG = ConfigDir(PROJECT_ROOT / "configs").catalog()
RESULTS = evaluate(yaml.safe_load(DATA.read_text(encoding="utf-8")), CATALOG)


def test_every_row_cites_where_its_log_is_published() -> None:
    assert all(r["source"].startswith("https://") for r in RESULTS)


def test_weights_are_within_3_percent_of_what_vllm_loaded() -> None:
    errors = {r["id"]: r["weights_err_pct"] for r in RESULTS if r["weights_err_pct"] is not None}
    assert len(errors) >= 5
    assert all(abs(e) <= 3 for e in errors.values()), errors


def test_kv_cache_median_error_is_within_10_percent() -> None:
    errors = [abs(r["kv_err_pct"]) for r in RESULTS if r["kv_err_pct"] is not None]
    assert statistics.median(errors) <= 10


# Where a held-out group misses the target and no mechanism in vLLM's source explains it (docs/planner.md): its rows
# and the range of predicted - logged KV memory (GiB) each shows. A fix makes test_the_open_gaps_are_the_ones_documented
# fail, and the group joins the target test.
OPEN_GAPS = {
    # vLLM 0.19.1 (the vllm/vllm-openai image), Qwen2.5-14B-Instruct-AWQ (AWQ-Marlin, float16) on an A10G: 0.74 and 0.86
    # GiB more reserved than predicted (0.08 of it weights). Every 0.19 row charges more than the model, but the
    # bf16/MXFP4 ones only 0.16-0.34 GiB (qwen3-8b/A100-40GB on 0.19.1 itself, qwen2.5-72b/4xL40S/tp4, gpt-oss-20b/
    # A100-80GB/u0.65); the excess does not follow the CUDA graph probe, which runs inside the profiling window (the
    # non-torch memory is measured after it, gpu_worker.py determine_available_memory): 2.35-2.73 GiB of estimated
    # graphs on the dense rows, 0.79 on these. Their own A10G reports 22.30 GiB to CUDA, not the catalog's 21.99 (their
    # KV memories differ by 8.92 GiB = 0.40 x its total; docs/planner.md): there both are 1.02 GiB off, the same charge.
    ("0.19", "held_out"): (("qwen2.5-14b-awq/A10G/len4096", "qwen2.5-14b-awq/A10G/u0.50/len16384"), (0.6, 1.0)),
}


def _group(series: str, role: str) -> list[dict]:
    return [r for r in RESULTS if r["series"] == series and r["role"] == role]


def test_every_supported_series_meets_the_target_on_its_rows() -> None:
    # issue 12: weights median <= 2 %, KV median <= 5 % and worst <= 15 %, every verdict right, per vLLM version
    # (0.10.x rows included: sized with 0.11's rules, which the 0.10.1.1 source shares)
    by_series = {r["series"] for r in RESULTS} - {OLDER}
    assert {"0.10", "0.11", "0.19"} <= by_series
    for series in by_series:
        for role in ("fit", "held_out"):
            open_rows, _ = OPEN_GAPS.get((series, role), ((), None))
            group = [r for r in _group(series, role) if r["id"] not in open_rows]
            assert not group or check(group)["met"], (series, role, check(group))


def test_the_open_gaps_are_the_ones_documented() -> None:
    # each group misses the target with these rows, each row off by the documented amount, every verdict right
    for (series, role), (ids, (low, high)) in OPEN_GAPS.items():
        rows = [r for r in _group(series, role) if r["id"] in ids]
        assert len(rows) == len(ids)
        assert not check(_group(series, role))["met"]
        for r in rows:
            predicted, logged = r["kv"]
            assert low <= predicted - logged <= high, r["id"]
            assert r["fits"][0] == r["fits"][1]


def test_the_0_19_triton_top_k_buffer_brings_every_held_out_0_19_row_closer() -> None:
    # qwen3-8b/A100-40GB (0.19.1), qwen2.5-72b/4xL40S/tp4 and gpt-oss-20b/A100-80GB/u0.65 (0.19.0), held out, and the
    # open AWQ rows: each was predicting more KV memory than logged; the per-SM buffer of 0.19's Triton top-k/top-p
    # (memory.triton_topk_buffer_bytes) takes 0.05-0.08 GiB of it, and no row overshoots. Rows whose log names
    # another sampler (qwen2.5-0.5b/RTX4090-WSL2/len2048, 0.27.1: FlashInfer) are sized without the buffer.
    data = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    models = {m["name"]: m["architecture"]["vocab_size"] for m in data["models"]}
    by_id = {x["id"]: x for x in data["rows"]}
    rows = [r for r in RESULTS if r["series"] == "0.19" and by_id[r["id"]].get("sampler", "triton") == "triton"]
    assert len(rows) >= 5
    for r in rows:
        row = by_id[r["id"]]
        vocab = models.get(row["model"]) or CATALOG.get(row["model"]).architecture.vocab_size
        buffer = mem.triton_topk_buffer_bytes(vocab, 256, get_gpu(row["gpu"]).sms) / mem.GIB
        predicted, logged = r["kv"]
        assert predicted >= logged, r["id"]  # the buffer (in `predicted`) overshoots no row
        assert buffer > 0.04, r["id"]  # and is what closes 0.05-0.08 GiB of each row's gap


def test_releases_after_0_19_are_held_out_rows_sized_with_0_19s_rules() -> None:
    # qwen2.5-0.5b/RTX4090-WSL2/len2048 (vLLM 0.27.1, Model Runner V2, FlashInfer sampler): no constant was fitted to a
    # release past 0.19, and the 0.19 rules size it within the KV target
    later = [r for r in RESULTS if int(r["vllm"].split(".")[1]) > VllmVersion.V0_19.minor]
    assert later and all(r["role"] == "held_out" and r["series"] == "0.19" for r in later)
    assert all(abs(r["kv_err_pct"]) <= 5 and abs(r["weights_err_pct"]) <= 2 for r in later), later


def test_a_0_11_row_is_sized_with_the_sampler_its_log_names() -> None:
    # qwen2.5-7b/A10G/len32768 logs "Using FlashInfer for top-p & top-k sampling." (vLLM 0.11.0): with FlashInfer's
    # 14 bytes per logit the KV cache is within 2 %; a plain pip install's PyTorch sort (39 bytes) would be 19 % low
    row = next(r for r in yaml.safe_load(DATA.read_text(encoding="utf-8"))["rows"]
               if r["id"] == "qwen2.5-7b/A10G/len32768")
    logged, = evaluate({"rows": [row]}, CATALOG)
    pip, = evaluate({"rows": [{k: v for k, v in row.items() if k != "sampler"}]}, CATALOG)
    assert abs(logged["kv_err_pct"]) <= 2
    assert pip["kv_err_pct"] < -15


def test_a_v0_tensor_parallel_row_is_judged_by_rank_0s_cache() -> None:
    # r1-distill-qwen-14b/2xRTX4090/u0.98 (V0): rank 1 profiles no sampler (V0 gathers the logits on rank 0 only), so
    # its quoted 8.69 GiB is not the cache the engine sized; rank 0's is what the 81536 logged tokens hold. Within
    # 5 % with the non-torch memory V0 logs there (0.25 GiB, its NCCL buffers among it), which V1 leaves outside
    r = next(r for r in RESULTS if r["id"] == "r1-distill-qwen-14b/2xRTX4090/u0.98")
    tokens_gib = r["tokens"][1] * 48 * 2 * 4 * 128 * 2 / 1024**3
    assert r["kv"][1] == pytest.approx(tokens_gib, abs=0.01)
    assert abs(r["kv_err_pct"]) <= 5


def test_every_fits_verdict_matches_the_log() -> None:
    judged = [(r["id"], r["fits"]) for r in RESULTS if r["fits"][1] is not None]
    assert judged and all(pred == real for _, (pred, real) in judged), judged


def test_gpt_oss_120b_fits_one_h100_on_0_11_only_with_fewer_sequences() -> None:
    # vLLM 0.11's H100 default (1024 sequences, PyTorch-sort sampler) does not start gpt-oss-120b at full context
    # (vllm#23278, #27508); the planner drops to 256 sequences and a context the KV cache can hold
    v11 = PlanRequest(vllm_version=VllmVersion.V0_11)
    plan = plan_model(CATALOG.get("gpt-oss-120b"), get_gpu("H100-80GB"), 1, v11)
    assert plan.fits and plan.max_num_seqs == 256 and plan.max_model_len < 131072 and plan.cpu_offload_gb == 0
    full = plan_model(CATALOG.get("gpt-oss-120b"), get_gpu("H100-80GB"), 1,
                      replace(v11, max_model_len=131072, max_num_seqs=1024, cpu_offload_gb=0))
    assert not full.fits


def test_tensor_parallel_v1_rows_charge_no_nccl_inside_the_budget() -> None:
    # qwen2-7b/2xA100-80GB/tp2/u0.50, qwen2-7b/2xA100-40GB/tp2/u0.50, gpt-oss-120b/4xA100-80GB/tp4/u0.80 (0.10.1.1):
    # within 2 % once NCCL lives in the headroom (they were 0.4-0.5 GiB short with it inside)
    rows = [r for r in RESULTS if r["series"] == "0.10" and "/tp" in r["id"]]
    assert len(rows) == 3
    assert all(abs(r["kv_err_pct"]) <= 2 for r in rows), [(r["id"], r["kv_err_pct"]) for r in rows]


def test_v1_rows_charge_no_v0_base_inside_the_budget() -> None:
    # qwen2.5-7b/A10G/len32768, qwen2.5-7b/A10G/len32768/flex (0.11.0) and qwen2-7b/A100-80GB/u0.25 (0.10.1.1) were
    # -5.9 %, -5.9 % and -5.5 % with a 0.25 GiB activation base, the part of V0 0.6.4's logged non-torch memory that
    # V1 does not charge (V1: the allocated peak over what is allocated when profiling starts, and non-torch memory
    # since a snapshot taken once the CUDA context exists); without it, within 1.5 %
    rows = {r["id"]: r for r in RESULTS}
    ids = ("qwen2.5-7b/A10G/len32768", "qwen2.5-7b/A10G/len32768/flex", "qwen2-7b/A100-80GB/u0.25")
    assert all(abs(rows[i]["kv_err_pct"]) <= 1.5 for i in ids), [(i, rows[i]["kv_err_pct"]) for i in ids]


def test_v0_rows_are_charged_the_non_torch_memory_their_logs_print() -> None:
    # llama-3.1-8b/RTX3090/len20000 and len29000 (0.6.4, fit) and llama-3-8b/H100/tp1 (0.6.5.dev, held out): V0 counted
    # device memory torch had not allocated, CUDA context included (worker.py determine_num_available_blocks), so the
    # V1 figure (memory.NON_TORCH_GIB) is the wrong charge there; with each log's own figure, within 0.5 %
    data = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    ids = ("llama-3.1-8b/RTX3090/len20000", "llama-3.1-8b/RTX3090/len29000", "llama-3-8b/H100/tp1")
    rows = [r for r in data["rows"] if r["id"] in ids]
    logged = evaluate({**data, "rows": rows}, CATALOG)
    v1 = evaluate({**data, "rows": [{k: v for k, v in r.items() if k != "non_torch_gib"} for r in rows]}, CATALOG)
    assert all(abs(r["kv_err_pct"]) <= 0.5 for r in logged), [(r["id"], r["kv_err_pct"]) for r in logged]
    assert all(abs(r["kv_err_pct"]) > 3 for r in v1), [(r["id"], r["kv_err_pct"]) for r in v1]


def test_a_failed_start_row_is_judged_in_gib() -> None:
    # qwen2.5-14b-awq/A10G/u0.50/len16384 logged 0.18 GiB of KV memory: its error is in GiB, out of the percentages
    r = next(r for r in RESULTS if r["id"] == "qwen2.5-14b-awq/A10G/u0.50/len16384")
    assert r["kv_err_pct"] is None and r["kv_err_gib"] == pytest.approx(r["kv"][0] - r["kv"][1])
    assert not check([r])["met"]
