"""Router metrics in the Prometheus text exposition format (version 0.0.4), without a client library.

Counters and histograms keyed by label tuples; `render()` writes the whole page. Gauges that live elsewhere
(in-flight per endpoint, ejected state) are passed to `render()` so there is one source of truth.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: seconds; the router adds well under a millisecond, engines take from 10 ms to minutes
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value


@dataclass
class Metrics:
    requests: dict[Labels, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[Labels, int] = field(default_factory=lambda: defaultdict(int))
    fallbacks: dict[Labels, int] = field(default_factory=lambda: defaultdict(int))
    ejections: dict[Labels, int] = field(default_factory=lambda: defaultdict(int))
    tokens: dict[Labels, int] = field(default_factory=lambda: defaultdict(int))
    client_disconnects: dict[Labels, int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[Labels, Histogram] = field(default_factory=lambda: defaultdict(Histogram))

    def request(self, route: str, category: str, served_by: str, status: int, seconds: float) -> None:
        key = (("route", route), ("category", category), ("served_by", served_by), ("status", str(status)))
        self.requests[key] += 1
        self.latency[(("route", route), ("served_by", served_by))].observe(seconds)

    def error(self, kind: str, status: int) -> None:
        self.errors[(("kind", kind), ("status", str(status)))] += 1

    def client_disconnect(self, route: str, served_by: str) -> None:
        """The client hung up before its answer was complete (never counted as an upstream error)."""
        self.client_disconnects[(("route", route), ("served_by", served_by))] += 1

    def fallback(self, category: str, reason: str, to: str) -> None:
        self.fallbacks[(("category", category), ("reason", reason), ("to", to))] += 1

    def ejection(self, endpoint: str) -> None:
        self.ejections[(("endpoint", endpoint),)] += 1

    def usage(self, served_by: str, usage: object) -> None:
        if not isinstance(usage, Mapping):
            return
        for kind in ("prompt_tokens", "completion_tokens"):
            n = usage.get(kind)
            if isinstance(n, int) and n >= 0:
                self.tokens[(("served_by", served_by), ("kind", kind.removesuffix("_tokens")))] += n

    def render(self, in_flight: Mapping[str, int], healthy: Mapping[str, bool]) -> str:
        out: list[str] = []
        _counter(out, "grace_router_requests_total", "Requests answered, by route, category, server and status.",
                 self.requests.items())
        _counter(out, "grace_router_errors_total", "Error responses produced by the router, by kind.",
                 self.errors.items())
        _counter(out, "grace_router_fallbacks_total", "Requests served by other than the first choice, by reason.",
                 self.fallbacks.items())
        _counter(out, "grace_router_ejections_total", "Times an endpoint was ejected after a failure.",
                 self.ejections.items())
        _counter(out, "grace_router_client_disconnects_total",
                 "Clients that hung up before their answer was complete, by route and the upstream serving it.",
                 self.client_disconnects.items())
        _counter(out, "grace_router_tokens_total", "Tokens reported in upstream `usage`.", self.tokens.items())
        out.append("# HELP grace_router_in_flight Requests in flight per endpoint.")
        out.append("# TYPE grace_router_in_flight gauge")
        out.extend(f'grace_router_in_flight{{endpoint="{_escape(k)}"}} {v}' for k, v in sorted(in_flight.items()))
        out.append("# HELP grace_router_endpoint_healthy 1 when the endpoint is routable, 0 while ejected.")
        out.append("# TYPE grace_router_endpoint_healthy gauge")
        out.extend(
            f'grace_router_endpoint_healthy{{endpoint="{_escape(k)}"}} {int(v)}' for k, v in sorted(healthy.items())
        )
        name = "grace_router_request_seconds"
        out.append(f"# HELP {name} Time from request received to response finished.")
        out.append(f"# TYPE {name} histogram")
        for labels, h in sorted(self.latency.items()):
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), h.counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {cumulative}")
            out.append(f"{name}_sum{_labels(labels)} {h.total}")
            out.append(f"{name}_count{_labels(labels)} {cumulative}")
        return "\n".join(out) + "\n"


def _counter(out: list[str], name: str, help_text: str, items: Iterable[tuple[Labels, int]]) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} counter")
    out.extend(f"{name}{_labels(labels)} {value}" for labels, value in sorted(items))
