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

#: a series' label values, in the order of its family's label names (`_counter`'s `names`); a plain tuple of values
#: is what the request path builds, and the `name="value"` text is written only when /metrics is read
Labels = tuple[object, ...]


def _labels(names: tuple[str, ...], values: Labels) -> str:
    if not names:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in zip(names, values, strict=True))
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
        self.requests[(route, category, served_by, status)] += 1
        self.latency[(route, served_by)].observe(seconds)

    def error(self, kind: str, status: int) -> None:
        self.errors[(kind, status)] += 1

    def client_disconnect(self, route: str, served_by: str) -> None:
        """The client hung up before its answer was complete (never counted as an upstream error)."""
        self.client_disconnects[(route, served_by)] += 1

    def fallback(self, category: str, reason: str, to: str) -> None:
        self.fallbacks[(category, reason, to)] += 1

    def ejection(self, endpoint: str) -> None:
        self.ejections[(endpoint,)] += 1

    def usage(self, served_by: str, usage: object) -> None:
        if not isinstance(usage, dict):  # parsed JSON: a dict or anything else, never another Mapping
            return
        for kind, label in (("prompt_tokens", "prompt"), ("completion_tokens", "completion")):
            n = usage.get(kind)
            if isinstance(n, int) and n >= 0:
                self.tokens[(served_by, label)] += n

    def render(self, in_flight: Mapping[str, int], healthy: Mapping[str, bool]) -> str:
        out: list[str] = []
        _counter(out, "grace_router_requests_total", "Requests answered, by route, category, server and status.",
                 ("route", "category", "served_by", "status"), self.requests.items())
        _counter(out, "grace_router_errors_total", "Error responses produced by the router, by kind.",
                 ("kind", "status"), self.errors.items())
        _counter(out, "grace_router_fallbacks_total", "Requests served by other than the first choice, by reason.",
                 ("category", "reason", "to"), self.fallbacks.items())
        _counter(out, "grace_router_ejections_total", "Times an endpoint was ejected after a failure.",
                 ("endpoint",), self.ejections.items())
        _counter(out, "grace_router_client_disconnects_total",
                 "Clients that hung up before their answer was complete, by route and the upstream serving it.",
                 ("route", "served_by"), self.client_disconnects.items())
        _counter(out, "grace_router_tokens_total", "Tokens reported in upstream `usage`.", ("served_by", "kind"),
                 self.tokens.items())
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
        names = ("route", "served_by")
        for values, h in sorted(self.latency.items()):
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), h.counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"{name}_bucket{_labels((*names, 'le'), (*values, le))} {cumulative}")
            out.append(f"{name}_sum{_labels(names, values)} {h.total}")
            out.append(f"{name}_count{_labels(names, values)} {cumulative}")
        return "\n".join(out) + "\n"


def _counter(out: list[str], name: str, help_text: str, names: tuple[str, ...],
             items: Iterable[tuple[Labels, float]]) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} counter")
    # one line per series, in a stable order
    out.extend(sorted(f"{name}{_labels(names, values)} {value}" for values, value in items))
