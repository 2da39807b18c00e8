"""The memory model, per GPU under tensor parallelism: weights, KV cache, activations, overheads. Pure arithmetic.

How vLLM (V1 engine, 0.8 and later) spends a GPU, which is what this module predicts:

    budget      = total_gpu_memory x --gpu-memory-utilization                       (vllm/v1/worker/gpu_worker.py)
    non_kv      = weights ("Model loading took X GiB") + activation peak of the profile run + non-torch memory
    KV memory   = budget - non_kv                                   ("Available KV cache memory: X GiB")
    KV tokens   = floor(KV memory / (block_size x bytes per token, all layers)) x block_size
                                                                    ("GPU KV cache size: N tokens", kv_cache_utils.py)
    startup refuses when KV memory cannot hold one request of max_model_len ("No available memory for the cache
    blocks" / "To serve at least one request with the models's max seq len ...").

The CUDA context (and under TP the NCCL buffers) lives *outside* the budget, in the (1 - utilization) headroom; CUDA
graphs too up to 0.20, and inside the budget from 0.21 (VllmVersion.cudagraphs_in_budget). What changes between
releases is a property of `VllmVersion` (grace_hpc/vllm_version.py), passed in here.
Calibrated against real startup logs: bench/data/vllm_startup_logs.yaml, bench/planner_accuracy.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from grace_hpc.config.catalog import Architecture
from grace_hpc.errors import PlanError
from grace_hpc.vllm_version import VllmVersion

__all__ = [
    "GIB",
    "BLOCK_SIZE",
    "DTYPE_BYTES",
    "WeightFormat",
    "kv_heads_per_gpu",
    "weights_bytes_per_gpu",
    "total_parameters",
    "kv_bytes_per_token",
    "kv_bytes_per_request",
    "activation_bytes",
    "SAMPLER_BYTES_PER_LOGIT",
    "triton_topk_buffer_bytes",
    "NON_TORCH_GIB",
    "PERSISTENT_GIB",
    "NCCL_GIB",
    "CUDA_GRAPHS_GIB",
    "outside_budget_bytes",
    "mxfp4_backend",
    "mxfp4_expert_padding",
    "kv_tokens",
    "layer_kinds",
    "gguf_bits_per_weight",
    "weight_format",
]

GIB = 1024**3
BLOCK_SIZE = 16  # vLLM's default --block-size on CUDA
VOCAB_PADDING = 64  # vllm/model_executor/layers/vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# GGUF bits per weight. Single-type files: the ggml block layouts (ggml/src/ggml-common.h, bytes per block /
# weights per block x 8): Q4_0 block_q4_0 = fp16 d + 16 nibble bytes = 18 B / 32 = 4.5; Q4_1 20/32; Q5_0 22/32;
# Q5_1 24/32; Q8_0 34/32; super-blocks of 256 (QK_K): Q2_K 84 B, Q3_K 110, Q4_K 144, Q5_K 176, Q6_K 210; IQ2_XXS
# 66, IQ2_XS 74, IQ2_S 82, IQ3_XXS 98, IQ3_S 110, IQ1_S 50, IQ1_M 56, IQ4_XS 136; IQ4_NL 18/32; MXFP4 17/32.
_GGUF_BLOCK_BPW = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q5_1": 6.0, "Q5_0": 5.5, "Q4_1": 5.0, "Q4_0": 4.5,
    "Q6_K": 6.5625, "Q5_K": 5.5, "Q4_K": 4.5, "Q3_K": 3.4375, "Q2_K": 2.625,
    "IQ4_XS": 4.25, "IQ4_NL": 4.5, "IQ3_S": 3.4375, "IQ3_XXS": 3.0625, "IQ2_S": 2.5625, "IQ2_XS": 2.3125,
    "IQ2_XXS": 2.0625, "IQ1_M": 1.75, "IQ1_S": 1.5625,
}
# File types that mix block types per tensor (llama.cpp src/llama-quant.cpp llama_tensor_get_type keeps
# attn_v/ffn_down/output wider): the average bits per weight llama.cpp's quantize table gives for a 7B model
# (Q2_K files are a Q2_K/Q3_K/Q4_K mix). gpt-oss GGUFs: MXFP4 experts with attention and embeddings kept wider;
# ggml-org/gpt-oss-20b-GGUF's file is 12.1 GB for 20.9 B parameters = 4.63 bpw.
_GGUF_MIX_BPW = {
    "Q6_K": 6.56, "Q5_K_M": 5.67, "Q5_K_S": 5.54, "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q3_K_L": 4.27,
    "Q3_K_M": 3.91, "Q3_K_S": 3.50, "Q2_K": 3.35, "MXFP4": 4.63,
}


def gguf_bits_per_weight(gguf_type: str) -> float:
    """Average bits per weight of a GGUF file type (the mixes' averages first, then single block types)."""
    key = gguf_type.upper()
    bpw = _GGUF_MIX_BPW.get(key) or _GGUF_BLOCK_BPW.get(key)
    if bpw is None:
        known = sorted(set(_GGUF_MIX_BPW) | set(_GGUF_BLOCK_BPW))
        raise PlanError(
            f"unknown GGUF type {gguf_type!r}: its bits per weight are not known; known: {', '.join(known)} "
            "(set the variant's gguf_type in configs/models.yaml to one of them)"
        )
    return bpw


@dataclass(frozen=True)
class WeightFormat:
    """Bytes per parameter for each kind of weight (scales and zero points folded in)."""

    embed: float  # token embeddings and lm_head (vLLM keeps them unquantized)
    attention: float
    mlp: float  # dense MLP layers
    experts: float  # routed and shared MoE experts
    other: float  # norms, router, biases: always in the model dtype

    @classmethod
    def uniform(cls, nbytes: float) -> WeightFormat:
        return cls(nbytes, nbytes, nbytes, nbytes, nbytes)


def weight_format(
    method: str | None, dtype_bytes: int, bits: int = 16, group_size: int | None = None, expert_padding: float = 1.0
) -> WeightFormat:
    """Bytes per parameter of a vLLM weight format. Embeddings, lm_head, norms and routers stay in the model dtype.

    - None: the checkpoint dtype everywhere.
    - fp8 (online `--quantization fp8` or an FP8 checkpoint): 1 byte per linear weight, per-tensor scales.
    - awq/gptq/compressed-tensors, b bits, group g: b/8 bytes + fp16 scale (2 bytes) and packed zero (b/8) per
      group of g inputs (quantization/awq.py: qweight int32 packs 32/b, qzeros and scales per group).
    - bitsandbytes 4-bit: NF4 blocks of 64 with double-quantized absmax (`bnb_4bit_use_double_quant`, what
      pre-quantized bnb-4bit checkpoints ship): one uint8 absmax per 64 weights plus a float32 scale per 256 of
      those, 0.5 + 1/64 + 4/(64 x 256) bytes (bitsandbytes `compress_statistics`). Checked against
      unsloth/Qwen2.5-7B-Instruct-bnb-4bit loading 5.2032 GiB in vLLM 0.7.3 (vllm#13882); the plain float32
      absmax (0.5 + 4/64) overshot it by 5 %. 8-bit keeps 1 + 4/64 (no log checks it).
    - mxfp4 (gpt-oss): experts only, 4 bits + one uint8 E8M0 scale per 32 (OCP MX spec); attention stays bf16;
      `expert_padding` is the growth of each expert once vLLM pads it for its MoE backend
      (`mxfp4_expert_padding`).
    """
    d = float(dtype_bytes)
    if method is None:
        return WeightFormat.uniform(d)
    if method == "fp8":
        return WeightFormat(d, 1.0, 1.0, 1.0, d)
    if method == "mxfp4":
        return WeightFormat(d, d, d, (0.5 + 1 / 32) * expert_padding, d)
    if method == "bitsandbytes":
        q = 0.5 + 1 / 64 + 4 / (64 * 256) if bits <= 4 else 1.0 + 4 / 64
        return WeightFormat(d, q, q, q, d)
    if method in ("awq", "gptq", "compressed-tensors"):
        g = group_size or 128
        q = bits / 8 + (2 + bits / 8) / g
        return WeightFormat(d, q, q, q, d)
    raise ValueError(f"no weight format for quantization {method!r}")


def _pad(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# MXFP4 MoE backends when FlashInfer's MXFP4 MoE is not opted into (0.11 quantization/mxfp4.py
# get_mxfp4_backend; 0.19 fused_moe/oracle/mxfp4.py _get_priority_backends): Marlin below sm90 (and on sm90 without
# triton_kernels: VllmVersion.bundles_triton_kernels), Triton on sm90, FlashInfer TRT-LLM on sm100. Their padding
# of the hidden size and of each rank's share of the expert width after the TP split (0.11 mxfp4.py
# Mxfp4MoEMethod.create_weights, 0.19 fused_moe/oracle/mxfp4.py mxfp4_round_up_hidden_size_and_intermediate_size):
# (hidden multiple, width multiple). Triton rounds only the width (to 64) there, but its Hopper swizzled layout
# (triton_kernels layout, utils/mxfp4_utils.py _swizzle_mxfp4) stores the hidden dimension padded to 256: gpt-oss-120b
# loads 64.38 GiB with the Triton backend on an H100 (vllm#33155), which is 2880 -> 3072 on every expert.
_MXFP4_PADDING = {"marlin": (256, 128), "triton": (256, 64), "flashinfer-trtllm": (256, 256)}


def mxfp4_backend(sm: int, version: VllmVersion) -> str:
    """The MXFP4 MoE backend vLLM `version` picks on a GPU of compute capability `sm`."""
    if sm >= 100:
        return "flashinfer-trtllm"
    return "triton" if sm >= 90 and version.bundles_triton_kernels else "marlin"


def mxfp4_expert_padding(arch: Architecture, tp: int, backend: str) -> float:
    """How much larger each expert is once padded for `backend` at tensor parallel size `tp`.
    gpt-oss (hidden 2880, width 2880): Marlin (A100, L4) pads to 3072 x 2944 at TP 1 (+9.0 %) and 3072 x 1536 per
    rank at TP 2 (+13.8 %); Triton (H100) to 3072 x 2880 at TP 1 (+6.7 %) and 3072 x 1472 at TP 2."""
    if arch.moe is None:
        return 1.0
    hidden_multiple, width_multiple = _MXFP4_PADDING[backend]
    width = arch.moe.expert_intermediate_size / tp
    padded = _pad(arch.hidden_size, hidden_multiple) * _pad(math.ceil(width), width_multiple)
    return padded / (arch.hidden_size * width)


def kv_heads_per_gpu(arch: Architecture, tp: int) -> int:
    """KV heads one GPU holds: split across TP ranks, replicated when TP exceeds them (QKVParallelLinear)."""
    return max(1, arch.num_key_value_heads // tp)


def _moe_layer(arch: Architecture, i: int) -> bool:
    moe = arch.moe
    return moe is not None and i >= moe.first_dense_layers and (i + 1) % moe.moe_layer_freq == 0


@dataclass(frozen=True)
class _Counts:
    """Parameter counts per GPU, by kind (floats: TP shards)."""

    embed: float
    attention: float
    mlp: float
    experts: float
    other: float

    @property
    def total(self) -> float:
        return self.embed + self.attention + self.mlp + self.experts + self.other


def _counts(arch: Architecture, tp: int) -> _Counts:
    h, layers = arch.hidden_size, arch.num_hidden_layers
    nh, hd = arch.num_attention_heads, arch.head_dim
    vocab = _pad(arch.vocab_size, VOCAB_PADDING)
    embed = vocab * h * (1 if arch.tie_word_embeddings else 2) / tp
    if arch.mla is not None:
        mla = arch.mla
        qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        q = (h * mla.q_lora_rank + mla.q_lora_rank * nh * qk / tp) if mla.q_lora_rank else h * nh * qk / tp
        kv_a = h * (mla.kv_lora_rank + mla.qk_rope_head_dim)  # ReplicatedLinear: every rank holds it
        kv_b = mla.kv_lora_rank * nh * (mla.qk_nope_head_dim + mla.v_head_dim) / tp
        attn_layer = q + kv_a + kv_b + nh * mla.v_head_dim * h / tp
    else:
        kvh = kv_heads_per_gpu(arch, tp)
        attn_layer = h * nh * hd / tp * 2 + 2 * h * kvh * hd
        if arch.attention_bias:
            attn_layer += nh * hd / tp + 2 * kvh * hd
    mats = 3 if arch.mlp_gated else 2
    mlp = experts = 0.0
    other = (2 * layers + 1) * h
    for i in range(layers):
        if _moe_layer(arch, i):
            moe = arch.moe
            assert moe is not None  # _moe_layer checked it
            per_expert = mats * h * moe.expert_intermediate_size
            experts += (moe.num_experts + moe.num_shared_experts) * per_expert / tp
            other += h * moe.num_experts  # router: ReplicatedLinear
        else:
            mlp += mats * h * arch.intermediate_size / tp
    counts = _Counts(embed, attn_layer * layers, mlp, experts, other)
    if arch.num_parameters:
        # the published exact count covers what the formula misses (biases, vision towers ...): shard the rest
        # like the MLP, so predictions meet the checkpoint size exactly at TP=1
        residual = arch.num_parameters - _counts_tp1_total(arch)
        counts = _Counts(embed, counts.attention, mlp + residual / tp, experts, other)
    return counts


def _counts_tp1_total(arch: Architecture) -> float:
    return _counts(arch.model_copy(update={"num_parameters": None}), 1).total


def total_parameters(arch: Architecture) -> int:
    """All parameters (vocab padded as vLLM pads it); the exact published count when the catalog has it."""
    return int(arch.num_parameters or _counts(arch, 1).total)


def weights_bytes_per_gpu(arch: Architecture, fmt: WeightFormat, tp: int, dtype_bytes: int) -> float:
    """Bytes of weights on each of `tp` GPUs, plus the rotary cos/sin cache every rank keeps."""
    c = _counts(arch, tp)
    weights = (
        c.embed * fmt.embed + c.attention * fmt.attention + c.mlp * fmt.mlp + c.experts * fmt.experts
        + c.other * fmt.other
    )
    rope_cache = arch.max_position_embeddings * arch.head_dim * dtype_bytes
    return weights + rope_cache


def layer_kinds(arch: Architecture) -> tuple[int, int]:
    """(full-attention layers, sliding-window layers)."""
    layers = arch.num_hidden_layers
    if arch.sliding_window is None:
        return layers, 0
    if arch.sliding_window_pattern is None:
        return 0, layers
    full = layers // arch.sliding_window_pattern
    return full, layers - full


def kv_bytes_per_token(arch: Architecture, tp: int, elem_bytes: int) -> int:
    """KV bytes one token takes on one GPU over all layers, as vLLM allocates pages (every layer, full length).

    Standard attention: 2 (K and V) x KV heads per GPU x head_dim x element bytes per layer.
    MLA (DeepSeek): one latent of kv_lora_rank + qk_rope_head_dim per layer, the same on every TP rank.
    """
    if arch.mla is not None:
        per_layer = (arch.mla.kv_lora_rank + arch.mla.qk_rope_head_dim) * elem_bytes
    else:
        per_layer = 2 * kv_heads_per_gpu(arch, tp) * arch.head_dim * elem_bytes
    return per_layer * arch.num_hidden_layers


def kv_bytes_per_request(
    arch: Architecture, tp: int, elem_bytes: int, tokens: int, max_num_batched_tokens: int, version: VllmVersion
) -> int:
    """KV bytes vLLM reserves for one request of `tokens`: every block of the context on full-attention layers;
    on sliding-window layers the window plus the tokens still in flight, capped at the context
    (v1/kv_cache_interface.py SlidingWindowSpec.max_memory_usage_bytes: cdiv(min(window - 1 + in-flight tokens,
    max_model_len), block) + 1 blocks; in-flight tokens: VllmVersion.sliding_window_in_flight_batches x
    max_num_batched_tokens). This is what startup checks one max_model_len request against and what "Maximum
    concurrency" divides by.
    """
    per_layer = kv_bytes_per_token(arch, tp, elem_bytes) // arch.num_hidden_layers
    full, sliding = layer_kinds(arch)
    blocks_full = math.ceil(tokens / BLOCK_SIZE)
    in_flight = version.sliding_window_in_flight_batches * max_num_batched_tokens
    window_tokens = min((arch.sliding_window or 0) - 1 + in_flight, tokens)
    blocks_slide = math.ceil(window_tokens / BLOCK_SIZE) + 1
    return per_layer * BLOCK_SIZE * (full * blocks_full + sliding * blocks_slide)


def kv_tokens(kv_bytes: float, arch: Architecture, tp: int, elem_bytes: int) -> int:
    """Tokens vLLM reports for `kv_bytes` of KV memory: whole blocks of 16 over every layer."""
    if kv_bytes <= 0:
        return 0
    per_block = kv_bytes_per_token(arch, tp, elem_bytes) * BLOCK_SIZE
    return int(kv_bytes // per_block) * BLOCK_SIZE


# Peak bytes per vocabulary entry and row of the profile run's sampler warm-up (`_dummy_sampler_run`: max_num_seqs
# rows, top-k and top-p on), by top-k/top-p implementation (VllmVersion.default_sampler picks one per release).
# Every path holds the model-dtype logits (2 B) and their float32 copy (v1/sample/sampler.py, 4 B), then:
# - "flashinfer": top_k_top_p_sampling_from_logits, filter order "top_k_first" (flashinfer/sampling.py 0.3:
#   top_k_mask_logits, an empty_like copy, then its softmax): 4 + 4 B more, 14 B;
# - "triton": in place, then the softmax probabilities and random_sample's exponential draws (4 + 4 B), 14 B;
# - "pytorch": the sort (float32 values + int64 indices), its softmax/cumsum, the masks and the scatter back;
#   fitted at 39 B on gpt-oss-120b on one H100 (vllm#23278 on 0.10.1, vllm#27508 on 0.11.0: 1024 rows x
#   201,088 logits lost 7.4-7.5 GiB besides the weights in both logs, the 0.1 GiB of non-torch memory included).
SAMPLER_BYTES_PER_LOGIT = {"flashinfer": 14, "triton": 14, "pytorch": 39}
# The Triton path runs from 8 rows; fewer are sorted in PyTorch (0.19.1 v1/sample/ops/topk_topp_sampler.py
# apply_top_k_top_p: "if HAS_TRITON and logits.shape[0] >= 8")
TRITON_TOPK_MIN_ROWS = 8


def triton_topk_buffer_bytes(vocab_size: int, rows: int, sms: int) -> int:
    """The float32 scratch buffer 0.19's Triton top-k/top-p keeps for the process's life (v1/sample/ops/
    topk_topp_triton.py apply_top_k_top_p_triton: one vocabulary-wide row per Triton program, min(SMs, rows)
    programs, rounded up to a power of two and capped at the SM count, cached in _TRITON_BUFFER_CACHE), so it is
    still allocated at the sampler warm-up's peak: 0.06-0.08 GiB for a 152k vocabulary on an A100 or L40S."""
    programs = min(sms, rows)
    return 4 * vocab_size * min(1 << max(programs - 1, 0).bit_length(), sms)

# Calibration constant of the activation model (bench/planner_accuracy.py checks it).
ACTIVATION_SCALE = 1.0


def activation_bytes(
    arch: Architecture, tp: int, dtype_bytes: int, max_num_batched_tokens: int, max_num_seqs: int,
    version: VllmVersion, sampler: str | None = None, *, sms: int,
) -> float:
    """Peak of vLLM's profile run (`profile_run`): a forward of max_num_batched_tokens tokens, then the sampler.

    Forward peak = three hidden-size tensors per token (the residual, the normed input and the layer output alive
    together) + the largest transient: the MLP's gate_up output and its activation, or for MoE the fused-MoE
    workspace of top-k experts per token (fused_moe: intermediate caches of tokens x top-k x expert width), or the
    attention q/k/v + output. Dense V0 logs, which print the activation peak, fix the per-token slope:
    Llama-3.1-8B on an RTX 3090 (vllm#10517) peaks at 2.07 GiB for 20000 tokens and 2.99 GiB for 29000, 110 KiB
    per token = 2 bytes x (3 x 14336 + 3.2 x 4096).
    Sampler peak (`_dummy_sampler_run`, max_num_seqs rows over the vocabulary, top-k/top-p on): bytes per logit
    of `sampler` (SAMPLER_BYTES_PER_LOGIT; None: the release's default, VllmVersion.default_sampler), plus, on the
    Triton path, its per-SM scratch buffer (triton_topk_buffer_bytes; `sms`: the GPU's multiprocessors). There is no
    per-expert term: vLLM has no such allocation, and the large-MoE rows that once suggested one are explained by the
    sampler and the MXFP4 padding.
    No base term either: V1 charges the increase of torch's *allocated* peak over what is allocated when the profile
    run starts (MemorySnapshot.measure, "allocated_bytes.all.peak": vllm/utils/__init__.py at 0.10.1.1 and 0.11.0,
    utils/mem_utils.py at 0.19.1), so neither the allocator's reserved-but-free blocks nor the runner's persistent
    input buffers (allocated before profiling) count; the slope fitted on the V0 rows has no intercept either
    (2.07 GiB at 20000 tokens, 2.99 at 29000). The 0.25 GiB base this term once had was the part of V0 0.6.4's
    logged non-torch memory (see NON_TORCH_GIB) that V1 does not charge; 0.33, which charges more, keeps it
    (PERSISTENT_GIB).
    """
    tokens = max_num_batched_tokens
    h = arch.hidden_size
    residual = 3 * tokens * h * dtype_bytes
    attn = tokens * (2 * arch.num_attention_heads + 2 * arch.num_key_value_heads) * arch.head_dim / tp * dtype_bytes
    mlp = 3 * tokens * arch.intermediate_size / tp * dtype_bytes
    if arch.moe is not None:
        moe_width = arch.moe.experts_per_token * arch.moe.expert_intermediate_size
        mlp = max(mlp, 3 * tokens * moe_width / tp * dtype_bytes)
    forward = residual + max(attn, mlp)
    path = sampler or version.default_sampler
    if path == "triton" and max_num_seqs < TRITON_TOPK_MIN_ROWS:
        path = "pytorch"
    sampler_peak = SAMPLER_BYTES_PER_LOGIT[path] * max_num_seqs * arch.vocab_size
    if path == "triton":
        sampler_peak += triton_topk_buffer_bytes(arch.vocab_size, max_num_seqs, sms)
    return ACTIVATION_SCALE * max(forward, sampler_peak)


# Memory inside the budget that torch does not allocate and that appears after the worker's baseline snapshot
# (workspaces, kernels loaded on first use): ~0.1 GiB, whatever the TP size. The NCCL communicators and custom
# all-reduce buffers of tensor parallelism are created before that snapshot (v1/worker/gpu_worker.py init_device:
# init_worker_distributed_environment, then MemorySnapshot, at 0.11, 0.19 and 0.33: "Initialize the distributed
# environment BEFORE taking memory snapshot. This ensures NCCL buffers are allocated before we measure"), so they
# live in the headroom with the CUDA context (NCCL_GIB). V0 charged them inside the budget ("non_torch_memory takes
# 0.25GiB" at TP 2, vllm#13061); the 0.10.1.1 logs at TP 2 and 4 (bench rows qwen2-7b/2x*/tp2, gpt-oss-120b/4x*/tp4)
# leave no room for them.
# V1 counts non-torch memory as (device used - torch reserved) since a snapshot taken once the CUDA context exists
# (MemorySnapshot, memory_profiling: non_torch_increase); V0 0.6.4 counted (device used - torch allocated) with no
# baseline at all (worker/worker.py determine_num_available_blocks), so its logged "non_torch_memory" (0.35 GiB on an
# RTX 3090, vllm#10517) holds the CUDA context and the allocator's free cached blocks, which V1 leaves in the
# headroom. The bench sizes V0 rows with the non-torch memory their logs print.
NON_TORCH_GIB = 0.1
# What 0.33 also charges (VllmVersion.budget_counts_persistent_allocations): the model runner's persistent buffers,
# the workspaces and blocks left reserved. No 0.33 startup log sizes it; the 0.25 GiB is the activation base the model
# charged every release before V0's accounting was read (see activation_bytes), kept for 0.33 only, unverified.
PERSISTENT_GIB = 0.25
NCCL_GIB = 0.3  # NCCL and custom all-reduce buffers per GPU under TP (V0's 0.25 GiB at TP 2, vllm#13061)


CUDA_CONTEXT_GIB = 0.5  # CUDA context, cuBLAS/cuDNN handles: outside the budget in every release
# Captured CUDA graphs per GPU. vLLM 0.21+ logs its estimate ("Estimated CUDA graph memory: X GiB total"): 0.67 GiB at
# TP 4 (vllm#39610), 0.36 at TP 2 (gpustack/runner#251), 0.17 at TP 4 (club-3090#127); older releases log the capture
# ("Graph capturing finished ... took 0.5-1.2 GiB"). It does not grow with the TP size.
CUDA_GRAPHS_GIB = 0.5


def outside_budget_bytes(version: VllmVersion, tp: int = 1) -> float:
    """What lives in the (1 - utilization) headroom: the CUDA context, NCCL under TP, and the CUDA graphs before
    0.21."""
    graphs = 0.0 if version.cudagraphs_in_budget else CUDA_GRAPHS_GIB
    return (CUDA_CONTEXT_GIB + (NCCL_GIB if tp > 1 else 0.0) + graphs) * GIB
