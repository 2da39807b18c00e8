"""Catalog entries from what users have: a local Hugging Face model folder, or text pasted from a model page.

Parsing is pure (`architecture_from_config`, `parse_model_page`); `spec_from_folder`, `spec_from_gguf`,
`cached_config_folder` and `count_safetensors_parameters` are the only functions that read files. Nothing here
touches the network: pasted text is only matched against patterns, never followed.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from grace_hpc.config.catalog import MLA, Architecture, ModelSpec, MoE, QuantMethod
from grace_hpc.errors import ConfigError

__all__ = [
    "architecture_from_config",
    "native_quantization",
    "count_safetensors_parameters",
    "spec_from_folder",
    "spec_from_gguf",
    "cached_config_folder",
    "PastedModel",
    "parse_model_page",
    "ARCHITECTURE_FIELDS",
]

# safetensors dtype -> bytes per element (https://github.com/huggingface/safetensors format spec)
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}


def _moe(cfg: dict[str, Any]) -> MoE | None:
    experts = cfg.get("num_local_experts") or cfg.get("n_routed_experts") or cfg.get("num_experts")
    if not experts:
        return None
    return MoE(
        num_experts=experts,
        experts_per_token=cfg.get("num_experts_per_tok") or cfg.get("experts_per_token") or 2,
        expert_intermediate_size=cfg.get("moe_intermediate_size") or cfg["intermediate_size"],
        num_shared_experts=cfg.get("n_shared_experts") or 0,
        first_dense_layers=cfg.get("first_k_dense_replace") or 0,
        moe_layer_freq=cfg.get("moe_layer_freq") or cfg.get("decoder_sparse_step") or 1,
    )


def architecture_from_config(cfg: dict[str, Any], num_parameters: int | None = None) -> Architecture:
    """An Architecture from a config.json mapping (multimodal configs: their `text_config`)."""
    try:
        return _architecture({**cfg, **cfg.get("text_config", {})}, num_parameters)
    except KeyError as exc:
        raise ConfigError(f"config.json lacks {exc.args[0]!r}, which the planner needs") from None
    except ValidationError as exc:
        raise ConfigError(f"config.json does not describe a supported decoder: {exc.errors()[0]['msg']}") from None


def _architecture(text: dict[str, Any], num_parameters: int | None) -> Architecture:
    heads = text["num_attention_heads"]
    mla = None
    if text.get("kv_lora_rank"):
        mla = MLA(
            kv_lora_rank=text["kv_lora_rank"], q_lora_rank=text.get("q_lora_rank"),
            qk_rope_head_dim=text["qk_rope_head_dim"], qk_nope_head_dim=text["qk_nope_head_dim"],
            v_head_dim=text["v_head_dim"],
        )
    window = text.get("sliding_window") if text.get("use_sliding_window", True) else None
    layer_types = text.get("layer_types") or []
    pattern = None
    if window and "full_attention" in layer_types:
        pattern = len(layer_types) // max(1, layer_types.count("full_attention"))
    elif window and text.get("model_type") == "gemma2":
        pattern = 2  # Gemma-2 alternates local (sliding) and global layers
    dtype = text.get("torch_dtype") or text.get("dtype") or "float32"
    return Architecture(
        model_type=text["model_type"], num_hidden_layers=text["num_hidden_layers"],
        hidden_size=text["hidden_size"], intermediate_size=text["intermediate_size"],
        num_attention_heads=heads, num_key_value_heads=text.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim") or text["hidden_size"] // heads, vocab_size=text["vocab_size"],
        max_position_embeddings=text.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        torch_dtype=dtype, attention_bias=bool(text.get("attention_bias") or text.get("model_type") == "qwen2"),
        sliding_window=window or None, sliding_window_pattern=pattern if window else None,
        moe=_moe(text), mla=mla, num_parameters=num_parameters,
    )


def native_quantization(cfg: dict[str, Any]) -> QuantMethod | None:
    """The checkpoint's own quantization (config.json quantization_config.quant_method), if vLLM knows it."""
    method = (cfg.get("quantization_config") or {}).get("quant_method")
    try:
        return QuantMethod(method) if method else None
    except ValueError:
        return None


def count_safetensors_parameters(folder: Path) -> int | None:
    """Exact parameter count from the safetensors headers (8-byte length + JSON of dtype/shape per tensor).

    Quantized tensors count by stored elements, so only unquantized checkpoints give a parameter count."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for dim in info["shape"]:
                n *= dim
            total += n
    return total


def local_name(path: Path) -> str:
    """A catalog name from a file or folder name: lower case, runs of other characters as one dash."""
    stem = path.name.removesuffix(".gguf") if path.is_file() else path.name
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "local-model"


def spec_from_folder(folder: Path) -> ModelSpec:
    """A catalog entry for a local Hugging Face folder (config.json + *.safetensors), served from that path."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{folder / 'config.json'}: cannot read ({exc})") from exc
    quant = native_quantization(cfg)
    params = None if quant else count_safetensors_parameters(folder)
    arch = architecture_from_config(cfg, params)
    return ModelSpec(
        name=local_name(folder.resolve()), hf_id=str(folder.resolve()), license="unknown",
        context_length=arch.max_position_embeddings, architecture=arch, native_quantization=quant,
        weights=str(folder.resolve()), source=f"{folder.resolve() / 'config.json'}",
    )


def cached_config_folder(hf_id: str, cache: Path) -> Path:
    """The snapshot folder holding `hf_id`'s config.json in a Hugging Face cache (HF_HOME or its hub/ folder).

    The hub lays a repo out as `models--ORG--NAME/snapshots/REVISION/`; `refs/main` names the revision to prefer."""
    repo_dirs = [root / f"models--{hf_id.replace('/', '--')}" for root in (cache / "hub", cache)]
    for repo in repo_dirs:
        ref = repo / "refs" / "main"
        preferred = [repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
        for snap in preferred + sorted((repo / "snapshots").glob("*")):
            if (snap / "config.json").is_file():
                return snap
    raise ConfigError(
        f"{hf_id}: no config.json in the Hugging Face cache (looked in {', '.join(str(r) for r in repo_dirs)}); "
        "download it there first (`huggingface-cli download ID config.json` with HF_HOME set to paths.hf_cache), "
        "or use --from-folder DIR"
    )


# GGUF general.file_type -> the dtype of its unquantized tensors (gguf-py LlamaFileType: 0 ALL_F32, 1 MOSTLY_F16,
# 32 MOSTLY_BF16); quantized files compute in float16 on GPUs, which llama.cpp dequantizes to.
_GGUF_FILE_DTYPE = {0: "float32", 1: "float16", 32: "bfloat16"}


def spec_from_gguf(path: Path) -> ModelSpec:
    """A catalog entry for a local .gguf file (served by llama.cpp), from the file's own metadata.

    Needs the `gguf` package (the `cpu` extra). Parameters: the tensors' element count; tied embeddings: no
    separate `output.weight` tensor."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ConfigError("reading a .gguf file needs the gguf package: pip install -e '.[cpu]'") from None
    try:
        reader = GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable GGUF file ({exc})") from exc

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = field("general.architecture")
    if not arch:
        raise ConfigError(f"{path}: the GGUF metadata names no general.architecture")
    tensors = {t.name for t in reader.tensors}
    cfg: dict[str, Any] = {
        "model_type": arch, "num_hidden_layers": field(f"{arch}.block_count"),
        "hidden_size": field(f"{arch}.embedding_length"), "intermediate_size": field(f"{arch}.feed_forward_length"),
        "num_attention_heads": field(f"{arch}.attention.head_count"),
        "num_key_value_heads": field(f"{arch}.attention.head_count_kv"),
        "head_dim": field(f"{arch}.attention.key_length"),
        "vocab_size": field(f"{arch}.vocab_size") or len(field("tokenizer.ggml.tokens") or ()),
        "max_position_embeddings": field(f"{arch}.context_length"),
        "tie_word_embeddings": "output.weight" not in tensors,
        "torch_dtype": _GGUF_FILE_DTYPE.get(field("general.file_type"), "float16"),
        "sliding_window": field(f"{arch}.attention.sliding_window"),
        "num_local_experts": field(f"{arch}.expert_count"), "num_experts_per_tok": field(f"{arch}.expert_used_count"),
        "moe_intermediate_size": field(f"{arch}.expert_feed_forward_length"),
    }
    architecture = architecture_from_config(
        {k: v for k, v in cfg.items() if v is not None}, sum(int(t.n_elements) for t in reader.tensors)
    )
    resolved = path.resolve()
    return ModelSpec(
        name=local_name(resolved), hf_id=str(resolved), license=str(field("general.license") or "unknown"),
        context_length=architecture.max_position_embeddings, architecture=architecture, weights=str(resolved),
        source=f"{resolved} (GGUF metadata)",
    )


#: Architecture numbers a page may state; without all of them (and the rest of config.json) an entry is incomplete.
ARCHITECTURE_FIELDS = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size",
                       "intermediate_size", "vocab_size")


@dataclass(frozen=True)
class PastedModel:
    """What text pasted from a model page tells (seed 003's parser, kept honest: what the page does not state is
    None, never estimated)."""

    model_id: str | None  # the page's repository
    base_model: str | None  # front matter base_model: what a quantized repo was made from
    license: str | None
    quantization: str | None  # awq, gptq, fp8, gguf, bitsandbytes (from the id first, then the text)
    gguf_type: str | None  # Q4_0, Q4_K_M, Q8_0 ... (the id's, else the file the page's download command names)
    gguf_file: str | None
    bits: int | None  # weight bits of a quantized repo, where stated (AWQ is 4-bit by definition)
    group_size: int | None
    params_billions: float | None  # stated ("Number of Parameters: 7.61B") or the id's plain size ("-7B-")
    context_length: int | None
    moe: bool  # the page says mixture of experts
    architecture: dict[str, int]  # what the page states of ARCHITECTURE_FIELDS


_ID = r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*"
_GGUF = re.compile(r"(?<![A-Za-z0-9])(IQ\d_[A-Z]+|Q\d_K_[SML]|Q\d_K|Q\d_\d|BF16|F16)(?![A-Za-z0-9])", re.IGNORECASE)
_ID_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)([BM])(?![\w])", re.IGNORECASE)
_QUANT_WORDS = (("awq", "awq"), ("gptq", "gptq"), ("fp8", "fp8"), ("bnb", "bitsandbytes"),
                ("bitsandbytes", "bitsandbytes"), ("gguf", "gguf"))
_FACTS = {  # "Number of Layers: 28" and the like (Qwen, Llama, Gemma cards); group 1 is the number
    "num_hidden_layers": r"(?:number of (?:hidden )?layers|num_hidden_layers)\W{0,4}:?\s*(\d+)",
    "hidden_size": r"(?:hidden size|hidden_size|model dimension|d_model)\W{0,4}:?\s*(\d+)",
    "intermediate_size": r"(?:intermediate size|intermediate_size|ffn hidden size)\W{0,4}:?\s*(\d+)",
    "head_dim": r"(?:head dim(?:ension)?|head_dim)\W{0,4}:?\s*(\d+)",
    "vocab_size": r"(?:vocab(?:ulary)? size|vocab_size)\W{0,4}:?\s*([\d,]+)",
}
_HEADS = re.compile(r"attention heads[^:\n]*:\s*(\d+)\s*for q\w*\s*and\s*(\d+)\s*for kv", re.IGNORECASE)
_PARAMS = re.compile(r"number of parameters\W{0,4}:?\s*(\d+(?:\.\d+)?)\s*([BM])\b", re.IGNORECASE)
_CONTEXT = re.compile(r"context length\W{0,4}:?\s*(?:full\s*)?([\d,]{3,})", re.IGNORECASE)


def _front_matter(text: str, key: str) -> str | None:
    match = re.search(rf"^{key}:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", text, re.MULTILINE)
    return match.group(1) if match else None


def _model_id(text: str) -> str | None:
    """`vllm serve ID`, else the page title (a line starting with ORG/NAME, as a browser copy of the page does),
    else the id most often named in quotes or huggingface.co links."""
    serve = re.search(rf"vllm serve\s+[\"']?({_ID})", text)
    if serve:
        return serve.group(1)
    titles = re.findall(rf"^\s*({_ID})(?:\s|$)", text, re.MULTILINE)
    title = next((t for t in titles if "." not in t.split("/")[0]), None)  # not a domain (qwenlm.github.io/...)
    if title:
        return title
    named = re.findall(rf"(?:huggingface\.co/|[\"'`])({_ID})", text)
    named = [n.rstrip(".") for n in named if "." not in n.split("/")[0]]
    return max(dict.fromkeys(named), key=named.count) if named else None


def _quantization(model_id: str) -> str | None:
    """The id's format word (`-AWQ`, `-GGUF`, `-FP8`, `-bnb-4bit`): pages of unquantized repos often mention
    formats too ("GGUF versions are available"), so the text does not decide."""
    words = re.split(r"[-_.]", model_id.split("/")[-1].lower())
    return next((q for word, q in _QUANT_WORDS if word in words), None)


def _gguf_file(model_id: str, text: str) -> tuple[str | None, str | None]:
    """(type, file): the id's type, else the .gguf file the page's download command names."""
    in_id = _GGUF.search(model_id.split("/")[-1])
    download = re.search(rf"download\s+{re.escape(model_id)}\s+([\w.-]+\.gguf)", text, re.IGNORECASE)
    file = download.group(1) if download else None
    source = in_id or (_GGUF.search(file) if file else None)
    return (source.group(1).upper() if source else None), file


def parse_model_page(text: str, model_id: str | None = None) -> PastedModel:
    """Whatever pasted model-page text states: id, base model, license, quantization, sizes, architecture numbers.
    `model_id`: the repository, when the user names it (the quantization and size in its name then count)."""
    model_id = model_id or _model_id(text)
    quant = _quantization(model_id) if model_id else None
    gguf_type, gguf_file = _gguf_file(model_id, text) if quant == "gguf" and model_id else (None, None)
    bits = 4 if quant == "awq" else None  # vLLM's AWQ runs 4-bit weights only (AWQConfig: "Currently, only 4-bit")
    if quant == "gptq":
        stated = re.search(r"\b(\d)[- ]?bit\b", text, re.IGNORECASE)
        bits = int(stated.group(1)) if stated else None
    # "group size: 128", "group_size=128", or TheBloke's "| Bits | GS |" table row "| 4 | 128 |"
    group = re.search(r"group[ _]size\s*[:=]\s*(\d+)|\|\s*[2-8]\s*\|\s*(\d+)\s*\|", text, re.IGNORECASE)
    arch: dict[str, int] = {}
    for key, pattern in _FACTS.items():
        found = re.search(pattern, text, re.IGNORECASE)
        if found:
            arch[key] = int(found.group(1).replace(",", ""))
    heads = _HEADS.search(text)
    if heads:
        arch["num_attention_heads"], arch["num_key_value_heads"] = int(heads.group(1)), int(heads.group(2))
    stated = _PARAMS.search(text)
    in_id = _ID_SIZE.search((model_id or "").split("/")[-1].replace("_", "-"))
    size = stated or in_id
    params = float(size.group(1)) / (1000 if size.group(2).upper() == "M" else 1) if size else None
    context = _CONTEXT.search(text)
    return PastedModel(
        model_id=model_id, base_model=_front_matter(text, "base_model"), license=_front_matter(text, "license"),
        quantization=quant, gguf_type=gguf_type, gguf_file=gguf_file, bits=bits,
        group_size=int(next(g for g in group.groups() if g)) if group and quant in ("awq", "gptq") else None,
        params_billions=params, context_length=int(context.group(1).replace(",", "")) if context else None,
        moe=bool(re.search(r"mixture[- ]of[- ]experts|\bMoE\b", text, re.IGNORECASE)), architecture=arch,
    )
