"""Catalog entries from a real local model folder and from pasted model-page text."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from grace_hpc.errors import ConfigError
from grace_hpc.planner import get_gpu, plan_model
from grace_hpc.planner.importers import count_safetensors_parameters, parse_model_page, spec_from_folder

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 1024,
    "max_position_embeddings": 2048, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A real safetensors file: 8-byte header length, JSON header, then the (zeroed) tensor bytes."""
    header, offset = {}, 0
    sizes = {"BF16": 2, "F32": 4}
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "Tiny Llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    write_safetensors(folder / "model-00001-of-00002.safetensors", {
        "model.embed_tokens.weight": ("BF16", [1024, 64]), "lm_head.weight": ("BF16", [1024, 64]),
    })
    write_safetensors(folder / "model-00002-of-00002.safetensors", {
        "model.layers.0.mlp.up_proj.weight": ("BF16", [128, 64]), "model.norm.weight": ("F32", [64]),
    })
    return folder


def test_safetensors_headers_give_the_exact_parameter_count(tiny_folder: Path) -> None:
    assert count_safetensors_parameters(tiny_folder) == 1024 * 64 * 2 + 128 * 64 + 64


def test_spec_from_folder_reads_config_and_serves_from_the_folder(tiny_folder: Path) -> None:
    spec = spec_from_folder(tiny_folder)
    assert spec.name == "tiny-llama" and spec.weights == str(tiny_folder.resolve())
    a = spec.architecture
    assert (a.num_hidden_layers, a.head_dim, a.num_key_value_heads, a.num_parameters) == (2, 16, 2, 139328)
    plan = plan_model(spec, get_gpu("L4"), 1)
    assert plan.fits and plan.to_json()["argv"][2] == str(tiny_folder.resolve())


def test_folder_without_a_required_key_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="lacks 'num_attention_heads'"):
        spec_from_folder(tmp_path)


def test_pasted_gguf_page() -> None:
    # seed 003's example: the page of google/gemma-3-12b-it-qat-q4_0-gguf
    page = 'Use this model\nvllm serve "google/gemma-3-12b-it-qat-q4_0-gguf"\nGemma 3 12B, quantized Q4_0 ...'
    got = parse_model_page(page)
    assert got.model_id == "google/gemma-3-12b-it-qat-q4_0-gguf"
    assert (got.quantization, got.gguf_type, got.params_billions) == ("gguf", "Q4_0", 12.0)


def test_pasted_awq_and_moe_sizes() -> None:
    got = parse_model_page("TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ\nModel size 8x7B params")
    # "8x7B" names the experts, not the parameters (Mixtral-8x7B has 46.7B, not 56B): no size is made up
    assert (got.quantization, got.params_billions) == ("awq", None)
    small = parse_model_page("HuggingFaceTB/SmolLM2-135M-Instruct  135M params")
    assert small.params_billions == pytest.approx(0.135) and small.quantization is None
