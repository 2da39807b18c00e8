"""Issue 12's audit, one test per held-out case: each failed on the planner before v2 (the real catalog,
configs/models.yaml; the vLLM behaviour cited in grace_hpc/vllm_version.py and the planner modules)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from grace_hpc.config.loader import PROJECT_ROOT, ConfigDir
from grace_hpc.errors import PlanError
from grace_hpc.planner import PlanRequest, get_gpu, plan_model
from grace_hpc.planner import memory as mem
from grace_hpc.planner.render import render_vllm_argv
from grace_hpc.vllm_version import VllmVersion

CATALOG = ConfigDir(PROJECT_ROOT / "configs").catalog()
H100, A100, L4, T4, RTX4080 = (get_gpu(n) for n in ("H100-80GB", "A100-40GB", "L4", "T4", "RTX-4080"))
V11, V19, V33 = VllmVersion.V0_11, VllmVersion.V0_19, VllmVersion.V0_33


def _argv(plan) -> list[str]:  # type: ignore[no-untyped-def]
    return render_vllm_argv(plan, host="127.0.0.1", port=8000, served_model_name=plan.model)


# 1. The per-expert activation term is not a vLLM mechanism.

def test_1_gpt_oss_120b_on_one_h100_at_16k_starts_with_its_3_3_gib_kv_cache() -> None:
    # held-out: `--tensor-parallel-size 1 --quantization mxfp4 --gpu-memory-utilization 0.9 --max-model-len 16000
    # --cpu-offload-gb 0` starts with 3.33 GiB of KV cache; v1 said it does not fit (KV 0.46 GiB)
    plan = plan_model(CATALOG.get("gpt-oss-120b"), H100, 1, PlanRequest(
        tensor_parallel_size=1, quantization="mxfp4", gpu_memory_utilization=0.9, max_model_len=16000,
        cpu_offload_gb=0))
    assert plan.fits and plan.kv_cache_gib_per_gpu == pytest.approx(3.33, rel=0.15)


def test_1_small_moe_pays_for_its_tokens_not_its_experts() -> None:
    # held-out: DeepSeek-Coder-V2-Lite (64 experts) was charged 2.6 GiB for its experts; vLLM's profile run costs
    # the fused-MoE workspace of its batched tokens x top-k, and the sampler
    arch = CATALOG.get("deepseek-coder-v2-lite-instruct").architecture
    for version in VllmVersion:
        peak = mem.activation_bytes(arch, 1, 2, 2048, 256, version, sms=132) / mem.GIB
        assert peak < 1.5, (version, peak)


# 2. No silent --cpu-offload-gb.

@pytest.mark.parametrize("version", list(VllmVersion))
def test_2_gpt_oss_120b_at_131k_never_gets_cpu_offload(version: VllmVersion) -> None:
    # held-out: v1 added --cpu-offload-gb 0.5 on its own; vLLM 0.11/0.19 assert cpu_offload_gb == 0 for
    # sliding-window hybrids, so that job crashed at start
    plan = plan_model(CATALOG.get("gpt-oss-120b"), H100, 1, PlanRequest(max_model_len=131072, vllm_version=version))
    assert plan.cpu_offload_gb == 0 and "--cpu-offload-gb" not in _argv(plan)


def test_2_olmo_on_an_rtx_4080_says_what_offload_would_take_instead_of_doing_it() -> None:
    # held-out: v1 planned OLMo-2-7B on an RTX 4080 with a silent --cpu-offload-gb 2.5
    spec = CATALOG.get("olmo-2-1124-7b-instruct")
    plan = plan_model(spec, RTX4080, 1, PlanRequest(quantization="none"))
    assert not plan.fits and plan.cpu_offload_gb == 0 and "--cpu-offload-gb" not in _argv(plan)
    assert any("--cpu-offload-gb" in r and "PCIe" in r for r in plan.reasons)
    allowed = plan_model(spec, RTX4080, 1, PlanRequest(quantization="none", allow_cpu_offload=True))
    assert allowed.fits and allowed.cpu_offload_gb > 0 and "--cpu-offload-gb" in _argv(allowed)


def test_2_pinned_offload_of_a_sliding_window_hybrid_is_refused_where_vllm_refuses_it() -> None:
    spec = CATALOG.get("gpt-oss-20b")
    with pytest.raises(PlanError, match="refuses --cpu-offload-gb for gpt-oss-20b"):
        plan_model(spec, L4, 1, PlanRequest(cpu_offload_gb=2, vllm_version=V19))
    assert plan_model(spec, A100, 1, PlanRequest(cpu_offload_gb=2, vllm_version=V33)).cpu_offload_gb == 2


# 3. Pinning --cpu-offload-gb emptied the ladder.

def test_3_pinning_zero_offload_keeps_the_ladder() -> None:
    # held-out: Llama-3.1-70B fp8 TP 2 on H100 fits, but with --cpu-offload-gb 0 v1 found no configuration at all
    spec = CATALOG.get("llama-3.1-70b-instruct")
    free = plan_model(spec, H100, 2, PlanRequest(quantization="fp8", tensor_parallel_size=2))
    pinned = plan_model(spec, H100, 2, PlanRequest(quantization="fp8", tensor_parallel_size=2, cpu_offload_gb=0))
    assert free.fits and pinned.fits and pinned.cpu_offload_gb == 0
    assert pinned.weights_gib_per_gpu == pytest.approx(free.weights_gib_per_gpu)


# 4. Sliding-window KV per request: the window plus the tokens in flight (chunked prefill).

def test_4_sliding_layers_reserve_window_plus_batched_tokens() -> None:
    # held-out: gpt-oss-120b at 16k with 8192 batched tokens needs +51 % over "window only"
    arch = CATALOG.get("gpt-oss-120b").architecture
    per_layer_block = mem.kv_bytes_per_token(arch, 1, 2) // arch.num_hidden_layers * mem.BLOCK_SIZE
    full, sliding = mem.layer_kinds(arch)
    # SlidingWindowSpec.max_memory_usage_bytes: cdiv(min(128 - 1 + 8192, 16000), 16) + 1 = 521 blocks
    expected = per_layer_block * (full * 1000 + sliding * 521)
    assert mem.kv_bytes_per_request(arch, 1, 2, 16000, 8192, V19) == expected
    window_only = per_layer_block * (full * 1000 + sliding * 9)
    assert expected / window_only == pytest.approx(1.51, abs=0.01)
    # 0.33 keeps two batches in flight under async scheduling: min(127 + 16384, 16000) -> the whole context
    assert mem.kv_bytes_per_request(arch, 1, 2, 16000, 8192, V33) == per_layer_block * 1001 * sliding + (
        per_layer_block * 1000 * full)


def test_4_gemma_2_sliding_layers_hold_their_window_plus_a_batch() -> None:
    arch = CATALOG.get("gemma-2-9b-it").architecture  # window 4096, every other layer
    per_layer_block = mem.kv_bytes_per_token(arch, 1, 2) // arch.num_hidden_layers * mem.BLOCK_SIZE
    full, sliding = mem.layer_kinds(arch)
    blocks = -(-(4096 - 1 + 2048) // 16) + 1  # 385 (v1 counted 257)
    assert mem.kv_bytes_per_request(arch, 1, 2, 8192, 2048, V19) == per_layer_block * (full * 512 + sliding * blocks)


# 9. Hints and impossible pins.

def test_9_an_h100_is_never_told_to_try_an_h100() -> None:
    # held-out: "what would fit: ... (try --gpu H100-80GB)" printed for a plan on an H100
    plan = plan_model(CATALOG.get("llama-3-70b-instruct"), H100, 1, PlanRequest(quantization="none"))
    assert not plan.fits
    advice = next(r for r in plan.reasons if r.startswith("what would fit"))
    assert "--gpu H100-80GB" not in advice and "--gpu B200" in advice  # 131 GiB of bf16 weights: H200 is too small


def test_9_fp8_pinned_on_a_t4_before_0_19_is_an_error_not_a_nonsense_plan() -> None:
    # held-out: `--quantization fp8` on a T4 printed TP 8 and --max-num-seqs 1 with its reason twice, exit 0
    spec = CATALOG.get("llama-3.1-8b-instruct")
    with pytest.raises(PlanError, match="cannot run on T4 as pinned.*vLLM 0.11 needs sm80\\+ for fp8"):
        plan_model(spec, T4, 8, PlanRequest(quantization="fp8", vllm_version=V11))
    # from 0.19 vLLM runs FP8 weight-only (Marlin) on Turing with float16 activations
    plan = plan_model(spec, T4, 2, PlanRequest(quantization="fp8", vllm_version=V19))
    assert plan.fits and plan.dtype == "float16" and plan.tensor_parallel_size == 1


# 5. Online quantization.

def test_5_bitsandbytes_4bit_in_flight_needs_no_published_variant() -> None:
    # held-out: `--quantization bitsandbytes` on Llama-3.1-8B was refused ("no 'bitsandbytes' weights")
    spec = CATALOG.get("llama-3.1-8b-instruct")
    plan = plan_model(spec, T4, 2, PlanRequest(quantization="bitsandbytes", vllm_version=V19))
    assert plan.fits and plan.quantization_online and plan.weights_ref == spec.hf_id
    assert _argv(plan)[_argv(plan).index("--quantization") + 1] == "bitsandbytes"
    with pytest.raises(PlanError, match="no bitsandbytes"):  # gone from vLLM after 0.19
        plan_model(spec, T4, 2, PlanRequest(quantization="bitsandbytes", vllm_version=V33))


def test_5_prequantized_bitsandbytes_stays_on_one_gpu() -> None:
    # bitsandbytes_loader.py: "Prequant BitsAndBytes models with tensor parallelism is not supported"
    spec = CATALOG.get("llama-guard-3-8b")
    plan = plan_model(spec, T4, 2, PlanRequest(quantization="bitsandbytes", max_model_len=4096, vllm_version=V19))
    prequantized = [p for p in (plan,) if not p.quantization_online]
    assert all(p.tensor_parallel_size == 1 for p in prequantized)


def test_5_online_fp8_on_0_11_loads_the_16_bit_weights_first() -> None:
    # held-out: DeepSeek-Coder-V2-Lite (31 GiB in bf16) with --quantization fp8 on an L4 OOMs loading on 0.11;
    # 0.19 quantizes layer by layer
    spec = CATALOG.get("deepseek-coder-v2-lite-instruct")
    pinned = PlanRequest(quantization="fp8", tensor_parallel_size=1, max_model_len=8192)
    old = plan_model(spec, L4, 1, replace(pinned, vllm_version=V11))
    assert not old.fits and any("loads the bfloat16 weights first" in r for r in old.reasons)
    new = plan_model(spec, L4, 1, replace(pinned, vllm_version=V19))
    assert new.fits and new.quantization == "fp8"


# 6. T4 on 0.11: FlexAttention.

def test_6_gemma_2_on_a_t4_under_0_11_does_not_get_vllm_float32() -> None:
    # held-out: Gemma-2 in float32 falls to FlexAttention on 0.11, which refuses its logit soft-capping
    spec = CATALOG.get("gemma-2-2b-it")
    old = plan_model(spec, T4, 1, PlanRequest(vllm_version=V11))
    assert old.fits and old.engine == "llama.cpp" and any("FlexAttention" in r for r in old.reasons)
    new = plan_model(spec, T4, 1, PlanRequest(vllm_version=V19))
    assert new.fits and new.engine == "vllm" and new.dtype == "float32"


def test_6_fp8_kv_cache_on_a_t4_under_0_11_is_refused() -> None:
    spec = CATALOG.get("llama-3.2-1b-instruct")
    with pytest.raises(PlanError, match="FlexAttention, which refuses a quantized KV cache"):
        plan_model(spec, T4, 1, PlanRequest(kv_cache_dtype="fp8", vllm_version=V11))
    assert plan_model(spec, T4, 1, PlanRequest(kv_cache_dtype="fp8", vllm_version=V19)).kv_cache_dtype == "fp8"


# 7. MXFP4 padding per backend, after the TP split.

def test_7_gpt_oss_20b_on_an_a100_loads_what_vllm_0_19_loaded() -> None:
    # held-out: "Model loading took 13.72 GiB" (gpt-oss-20b, A100-80GB, vLLM 0.19.0; bench row
    # gpt-oss-20b/A100-80GB/u0.65); v1 padded only the width to 256 and said 13.46
    plan = plan_model(CATALOG.get("gpt-oss-20b"), get_gpu("A100-80GB"), 1, PlanRequest(vllm_version=V19))
    assert plan.weights_gib_per_gpu == pytest.approx(13.72, rel=0.005)
    # gpt-oss-120b at TP 2 on A100s: Marlin pads each rank's 1440 to 1536 (and 2880 to 3072): 2 GiB per GPU more
    # than v1's width-only padding
    arch = CATALOG.get("gpt-oss-120b").architecture
    tp2 = plan_model(CATALOG.get("gpt-oss-120b"), get_gpu("A100-80GB"), 2,
                     PlanRequest(tensor_parallel_size=2, vllm_version=V19))
    v1 = mem.weights_bytes_per_gpu(arch, mem.weight_format("mxfp4", 2, expert_padding=3072 / 2880), 2, 2) / mem.GIB
    assert tp2.weights_gib_per_gpu - v1 == pytest.approx(2.0, abs=0.2)


# 8. CUDA graphs inside the KV budget from 0.21.

def test_8_cuda_graphs_count_inside_the_budget_on_0_33_only() -> None:
    spec = CATALOG.get("llama-3.1-8b-instruct")
    pinned = PlanRequest(gpu_memory_utilization=0.9, max_model_len=8192)
    old = plan_model(spec, L4, 1, replace(pinned, vllm_version=V19))
    new = plan_model(spec, L4, 1, replace(pinned, vllm_version=V33))
    graphs = mem.CUDA_GRAPHS_GIB
    # 0.33 also charges its persistent allocations (VllmVersion.budget_counts_persistent_allocations)
    charged = graphs + mem.PERSISTENT_GIB
    assert new.overhead_gib_per_gpu == pytest.approx(old.overhead_gib_per_gpu + charged)
    # (the activation peaks differ too: 0.19's Triton top-k/top-p keeps a per-SM buffer, 0.33's FlashInfer none)
    sampler = old.activation_gib_per_gpu - new.activation_gib_per_gpu
    assert new.kv_cache_gib_per_gpu == pytest.approx(old.kv_cache_gib_per_gpu + sampler - charged, abs=0.01)
    # unpinned, the planner follows vLLM's startup advice: raise the utilization by the graphs' share
    auto = plan_model(spec, L4, 1, PlanRequest(max_model_len=8192, vllm_version=V33))
    assert auto.gpu_memory_utilization == 0.92 and any("CUDA graphs' share" in r for r in auto.reasons)


# 10. llama.cpp: iSWA cache, QAT embeddings.

def test_10_gemma_3_in_llama_cpp_keeps_only_the_window_on_sliding_layers() -> None:
    # held-out: Gemma-3-12B's context was capped ~5x too low: every layer was charged the whole context
    spec = CATALOG.get("gemma-3-12b-it")
    plan = plan_model(spec, L4, 1, PlanRequest(engine="llama.cpp"))
    n = plan.max_model_len
    kv_token_layer = 2 * spec.architecture.num_key_value_heads * spec.architecture.head_dim * 2
    # 8 global layers hold n tokens, 40 sliding layers 1024 + 512 (src/llama-kv-cache-iswa.cpp)
    expected = kv_token_layer * (8 * n + 40 * min(n, 1024 + 512)) / mem.GIB
    assert plan.fits and plan.kv_cache_gib_per_gpu == pytest.approx(expected, rel=1e-6)
    assert n >= 65536


def test_10_qat_ggufs_keep_f16_token_embeddings() -> None:
    spec = CATALOG.get("gemma-3-4b-it")  # google/gemma-3-4b-it-qat-q4_0-gguf, tied embeddings
    qat = plan_model(spec, L4, 1, PlanRequest(engine="llama.cpp", max_model_len=8192))
    assert "qat" in qat.weights_ref
    arch = spec.architecture
    plain_output = arch.vocab_size * arch.hidden_size * 4.5 / 8 / mem.GIB
    f16_output = arch.vocab_size * arch.hidden_size * 2 / mem.GIB
    non_embed = (mem.total_parameters(arch) - arch.vocab_size * arch.hidden_size) * 4.5 / 8 / mem.GIB
    assert qat.weights_gib_per_gpu == pytest.approx(non_embed + f16_output, rel=1e-6)
    assert f16_output - plain_output > 0.85  # GiB that v1 missed


# Done means: `plan` never emits --cpu-offload-gb unless asked, nor a combination the targeted release refuses.

@pytest.mark.parametrize("version", list(VllmVersion))
def test_no_plan_emits_offload_or_a_combination_its_release_refuses(version: VllmVersion) -> None:
    gpus = [get_gpu(n) for n in ("T4", "V100-32GB", "L4", "A100-40GB", "H100-80GB")]
    for spec in CATALOG.models:
        for gpu in gpus:
            plan = plan_model(spec, gpu, 4, PlanRequest(vllm_version=version))
            if plan.engine != "vllm":
                continue
            argv = _argv(plan)
            flag = {argv[i]: argv[i + 1] for i in range(3, len(argv) - 1) if argv[i].startswith("--")}
            where = (spec.name, gpu.name, version.value)
            assert "--cpu-offload-gb" not in argv, where
            assert not (flag.get("--dtype") == "bfloat16" and not gpu.bf16), where
            if flag.get("--quantization") == "bitsandbytes":
                assert version.has_bitsandbytes, where
            if flag.get("--quantization") == "fp8":
                assert gpu.sm >= version.weight_only_marlin_min_sm, where
            if flag.get("--kv-cache-dtype", "auto") != "auto":
                assert not (version.flex_attention_below_sm80 and gpu.sm < 80), where
            if spec.architecture.model_type == "gemma2" and version.flex_attention_below_sm80:
                assert gpu.sm >= 80, where
            if "--max-num-batched-tokens" in flag:
                assert int(flag["--max-num-batched-tokens"]) >= int(flag["--max-num-seqs"]), where
