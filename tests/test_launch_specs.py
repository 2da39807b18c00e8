"""From a planned server to the engine command its job runs: the cluster decides how vLLM is started."""

from pathlib import Path

from grace_hpc.config.catalog import Catalog
from grace_hpc.config.cluster import Cluster
from grace_hpc.config.deployment import Deployment
from grace_hpc.config.loader import ConfigDir
from grace_hpc.launch.specs import model_launches, serve_spec, vllm_command
from grace_hpc.planner import plan_server

CATALOG = Catalog.model_validate({"models": [{
    "name": "tiny-hf", "hf_id": "grace-hpc/tiny-random-llama-hf", "license": "apache-2.0", "context_length": 2048,
    "weights": "/models/tiny-hf", "source": "tests/support/tiny_hf.py",
    "architecture": {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1000,
                     "max_position_embeddings": 2048, "tie_word_embeddings": False, "torch_dtype": "float32"},
}]})
PARTITIONS = [{"name": "l4", "gpu": "L4", "gpus_per_node": 4}, {"name": "cpu", "gpu": "CPU", "gpus_per_node": 0,
                                                                  "mem_per_gpu_gb": 8}]
API_SERVER = (".venv-vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model")


def cluster(**engines) -> Cluster:
    return Cluster.model_validate({"partitions": PARTITIONS, "engines": engines, "paths": {"hf_cache": "/hf"}})


def deployment(partition: str) -> Deployment:
    return Deployment.model_validate({"name": "d", "servers": [
        {"name": "s", "partition": partition, "models": ["tiny-hf"], "engine": "vllm", "extra_args": ["--seed", "1"]},
    ]})


def argv(c: Cluster, partition: str) -> tuple[str, ...]:
    server = deployment(partition).servers[0]
    [launch] = model_launches(server, plan_server(server, c.partition(partition), CATALOG), CATALOG, c)
    return launch.argv_template


def test_vllm_command_replaces_the_leading_vllm_serve_and_keeps_the_rest():
    rendered = ["vllm", "serve", "/w", "--port", "{port}"]
    assert vllm_command(rendered, ("vllm", "serve")) == rendered
    assert vllm_command(rendered, API_SERVER) == [*API_SERVER, "/w", "--port", "{port}"]


def test_by_default_jobs_run_vllm_serve_after_the_cluster_prefix():
    got = argv(cluster(vllm_prefix=["apptainer", "exec", "vllm.sif"]), "l4")
    assert got[:6] == ("apptainer", "exec", "vllm.sif", "vllm", "serve", "/models/tiny-hf")
    assert got[-2:] == ("--seed", "1")  # the server's extra_args still come last


def test_a_cluster_whose_vllm_script_does_not_run_starts_the_api_server_module_with_the_weights_after_model():
    got = argv(cluster(vllm_command=list(API_SERVER)), "cpu")
    assert got[:6] == (*API_SERVER, "/models/tiny-hf", "--host")
    assert "serve" not in got


def test_engine_environment_from_the_cluster_reaches_the_job_after_hf_home(tmp_path: Path):
    c = cluster(env={"HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": "/scratch/vllm"})
    d = deployment("cpu")
    server = d.servers[0]
    spec = serve_spec(ConfigDir(tmp_path / "configs"), c, CATALOG, d, server,
                      plan_server(server, c.partition("cpu"), CATALOG), registry_path=str(tmp_path / "r.json"),
                      local=True)
    assert spec.env == (("HF_HOME", "/hf"), ("HF_HUB_OFFLINE", "1"), ("VLLM_CACHE_ROOT", "/scratch/vllm"))


def test_jobs_read_the_hub_cache_offline_unless_the_cluster_says_otherwise(tmp_path: Path):
    d = deployment("cpu")
    for engines, offline in (({}, "1"), ({"env": {"HF_HUB_OFFLINE": "0"}}, "0")):
        c = cluster(**engines)
        server = d.servers[0]
        spec = serve_spec(ConfigDir(tmp_path / "configs"), c, CATALOG, d, server,
                          plan_server(server, c.partition("cpu"), CATALOG), registry_path="/r/registry.json",
                          local=True)
        assert dict(spec.env)["HF_HUB_OFFLINE"] == offline
