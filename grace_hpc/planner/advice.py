"""What a does-not-fit answer suggests: concrete alternatives, never the GPU the plan is already on, and what CPU
offload would take (or that the targeted vLLM refuses it)."""

from __future__ import annotations

from grace_hpc.config.catalog import ModelSpec
from grace_hpc.planner import memory as mem
from grace_hpc.planner.fit import DEFAULT_UTILIZATION
from grace_hpc.planner.gpus import GPU, GPUS
from grace_hpc.planner.plans import Plan
from grace_hpc.planner.precision import offload_problem
from grace_hpc.vllm_version import VllmVersion

__all__ = ["what_would_fit", "larger_gpu"]


def larger_gpu(spec: ModelSpec, gpu: GPU, closest: Plan | None) -> GPU | None:
    """The smallest catalog GPU with more memory than `gpu` whose budget holds the closest miss on one GPU (the
    largest such GPU when none does); with nothing sized (every format refused), the smallest larger sm80+ GPU.
    None on the largest GPU or a CPU partition: never "try H100" on an H100."""
    if gpu.is_cpu:
        return None
    larger = sorted((g for g in GPUS.values() if g.memory_gib > gpu.memory_gib), key=lambda g: g.memory_gib)
    if closest is None:
        larger = [g for g in larger if g.sm >= 80]
        need = _native_weights_gib(spec) + 2.0  # + activations, overheads and some KV cache
    else:
        need = (closest.weights_gib_per_gpu * closest.tensor_parallel_size + closest.activation_gib_per_gpu
                + closest.overhead_gib_per_gpu + closest.shortfall_gib / closest.tensor_parallel_size)
    return next((g for g in larger if DEFAULT_UTILIZATION * g.memory_gib >= need), larger[-1] if larger else None)


def _native_weights_gib(spec: ModelSpec) -> float:
    """The published checkpoint's weights on one GPU (MXFP4 experts padded as Marlin pads them)."""
    arch = spec.architecture
    native = spec.native_quantization.value if spec.native_quantization else None
    padding = mem.mxfp4_expert_padding(arch, 1, "marlin") if native == "mxfp4" else 1.0
    fmt = mem.weight_format(native, 2, 8 if native == "fp8" else 16, None, padding)
    return mem.weights_bytes_per_gpu(arch, fmt, 1, 2) / mem.GIB


def what_would_fit(spec: ModelSpec, gpu: GPU, version: VllmVersion, closest: Plan | None) -> str:
    """Concrete alternatives: only GPUs larger than this one, and offload with its size and cost."""
    larger = larger_gpu(spec, gpu, closest)
    options = [f"a partition with larger GPUs (try --gpu {larger.name})" if larger
               else "more GPUs per node (a larger TP size)" if not gpu.is_cpu else "a partition with more RAM"]
    options += ["a shorter --max-model-len", "a quantized variant in configs/models.yaml (AWQ/GPTQ 4-bit, or GGUF "
                "for llama.cpp)", "routing this model's category to the cloud fallback"]
    if closest is not None and closest.engine == "vllm" and closest.shortfall_gib > 0 and not gpu.is_cpu:
        gib = -(-closest.shortfall_gib // 0.5) * 0.5
        problem = offload_problem(spec, version)
        options.append(
            f"--cpu-offload-gb {gib:g} (not chosen unless pinned or allow_cpu_offload: {gib:g} GiB per GPU of "
            f"pinned host RAM against --mem, streamed over PCIe on every step)" if problem is None
            else f"not CPU offload: {problem}"
        )
    return "what would fit: " + "; ".join(options)
