"""Rules of what runs where: dtypes and weight formats per GPU, as vLLM enforces them (sources cited per rule).

Pure functions over (model, GPU, choice); each returns the choice it settles on plus human reasons, or raises
PlanError for a pinned choice the GPU cannot run.
"""

from __future__ import annotations

from dataclasses import dataclass

from grace_hpc.config.catalog import ModelSpec
from grace_hpc.errors import PlanError
from grace_hpc.planner import memory as mem
from grace_hpc.planner.gpus import GPU
from grace_hpc.vllm_version import VllmVersion

__all__ = [
    "DTYPE_ALIASES",
    "FP16_REFUSED",
    "QuantRule",
    "QUANT_RULES",
    "normalize_dtype",
    "resolve_dtype",
    "check_quantization",
    "check_kv_cache_dtype",
    "kv_cache_dtype_problem",
    "attention_problem",
    "attention_notes",
    "offload_problem",
    "SOFT_CAPPED",
]

# vllm/config/model.py `_STR_DTYPE_TO_TORCH_DTYPE`: the spellings `--dtype` accepts.
DTYPE_ALIASES = {
    "half": "float16", "float16": "float16", "fp16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float": "float32", "float32": "float32", "fp32": "float32",
}

# vllm/config/model.py `_FLOAT16_NOT_SUPPORTED_MODELS`: vLLM raises "The model type 'gemma2' does not support
# float16. Reason: Numerical instability. Please use bfloat16 or float32 instead." (so seed 000's
# `--dtype float16` for gemma-2 never starts).
FP16_REFUSED = frozenset({"gemma2", "gemma3", "gemma3_text", "plamo2", "glm4"})

# Models whose attention soft-caps its logits (model_executor/models/gemma2.py passes
# `logits_soft_cap=config.attn_logit_softcapping`, 50.0 in every Gemma-2 config; Gemma-3 sets it to null).
SOFT_CAPPED = frozenset({"gemma2"})


@dataclass(frozen=True)
class QuantRule:
    """What vLLM needs to run one quantization method (`get_min_capability`, `get_supported_act_dtypes`)."""

    min_sm: int
    # activation dtypes the kernel takes *below* sm80 (on sm80+ the Marlin kernels take fp16 and bf16)
    act_dtypes_below_sm80: tuple[str, ...]
    why: str


QUANT_RULES: dict[str, QuantRule] = {
    # vllm/model_executor/layers/quantization/fp8.py Fp8Config.get_min_capability(): 80 on 0.11, 75 from 0.19
    # (VllmVersion.weight_only_marlin_min_sm); below sm89 vLLM warns "Your GPU does not have native support for
    # FP8 computation ... Weight-only FP8 compression will be used leveraging the Marlin kernel" (W8A16, float16
    # activations on Turing); real W8A8 FP8 GEMMs need sm89+ (Ada/Hopper).
    "fp8": QuantRule(80, ("float16",), "FP8 runs weight-only (Marlin) below sm89"),  # 80: 0.11's floor
    # quantization/awq.py AWQConfig: get_min_capability 75 ("only supports Turing or newer"), act dtypes [half];
    # on sm80+ vLLM converts AWQ checkpoints to awq_marlin, which also takes bf16.
    "awq": QuantRule(75, ("float16",), "AWQ kernels need sm75+ and float16 activations below sm80"),
    # quantization/gptq.py GPTQConfig.get_min_capability 60 (exllama kernels, fp16); gptq_marlin on sm80+.
    "gptq": QuantRule(60, ("float16",), "GPTQ needs sm60+ and float16 activations below sm80"),
    # quantization/bitsandbytes.py BitsAndBytesConfig.get_min_capability 70 (0.11, 0.19; removed in 0.33).
    "bitsandbytes": QuantRule(70, ("float16", "float32"), "bitsandbytes needs sm70+"),
    # quantization/mxfp4.py Mxfp4Config: get_min_capability 80, get_supported_act_dtypes [bfloat16]; on sm80-90 the
    # experts run through Marlin/Triton weight-only FP4 (vllm#23278 log: "Weight-only FP4 compression will be used
    # leveraging the Marlin kernel"). No bf16 below sm80, so gpt-oss cannot run in vLLM on a T4.
    "mxfp4": QuantRule(80, (), "MXFP4 (gpt-oss) needs sm80+ and bfloat16 activations"),
    # compressed-tensors W4A16 runs on Marlin (sm80+); W8A8-int8 on CUTLASS sm75+.
    "compressed-tensors": QuantRule(75, ("float16",), "compressed-tensors needs sm75+ (W4A16 Marlin: sm80+)"),
    # GGUF is served by llama.cpp here (seed 004): it runs on any CUDA GPU and on CPUs.
    "gguf": QuantRule(0, ("float16", "float32"), "GGUF runs in llama.cpp on any GPU or CPU"),
}


def normalize_dtype(dtype: str) -> str:
    try:
        return DTYPE_ALIASES[dtype.strip().lower()]
    except KeyError:
        raise PlanError(f"unknown dtype {dtype!r}; valid: auto, bfloat16, float16, float32") from None


def resolve_dtype(spec: ModelSpec, gpu: GPU, pinned: str | None) -> tuple[str, tuple[str, ...]]:
    """The `--dtype` for `spec` on `gpu`, and why when it is not the checkpoint's own dtype."""
    model_type = spec.architecture.model_type
    refuses_fp16 = model_type in FP16_REFUSED
    if pinned and pinned.lower() != "auto":
        dtype = normalize_dtype(pinned)
        if dtype == "bfloat16" and not gpu.bf16:
            raise PlanError(
                f"--dtype bfloat16 is impossible on {gpu.name} (sm{gpu.sm}): vLLM needs compute capability 8.0+ "
                "for bf16; use --dtype float16 (or float32 for models that refuse float16)"
            )
        if dtype == "float16" and refuses_fp16:
            raise PlanError(
                f"{spec.name} ({model_type}) refuses float16 in vLLM (numerical instability); "
                "use bfloat16 on sm80+ GPUs or float32"
            )
        return dtype, ()
    native = spec.architecture.torch_dtype
    if native == "float32":
        # vLLM serves float32 checkpoints in half precision by default (ModelConfig._get_and_verify_dtype)
        native = "bfloat16" if refuses_fp16 else "float16"
    if native == "bfloat16" and not gpu.bf16:
        if refuses_fp16:
            return "float32", (
                f"bf16 not supported on {gpu.name} (sm{gpu.sm}) and {model_type} refuses float16 in vLLM: "
                "using float32 (twice the memory)",
            )
        return "float16", (f"bf16 not supported on {gpu.name} (sm{gpu.sm}): using float16",)
    return native, ()


def _min_sm(method: str, rule: QuantRule, version: VllmVersion) -> int:
    """fp8's floor (sm80 on 0.11) drops with the release; AWQ/GPTQ checkpoints keep theirs (awq.py 75, gptq.py 60),
    only the kernel changes (awq_marlin/gptq_marlin on sm75 from 0.19)."""
    return min(rule.min_sm, version.weight_only_marlin_min_sm) if method == "fp8" else rule.min_sm


def check_quantization(method: str, gpu: GPU, dtype: str, version: VllmVersion) -> str | None:
    """None when `method` runs on `gpu` with activations in `dtype` under vLLM `version`, else why it does not."""
    rule = QUANT_RULES.get(method)
    if rule is None:
        return f"unknown quantization {method!r}; known: {', '.join(QUANT_RULES)}"
    if gpu.is_cpu:
        return None if method == "gguf" else f"{method} needs a GPU (CPU partitions run GGUF in llama.cpp)"
    if method == "bitsandbytes" and not version.has_bitsandbytes:
        return f"vLLM {version.value} has no bitsandbytes quantization (removed after 0.19)"
    min_sm = _min_sm(method, rule, version)
    if gpu.sm < min_sm:
        return f"{rule.why}; vLLM {version.value} needs sm{min_sm}+ for {method} and {gpu.name} is sm{gpu.sm}"
    if gpu.sm < 80 and dtype not in rule.act_dtypes_below_sm80:
        takes = "/".join(rule.act_dtypes_below_sm80) or "bfloat16"
        return f"{method} takes {takes} activations on sm{gpu.sm}, not {dtype}"
    return None


def kv_cache_dtype_problem(gpu: GPU, version: VllmVersion) -> str | None:
    """Why an fp8 KV cache cannot start on `gpu` under `version`, or None."""
    if gpu.is_cpu:
        return "--kv-cache-dtype fp8 is a vLLM GPU option; CPU partitions run llama.cpp"
    if version.flex_attention_below_sm80 and gpu.sm < 80:
        return (f"vLLM {version.value} runs {gpu.name} (sm{gpu.sm}) on FlexAttention, which refuses a quantized KV "
                "cache (v1/attention/backends/flex_attention.py); use --vllm-version 0.19 or newer")
    return None


def check_kv_cache_dtype(
    kv_cache_dtype: str | None, gpu: GPU, version: VllmVersion
) -> tuple[int | None, tuple[str, ...]]:
    """(bytes per KV element, or None for the model dtype; reasons). --kv-cache-dtype: auto/fp8/fp8_e4m3/fp8_e5m2."""
    if kv_cache_dtype in (None, "auto"):
        return None, ()
    if kv_cache_dtype not in ("fp8", "fp8_e4m3", "fp8_e5m2"):
        raise PlanError(f"unknown --kv-cache-dtype {kv_cache_dtype!r}; valid: auto, fp8, fp8_e4m3, fp8_e5m2")
    problem = kv_cache_dtype_problem(gpu, version)
    if problem:
        raise PlanError(f"--kv-cache-dtype {kv_cache_dtype} cannot start: {problem}")
    reasons = ()
    if not gpu.fp8:
        # FlashAttention 3 (the fp8-KV attention path) is Hopper-only; below sm89 vLLM picks a backend that
        # dequantizes fp8 KV in software (FlashInfer/Triton): it works, slower
        # (docs.vllm.ai features/quantization/quantized_kvcache)
        reasons = (f"fp8 KV cache on {gpu.name} (sm{gpu.sm}) has no fp8 tensor cores: smaller but slower attention",)
    return 1, reasons


def attention_problem(spec: ModelSpec, gpu: GPU, version: VllmVersion) -> str | None:
    """Why vLLM `version` cannot build `spec`'s attention on `gpu`, or None: on 0.11 every sm<80 GPU gets
    FlexAttention, which raises "FlexAttention does not support logits soft cap yet" (Gemma-2 in float32 on a
    T4). The way out there is llama.cpp (a GGUF variant) or a newer vLLM."""
    soft_capped = spec.architecture.model_type in SOFT_CAPPED
    if soft_capped and not gpu.is_cpu and gpu.sm < 80 and version.flex_attention_below_sm80:
        return (f"vLLM {version.value} runs {gpu.name} (sm{gpu.sm}) on FlexAttention, which refuses "
                f"{spec.architecture.model_type}'s logit soft-capping (v1/attention/backends/flex_attention.py); "
                "a GGUF in llama.cpp or --vllm-version 0.19+ runs it")
    return None


def attention_notes(gpu: GPU) -> tuple[str, ...]:
    """What the attention backend will be. vLLM's FlashAttention kernels need sm80+ (vllm-flash-attn builds for
    Ampere and newer; FA3 is Hopper-only), so on Turing (T4) vLLM picks a slower fallback backend
    (V1: FLEX_ATTENTION / TRITON_ATTN, V0: XFORMERS; vllm/platforms/cuda.py get_attn_backend_cls)."""
    if gpu.is_cpu or gpu.sm >= 80:
        return ()
    return (f"no FlashAttention on {gpu.name} (sm{gpu.sm}): vLLM uses a slower attention backend",)


def offload_problem(spec: ModelSpec, version: VllmVersion) -> str | None:
    """Why `--cpu-offload-gb` cannot start `spec` under `version`: sliding-window hybrids have several KV-cache
    groups, and 0.11/0.19 assert cpu_offload_gb == 0 for those (VllmVersion.hybrid_kv_refuses_cpu_offload)."""
    full, sliding = mem.layer_kinds(spec.architecture)
    if full and sliding and version.hybrid_kv_refuses_cpu_offload:
        return (f"vLLM {version.value} refuses --cpu-offload-gb for {spec.name}: its sliding-window and full "
                "attention layers make several KV-cache groups (gpu_model_runner.py: \"Cannot re-initialize the "
                "input batch when CPU weight offloading is enabled\")")
    return None
