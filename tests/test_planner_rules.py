"""Rules of what runs where, each checked against the GPU it is about (sources cited in precision.py)."""

from __future__ import annotations

import pytest

from grace_hpc.config.loader import PROJECT_ROOT, ConfigDir
from grace_hpc.errors import PlanError
from grace_hpc.planner import GPUS, PlanRequest, get_gpu, plan_model
from grace_hpc.planner.choose import tp_sizes
from grace_hpc.planner.precision import check_kv_cache_dtype, check_quantization, resolve_dtype
from grace_hpc.vllm_version import VllmVersion

CATALOG = ConfigDir(PROJECT_ROOT / "configs").catalog()
T4, A100, L4, H100 = get_gpu("T4"), get_gpu("A100-40GB"), get_gpu("L4"), get_gpu("H100-80GB")


def test_gpu_catalog_reports_usable_memory_not_the_marketing_size() -> None:
    assert H100.memory_gib == 79.18 and H100.compute_capability == (9, 0) and H100.fp8
    assert A100.memory_gib == 39.39 and A100.bf16 and not A100.fp8
    assert T4.compute_capability == (7, 5) and not T4.bf16
    assert L4.fp8 and L4.sm == 89
    assert set(GPUS) == {"H100-80GB", "A100-40GB", "A100-80GB", "L4", "L40S", "A10G", "T4", "RTX-4080",
                         "V100-16GB", "V100-32GB", "A40", "RTX-A6000", "L40", "H200", "GH200", "B200"}


def test_v100s_run_float16_without_flash_attention() -> None:
    # sm70: no bf16 (vLLM: "Bfloat16 is only supported on GPUs with compute capability of at least 8.0"), no
    # FlashAttention, no AWQ (sm75+) and no FP8 in any release; GPTQ (sm60+) runs
    v100 = get_gpu("V100-32GB")
    assert v100.sm == 70 and not v100.bf16 and not v100.fp8
    plan = plan_model(CATALOG.get("llama-3.1-8b-instruct"), v100, 1)
    assert plan.fits and plan.dtype == "float16" and any("no FlashAttention on V100-32GB" in r for r in plan.reasons)
    assert "sm75" in (check_quantization("awq", v100, "float16", VllmVersion.V0_33) or "")
    assert check_quantization("gptq", v100, "float16", VllmVersion.V0_33) is None


def test_b200_gets_vllm_0_33_s_largest_batch_defaults() -> None:
    from grace_hpc.planner.fit import vllm_batch_defaults
    b200 = get_gpu("B200")
    assert vllm_batch_defaults(b200, VllmVersion.V0_33) == (16384, 1024)
    assert vllm_batch_defaults(b200, VllmVersion.V0_19) == (8192, 1024)
    assert vllm_batch_defaults(get_gpu("A100-80GB"), VllmVersion.V0_33) == (2048, 256)


def test_unknown_gpu_lists_the_valid_names() -> None:
    with pytest.raises(PlanError, match="valid GPUs: B200, .*H100-80GB, .*T4"):
        get_gpu("V100")
    assert get_gpu("h100-80gb") is H100


def test_bf16_model_on_t4_runs_in_float16_and_says_why() -> None:
    dtype, why = resolve_dtype(CATALOG.get("llama-3.1-8b-instruct"), T4, None)
    assert dtype == "float16"
    assert why == ("bf16 not supported on T4 (sm75): using float16",)
    assert resolve_dtype(CATALOG.get("llama-3.1-8b-instruct"), A100, None) == ("bfloat16", ())


def test_gemma2_refuses_float16_so_a_t4_needs_float32() -> None:
    dtype, why = resolve_dtype(CATALOG.get("gemma-2-2b-it"), T4, None)
    assert dtype == "float32" and "refuses float16" in why[0]


def test_impossible_pinned_dtypes_are_errors() -> None:
    with pytest.raises(PlanError, match="bfloat16 is impossible on T4"):
        resolve_dtype(CATALOG.get("llama-3.1-8b-instruct"), T4, "bfloat16")
    # seed 000 serves gemma-2 with --dtype float16: vLLM refuses to start it
    with pytest.raises(PlanError, match="refuses float16"):
        plan_model(CATALOG.get("gemma-2-9b-it"), A100, 1, PlanRequest(dtype="float16"))


def test_quantization_minimum_compute_capabilities() -> None:
    for v in VllmVersion:
        assert check_quantization("awq", T4, "float16", v) is None  # AWQ kernels: Turing and newer
        assert "awq takes float16" in (check_quantization("awq", T4, "float32", v) or "")
        assert check_quantization("fp8", A100, "bfloat16", v) is None  # weight-only Marlin on sm80
        assert "sm75" in (check_quantization("mxfp4", T4, "float16", v) or "")  # gpt-oss in vLLM needs sm80+
        assert check_quantization("gguf", T4, "float16", v) is None  # llama.cpp runs anywhere
    # FP8 (and AWQ/GPTQ-Marlin) weight-only on Turing from 0.19 (fp8.py get_min_capability 80 -> 75)
    assert "needs sm80+ for fp8" in (check_quantization("fp8", T4, "float16", VllmVersion.V0_11) or "")
    assert check_quantization("fp8", T4, "float16", VllmVersion.V0_19) is None
    assert "sm70" in (check_quantization("fp8", get_gpu("V100-32GB"), "float16", VllmVersion.V0_33) or "")
    # bitsandbytes left vLLM after 0.19
    assert check_quantization("bitsandbytes", T4, "float16", VllmVersion.V0_19) is None
    assert "no bitsandbytes" in (check_quantization("bitsandbytes", T4, "float16", VllmVersion.V0_33) or "")


def test_gpt_oss_on_a_t4_falls_to_gguf_in_llama_cpp() -> None:
    plan = plan_model(CATALOG.get("gpt-oss-20b"), T4, 1)
    assert plan.fits and plan.engine == "llama.cpp"
    assert any("MXFP4 (gpt-oss) needs sm80+" in r for r in plan.reasons)


def test_tensor_parallel_size_must_divide_the_attention_heads() -> None:
    spec = CATALOG.get("llama-3.1-8b-instruct")  # 32 heads, 8 KV heads
    assert tp_sizes(spec, 8) == [1, 2, 4, 8]
    with pytest.raises(PlanError, match="cannot split llama-3.1-8b-instruct: 32 attention heads"):
        plan_model(spec, H100, 8, PlanRequest(tensor_parallel_size=3))
    with pytest.raises(PlanError, match="exceeds the 2 H100-80GB GPUs"):
        plan_model(spec, H100, 2, PlanRequest(tensor_parallel_size=4))


def test_group_quantized_weights_limit_the_tensor_parallel_size() -> None:
    spec = CATALOG.get("llama-3.1-8b-instruct")  # intermediate 14336 = 112 groups of 128
    assert tp_sizes(spec, 8, group_size=128) == [1, 2, 4, 8]  # 14336/8 = 1792 = 14 x 128
    assert 8 not in tp_sizes(spec.model_copy(update={"architecture": spec.architecture.model_copy(
        update={"intermediate_size": 14336 + 64})}), 8, group_size=128)


def test_fp8_kv_cache_halves_kv_bytes_and_warns_below_sm89() -> None:
    v = VllmVersion.V0_19
    assert check_kv_cache_dtype("fp8", H100, v) == (1, ())
    nbytes, why = check_kv_cache_dtype("fp8", A100, v)
    assert nbytes == 1 and "no fp8 tensor cores" in why[0]
    with pytest.raises(PlanError, match="unknown --kv-cache-dtype"):
        check_kv_cache_dtype("int4", H100, v)


def test_no_flash_attention_on_turing_is_said() -> None:
    plan = plan_model(CATALOG.get("llama-3.2-1b-instruct"), T4, 1)
    assert plan.engine == "vllm" and any("no FlashAttention on T4" in r for r in plan.reasons)
