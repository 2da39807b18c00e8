"""`grace-hpc plan` as scripts call it: a real subprocess, JSON on stdout, one-line errors on stderr."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from grace_hpc.config.loader import PROJECT_ROOT
from tests.support.cli import grace, grace_json

CONTRACT_KEYS = {
    "fits", "engine", "dtype", "quantization", "tensor_parallel_size", "max_model_len", "gpu_memory_utilization",
    "weights_gib_per_gpu", "activation_gib_per_gpu", "overhead_gib_per_gpu", "kv_cache_gib_per_gpu",
    "kv_cache_tokens", "max_concurrency", "argv", "reasons",
}


def test_plan_model_json_follows_the_contract() -> None:
    data = grace_json(PROJECT_ROOT, "plan", "--model", "gemma-2-9b-it", "--gpu", "T4", "--num-gpus", "1")
    assert CONTRACT_KEYS <= set(data)
    # gemma-2 on a T4: no bf16, no float16 in vLLM, AWQ needs float16 -> GGUF in llama.cpp
    assert data["fits"] and data["engine"] == "llama.cpp" and data["argv"][0] == "llama-server"
    assert any("refuses float16" in r for r in data["reasons"])


def test_plan_by_hf_id_with_pins() -> None:
    data = grace_json(PROJECT_ROOT, "plan", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "A100-40GB",
                      "--tensor-parallel-size", "2", "--max-model-len", "32768", "--quantization", "none")
    assert (data["tensor_parallel_size"], data["max_model_len"], data["quantization"]) == (2, 32768, None)


def test_impossible_pin_is_one_line_on_stderr_and_exit_1() -> None:
    proc = grace(PROJECT_ROOT, "plan", "--model", "llama-3.1-8b-instruct", "--gpu", "T4", "--dtype", "bfloat16")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "bfloat16 is impossible on T4" in proc.stderr


def test_unknown_gpu_names_the_valid_ones() -> None:
    proc = grace(PROJECT_ROOT, "plan", "--model", "llama-3.1-8b-instruct", "--gpu", "V100")
    assert proc.returncode == 1 and "valid GPUs: B200, H200" in proc.stderr


def test_plan_deployment_prints_one_row_per_server(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    (configs / "deployments").mkdir(parents=True)
    for name in ("cluster.yaml", "models.yaml"):
        shutil.copy(PROJECT_ROOT / "configs" / name, configs / name)
    deployment = {"name": "zoo", "servers": [
        {"name": "zoo-h100", "partition": "h100", "models": ["qwen2.5-coder-7b-instruct", "biomistral-7b"],
         "max_model_len": 8192},
        {"name": "intent-t4", "partition": "t4", "models": ["llama-3.2-3b-instruct"]},
        {"name": "big", "partition": "t4", "models": ["gpt-oss-120b"]},
    ]}
    (configs / "deployments" / "zoo.yaml").write_text(yaml.safe_dump(deployment))
    proc = grace(tmp_path, "plan", "--deployment", "zoo", "--json")
    rows = json.loads(proc.stdout)
    assert proc.returncode == 2  # one server does not fit
    assert [(r["server"], r["fits"]) for r in rows] == [("zoo-h100", True), ("intent-t4", True), ("big", False)]
    table = grace(tmp_path, "plan", "--deployment", "zoo")
    assert table.returncode == 2 and "zoo-h100" in table.stdout and "2/3 servers fit" in table.stdout


def test_exit_codes_say_fits_does_not_fit_or_bad_input() -> None:
    # issue 12: 0 a plan was found, 2 nothing fits (the --json document still says why), 1 bad input
    assert grace(PROJECT_ROOT, "plan", "--model", "llama-3.2-1b-instruct", "--gpu", "L4").returncode == 0
    proc = grace(PROJECT_ROOT, "plan", "--model", "gpt-oss-120b", "--gpu", "T4", "--json")
    assert proc.returncode == 2
    data = json.loads(proc.stdout)
    assert data["fits"] is False and any(r.startswith("what would fit") for r in data["reasons"])
    assert grace(PROJECT_ROOT, "plan", "--model", "gpt-oss-120b", "--gpu", "T4", "--vllm-version", "0.5").returncode == 1


def test_an_impossible_quantization_pin_is_exit_1_not_a_plan() -> None:
    # held-out (issue 12 #9): `--quantization fp8` on a T4 before 0.19 printed TP 8, --max-num-seqs 1, exit 0
    proc = grace(PROJECT_ROOT, "plan", "--model", "llama-3.1-8b-instruct", "--gpu", "T4", "--quantization", "fp8",
                 "--vllm-version", "0.11.2")
    assert proc.returncode == 1 and proc.stdout == "" and "vLLM 0.11 needs sm80+ for fp8" in proc.stderr


def test_gpu_count_defaults_to_the_cluster_s_nodes() -> None:
    # held-out (issue 12 #9): a plan for 4 x T4 was offered although cluster.yaml's T4 nodes have 2
    data = json.loads(grace(PROJECT_ROOT, "plan", "--model", "llama-3-70b-instruct", "--gpu", "T4", "--json").stdout)
    assert data["tensor_parallel_size"] <= 2 and "2 x T4" in data["reasons"][0]


def test_vllm_version_comes_from_cluster_yaml_unless_given(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copy(PROJECT_ROOT / "configs" / "models.yaml", configs / "models.yaml")
    cluster = yaml.safe_load((PROJECT_ROOT / "configs" / "cluster.yaml").read_text())
    cluster["engines"] = {"vllm_version": "0.11.2"}
    (configs / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    args = ("plan", "--model", "gemma-2-2b-it", "--gpu", "T4")
    assert grace_json(tmp_path, *args)["engine"] == "llama.cpp"  # 0.11: FlexAttention refuses the soft-cap
    newer = grace_json(tmp_path, *args, "--vllm-version", "0.19")
    assert (newer["engine"], newer["vllm_version"], newer["dtype"]) == ("vllm", "0.19", "float32")


def test_every_server_of_the_grace_deployment_says_why() -> None:
    # issue 12: the "why" column was empty for plans that fit (`plan --deployment grace`, L4 TP 2)
    for server in grace_json(PROJECT_ROOT, "plan", "--deployment", "grace"):
        assert server["reasons"], server["server"]
        for plan in server["plans"]:
            assert any(f"TP {plan['tensor_parallel_size']}" in r for r in plan["reasons"]) or plan["engine"] != "vllm"
