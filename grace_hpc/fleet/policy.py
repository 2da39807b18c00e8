"""How many replicas a server should have: a pure function of its demand history, its policy and how many it has.

    decide(history, server, actual, now) -> Decision(desired, reason, detail)

Rules, in order (the first that applies wins; the result is always clamped to `replicas.min..max`):
1. requests are waiting for a server with no replica: start one at once (cold start);
2. every sample of the last `scale_up.for_s` seconds had more outstanding requests than `outstanding_per_replica`
   times the replicas alive (pending ones count: they are already on their way): grow to what the *lowest* load of
   that window needs;
3. every sample of the last `scale_down.idle_timeout_s` seconds needed fewer replicas than are alive: shrink to what
   the *highest* load of that window needs (no load at all: `replicas.min`, which may be zero).
The two windows are the hysteresis: a burst must last `for_s` to add replicas, and a lull `idle_timeout_s` to remove
them; a window the history does not cover yet (a restarted controller) decides nothing.
`cap_gpus` then trims growth that would take the deployment over its `max_gpus`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from grace_hpc.config.deployment import ServerSpec


@dataclass(frozen=True)
class Sample:
    """One server's demand at one moment, as the router reported it."""

    at: float
    outstanding: int  # requests in flight to the server's replicas
    waiting: int = 0  # requests held for the server while it has no ready replica


class Reason(str, Enum):
    STEADY = "steady"
    BELOW_MIN = "below-min"
    ABOVE_MAX = "above-max"
    COLD_START = "cold-start"
    OVERLOADED = "overloaded"
    IDLE = "idle"
    GPU_CAP = "gpu-cap"
    REPLACE = "replace"  # a ready replica left without the controller's order (preemption): replaced at once
    BACKOFF = "backoff"  # replicas failed to start: the next submission waits (lifecycle.backoff_s)


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: Reason
    detail: str


def window(history: Sequence[Sample], now: float, seconds: float) -> list[Sample] | None:
    """The samples of the last `seconds`, or None when the history does not reach back that far."""
    if not history or history[0].at > now - seconds:
        return None
    return [s for s in history if s.at >= now - seconds] or [history[-1]]


def needed(outstanding: int, per_replica: float) -> int:
    return math.ceil(outstanding / per_replica)


def decide(history: Sequence[Sample], server: ServerSpec, actual: int, now: float) -> Decision:
    """The replicas `server` should have now (`history`: its samples, oldest first)."""
    low, high = server.replicas.min, server.replicas.max
    per = server.scale_up.outstanding_per_replica
    if actual < low:
        return Decision(low, Reason.BELOW_MIN, f"{actual} alive, replicas.min is {low}")
    if actual > high:
        return Decision(high, Reason.ABOVE_MAX, f"{actual} alive, replicas.max is {high}")
    latest = history[-1] if history else None
    if actual == 0 and latest is not None and latest.waiting > 0:
        return Decision(max(1, low), Reason.COLD_START, f"{latest.waiting} request(s) waiting with no replica")
    burst = window(history, now, server.scale_up.for_s)
    if burst is not None and actual < high:
        load = min(s.outstanding + s.waiting for s in burst)
        if load > per * actual:
            want = min(high, max(actual + 1, needed(load, per)))
            return Decision(want, Reason.OVERLOADED, f"at least {load} outstanding for {server.scale_up.for_s:g}s "
                                                     f"(over {per:g} per replica on {actual})")
    lull = window(history, now, server.scale_down.idle_timeout_s)
    if lull is not None and actual > low:
        load = max(s.outstanding + s.waiting for s in lull)
        want = max(low, needed(load, per))
        if want < actual:
            return Decision(want, Reason.IDLE, f"at most {load} outstanding for "
                                               f"{server.scale_down.idle_timeout_s:g}s")
    return Decision(actual, Reason.STEADY, f"{actual} alive")


def cap_gpus(decisions: Mapping[str, Decision], actual: Mapping[str, int], gpus_per_replica: Mapping[str, int],
             max_gpus: int | None, what: str = "max_gpus") -> dict[str, Decision]:
    """Trim growth so these servers hold at most `max_gpus` (`what` names the limit in the reason); servers are
    trimmed in name order, shrinking ones are never touched (they free GPUs)."""
    out = dict(decisions)
    if max_gpus is None:
        return out
    total = sum(d.desired * gpus_per_replica[s] for s, d in out.items())
    for server in sorted(out):
        d = out[server]
        while total > max_gpus and d.desired > actual[server]:
            d = replace(d, desired=d.desired - 1)
            total -= gpus_per_replica[server]
        if d is not out[server]:
            out[server] = Decision(d.desired, Reason.GPU_CAP, f"{decisions[server].reason.value} wanted "
                                   f"{decisions[server].desired}; {what} {max_gpus} allows {d.desired}")
    return out
