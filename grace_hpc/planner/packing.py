"""Plan a ServerSpec on its partition, packing several models onto the same GPUs when it lists several (seed 002).

Packed models run as separate engine processes on the same GPU(s). vLLM budgets each process by its own
`--gpu-memory-utilization` fraction of the *total* memory (V1 gpu_worker: requested_memory = total x utilization;
startup fails when less than that is free), so the fractions must add up to less than one, leaving room outside
the budgets for every process's CUDA context (and, before vLLM 0.21, its CUDA graphs).
"""

from __future__ import annotations

import math
from dataclasses import replace

from grace_hpc.config.catalog import Catalog, ModelSpec
from grace_hpc.config.cluster import Partition
from grace_hpc.config.deployment import ServerSpec
from grace_hpc.errors import PlanError
from grace_hpc.planner import memory as mem
from grace_hpc.planner.choose import plan_model
from grace_hpc.planner.fit import VLLM_CPU_RUNTIME
from grace_hpc.planner.gpus import CPU_NAME, GPU, cpu_device, get_gpu
from grace_hpc.planner.plans import Plan, PlanRequest, ServerPlan
from grace_hpc.vllm_version import DEFAULT_VLLM_VERSION, VllmVersion

__all__ = ["plan_server", "partition_device", "split_utilization", "PACK_MARGIN"]

PACK_MARGIN = 0.02  # fraction of the GPU left unassigned as a safety margin when packing


def partition_device(partition: Partition) -> tuple[GPU, int]:
    """(device, devices per node): a CPU partition plans against host RAM (mem_per_gpu_gb GiB)."""
    if partition.gpus_per_node == 0 or partition.gpu.upper() == CPU_NAME:
        return cpu_device(float(partition.mem_per_gpu_gb)), 0
    return get_gpu(partition.gpu), partition.gpus_per_node


def _spec(catalog: Catalog, name: str) -> ModelSpec:
    try:
        return catalog.get(name)
    except KeyError:
        raise PlanError(catalog.unknown_model(name, "the catalog (models.yaml)")) from None


def _need_fraction(plan: Plan, gpu: GPU, min_concurrency: int) -> float:
    """Share of one GPU the plan needs: weights, activations, overhead and KV for its minimum concurrency."""
    if plan.engine == "llama.cpp":
        return plan.gpu_memory_utilization
    per_request = plan.kv_cache_gib_per_gpu / plan.max_concurrency if plan.max_concurrency else 0.0
    need = plan.weights_gib_per_gpu + plan.activation_gib_per_gpu + plan.overhead_gib_per_gpu
    return (need + per_request * min_concurrency) / gpu.memory_gib


def split_utilization(needs: list[float], usable: float) -> list[float] | None:
    """Each model's `--gpu-memory-utilization`: its need plus a share of the spare proportional to it, rounded
    down to 0.01; None when the needs exceed `usable`."""
    total = sum(needs)
    if total > usable:
        return None
    spare = usable - total
    return [math.floor(round((n + spare * n / total) * 100, 6)) / 100 for n in needs]


def plan_server(
    server: ServerSpec, partition: Partition, catalog: Catalog, vllm_version: VllmVersion = DEFAULT_VLLM_VERSION
) -> ServerPlan:
    """Plan every model of `server` on `partition` for vLLM `vllm_version` (cluster.yaml engines.vllm_version).
    Does-not-fit is an answer (fits=False with reasons naming what would fit); PlanError only for unknown models
    or impossible pins."""
    gpu, per_node = partition_device(partition)
    specs = [_spec(catalog, name) for name in server.models]
    request = PlanRequest(
        dtype=server.dtype, quantization=server.quantization, max_model_len=server.max_model_len,
        min_concurrency=server.min_concurrency, engine=server.engine.planned_as if server.engine else None,
        num_gpus=server.num_gpus if len(specs) == 1 else (server.num_gpus or (0 if gpu.is_cpu else 1)),
        vllm_version=vllm_version, allow_cpu_offload=server.allow_cpu_offload,
    )
    if request.num_gpus == 0:
        request = replace(request, num_gpus=None)
    solo = [plan_model(s, gpu, per_node, _fit_context(request, s)) for s in specs]
    if len(specs) == 1:
        plan = solo[0]
        planned = ServerPlan(
            server=server.name, partition=partition.name, gpu=gpu.name,
            num_gpus=0 if gpu.is_cpu else plan.tensor_parallel_size, plans=(plan,), fits=plan.fits,
            reasons=plan.reasons,
        )
    else:
        planned = _pack(server, partition, gpu, specs, solo, request)
    return _check_pinned_host_ram(planned, partition)


def _check_pinned_host_ram(planned: ServerPlan, partition: Partition) -> ServerPlan:
    """A server whose vLLM processes offload weights does not fit when the pinned host RAM (--cpu-offload-gb on
    every rank) and the processes themselves exceed the job's --mem (mem_per_gpu_gb x GPUs, launch/resources.py):
    vLLM keeps the offloaded weights in pinned host memory, per GPU (0.19.1 config/offload.py UVAOffloadConfig:
    "zero-copy access from CPU-pinned memory"; 0.11 model_executor/models/utils.py maybe_offload_to_cpu), which
    cannot be paged out, so SLURM's memory cgroup kills the job instead."""
    offloading = [p for p in planned.plans if p.engine == "vllm" and p.cpu_offload_gb > 0]
    if not offloading:
        return planned
    vllm_plans = [p for p in planned.plans if p.engine == "vllm"]
    pinned = sum(p.cpu_offload_gb * p.tensor_parallel_size for p in offloading)
    need = pinned + len(vllm_plans) * VLLM_CPU_RUNTIME / mem.GIB
    job_mem = partition.mem_per_gpu_gb * max(planned.num_gpus, 1)
    if need <= job_mem:
        return planned
    reason = (
        f"--cpu-offload-gb pins {pinned:g} GiB of weights in host RAM, {need:.1f} GiB with the vLLM processes, more "
        f"than the job's {job_mem} GiB (mem_per_gpu_gb {partition.mem_per_gpu_gb} x {max(planned.num_gpus, 1)} GPU(s) "
        f"on partition {partition.name!r}): raise mem_per_gpu_gb in cluster.yaml if the nodes have the RAM, or use "
        "more GPUs or a quantized variant"
    )
    return replace(planned, fits=False, reasons=(*planned.reasons, reason))


def _pack(
    server: ServerSpec, partition: Partition, gpu: GPU, specs: list[ModelSpec], solo: list[Plan], request: PlanRequest
) -> ServerPlan:
    n = request.num_gpus or 1
    names = ", ".join(s.name for s in specs)
    misfits = [p for p in solo if not p.fits]
    if misfits:
        return ServerPlan(
            server=server.name, partition=partition.name, gpu=gpu.name, num_gpus=0 if gpu.is_cpu else n,
            plans=tuple(solo), fits=False,
            reasons=tuple(f"{p.model} alone does not fit on {n} x {gpu.name}" for p in misfits)
            + ("give it its own server on a larger partition, or a quantized variant",),
        )
    needs = [_need_fraction(p, gpu, request.min_concurrency) for p in solo]
    outside = len(solo) * mem.outside_budget_bytes(request.vllm_version) / mem.GIB
    usable = 1.0 - outside / gpu.memory_gib - PACK_MARGIN
    shares = split_utilization(needs, usable)
    if shares is None:
        # compress: let every model walk the ladder within an equal share of the GPU
        equal = math.floor(usable / len(specs) * 100) / 100
        squeezed = [plan_model(s, gpu, n, replace(_fit_context(request, s), gpu_memory_utilization=equal))
                    for s in specs]
        if all(p.fits for p in squeezed):
            solo = squeezed
            needs = [_need_fraction(p, gpu, request.min_concurrency) for p in solo]
            shares = split_utilization(needs, usable)
    if shares is None:
        need_gib = sum(needs) * gpu.memory_gib
        biggest = max(zip(needs, specs, strict=True), key=lambda pair: pair[0])[1].name
        return ServerPlan(
            server=server.name, partition=partition.name, gpu=gpu.name, num_gpus=n, plans=tuple(solo), fits=False,
            reasons=(
                f"{names} need {need_gib:.1f} GiB per GPU together (weights, activations, overheads, KV for "
                f"{request.min_concurrency} request(s) each) plus {outside:.1f} GiB of CUDA contexts outside the "
                "budgets; "
                f"{gpu.name} has {gpu.memory_gib} GiB",
                f"what would fit: move {biggest} to its own server, pin quantization (e.g. awq) or a shorter "
                "max_model_len, or a partition with larger GPUs",
            ),
        )
    plans = tuple(
        plan_model(s, gpu, n, replace(
            _fit_context(request, s), gpu_memory_utilization=u, tensor_parallel_size=p.tensor_parallel_size,
            quantization=_pinned_quant(p), dtype=p.dtype if p.engine == "vllm" else None,
        ))
        for s, p, u in zip(specs, solo, shares, strict=True)
    )
    fits = all(p.fits for p in plans)
    return ServerPlan(
        server=server.name, partition=partition.name, gpu=gpu.name, num_gpus=n, plans=plans, fits=fits,
        reasons=(f"{len(plans)} models packed on {n} x {gpu.name}: memory shares (vLLM --gpu-memory-utilization) "
                 + " + ".join(f"{p.gpu_memory_utilization:g} ({p.model})" for p in plans)
                 + f" = {sum(shares):.2f}, {outside:.1f} GiB left for CUDA contexts"
                 + ("" if request.vllm_version.cudagraphs_in_budget else " and graphs"),)
        + tuple(r for p in plans for r in p.reasons if not p.fits),
    )


def _fit_context(request: PlanRequest, spec: ModelSpec) -> PlanRequest:
    """A server's max_model_len caps every model on it; a model with a shorter context keeps its own."""
    if request.max_model_len and request.max_model_len > spec.architecture.max_position_embeddings:
        return replace(request, max_model_len=min(spec.context_length, spec.architecture.max_position_embeddings))
    return request


def _pinned_quant(plan: Plan) -> str:
    """Keep the packed re-plan on the precision the solo plan chose."""
    if plan.engine == "llama.cpp":
        return "gguf"
    return plan.quantization or "none"
