"""Bad configuration gets one line that names the file, the key path, the bad value and what is valid."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grace_hpc.config.catalog import Catalog
from grace_hpc.config.cluster import Cluster
from grace_hpc.config.deployment import Deployment
from grace_hpc.config.loader import load_yaml_model
from grace_hpc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

GOOD_MODEL = """
  - name: toy
    hf_id: org/toy
    license: mit
    context_length: 4096
    source: https://example.invalid/config.json
    architecture:
      model_type: llama
      num_hidden_layers: 2
      hidden_size: 64
      intermediate_size: 128
      num_attention_heads: 32
      num_key_value_heads: {kv}
      head_dim: 2
      vocab_size: 100
      max_position_embeddings: 4096
      tie_word_embeddings: false
      torch_dtype: bfloat16
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_kv_heads_that_do_not_divide_attention_heads_are_named_with_file_key_and_values(tmp_path):
    path = write(tmp_path, "models.yaml", "models:" + GOOD_MODEL.format(kv=8) + GOOD_MODEL.format(kv=7)
                 .replace("name: toy", "name: toy2"))
    with pytest.raises(ConfigError) as err:
        load_yaml_model(path, Catalog)
    assert str(err.value) == (
        f"{path}: models[1].architecture (entry 'toy2'): num_key_value_heads must divide num_attention_heads "
        "(got 7 for 32)"
    )


def test_a_misspelt_key_is_named_with_the_key_it_probably_means(tmp_path):
    path = write(tmp_path, "cluster.yaml", "partitions:\n  - name: t4\n    gpu: T4\n    gpu_per_node: 4\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_model(path, Cluster)
    # not "gpus_per_node: Field required": the typo explains the missing key
    assert str(err.value) == (f"{path}: partitions[0] (entry 't4'): unknown key 'gpu_per_node' "
                              "(did you mean 'gpus_per_node'?)")


def test_every_problem_of_a_file_is_listed_in_one_line(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\nservers:\n  - name: a\n    partiton: t4\n    models: [m]\n"
                 "    replicas: 0\n  - {name: b, partition: t4, models: [m], wibble: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_model(path, Deployment)
    message = str(err.value)
    assert "\n" not in message
    problems = message.removeprefix(f"{path}: ").split("; ")
    assert problems[0] == "servers[0] (entry 'a'): unknown key 'partiton' (did you mean 'partition'?)"
    assert problems[1].startswith(
        "servers[1] (entry 'b'): unknown key 'wibble' (known keys: allow_cpu_offload, categories, ")
    assert problems[2:] == ["servers[0].replicas (entry 'a'): a fixed replica count must be at least 1 (got 0): "
                            "`replicas: {min: 0, max: N}` scales to zero when idle"]


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "cluster.yaml", "partitions:\n  - name: [t4\n")
    with pytest.raises(ConfigError, match=r"cluster\.yaml: line \d+, column \d+: not valid YAML"):
        load_yaml_model(path, Cluster)


def test_cli_prints_one_line_and_exits_1_on_a_malformed_config(tmp_path):
    conf = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", conf)
    (conf / "models.yaml").write_text("models:" + GOOD_MODEL.format(kv=7))
    proc = subprocess.run([sys.executable, "-m", "grace_hpc", "models", "--config-dir", str(conf)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("grace-hpc models: error: ") and "got 7 for 32" in lines[0]


def test_unknown_deployment_lists_the_known_ones(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "grace_hpc", "launch", "--deployment", "nope", "--dry-run"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "deployment 'nope' not found; known deployments:" in proc.stderr and "local" in proc.stderr
