"""Pure: what the benchmark sends. Prompts come from a synthetic generator (a prompt length and an output length) or
from a JSONL dataset; each becomes an OpenAI request body of the official shape, streamed with usage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grace_hpc.errors import ConfigError

#: common one-token English words: a synthetic prompt of P words is about P tokens for BPE vocabularies
_WORDS = ("the of and to in is it that for on was with as he be at by this had not are but from or have an they "
          "which one you were her all she there would their we him been has when who will more no if out so said "
          "what up its about into than them can only other new some could time these two may then do first any my "
          "now such like our over man me even most made after also did many before must through back years where "
          "much your way well down should because each just those people how too little state good very make world "
          "still own see men work long get here between both life being under never day same another know while last "
          "might us great old year off come since against go came right used take three").split()


_LINE_SHAPE = ("each line is a JSON object with `prompt` (string) or `messages` (chat list) and optionally "
               "`output_tokens`")


class Api(str, Enum):
    CHAT = "chat"  # /v1/chat/completions
    COMPLETIONS = "completions"  # /v1/completions

    @property
    def path(self) -> str:
        return "/chat/completions" if self is Api.CHAT else "/completions"


class DatasetItem(BaseModel):
    """One line of a `--dataset` JSONL file: a `prompt` string or chat `messages`, and optionally its own
    `output_tokens` (else `--output-tokens`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    output_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> DatasetItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("needs exactly one of `prompt` (a string) or `messages` (a chat list)")
        return self


@dataclass(frozen=True)
class Workload:
    """What each request asks for. Synthetic when `dataset` is empty: `prompt_tokens` words, a different prefix
    per request so prefix caches cannot serve one request from another."""

    api: Api = Api.CHAT
    prompt_tokens: int = 128
    output_tokens: int = 64
    dataset: tuple[DatasetItem, ...] = ()
    ignore_eos: bool = True  # every request generates exactly output_tokens (vLLM and llama.cpp both honour it)
    stream: bool = True  # False: one JSON answer per request, timed end to end only (no TTFT, no TPOT)

    def describe(self) -> str:
        source = f"{len(self.dataset)} dataset prompts" if self.dataset else f"~{self.prompt_tokens} prompt tokens"
        return f"{self.api.value}, {source}, {self.output_tokens} output tokens" + ("" if self.stream else ", not streamed")


def synthetic_prompt(index: int, words: int) -> str:
    body = " ".join(_WORDS[(index * 7 + i * 13) % len(_WORDS)] for i in range(max(words - 1, 0)))
    return f"{index}: {body}"


def load_dataset(path: Path) -> tuple[DatasetItem, ...]:
    """A JSONL file of prompts; ConfigError names the file, the line and what a line must hold."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"--dataset {path}: cannot read ({exc.strerror})") from exc
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append(DatasetItem.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--dataset {path}: line {number}: not JSON ({exc.msg}); {_LINE_SHAPE}") from exc
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "the line"
            raise ConfigError(f"--dataset {path}: line {number}: {where}: {first['msg']}; {_LINE_SHAPE}") from exc
    if not items:
        raise ConfigError(f"--dataset {path}: no prompts (expected one JSON object per line)")
    return tuple(items)


def request_body(workload: Workload, model: str, index: int) -> dict[str, Any]:
    """The `index`-th request: streamed, greedy, with the usage chunk at the end."""
    item = workload.dataset[index % len(workload.dataset)] if workload.dataset else None
    text = synthetic_prompt(index, workload.prompt_tokens) if item is None else item.prompt
    body: dict[str, Any] = {"model": model}
    if workload.api is Api.CHAT:
        messages = list(item.messages) if item is not None and item.messages else [{"role": "user", "content": text}]
        body["messages"] = messages
    else:
        body["prompt"] = text if text is not None else "\n".join(str(m.get("content", "")) for m in item.messages or ())
    body.update({
        "max_tokens": item.output_tokens if item is not None and item.output_tokens else workload.output_tokens,
        "temperature": 0.0,
        "stream": workload.stream,
    })
    if workload.stream:
        body["stream_options"] = {"include_usage": True}
    if workload.ignore_eos:
        body["ignore_eos"] = True
    return body


def request_bodies(workload: Workload, model: str, start: int = 0) -> Iterator[dict[str, Any]]:
    index = start
    while True:
        yield request_body(workload, model, index)
        index += 1
