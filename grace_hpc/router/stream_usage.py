"""A streamed answer's real token counts: ask the upstream for them, read them while relaying, hide what was not asked.

Every upstream the router streams from sends one last usage-only chunk (`"choices": []` and `"usage"`, just before
`data: [DONE]`) when the request carries `stream_options: {"include_usage": true}`: the OpenAI API; vLLM (0.32:
`should_include_usage` in `vllm/entrypoints/serve/utils/api_utils.py`, the `final_usage_chunk` of
`entrypoints/openai/chat_completion/serving.py` and `completion/serving.py`; `--enable-force-include-usage` sends it
unasked); llama.cpp's server (checked on xllamacpp 2026.10: the chunk carries `usage` and llama.cpp's `timings`; its
`/v1/completions` stream puts `usage` on the last chunk with a choice, asked or not). So the router always asks
(`tapped`), and when the client did not, the relay drops that one chunk: the client sees the events it would have
seen (llama.cpp then sends its `timings` extension on the dropped chunk instead of the last one).

The relay stays cheap: a read is scanned (in C) for the bytes `"usage"`, which in an SSE JSON event can only be a
key (inside a JSON string the quotes are escaped); only the event that holds it is parsed, once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

_USAGE = b'"usage"'
_ENDS = (b"\n\n", b"\r\n\r\n")  # an SSE event ends at a blank line (engines send LF; the spec allows CRLF)
_EVENT = re.compile(rb"(.*?)(\r\n\r\n|\n\n|$)", re.DOTALL)  # one event and the blank line that ends it
#: a read with no end of event is held up to this size, then passed on (a usage split across it is then missed)
HOLD_MAX = 1 << 16


def tapped(body: Mapping[str, object]) -> tuple[dict[str, object], bytes, UsageTap]:
    """A streamed request's body with `stream_options.include_usage` set, its bytes, and the tap for its answer
    (which drops the usage chunk unless the client asked for it itself)."""
    options = body.get("stream_options")
    options = options if isinstance(options, dict) else {}
    asked = options.get("include_usage") is True
    asking = {**body, "stream_options": {**options, "include_usage": True}}
    return asking, json.dumps(asking).encode(), UsageTap(strip=not asked)


class UsageTap:
    """Fed the upstream's reads in order; returns what to write to the client; keeps the last `usage` seen.

    A read of whole events without `"usage"` passes straight through. Otherwise whole events are cut out (the
    pattern can be split across reads, so a partial event is held until its end arrives) and the usage-only one
    is dropped when `strip` is set. `end()` returns whatever is left when the upstream closes."""

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.usage: object = None
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._held and _USAGE not in chunk and chunk.endswith(_ENDS):
            return chunk  # the usual read: whole events, no usage
        data = self._held + chunk
        cut = _after_last_event(data)
        if not cut:  # no event ended yet
            self._held = data if len(data) < HOLD_MAX else b""
            return b"" if self._held else data
        whole, self._held = data[:cut], data[cut:]
        return self._events(whole) if _USAGE in whole else whole

    def end(self) -> bytes:
        """The held tail when the upstream closed (an event without its blank line is passed on as it came)."""
        rest, self._held = self._held, b""
        return self._events(rest) if _USAGE in rest else rest

    def _events(self, whole: bytes) -> bytes:
        """`whole` without the usage-only event (each event's bytes otherwise unchanged)."""
        return b"".join(m[0] for m in _EVENT.finditer(whole) if not (_USAGE in m[1] and self._usage_only(m[1])))

    def _usage_only(self, event: bytes) -> bool:
        """Record the event's usage; True when the client must not see the event (a usage-only chunk it did not
        ask for)."""
        data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        try:
            chunk = json.loads(data)
        except ValueError:
            return False
        if not isinstance(chunk, dict) or not isinstance(chunk.get("usage"), dict):
            return False
        self.usage = chunk["usage"]
        return self.strip and chunk.get("choices") == []


def _after_last_event(data: bytes) -> int:
    """The index just past the last blank line that ends an event in `data`; 0 when none does."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
