"""Typed deployments (configs/deployments/*.yaml): which models run where, in which roles."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field, model_validator

from grace_hpc.config.catalog import Frozen, reject_duplicates, unknown_name
from grace_hpc.errors import ConfigError


class Engine(str, Enum):
    VLLM = "vllm"
    LLAMACPP = "llama.cpp"


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
    replicas: int = Field(default=1, gt=0)
    time: str | None = None  # overrides the partition's max_time
    extra_args: tuple[str, ...] = ()  # appended to the engine argv verbatim


class Deployment(Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    executor: Literal["auto", "slurm", "local"] = "auto"  # auto: SLURM where sbatch exists, else local
    servers: tuple[ServerSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Deployment:
        reject_duplicates([s.name for s in self.servers], "server")
        return self

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
