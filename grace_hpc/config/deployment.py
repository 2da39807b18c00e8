"""Typed deployments (configs/deployments/*.yaml): which models run where, in which roles."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field, StrictBool, ValidationInfo, field_validator, model_validator

from grace_hpc.config.catalog import Frozen, reject_duplicates, unknown_name
from grace_hpc.errors import ConfigError


class Engine(str, Enum):
    VLLM = "vllm"
    LLAMACPP = "llama.cpp"
    # llama.cpp's weights and flags, served by grace_hpc.engines.scoring_server: exact prompt log-probs (`echo`) for
    # option tasks on CPU, where llama.cpp's own server ignores `echo` (needs llama-cpp-python; docs/work.md)
    SCORING = "scoring"

    @property
    def planned_as(self) -> str:
        """The engine the planner sizes it as: the scoring server runs the same GGUF in llama.cpp."""
        return Engine.LLAMACPP.value if self is Engine.SCORING else self.value


class Replicas(Frozen):
    """How many jobs of a server may run: `min == max` is a static server (an int `replicas: n` means both)."""

    min: int = Field(default=1, ge=0)  # 0: scale to zero when idle, start on the first request
    max: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min must not exceed max (got min {self.min}, max {self.max})")
        return self


class ScaleUp(Frozen):
    """Add a replica when every replica carries more than `outstanding_per_replica` requests for `for_s` seconds
    (a request waiting for a server with no replica always starts the first one)."""

    outstanding_per_replica: float = Field(default=4.0, gt=0)
    for_s: float = Field(default=30.0, ge=0)


class ScaleDown(Frozen):
    """Remove a replica once the server has had no outstanding request for `idle_timeout_s` seconds."""

    idle_timeout_s: float = Field(default=600.0, gt=0)


class ServerSpec(Frozen):
    """One server job: one or more models (packed onto the same GPUs) on one partition."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    partition: str
    models: tuple[str, ...] = Field(min_length=1)  # catalog names; several = packed onto one GPU set
    categories: tuple[str, ...] = ()  # task categories this server answers (routing may add more)
    num_gpus: int | None = Field(default=None, gt=0)  # None: planner picks the smallest TP that fits
    engine: Engine | None = None  # None: planner picks (vLLM on GPUs, llama.cpp for GGUF/CPU)
    dtype: str | None = None
    quantization: str | None = None
    max_model_len: int | None = Field(default=None, gt=0)
    min_concurrency: int = Field(default=1, gt=0)
    replicas: Replicas = Replicas()
    scale_up: ScaleUp = ScaleUp()
    scale_down: ScaleDown = ScaleDown()
    # start a successor this many seconds before a job's wall time ends; None: measured from past start-ups
    handover_lead_s: float | None = Field(default=None, gt=0)
    time: str | None = None  # overrides the partition's max_time
    extra_args: tuple[str, ...] = ()  # appended to the engine argv verbatim
    # let the planner choose --cpu-offload-gb (vLLM) or CPU layers (llama.cpp) for this server's models when nothing
    # else fits; never otherwise. Slow: offloaded weights cross PCIe on every step, and vLLM pins them in host RAM,
    # which counts against the job's --mem (mem_per_gpu_gb x GPUs). Strict: `"false"` (a string) is an error
    allow_cpu_offload: StrictBool = False

    @field_validator("replicas", mode="before")
    @classmethod
    def _static(cls, value: object) -> object:
        # `replicas: 2` keeps its meaning from before elastic fleets: exactly two, always
        if not isinstance(value, int) or isinstance(value, bool):
            return value
        if value < 1:
            raise ValueError(f"a fixed replica count must be at least 1 (got {value}): "
                             "`replicas: {min: 0, max: N}` scales to zero when idle")
        return {"min": value, "max": value}

    @model_validator(mode="after")
    def _offload_needs_a_gpu_engine(self) -> ServerSpec:
        if self.allow_cpu_offload and self.engine is Engine.SCORING:
            raise ValueError("allow_cpu_offload does not apply to engine 'scoring', which runs on the CPU from host "
                             "RAM: remove allow_cpu_offload, or serve with engine vllm or llama.cpp on a GPU partition")
        return self

    @property
    def elastic(self) -> bool:
        return self.replicas.min != self.replicas.max


class Deployment(Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    executor: Literal["auto", "slurm", "local"] = "auto"  # auto: SLURM where sbatch exists, else local
    servers: tuple[ServerSpec, ...] = Field(min_length=1)
    max_gpus: int | None = Field(default=None, gt=0)  # the fleet controller never holds more GPUs than this

    @model_validator(mode="after")
    def _unique(self) -> Deployment:
        reject_duplicates([s.name for s in self.servers], "server")
        return self

    @field_validator("max_gpus")
    @classmethod
    def _floor_fits(cls, value: int | None, info: ValidationInfo) -> int | None:
        # GPUs not pinned count as 1: the planner picks the count, the controller re-checks with the plan
        floor = sum(s.replicas.min * (s.num_gpus or 1) for s in info.data.get("servers", ()))
        if value is not None and floor > value:
            raise ValueError(f"below the {floor} GPUs that the servers' replicas.min need")
        return value

    def only(self, names: tuple[str, ...] | list[str]) -> Deployment:
        """A copy restricted to the servers named (by server name or model name); ConfigError for a name that is
        neither (a typo would otherwise select nothing, and `launch --only` would do nothing, silently)."""
        known = [*(s.name for s in self.servers), *dict.fromkeys(m for s in self.servers for m in s.models)]
        for name in names:
            if name not in known:
                raise ConfigError(unknown_name("server or model", name, known, f"deployment {self.name!r}"))
        wanted = set(names)
        servers = tuple(s for s in self.servers if s.name in wanted or wanted & set(s.models))
        return self.model_copy(update={"servers": servers})
