"""Pure: per-request timings -> per-level throughput and latency percentiles.

Definitions (the same as vLLM's `benchmark_serving`):
    TTFT  first generated token - the request's *scheduled* send time (open loop: queueing in the client counts)
    TPOT  (end - first token) / (output tokens - 1): the mean gap between this request's tokens
    ITL   every gap between two streamed token chunks, pooled over the level's requests
    E2E   end - scheduled send time
Throughput is successful requests (and their output tokens) over the level's span: the first scheduled send to the
last answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise

import numpy as np


class LoadMode(str, Enum):
    CLOSED = "closed"  # a fixed number of requests in flight: each client sends its next when its last returns
    OPEN = "open"  # a fixed request rate, whatever the server does: saturation shows as growing latency


@dataclass(frozen=True)
class RequestResult:
    """One request; times in seconds from the start of its level."""

    scheduled_s: float
    sent_s: float
    end_s: float
    first_token_s: float | None = None
    token_times_s: tuple[float, ...] = ()  # arrival of each chunk that carried text
    output_tokens: int = 0  # the server's usage count when it sent one, else the chunks with text
    prompt_tokens: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.scheduled_s

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.scheduled_s

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_s is None or self.output_tokens < 2:
            return None
        return (self.end_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def gaps_s(self) -> tuple[float, ...]:
        return tuple(b - a for a, b in pairwise(self.token_times_s))


@dataclass(frozen=True)
class Percentiles:
    """Milliseconds."""

    mean: float
    p50: float
    p90: float
    p95: float
    p99: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles | None:
        if not seconds:
            return None
        ms = np.asarray(seconds, dtype=float) * 1000.0
        p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
        return cls(float(ms.mean()), p50, p90, p95, p99)


@dataclass(frozen=True)
class EngineSample:
    """What the engine's own `/metrics` said during a level (None: the engine does not expose it)."""

    running_max: float | None = None
    waiting_max: float | None = None
    kv_cache_usage_max: float | None = None  # 0..1


@dataclass(frozen=True)
class GpuSample:
    """`nvidia-smi` during a level, over every visible GPU."""

    utilization_mean: float  # percent
    memory_used_max_mib: float


@dataclass(frozen=True)
class LevelStats:
    mode: LoadMode
    load: float  # requests in flight (closed) or requests per second (open)
    requests: int
    errors: int
    span_s: float
    requests_per_s: float
    output_tokens_per_s: float
    mean_prompt_tokens: float | None
    mean_output_tokens: float | None
    ttft: Percentiles | None
    tpot: Percentiles | None
    itl: Percentiles | None
    e2e: Percentiles | None
    error_samples: tuple[str, ...] = ()  # up to three distinct messages
    engine: EngineSample | None = None
    gpu: GpuSample | None = None


def summarize(mode: LoadMode, load: float, results: Sequence[RequestResult]) -> LevelStats:
    ok = [r for r in results if r.ok]
    errors = [r.error for r in results if r.error is not None]
    span = (max(r.end_s for r in results) - min(r.scheduled_s for r in results)) if results else 0.0
    out_tokens = sum(r.output_tokens for r in ok)
    prompt_counts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return LevelStats(
        mode=mode,
        load=load,
        requests=len(results),
        errors=len(errors),
        span_s=span,
        requests_per_s=len(ok) / span if span > 0 else 0.0,
        output_tokens_per_s=out_tokens / span if span > 0 else 0.0,
        mean_prompt_tokens=float(np.mean(prompt_counts)) if prompt_counts else None,
        mean_output_tokens=out_tokens / len(ok) if ok else None,
        ttft=Percentiles.of([t for r in ok if (t := r.ttft_s) is not None]),
        tpot=Percentiles.of([t for r in ok if (t := r.tpot_s) is not None]),
        itl=Percentiles.of([g for r in ok for g in r.gaps_s]),
        e2e=Percentiles.of([r.e2e_s for r in ok]),
        error_samples=tuple(dict.fromkeys(errors))[:3],
    )
