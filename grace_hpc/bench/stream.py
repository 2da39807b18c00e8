"""Pure: one line of an OpenAI server-sent-event stream -> what it says (generated text, usage, an error, the end).

Chat chunks carry text in `choices[0].delta.content`, completion chunks in `choices[0].text`; the last chunk before
`[DONE]` carries `usage` when the request asked for `stream_options.include_usage`. A chunk whose text is empty (a
role-only first chunk, a usage chunk) is not a token."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Chunk:
    text: str = ""  # generated text in this chunk; "" = no token
    completion_tokens: int | None = None  # from a usage chunk
    prompt_tokens: int | None = None
    error: str | None = None  # an error object sent inside the stream (e.g. the router's `stream_interrupted`)


@dataclass(frozen=True)
class Done:
    """The `data: [DONE]` terminator."""


DONE = Done()


def parse_line(line: bytes) -> Chunk | Done | None:
    """None for blank lines, comments, `event:` lines and anything that is not a JSON data line."""
    text = line.strip()
    if not text.startswith(b"data:"):
        return None
    payload = text[5:].strip()
    if payload == b"[DONE]":
        return DONE
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Chunk(error=f"unparseable stream line: {payload[:120]!r}")
    if not isinstance(data, dict):
        return None
    if "error" in data:
        err = data["error"]
        return Chunk(error=str(err.get("message", err)) if isinstance(err, dict) else str(err))
    usage = data.get("usage") or {}
    return Chunk(text=_choice_text(data.get("choices")), completion_tokens=usage.get("completion_tokens"),
                 prompt_tokens=usage.get("prompt_tokens"))


def _choice_text(choices: Any) -> str:
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    first = choices[0]
    delta = first.get("delta")
    value = delta.get("content") if isinstance(delta, dict) else first.get("text")
    return value if isinstance(value, str) else ""
