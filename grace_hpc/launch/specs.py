"""Pure: from a planned server to the ServeSpec its job runs (argv templates, paths, hosts)."""

from __future__ import annotations

from pathlib import Path

from grace_hpc.config.catalog import Catalog
from grace_hpc.config.cluster import Cluster
from grace_hpc.config.deployment import Deployment, Engine, ServerSpec
from grace_hpc.config.loader import ConfigDir
from grace_hpc.planner import API_KEY_ENV, ServerPlan, render_llamacpp_argv, render_vllm_argv
from grace_hpc.serve.resolve import SCORING_SERVER
from grace_hpc.serve.spec import ModelLaunch, ServeSpec


def vllm_command(rendered: list[str], command: tuple[str, ...]) -> list[str]:
    """`rendered` (`vllm serve WEIGHTS ...`) with its leading `vllm serve` replaced by the cluster's command."""
    return [*command, *rendered[2:]]


def model_launches(
    server: ServerSpec, plan: ServerPlan, catalog: Catalog, cluster: Cluster
) -> tuple[ModelLaunch, ...]:
    launches = []
    for p in plan.plans:
        spec = catalog.get(p.model)
        served = spec.name
        if p.engine == "vllm":
            rendered = render_vllm_argv(p, host="{host}", port="{port}", served_model_name=served)  # type: ignore[arg-type]
            argv = [*cluster.engines.vllm_prefix, *vllm_command(rendered, cluster.engines.vllm_command)]
        else:
            rendered = render_llamacpp_argv(p, host="{host}", port="{port}", served_model_name=served)  # type: ignore[arg-type]
            if server.engine is Engine.SCORING:  # the same flags, the exact-log-prob server (serve/resolve.py)
                rendered = [SCORING_SERVER, *rendered[1:]]
            argv = [*cluster.engines.llamacpp_prefix, *rendered]
        launches.append(
            ModelLaunch(
                model=spec.name, served_model_name=served, categories=server.categories, task=spec.task,
                argv_template=tuple(argv + list(server.extra_args)), key_env=API_KEY_ENV[p.engine], engine=p.engine,
                dtype=p.dtype, quantization=p.quantization, tensor_parallel_size=p.tensor_parallel_size,
                max_model_len=p.max_model_len, max_num_seqs=p.max_num_seqs, vllm_version=p.vllm_version,
            )
        )
    return tuple(launches)


def serve_spec(
    config: ConfigDir,
    cluster: Cluster,
    catalog: Catalog,
    deployment: Deployment,
    server: ServerSpec,
    plan: ServerPlan,
    *,
    registry_path: str,
    local: bool,
    handover: bool = False,
) -> ServeSpec:
    logs = config.resolve(cluster.paths.logs) / deployment.name
    # compute nodes have no internet: engines read the shared cache only (`launch` checked the weights are there);
    # a cluster whose nodes do reach the hub can say HF_HUB_OFFLINE: "0" in engines.env
    env = {"HF_HOME": str(config.resolve(cluster.paths.hf_cache))} if cluster.paths.hf_cache else {}
    env |= {"HF_HUB_OFFLINE": "1", **cluster.engines.env}
    return ServeSpec(
        deployment=deployment.name,
        server=server.name,
        partition=server.partition,
        gpu_type=cluster.partition(server.partition).gpu,
        models=model_launches(server, plan, catalog, cluster),
        registry_path=registry_path,
        lock_mode=cluster.lock_mode.value,
        log_dir=str(logs),
        keys_dir=str(Path(registry_path).parent / "keys"),
        heartbeat_s=cluster.heartbeat_s,
        bind_host="127.0.0.1" if local else "0.0.0.0",  # cluster nodes serve the login node
        advertise_host="127.0.0.1" if local else None,
        env=tuple(env.items()),
        handover=handover,
    )
