"""The choice: for a model and a GPU, walk configurations from best quality to most compressed and take the first
that fits with the context and concurrency asked for.

Ladder: native dtype -> FP8 (vLLM quantizes at load) -> 8-bit checkpoint -> 4-bit checkpoint -> bitsandbytes
4-bit in flight -> GGUF in llama.cpp -> an fp8 KV cache; at each rung the smallest tensor-parallel size first.
CPU offload only when pinned (`--cpu-offload-gb`) or allowed (`allow_cpu_offload`): it streams weights over PCIe
on every step, pins host memory against the job's --mem, and vLLM 0.11/0.19 refuse it for sliding-window hybrids.
Every rule that depends on the vLLM release reads `request.vllm_version` (grace_hpc/vllm_version.py).
"""

from __future__ import annotations

import re
from dataclasses import replace

from grace_hpc.config.catalog import ModelSpec, QuantizedVariant
from grace_hpc.errors import PlanError
from grace_hpc.planner.advice import what_would_fit
from grace_hpc.planner.fit import (
    DEFAULT_UTILIZATION,
    Candidate,
    Settings,
    fit_llamacpp,
    fit_vllm,
    fit_vllm_cpu,
    vllm_batch_defaults,
)
from grace_hpc.planner.gpus import GPU
from grace_hpc.planner.plans import Plan, PlanRequest
from grace_hpc.planner.precision import (
    attention_notes,
    attention_problem,
    check_kv_cache_dtype,
    check_quantization,
    kv_cache_dtype_problem,
    normalize_dtype,
    offload_problem,
    resolve_dtype,
)

__all__ = ["plan_model", "tp_sizes", "is_gguf_weights", "DEFAULT_MIN_CONTEXT", "DEFAULT_UTILIZATION"]

DEFAULT_MIN_CONTEXT = 8192  # the shortest context the planner accepts unless --max-model-len pins one
_GGUF_TYPE = re.compile(r"(IQ\d_[A-Z]+|Q\d_K(?:_[SML])?|Q\d_\d|BF16|F16|F32)", re.IGNORECASE)


def is_gguf_weights(weights: str | None) -> bool:
    """`weights` names a GGUF file (served by llama.cpp): `pkg:DIST/FILE.gguf` or a path ending in .gguf."""
    return bool(weights) and (weights.startswith("pkg:") or weights.lower().endswith(".gguf"))


def _gguf_type(name: str) -> str:
    match = _GGUF_TYPE.search(name.rsplit("/", 1)[-1])
    return match.group(1).upper() if match else "F16"  # unknown: assume the largest common type


def tp_sizes(spec: ModelSpec, gpus_available: int, group_size: int | None = None) -> list[int]:
    """Tensor-parallel sizes vLLM accepts for `spec`, smallest first.

    vllm/config/parallel.py + model.py `verify_with_parallel_config`: "Total number of attention heads (H) must be
    divisible by tensor parallel size (T)". KV heads are split when TP divides them and replicated when TP is a
    multiple of them. Group-quantized weights need input_size / TP divisible by the group size (awq.py: "The input
    size is not aligned with the quantized weight shape. This can be caused by too large tensor parallel size.").
    """
    arch = spec.architecture
    sizes = []
    for tp in range(1, gpus_available + 1):
        if arch.num_attention_heads % tp:
            continue
        kv = arch.num_key_value_heads
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            continue
        widths = [arch.intermediate_size] + ([arch.moe.expert_intermediate_size] if arch.moe else [])
        if group_size and any((w // tp) % group_size for w in widths):
            continue
        sizes.append(tp)
    return sizes


def _variant_ref(v: QuantizedVariant) -> str:
    return v.file if v.file and ("/" in v.file or v.method.value != "gguf") else (
        f"{v.hf_id}/{v.file}" if v.file else v.hf_id
    )


def _candidates(spec: ModelSpec, gpu: GPU, request: PlanRequest) -> list[Candidate]:
    """Every way to hold the weights, best quality first, filtered by what the request pins."""
    ref = spec.weights or spec.hf_id
    native = spec.native_quantization.value if spec.native_quantization else None
    if is_gguf_weights(spec.weights):
        base = [Candidate("llama.cpp", "gguf", ref, gguf_type=_gguf_type(ref))]
    else:
        base = [Candidate("vllm", native, ref)]
        if native is None:
            base.append(Candidate("vllm", "fp8", ref, online=True, bits=8))
    variants = sorted(spec.variants, key=lambda v: -v.bits)
    for v in variants:
        if v.method.value == "gguf":
            continue
        base.append(Candidate("vllm", v.method.value, _variant_ref(v), bits=v.bits, group_size=v.group_size))
    wants_bnb = request.vllm_version.has_bitsandbytes or (request.quantization or "").lower() == "bitsandbytes"
    if native is None and not is_gguf_weights(spec.weights) and wants_bnb:
        # bitsandbytes NF4 in flight on the 16-bit checkpoint (bitsandbytes_loader.py quantize_4bit with
        # compress_statistics=True: double-quantized absmax): needs no published variant, splits under TP
        # (pinned where the release has none, check_quantization says so)
        base.append(Candidate("vllm", "bitsandbytes", ref, online=True, bits=4))
    for v in variants:
        if v.method.value == "gguf":
            gguf_type = v.gguf_type or _gguf_type(v.file or "")
            base.append(Candidate("llama.cpp", "gguf", _variant_ref(v), gguf_type=gguf_type))
    cands = base
    if request.allow_cpu_offload:
        # last resort, only when allowed: the published checkpoint with weights in host RAM, then GGUF with
        # layers on the CPU
        offload = [c for c in base if c.engine == "vllm" and c.quantization == native and not c.online]
        offload += [c for c in base if c.engine == "llama.cpp"]
        cands = base + [replace(c, offload=True) for c in offload]

    if gpu.is_cpu and request.engine == "vllm":
        # vLLM's CPU backend runs the checkpoint as published (the GPU quantization kernels do not exist there)
        cands = [c for c in cands if c.engine == "vllm" and c.quantization is None and not c.offload]
    elif gpu.is_cpu or request.engine == "llama.cpp":
        cands = [c for c in cands if c.engine == "llama.cpp"]
    elif request.engine == "vllm":
        cands = [c for c in cands if c.engine == "vllm"]
    q = request.quantization
    if q is not None:
        q = q.lower()
        if q == "none":
            # the checkpoint as published (gpt-oss stays MXFP4, DeepSeek-V3 FP8): no extra quantization
            cands = [c for c in cands if c.engine == "vllm" and not c.online and c.weights_ref == ref]
        else:
            cands = [c for c in cands if c.quantization == q or (q == "gguf" and c.engine == "llama.cpp")]
        if not cands:
            unpinned = PlanRequest(vllm_version=request.vllm_version)
            known = ", ".join(sorted({c.label for c in _candidates(spec, gpu, unpinned)})) or "none"
            raise PlanError(f"no {q!r} weights for {spec.name} on {gpu.name}; available here: {known}")
    if request.cpu_offload_gb:
        cands = [c for c in cands if c.engine == "vllm"]  # --cpu-offload-gb is a vLLM flag
    return cands


def _settings(spec: ModelSpec, gpu: GPU, request: PlanRequest, dtype: str) -> Settings:
    arch = spec.architecture
    target = request.max_model_len or spec.context_length
    if request.max_model_len and request.max_model_len > arch.max_position_embeddings:
        raise PlanError(
            f"--max-model-len {request.max_model_len} exceeds {spec.name}'s max_position_embeddings "
            f"({arch.max_position_embeddings}); vLLM refuses it"
        )
    kv_bytes, _ = check_kv_cache_dtype(request.kv_cache_dtype, gpu, request.vllm_version)
    return Settings(
        dtype=dtype, kv_cache_dtype=request.kv_cache_dtype or "auto", kv_elem_bytes=kv_bytes,
        utilization=request.gpu_memory_utilization or DEFAULT_UTILIZATION,
        utilization_pinned=request.gpu_memory_utilization is not None, max_num_seqs=request.max_num_seqs,
        max_num_batched_tokens=request.max_num_batched_tokens,
        min_len=min(target, request.max_model_len or DEFAULT_MIN_CONTEXT), target_len=target,
        min_concurrency=request.min_concurrency, cpu_offload_gb=request.cpu_offload_gb,
        version=request.vllm_version,
    )


def _dtype_for(spec: ModelSpec, gpu: GPU, cand: Candidate, request: PlanRequest) -> tuple[str, tuple[str, ...]]:
    if cand.engine == "llama.cpp":
        return "float16", ()
    if gpu.is_cpu:
        # vLLM's CPU backend computes in bfloat16, float16 and float32 alike (platforms/cpu.py supported_dtypes)
        pinned = request.dtype if request.dtype and request.dtype.lower() != "auto" else None
        return normalize_dtype(pinned or spec.architecture.torch_dtype), ()
    return resolve_dtype(spec, gpu, request.dtype)


def plan_model(spec: ModelSpec, gpu: GPU, gpus_available: int, request: PlanRequest | None = None) -> Plan:
    """The best configuration of `spec` on up to `gpus_available` GPUs of type `gpu` (0 for a CPU partition).

    Returns a Plan with fits=False and reasons naming what would fit when nothing does; raises PlanError for
    impossible pins (bf16 on a T4, a TP size the model cannot split into, a format the GPU or the vLLM release
    cannot run, an unknown option).
    """
    request = request or PlanRequest()
    if request.num_gpus is not None:
        if not gpu.is_cpu and request.num_gpus > gpus_available:
            raise PlanError(f"--num-gpus {request.num_gpus} exceeds the {gpus_available} {gpu.name} GPUs per node")
        gpus_available = request.num_gpus
    if request.tensor_parallel_size is not None:
        tp = request.tensor_parallel_size
        if not gpu.is_cpu and tp > max(gpus_available, 1):
            raise PlanError(f"--tensor-parallel-size {tp} exceeds the {gpus_available} {gpu.name} GPUs available")
        if tp not in tp_sizes(spec, tp):
            a = spec.architecture
            raise PlanError(
                f"--tensor-parallel-size {tp} cannot split {spec.name}: {a.num_attention_heads} attention heads and "
                f"{a.num_key_value_heads} KV heads; valid sizes: {tp_sizes(spec, 8)}"
            )
    if not gpu.is_cpu:
        resolve_dtype(spec, gpu, request.dtype)  # an impossible pinned dtype is an error, whatever the ladder
    if request.cpu_offload_gb and (problem := offload_problem(spec, request.vllm_version)):
        raise PlanError(problem)
    plan, tried, skipped = _walk(spec, gpu, gpus_available, request)
    if plan is not None:
        return _then_reasons(plan, _knob_reasons(plan, spec, gpu, request, gpus_available))
    lever = _fp8_kv_lever(spec, gpu, gpus_available, request)
    if lever is not None:
        return lever
    if not tried and _pinned(request):
        raise PlanError(
            f"{spec.name} cannot run on {gpu.name} as pinned (vLLM {request.vllm_version.value}): "
            + "; ".join(dict.fromkeys(skipped))
        )
    return _nothing_fits(spec, gpu, gpus_available, request, tried, skipped)


def _walk(
    spec: ModelSpec, gpu: GPU, gpus_available: int, request: PlanRequest
) -> tuple[Plan | None, list[Plan], list[str]]:
    """Walk the ladder: the first plan that fits, else (None, every plan tried, why each rung was left)."""
    version = request.vllm_version
    skipped: list[str] = []
    tried: list[Plan] = []
    for cand in _candidates(spec, gpu, request):
        dtype, why = _dtype_for(spec, gpu, cand, request)
        if cand.engine == "vllm" and not gpu.is_cpu:
            problem = (check_quantization(cand.quantization, gpu, dtype, version) if cand.quantization else None)
            problem = problem or attention_problem(spec, gpu, version)
            if cand.offload:
                problem = problem or offload_problem(spec, version)
            if problem:
                skipped.append(f"{cand.label}: {problem}")
                continue
        settings = _settings(spec, gpu, request, dtype)
        _, kv_why = check_kv_cache_dtype(request.kv_cache_dtype, gpu, version)
        if cand.engine == "vllm" and gpu.is_cpu:
            fits = [fit_vllm_cpu(spec, gpu, cand, settings)]
        else:
            fit = fit_llamacpp if cand.engine == "llama.cpp" else fit_vllm
            counts = _gpu_counts(spec, gpu, cand, request, gpus_available)
            fits = [fit(spec, gpu, cand, n, settings) for n in counts]
        notes = attention_notes(gpu) if cand.engine == "vllm" else ()
        for plan in fits:
            plan = _with_reasons(plan, tuple(skipped) + why + kv_why + notes)
            if plan.fits:
                return plan, tried, skipped
            tried.append(plan)
        if fits:  # this rung failed: say so on whatever rung wins
            best = min(fits, key=lambda p: p.weights_gib_per_gpu + p.cpu_offload_gb)
            need = next((r for r in best.reasons if r.startswith(("needs", "would offload", "online fp8"))),
                        "does not fit")
            rung = f"{cand.label}{' with offload' if cand.offload else ''} ({best.dtype})"
            skipped.extend(r for r in why if r not in skipped)
            skipped.append(f"{rung} on {best.tensor_parallel_size} GPU(s): {need}")
    return None, tried, skipped


def _pinned(request: PlanRequest) -> bool:
    return any(x is not None for x in (request.quantization, request.dtype, request.kv_cache_dtype, request.engine,
                                       request.tensor_parallel_size))


def _fp8_kv_lever(spec: ModelSpec, gpu: GPU, gpus_available: int, request: PlanRequest) -> Plan | None:
    """The last lever before giving up: an fp8 KV cache (half the bytes per token) where the GPU and the release
    start it, with the ladder walked again."""
    if request.kv_cache_dtype is not None or kv_cache_dtype_problem(gpu, request.vllm_version):
        return None
    plan, _, _ = _walk(spec, gpu, gpus_available, replace(request, kv_cache_dtype="fp8"))
    if plan is None or plan.engine != "vllm":
        return None
    why = "--kv-cache-dtype fp8: nothing fits with a 16-bit KV cache; fp8 halves the bytes per token"
    return _then_reasons(_with_reasons(plan, (why,)), _knob_reasons(plan, spec, gpu, request, gpus_available))


def _knob_reasons(
    plan: Plan, spec: ModelSpec, gpu: GPU, request: PlanRequest, gpus_available: int
) -> tuple[str, ...]:
    """Why each chosen knob has its value (pinned ones say so), so no plan comes without an explanation."""
    if plan.engine != "vllm":
        return (f"-ngl {plan.gpu_layers}, {plan.max_num_seqs} slot(s) of {plan.max_model_len} tokens",)
    weights = ("as published" if not plan.quantization else
               f"{plan.quantization} {'quantized at load' if plan.quantization_online else 'checkpoint'}")
    n = ("pinned" if request.tensor_parallel_size else f"{request.num_gpus} GPU(s) asked for" if request.num_gpus
         else f"the fewest of {gpus_available} GPUs that hold it")
    ctx = "pinned" if request.max_model_len else (
        "the model's own" if plan.max_model_len == spec.context_length else "what the KV cache holds")
    util = "pinned" if request.gpu_memory_utilization else (
        f"vLLM's {DEFAULT_UTILIZATION:g} + the CUDA graphs' share, counted inside the budget from vLLM 0.21 "
        "(its own startup advice)" if plan.gpu_memory_utilization > DEFAULT_UTILIZATION else "vLLM's default")
    default_seqs = vllm_batch_defaults(gpu, request.vllm_version)[1]
    seqs = "pinned" if request.max_num_seqs else "vLLM's default" if plan.max_num_seqs == default_seqs else "lowered"
    return (
        f"vLLM {plan.vllm_version}: {plan.dtype}, weights {weights}, TP {plan.tensor_parallel_size} ({n})",
        f"context {plan.max_model_len} ({ctx}); --gpu-memory-utilization {plan.gpu_memory_utilization:g} ({util}); "
        f"--max-num-seqs {plan.max_num_seqs} ({seqs})",
    )


def _gpu_counts(spec: ModelSpec, gpu: GPU, cand: Candidate, request: PlanRequest, available: int) -> list[int]:
    """GPU counts to try for a candidate, in order: pinned, else every valid count smallest first (offloading:
    largest first, so the least crosses PCIe). llama.cpp splits layers, so any count works; CPU: one process."""
    pinned = request.tensor_parallel_size or request.num_gpus
    if gpu.is_cpu:
        return [1]
    if cand.engine == "llama.cpp":
        return [pinned] if pinned else list(range(1, max(available, 1) + 1))
    if request.tensor_parallel_size:
        return [request.tensor_parallel_size]
    sizes = tp_sizes(spec, available, cand.group_size if cand.quantization in ("awq", "gptq") else None)
    if cand.quantization == "bitsandbytes" and not cand.online and request.vllm_version.prequantized_bitsandbytes_refuses_tp:
        sizes = [1]  # bitsandbytes_loader.py: "Prequant BitsAndBytes models with tensor parallelism is not supported"
    if request.num_gpus:
        sizes = [n for n in sizes if n == request.num_gpus] or sizes
    return sizes[::-1] if cand.offload else sizes


def _with_reasons(plan: Plan, extra: tuple[str, ...]) -> Plan:
    return replace(plan, reasons=tuple(dict.fromkeys(extra + plan.reasons)))  # in order, each once


def _then_reasons(plan: Plan, extra: tuple[str, ...]) -> Plan:
    return replace(plan, reasons=tuple(dict.fromkeys(plan.reasons + extra)))


def _nothing_fits(
    spec: ModelSpec, gpu: GPU, gpus: int, request: PlanRequest, tried: list[Plan], skipped: list[str]
) -> Plan:
    """The closest miss (the smallest footprint per GPU tried), with what would fit instead."""
    where = "host RAM" if gpu.is_cpu else f"{gpus} x {gpu.name}"
    closest = min(tried, key=lambda p: p.weights_gib_per_gpu + p.cpu_offload_gb) if tried else None
    head = f"{spec.name} does not fit on {where} with any configuration tried (vLLM {request.vllm_version.value})"
    advice = what_would_fit(spec, gpu, request.vllm_version, closest)
    if closest is not None:
        return _with_reasons(closest, (head, *(r for r in skipped if r not in closest.reasons), advice))
    # nothing could even be tried (every format refused by the GPU, or no GGUF for a CPU partition)
    engine = "llama.cpp" if gpu.is_cpu else "vllm"
    return Plan(
        fits=False, engine=engine, model=spec.name, weights_ref=spec.weights or spec.hf_id, gpu=gpu.name,
        dtype=spec.architecture.torch_dtype if gpu.is_cpu else resolve_dtype(spec, gpu, None)[0], quantization=None,
        quantization_online=False, kv_cache_dtype="auto", tensor_parallel_size=1,
        max_model_len=min(spec.context_length, DEFAULT_MIN_CONTEXT),
        gpu_memory_utilization=DEFAULT_UTILIZATION, max_num_seqs=request.min_concurrency,
        max_num_batched_tokens=None, cpu_offload_gb=0.0, weights_gib_per_gpu=0.0,
        activation_gib_per_gpu=0.0, overhead_gib_per_gpu=0.0, kv_cache_gib_per_gpu=0.0, kv_cache_tokens=0,
        max_concurrency=0.0, vllm_version=request.vllm_version.value if engine == "vllm" else None, task=spec.task,
        reasons=tuple(dict.fromkeys((head, *skipped)))
        + (("no GGUF weights in the catalog: CPU partitions run GGUF in llama.cpp",) if gpu.is_cpu else ())
        + (advice,),
    )
