"""Typed model catalog (configs/models.yaml): what a model *is*, as its published config.json says.

The planner derives every byte it predicts from these numbers, so each entry cites its source.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from grace_hpc.errors import PlanError


class Frozen(BaseModel):
    """Base for every config model: immutable, and unknown keys are errors (catches typos)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def reject_duplicates(names: list[str], what: str) -> None:
    """ValueError naming every name that appears more than once (`what`: "model", "partition", ...)."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate {what} names {dupes}")


def unknown_name(what: str, name: str, known: Sequence[str], where: str, listed_by: str | None = None) -> str:
    """`unknown partition 't5' in cluster.yaml (did you mean 't4'?); known: ...`: the closest names first, and the
    whole list only when it is short (`listed_by`: the command that lists a long one)."""
    close = difflib.get_close_matches(name.lower(), list(known), n=3, cutoff=0.5)
    text = f"unknown {what} {name!r} in {where}"
    if close:
        text += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    if len(known) <= 8 or listed_by is None:
        return text + f"; known: {', '.join(known) or 'none'}"
    return text + f"; `{listed_by}` lists all {len(known)}"


class Task(str, Enum):
    GENERATE = "generate"  # decoder LLM served through /v1/completions and /v1/chat/completions
    EMBED = "embed"  # encoder served through /v1/embeddings
    CLASSIFY = "classify"


class MoE(Frozen):
    """Mixture-of-experts numbers. All experts are resident in memory; only `experts_per_token` run per token."""

    num_experts: int = Field(gt=0)  # routed experts per MoE layer
    experts_per_token: int = Field(gt=0)
    expert_intermediate_size: int = Field(gt=0)  # moe_intermediate_size (intermediate_size for gpt-oss/Mixtral)
    num_shared_experts: int = Field(default=0, ge=0)  # DeepSeek n_shared_experts
    first_dense_layers: int = Field(default=0, ge=0)  # DeepSeek first_k_dense_replace: leading layers with dense MLP
    moe_layer_freq: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _active_le_total(self) -> MoE:
        if self.experts_per_token > self.num_experts:
            raise ValueError(
                f"experts_per_token must be <= num_experts (got {self.experts_per_token} for {self.num_experts})"
            )
        return self


class MLA(Frozen):
    """DeepSeek multi-head latent attention: the KV cache holds one compressed latent per token and layer."""

    kv_lora_rank: int = Field(gt=0)
    q_lora_rank: int | None = Field(default=None, gt=0)  # None: q is a plain projection (DeepSeek-V2-Lite)
    qk_rope_head_dim: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)


class Architecture(Frozen):
    """The numbers from config.json that decide memory. Names follow Hugging Face's config keys."""

    model_type: str  # config.json model_type, e.g. llama, gemma2, gpt_oss, deepseek_v3, xlm-roberta
    num_hidden_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)  # dense MLP width
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)  # explicit in config.json or hidden_size // num_attention_heads
    vocab_size: int = Field(gt=0)
    max_position_embeddings: int = Field(gt=0)
    tie_word_embeddings: bool
    torch_dtype: Literal["bfloat16", "float16", "float32"]
    mlp_gated: bool = True  # SwiGLU/GeGLU (3 matrices) vs classic 2-matrix MLP (BERT family)
    attention_bias: bool = False  # q/k/v biases (Qwen2, gpt-oss)
    sliding_window: int | None = Field(default=None, gt=0)
    # Which layers use the sliding window: None = all layers (when sliding_window is set);
    # N = every N-th layer is global and the others slide (Gemma-2 and gpt-oss: 2, Gemma-3: 6).
    sliding_window_pattern: int | None = Field(default=None, ge=2)
    moe: MoE | None = None
    mla: MLA | None = None
    num_parameters: int | None = Field(default=None, gt=0)  # exact count from safetensors metadata, when known

    @model_validator(mode="after")
    def _heads_consistent(self) -> Architecture:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                "num_key_value_heads must divide num_attention_heads "
                f"(got {self.num_key_value_heads} for {self.num_attention_heads})"
            )
        if self.sliding_window_pattern is not None and self.sliding_window is None:
            raise ValueError("sliding_window_pattern is set but sliding_window is not")
        return self


class QuantMethod(str, Enum):
    FP8 = "fp8"
    AWQ = "awq"
    GPTQ = "gptq"
    BITSANDBYTES = "bitsandbytes"
    GGUF = "gguf"
    MXFP4 = "mxfp4"
    COMPRESSED_TENSORS = "compressed-tensors"


class QuantizedVariant(Frozen):
    """A published pre-quantized checkpoint of a model."""

    method: QuantMethod
    hf_id: str
    bits: int = Field(ge=2, le=32)  # 32: an unquantized F32 GGUF
    group_size: int | None = Field(default=None, gt=0)
    gguf_type: str | None = None  # Q4_0, Q4_K_M, Q8_0 ... for GGUF files
    file: str | None = None  # GGUF file name inside the repo (or a local path)


class ModelSpec(Frozen):
    """One catalog entry."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    hf_id: str
    license: str
    task: Task = Task.GENERATE
    context_length: int = Field(gt=0)  # what the model is trained/advertised for (may be < max_position_embeddings)
    architecture: Architecture
    native_quantization: QuantMethod | None = None  # weights ship quantized (gpt-oss: mxfp4 experts; DeepSeek-V3: fp8)
    trust_remote_code: bool = False
    variants: tuple[QuantizedVariant, ...] = ()
    weights: str | None = None  # local path (or pkg:DIST/FILE) overriding hf_id, for sites without a hub
    source: str  # where the numbers come from (config.json URL)


class IncompleteModel(Frozen):
    """An entry added from a model page that does not state the architecture numbers the planner needs.

    It holds what the page did state and names what it lacks; `plan` refuses it with that reason until
    `models add --from-folder DIR` or `--hf-id ID` (a config.json) completes it. No number here is estimated."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    hf_id: str
    license: str
    task: Task = Task.GENERATE
    missing: tuple[str, ...] = Field(min_length=1)  # config.json keys the page does not state
    stated: dict[str, int] = {}  # architecture numbers the page does state (num_hidden_layers, ...)
    context_length: int | None = Field(default=None, gt=0)
    params_billions: float | None = Field(default=None, gt=0)
    moe: bool = False
    variants: tuple[QuantizedVariant, ...] = ()
    source: str

    def reason(self) -> str:
        return (f"{self.name} is incomplete in models.yaml: its page does not state {', '.join(self.missing)}; "
                f"complete it with `grace-hpc models add --hf-id {self.hf_id} --name {self.name}` (config.json in "
                f"the shared Hugging Face cache) or `--from-folder DIR --name {self.name}`")


class Catalog(Frozen):
    """The whole model catalog, looked up by name or HF id. `incomplete` entries are listed, never planned."""

    models: tuple[ModelSpec, ...]
    incomplete: tuple[IncompleteModel, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> Catalog:
        reject_duplicates([m.name for m in self.models] + [m.name for m in self.incomplete], "model")
        return self

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def unknown_model(self, name: str, where: str) -> str:
        """Why `name` is not a model of this catalog (models.yaml at `where`), with the names it may mean."""
        known = [*self.names(), *(i.name for i in self.incomplete)]
        return unknown_name("model", name, known, where, listed_by="grace-hpc models")

    def get(self, name_or_id: str) -> ModelSpec:
        """The model called `name_or_id` (catalog name or HF id, case-insensitive); KeyError if absent, PlanError
        (saying what is missing) if it is an incomplete entry."""
        key = name_or_id.lower()
        for m in self.models:
            if key in (m.name, m.hf_id.lower()) or any(key == v.hf_id.lower() for v in m.variants):
                return m
        for i in self.incomplete:
            if key in (i.name, i.hf_id.lower()):
                raise PlanError(i.reason())
        raise KeyError(name_or_id)
