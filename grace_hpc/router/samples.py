"""Recent load, kept cheaply on the request path: a bounded ring of 10-second buckets per series.

A series is an endpoint (or `cloud:<provider>`) or a task category. Recording a request touches one bucket of
each of its two series: a modulo, at most one small allocation when a new 10 s bucket starts, a few integer
increments and one log for the latency bin. Nothing is aggregated until someone reads (the dashboard's API),
so a router nobody watches pays O(1) per request and memory bounded by `window_s / BUCKET_S` buckets per series.
Series that saw nothing for a whole window are dropped when a new series appears.

Latency percentiles come from log-spaced bins (each 25 % wider than the last, from 1 ms): an estimate within
12 % of the true value, which is what a dashboard needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

BUCKET_S = 10.0
WINDOW_S = 900.0  # the dashboard's 15 minutes
RATE_WINDOW_S = 60.0  # requests/s is over about the last minute: recent enough to move, long enough to be steady
LATENCY_FLOOR_S = 0.001
LATENCY_RATIO = 1.25
_LOG_RATIO = math.log(LATENCY_RATIO)
LATENCY_BINS = 64  # 1 ms * 1.25**63 ~ 1,300 s: longer requests share the last bin


def latency_bin(seconds: float) -> int:
    if seconds <= LATENCY_FLOOR_S:
        return 0
    return min(LATENCY_BINS - 1, int(math.log(seconds / LATENCY_FLOOR_S) / _LOG_RATIO) + 1)


def bin_value(index: int) -> float:
    """A representative latency of a bin: the geometric middle of its bounds (the floor for bin 0)."""
    if index == 0:
        return LATENCY_FLOOR_S
    return LATENCY_FLOOR_S * LATENCY_RATIO ** (index - 0.5)


@dataclass(slots=True)
class Bucket:
    tick: int  # int(clock() // BUCKET_S)
    requests: int = 0
    errors: int = 0  # answers with status >= 500 and failed attempts (the request then went elsewhere)
    cloud: int = 0  # requests served by a cloud provider (category series)
    ejections: int = 0
    latency: dict[int, int] = field(default_factory=dict)  # bin -> count; sparse: a few bins per bucket


@dataclass(frozen=True)
class Summary:
    """One series over the window: totals, the recent rate, latency percentiles and requests per bucket."""

    requests: int
    errors: int
    cloud: int
    ejections: int
    requests_per_s: float  # over the last RATE_WINDOW_S
    p50_s: float | None
    p95_s: float | None
    per_bucket: tuple[int, ...]  # requests in each BUCKET_S bucket of the window, oldest first


class Window:
    """The ring of one series."""

    __slots__ = ("slots",)

    def __init__(self, buckets: int) -> None:
        self.slots: list[Bucket | None] = [None] * buckets

    def at(self, tick: int) -> Bucket:
        i = tick % len(self.slots)
        b = self.slots[i]
        if b is None or b.tick != tick:
            b = self.slots[i] = Bucket(tick)
        return b

    def last_tick(self) -> int:
        return max((b.tick for b in self.slots if b is not None), default=-1)

    def summary(self, now: float) -> Summary:
        n, tick = len(self.slots), int(now // BUCKET_S)
        live = [b for b in self.slots if b is not None and tick - n < b.tick <= tick]
        latency: dict[int, int] = {}
        for b in live:
            for k, v in b.latency.items():
                latency[k] = latency.get(k, 0) + v
        # the rate over the last minute: the current, partly filled bucket and the complete ones before it
        earlier = max(0, round(RATE_WINDOW_S / BUCKET_S) - 1)
        recent = sum(b.requests for b in live if tick - earlier <= b.tick)
        span = earlier * BUCKET_S + max(now - tick * BUCKET_S, 1.0)  # at least 1 s: no burst of 1/0.001 s
        by_tick = {b.tick: b.requests for b in live}
        return Summary(
            requests=sum(b.requests for b in live), errors=sum(b.errors for b in live),
            cloud=sum(b.cloud for b in live), ejections=sum(b.ejections for b in live),
            requests_per_s=round(recent / span, 3),
            p50_s=_percentile(latency, 0.50), p95_s=_percentile(latency, 0.95),
            per_bucket=tuple(by_tick.get(t, 0) for t in range(tick - n + 1, tick + 1)),
        )


def _percentile(bins: dict[int, int], q: float) -> float | None:
    total = sum(bins.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for k in sorted(bins):
        seen += bins[k]
        if seen >= rank:
            return round(bin_value(k), 6)
    raise AssertionError("unreachable: the counts add up to the total")


@dataclass
class LoadSamples:
    """Per-endpoint and per-category rings over an injected monotonic clock."""

    clock: Callable[[], float]
    window_s: float = WINDOW_S
    endpoints: dict[str, Window] = field(default_factory=dict)
    categories: dict[str, Window] = field(default_factory=dict)

    def _tick(self) -> int:
        return int(self.clock() // BUCKET_S)

    def _bucket(self, series: dict[str, Window], name: str, tick: int) -> Bucket:
        window = series.get(name)
        if window is None:
            self._forget_idle(series, tick)
            window = series[name] = Window(round(self.window_s / BUCKET_S))
        return window.at(tick)

    def _forget_idle(self, series: dict[str, Window], tick: int) -> None:
        horizon = round(self.window_s / BUCKET_S)
        for name in [k for k, w in series.items() if tick - w.last_tick() >= horizon]:
            del series[name]

    def served(self, category: str, served_by: str, cloud: bool, status: int, seconds: float) -> None:
        """A request answered (any status) by `served_by` (an endpoint id or `cloud:<provider>`)."""
        error, lat, tick = status >= 500, latency_bin(seconds), self._tick()
        for b in (self._bucket(self.endpoints, served_by, tick), self._bucket(self.categories, category, tick)):
            b.requests += 1
            b.errors += error
            b.cloud += cloud
            b.latency[lat] = b.latency.get(lat, 0) + 1

    def failed(self, endpoint_id: str) -> None:
        """An attempt on an endpoint failed (connection, timeout, 5xx); the request may have gone elsewhere."""
        self._bucket(self.endpoints, endpoint_id, self._tick()).errors += 1

    def ejected(self, endpoint_id: str) -> None:
        self._bucket(self.endpoints, endpoint_id, self._tick()).ejections += 1

    def unserved(self, category: str) -> None:
        """Nothing (cloud included) could serve a request of this category: an error the client saw (counted in
        `errors`, not in `requests`, which are the requests someone answered)."""
        self._bucket(self.categories, category, self._tick()).errors += 1

    def summaries(self, series: dict[str, Window], names: Iterable[str] | None = None) -> dict[str, Summary]:
        """Summaries of the named series (all when None); a name never seen gets an empty summary."""
        now = self.clock()
        empty = Window(round(self.window_s / BUCKET_S))
        wanted = series.keys() if names is None else names
        return {n: series.get(n, empty).summary(now) for n in wanted}
