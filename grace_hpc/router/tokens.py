"""Exact prompt token counts from an endpoint's own tokenizer, for prompts the byte bounds cannot decide.

Both engines serve `POST /tokenize` at the server root (not under /v1): vLLM takes `{"model", "prompt"}` and
answers `{"count", "max_model_len", "tokens"}`; llama.cpp's server takes `{"content"}` and answers `{"tokens"}`.
Counts are cached per endpoint (least recently used first out), and an endpoint that has no /tokenize is
remembered, so a long prompt costs one extra call per endpoint at most once.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field

from grace_hpc.registry.records import EndpointRecord
from grace_hpc.router.wire import Timeouts, Wire, WireError

CACHE_PER_ENDPOINT = 256


@dataclass
class TokenCounter:
    cache: dict[str, OrderedDict[bytes, int]] = field(default_factory=dict)
    unsupported: set[str] = field(default_factory=set)  # endpoint ids whose engine has no usable /tokenize

    async def count(self, wire: Wire, record: EndpointRecord, api_key: str | None, text: str,
                    timeouts: Timeouts) -> int | None:
        """The endpoint's token count for `text` (its chat template's few tokens aside); None when it cannot say."""
        if record.id in self.unsupported:
            return None
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        known = self.cache.setdefault(record.id, OrderedDict())
        if digest in known:
            known.move_to_end(digest)
            return known[digest]
        body = ({"model": record.served_model_name, "prompt": text} if record.engine == "vllm" else {"content": text})
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        url = record.base_url.rstrip("/").removesuffix("/v1") + "/tokenize"
        try:
            status, raw = await wire.fetch("POST", url, json.dumps(body).encode(), headers, timeouts)
            if status != 200:  # 404/405: no such route; anything else may pass (the engine judges)
                if status in (404, 405):
                    self.unsupported.add(record.id)
                return None
            answer = json.loads(raw)
        except (TimeoutError, WireError, ValueError):
            return None  # a transient failure: the engine will judge the prompt itself
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            self.unsupported.add(record.id)
            return None
        known[digest] = len(tokens)
        if len(known) > CACHE_PER_ENDPOINT:
            known.popitem(last=False)
        return len(tokens)

    def forget_except(self, live_ids: set[str]) -> None:
        for endpoint_id in [k for k in self.cache if k not in live_ids]:
            del self.cache[endpoint_id]
        self.unsupported &= live_ids
