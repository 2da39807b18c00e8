"""What the planner is asked (PlanRequest) and what it answers (Plan, ServerPlan): frozen values, JSON-ready."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from grace_hpc.config.catalog import Task
from grace_hpc.errors import PlanError
from grace_hpc.planner.render import render_argv
from grace_hpc.vllm_version import DEFAULT_VLLM_VERSION, VllmVersion

__all__ = ["PlanRequest", "Plan", "ServerPlan", "ENGINES"]

ENGINES = ("vllm", "llama.cpp")


@dataclass(frozen=True)
class PlanRequest:
    """Options the user pins; None lets the planner choose. `quantization="none"` pins unquantized weights."""

    dtype: str | None = None
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    tensor_parallel_size: int | None = None
    num_gpus: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    cpu_offload_gb: float | None = None
    engine: str | None = None
    min_concurrency: int = 1
    max_num_batched_tokens: int | None = None  # vLLM's per-step token budget; sizes the profiled activation peak
    vllm_version: VllmVersion = DEFAULT_VLLM_VERSION  # the release whose rules apply (grace_hpc/vllm_version.py)
    allow_cpu_offload: bool = False  # let the planner choose --cpu-offload-gb (never otherwise, unless pinned)

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "num_gpus", "max_model_len", "max_num_seqs", "min_concurrency",
                     "max_num_batched_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PlanError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.max_num_batched_tokens and self.max_num_seqs and self.max_num_batched_tokens < self.max_num_seqs:
            raise PlanError(  # vllm/config/scheduler.py refuses it at start
                f"--max-num-batched-tokens {self.max_num_batched_tokens} is below --max-num-seqs {self.max_num_seqs}; "
                "vLLM refuses that"
            )
        u = self.gpu_memory_utilization
        if u is not None and not 0 < u <= 1:
            raise PlanError(f"--gpu-memory-utilization must be in (0, 1] (got {u})")
        if self.cpu_offload_gb is not None and self.cpu_offload_gb < 0:
            raise PlanError(f"--cpu-offload-gb must be >= 0 (got {self.cpu_offload_gb})")
        if self.engine is not None and self.engine not in ENGINES:
            raise PlanError(f"unknown engine {self.engine!r}; valid: {', '.join(ENGINES)}")


@dataclass(frozen=True)
class Plan:
    """One model on one GPU type: the configuration, its memory per GPU (GiB), and why."""

    fits: bool
    engine: str  # "vllm" | "llama.cpp"
    model: str  # catalog name
    weights_ref: str  # what the engine loads: HF id, variant id, local folder, GGUF path or pkg:DIST/FILE
    gpu: str
    dtype: str
    quantization: str | None
    quantization_online: bool  # vLLM quantizes at load time (--quantization fp8) instead of reading a checkpoint
    kv_cache_dtype: str
    tensor_parallel_size: int  # llama.cpp: GPUs the layers are split over
    max_model_len: int
    gpu_memory_utilization: float
    max_num_seqs: int  # llama.cpp: parallel slots (-np)
    max_num_batched_tokens: int | None  # None: vLLM's default (rendered only when pinned)
    cpu_offload_gb: float
    weights_gib_per_gpu: float
    activation_gib_per_gpu: float
    overhead_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    kv_cache_tokens: int
    max_concurrency: float  # requests of max_model_len tokens the KV cache holds at once
    trust_remote_code: bool = False
    task: Task = Task.GENERATE  # EMBED: served for /v1/embeddings (vLLM's pooling runner, llama.cpp --embedding)
    gpu_layers: int | None = None  # llama.cpp -ngl; None for vLLM
    shortfall_gib: float = 0.0  # GiB per GPU missing when it does not fit (what offloading would have to take)
    vllm_version: str | None = None  # the vLLM series the plan was made for (None for llama.cpp)
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Every field, rounded for people, plus `argv` rendered with host 0.0.0.0, port 8000."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 3)
        data["reasons"] = list(self.reasons)
        data["argv"] = render_argv(self, host="0.0.0.0", port=8000, served_model_name=self.model)
        return data


@dataclass(frozen=True)
class ServerPlan:
    """One ServerSpec on one partition: the GPUs to request and a Plan per model packed onto them."""

    server: str
    partition: str
    gpu: str
    num_gpus: int  # GPUs to request from SLURM (0 on CPU partitions)
    plans: tuple[Plan, ...]
    fits: bool
    reasons: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server, "partition": self.partition, "gpu": self.gpu, "num_gpus": self.num_gpus,
            "fits": self.fits, "reasons": list(self.reasons), "plans": [p.to_json() for p in self.plans],
        }
