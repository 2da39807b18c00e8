"""`grace-hpc plan`: what a model needs on a GPU (memory per GPU, precision, the engine command), or a whole
deployment's servers on their partitions.

Exit codes: 0 a plan was found (for a deployment: every server fits), 2 nothing fits (the output, table or
`--json`, says why and what would), 1 bad input (one line, from the GraceError path)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from grace_hpc.cli.common import add_common, config_dir, console, print_json
from grace_hpc.config.catalog import ModelSpec
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import ConfigError, PlanError
from grace_hpc.planner import GPUS, Plan, PlanRequest, ServerPlan, get_gpu, plan_model, plan_server
from grace_hpc.planner.importers import spec_from_folder
from grace_hpc.vllm_version import VllmVersion

#: GPUs a node can hold when --num-gpus is not given and cluster.yaml has no partition of that GPU.
DEFAULT_GPUS_PER_NODE = 8
EXIT_DOES_NOT_FIT = 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="plan a model on a GPU (memory, precision, vLLM/llama.cpp command) or a whole deployment",
        description="Options that are given are pinned; the rest are chosen.",
    )
    add_common(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="catalog name, Hugging Face id, or a local model folder")
    what.add_argument("--deployment", help="deployment name or YAML path: plan every server on its partition")
    p.add_argument("--gpu", help=f"GPU: {', '.join(GPUS)} (or CPU)")
    p.add_argument("--num-gpus", type=int, help="GPUs available (default: the GPUs per node of cluster.yaml's "
                   f"partitions with that GPU, else up to {DEFAULT_GPUS_PER_NODE}; the smallest that fits)")
    p.add_argument("--vllm-version", help="vLLM release the jobs run: "
                   f"{', '.join(v.value for v in VllmVersion)} (or e.g. 0.19.1; default: cluster.yaml "
                   "engines.vllm_version, else the newest)")
    p.add_argument("--allow-cpu-offload", action="store_true",
                   help="let the planner choose --cpu-offload-gb when nothing else fits (slow; never by default; "
                   "a deployment's servers set allow_cpu_offload in its YAML)")
    p.add_argument("--tensor-parallel-size", type=int)
    p.add_argument("--dtype", help="auto, bfloat16, float16, float32")
    p.add_argument("--quantization", help="none, fp8, awq, gptq, bitsandbytes, mxfp4, compressed-tensors, gguf")
    p.add_argument("--kv-cache-dtype", help="auto, fp8, fp8_e4m3, fp8_e5m2")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--gpu-memory-utilization", type=float)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--cpu-offload-gb", type=float, help="pinned GiB of weights per GPU in host RAM (0: none)")
    p.add_argument("--engine", choices=("vllm", "llama.cpp"))
    p.add_argument("--min-concurrency", type=int, default=1, help="requests of max-model-len served at once")
    p.set_defaults(handler=run)


def resolve_model(name: str, configs: ConfigDir) -> ModelSpec:
    """A catalog entry (by name or HF id), or an entry imported from a local Hugging Face folder."""
    folder = Path(name)
    if (folder / "config.json").is_file():
        return spec_from_folder(folder)
    catalog = configs.catalog()
    try:
        return catalog.get(name)
    except KeyError:
        raise PlanError(catalog.unknown_model(name, str(configs.root / "models.yaml"))
                        + "; nor is it a folder with config.json") from None


def run(args: argparse.Namespace) -> int:
    configs = config_dir(args)
    if args.deployment:
        return _run_deployment(args, configs)
    if not args.gpu:
        raise ConfigError(f"plan --model needs --gpu: one of {', '.join(GPUS)}")
    spec = resolve_model(args.model, configs)
    gpu = get_gpu(args.gpu)
    request = PlanRequest(
        dtype=args.dtype, quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
        tensor_parallel_size=args.tensor_parallel_size, num_gpus=args.num_gpus, max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs,
        cpu_offload_gb=args.cpu_offload_gb, engine=args.engine, min_concurrency=args.min_concurrency,
        vllm_version=_version(args, configs), allow_cpu_offload=args.allow_cpu_offload,
    )
    gpus = args.num_gpus or args.tensor_parallel_size or _gpus_per_node(gpu.name, configs)
    plan = plan_model(spec, gpu, gpus, request)
    if args.json:
        print_json(plan.to_json())
    else:
        _print_plan(plan)
    return 0 if plan.fits else EXIT_DOES_NOT_FIT


def _version(args: argparse.Namespace, configs: ConfigDir) -> VllmVersion:
    """--vllm-version, else cluster.yaml's engines.vllm_version (its default is the newest supported)."""
    if args.vllm_version:
        return VllmVersion.parse(args.vllm_version)
    return configs.cluster().engines.vllm_version


def _gpus_per_node(gpu: str, configs: ConfigDir) -> int:
    """GPUs a node of this type has in cluster.yaml (the largest such partition), so no plan asks for 4 x T4
    where nodes have 2; DEFAULT_GPUS_PER_NODE for a GPU the cluster does not have."""
    counts = [p.gpus_per_node for p in configs.cluster().partitions if p.gpu.lower() == gpu.lower()]
    return max(counts, default=DEFAULT_GPUS_PER_NODE)


def _run_deployment(args: argparse.Namespace, configs: ConfigDir) -> int:
    if args.allow_cpu_offload:
        # a flag here would plan what `launch` (which reads only the YAML) does not run
        raise ConfigError(f"--allow-cpu-offload plans one --model; for deployment {args.deployment!r} set "
                          "`allow_cpu_offload: true` on the servers that may offload, in the deployment's YAML")
    cluster, catalog = configs.cluster(), configs.catalog()
    deployment = configs.deployment(args.deployment)
    version = _version(args, configs)
    plans: list[ServerPlan] = []
    for server in deployment.servers:
        plans.append(plan_server(server, cluster.partition_of(server, deployment.name), catalog, version))
    if args.json:
        print_json([p.to_json() for p in plans])
    else:
        _print_servers(deployment.name, plans)
    return 0 if all(p.fits for p in plans) else EXIT_DOES_NOT_FIT


def _print_plan(plan: Plan) -> None:
    from rich.table import Table

    version = f", vLLM {plan.vllm_version}" if plan.vllm_version else ""
    table = Table(title=f"{plan.model} on {plan.gpu}{version}: {'fits' if plan.fits else 'does NOT fit'}",
                  show_header=False)
    data = plan.to_json()
    for key in ("engine", "weights_ref", "dtype", "quantization", "kv_cache_dtype", "tensor_parallel_size",
                "max_model_len", "gpu_memory_utilization", "max_num_seqs", "cpu_offload_gb", "weights_gib_per_gpu",
                "activation_gib_per_gpu", "overhead_gib_per_gpu", "kv_cache_gib_per_gpu", "kv_cache_tokens",
                "max_concurrency"):
        table.add_row(key, str(data[key]))
    table.add_row("command", shlex.join(data["argv"]))
    for reason in plan.reasons:
        table.add_row("why", reason)
    console().print(table)


def _print_servers(name: str, plans: list[ServerPlan]) -> None:
    from rich.table import Table

    table = Table(title=f"deployment {name}: {sum(p.fits for p in plans)}/{len(plans)} servers fit")
    for col in ("server", "partition", "GPUs", "fits", "models", "precision", "TP", "ctx", "util",
                "weights GiB", "KV GiB", "KV tokens", "conc.", "why"):
        table.add_column(col, overflow="fold")  # names are copied into commands: wrapped, never cut with "…"
    for sp in plans:
        p = sp.plans
        table.add_row(
            sp.server, sp.partition, f"{sp.num_gpus} x {sp.gpu}", "yes" if sp.fits else "NO",
            "\n".join(x.model for x in p),
            "\n".join(f"{x.engine} {x.dtype} {x.quantization or ''}".strip() for x in p),
            "\n".join(str(x.tensor_parallel_size) for x in p), "\n".join(str(x.max_model_len) for x in p),
            "\n".join(f"{x.gpu_memory_utilization:g}" for x in p), "\n".join(f"{x.weights_gib_per_gpu:.1f}" for x in p),
            "\n".join(f"{x.kv_cache_gib_per_gpu:.1f}" for x in p), "\n".join(str(x.kv_cache_tokens) for x in p),
            "\n".join(f"{x.max_concurrency:g}" for x in p), "\n".join(sp.reasons),
        )
    console().print(table)
