"""What a server job needs to know, fixed at submission and pickled into the job (or rebuilt by `serve`)."""

from __future__ import annotations

from dataclasses import dataclass

from grace_hpc.config.catalog import Task


@dataclass(frozen=True)
class ModelLaunch:
    """One engine inside a server job."""

    model: str  # catalog name
    served_model_name: str
    categories: tuple[str, ...]
    task: Task
    argv_template: tuple[str, ...]  # engine argv with {host} and {port} placeholders; no key
    key_env: str  # VLLM_API_KEY or LLAMA_API_KEY: how the engine receives its key
    engine: str
    dtype: str | None
    quantization: str | None
    tensor_parallel_size: int
    max_model_len: int | None
    max_num_seqs: int | None
    vllm_version: str | None = None  # the vLLM series the plan targeted (grace_hpc/vllm_version.py); None: llama.cpp

    def argv(self, *, host: str, port: int) -> list[str]:
        """The engine argv with its {host} and {port} placeholders filled in, and nothing else touched: an argument
        may be JSON (`--hf-overrides '{"rope_scaling": ...}'`), which `str.format` would take for placeholders."""
        return [a.replace("{host}", host).replace("{port}", str(port)) for a in self.argv_template]


@dataclass(frozen=True)
class ServeSpec:
    deployment: str
    server: str
    partition: str
    gpu_type: str
    models: tuple[ModelLaunch, ...]
    registry_path: str
    lock_mode: str
    log_dir: str  # logs/<deployment>
    keys_dir: str
    heartbeat_s: float
    bind_host: str  # 0.0.0.0 on a cluster node, 127.0.0.1 for the local executor
    advertise_host: str | None  # None: this node's hostname
    ready_timeout_s: float = 1800.0
    unresponsive_after_s: float = 15.0  # a READY engine silent on /health this long is taken out of routing
    restart_unresponsive_after_s: float = 300.0  # ... and this long: stopped and restarted
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the engines (HF_HOME ...)
    # submitted by the fleet controller, which hands the replica over to a successor before its time limit: the
    # job ignores SLURM's time-limit warning (USR2) and does not requeue itself (see supervisor.py)
    handover: bool = False
