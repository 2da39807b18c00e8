"""Measured capacity: the most an endpoint delivered while still meeting a latency target, for the router.

The router's least-outstanding policy weighs the endpoints of one model by this (`router.policy.weights`), so a
replica that is measured twice as fast holds twice as many requests in flight."""

from __future__ import annotations

from collections.abc import Sequence

from grace_hpc.bench.stats import LevelStats, LoadMode
from grace_hpc.registry.records import MeasuredCapacity

#: the default latency target: p90 time to first token, the delay a user (or a batch worker's queue) feels first
DEFAULT_TTFT_P90_TARGET_MS = 2000.0


def sustainable(levels: Sequence[LevelStats], ttft_p90_target_ms: float, now: float) -> MeasuredCapacity | None:
    """The closed-loop level with the highest output tokens/s among those without errors whose p90 TTFT met the
    target; None when no level did (the endpoint is over the target even at the lowest load measured)."""
    meeting = [
        s for s in levels
        if s.mode is LoadMode.CLOSED and s.errors == 0 and s.ttft is not None
        and s.ttft.p90 <= ttft_p90_target_ms and s.output_tokens_per_s > 0
    ]
    if not meeting:
        return None
    best = max(meeting, key=lambda s: s.output_tokens_per_s)
    return MeasuredCapacity(
        output_tokens_per_s=best.output_tokens_per_s, requests_per_s=best.requests_per_s,
        concurrency=int(best.load), ttft_p90_target_ms=ttft_p90_target_ms, measured_at=now,
    )

