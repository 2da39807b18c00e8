"""The engines' own Prometheus gauges (vLLM's /metrics, llama.cpp's with `--metrics`): requests running and
waiting, KV-cache use. Read by the benchmark's probes and by the supervisor's drain (serve/inflight.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: gauge names per engine (vLLM v0 and v1 name the KV-cache gauge differently; both are fractions 0..1)
RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing")
WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "llamacpp:kv_cache_usage_ratio")


@dataclass(frozen=True)
class EngineReading:
    running: float | None
    waiting: float | None
    kv_usage: float | None


def parse_engine_metrics(text: str) -> EngineReading | None:
    """Prometheus text -> the three gauges, summed over label sets (one vLLM process may serve several models)."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        if name in RUNNING + WAITING + KV_USAGE:
            try:
                sums[name] = sums.get(name, 0.0) + float(value)
            except ValueError:
                continue

    def first(names: Sequence[str]) -> float | None:
        return next((sums[n] for n in names if n in sums), None)

    reading = EngineReading(first(RUNNING), first(WAITING), first(KV_USAGE))
    return None if reading == EngineReading(None, None, None) else reading
