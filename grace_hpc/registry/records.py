"""The endpoint record: one running (or starting) model server, as the registry file stores it."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class EndpointState(str, Enum):
    STARTING = "starting"  # registered, engine loading; not routable
    READY = "ready"  # proved it can generate; routable
    UNRESPONSIVE = "unresponsive"  # the process runs but has not answered /health for a while; not routable
    DRAINING = "draining"  # stopping (preemption, scancel, time limit); finish in-flight, take no new requests
    GONE = "gone"  # the job is no longer running; kept only until the next reap


class PlanSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: str | None = None
    quantization: str | None = None
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    max_num_seqs: int | None = None  # capacity weight for the router's load balancing


class MeasuredCapacity(BaseModel):
    """What `grace-hpc bench` measured this endpoint to sustain while meeting a latency target; the router weighs
    endpoints of one model by `output_tokens_per_s` when every one of them has a measurement."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output_tokens_per_s: float = Field(gt=0)
    requests_per_s: float = Field(gt=0)
    concurrency: int = Field(ge=1)  # the closed-loop level that sustained it
    ttft_p90_target_ms: float = Field(gt=0)
    measured_at: float  # unix time


class EndpointRecord(BaseModel):
    """One endpoint. `api_key_file` is a *reference* (an owner-only file); the key itself is never stored here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    id: str = Field(min_length=1)
    model: str  # catalog name
    served_model_name: str  # what the engine answers to in the OpenAI `model` field
    categories: tuple[str, ...] = ()
    deployment: str | None = None
    server: str | None = None  # ServerSpec.name in the deployment
    partition: str | None = None
    gpu_type: str | None = None
    engine: str  # "vllm" | "llama.cpp" | "external"
    host: str
    port: int = Field(ge=0, le=65535)
    base_url: str  # ends in /v1
    job_id: str | None = None  # SLURM job id (or local executor id); None for `registry add` entries
    array_task_id: int | None = None
    node: str | None = None
    pid: int | None = None
    started_at: float  # unix time
    heartbeat_at: float
    state: EndpointState = EndpointState.STARTING
    plan: PlanSummary = PlanSummary()
    api_key_file: str | None = None
    external: bool = False  # added by `registry add`: never reaped by SLURM state
    last_error: str | None = None
    capacity: MeasuredCapacity | None = None  # set by `grace-hpc bench`; None until measured
