"""How many requests an engine is working on, asked of the engine itself (the supervisor is not in the request
path): a drain waits for this to reach zero before it stops the engine.

    llama.cpp  GET /slots    (on by default; needs the key)  -> slots whose `is_processing` is true
    vLLM       GET /metrics  (always on)                      -> vllm:num_requests_running + vllm:num_requests_waiting
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from grace_hpc.serve.gauges import parse_engine_metrics

#: one question to the engine; a drain asks again every half second
TIMEOUT_S = 2.0


def busy_slots(text: str) -> int:
    """llama.cpp's /slots answer -> slots working on a request."""
    return sum(1 for slot in json.loads(text) if slot.get("is_processing"))


def queued(text: str) -> int | None:
    """vLLM's /metrics answer -> requests running or waiting (None: the gauges are absent)."""
    reading = parse_engine_metrics(text)
    if reading is None or reading.running is None:
        return None
    return int(reading.running + (reading.waiting or 0))


def in_flight(base_url: str, engine: str, api_key: str, timeout_s: float = TIMEOUT_S) -> int | None:
    """Requests the engine at `base_url` (ends in /v1) is serving; None when it cannot tell (no such endpoint,
    not answering): the caller then waits out its own bound."""
    root = base_url.removesuffix("/").removesuffix("/v1")
    path, parse = ("/slots", busy_slots) if engine == "llama.cpp" else ("/metrics", queued)
    request = urllib.request.Request(root + path, headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return parse(response.read().decode())
    except (OSError, ValueError, AttributeError, TypeError):  # URLError/HTTPError are OSErrors; bad JSON/shape
        return None
