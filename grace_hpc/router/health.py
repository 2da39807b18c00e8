"""Per-endpoint health: in-flight counts, passive ejection with exponential cooldown, and when to probe.

State only, no I/O: the app records outcomes here and a background task probes endpoints that `due_probes()` names.
An ejected endpoint is unroutable until a probe succeeds; each failed probe doubles its cooldown (capped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

BASE_COOLDOWN_S = 1.0
MAX_COOLDOWN_S = 60.0


@dataclass
class EndpointHealth:
    in_flight: int = 0
    ejected: bool = False
    failures: int = 0  # consecutive failures (requests or probes)
    cooldown_until: float = 0.0
    ejections: int = 0
    last_error: str | None = None
    requests: int = 0


@dataclass
class HealthBook:
    clock: Callable[[], float]
    base_cooldown_s: float = BASE_COOLDOWN_S
    max_cooldown_s: float = MAX_COOLDOWN_S
    entries: dict[str, EndpointHealth] = field(default_factory=dict)

    def get(self, endpoint_id: str) -> EndpointHealth:
        entry = self.entries.get(endpoint_id)
        if entry is None:
            entry = self.entries[endpoint_id] = EndpointHealth()
        return entry

    def started(self, endpoint_id: str) -> None:
        entry = self.get(endpoint_id)
        entry.in_flight += 1
        entry.requests += 1

    def finished(self, endpoint_id: str) -> None:
        entry = self.get(endpoint_id)
        entry.in_flight = max(0, entry.in_flight - 1)

    def succeeded(self, endpoint_id: str) -> None:
        self.get(endpoint_id).failures = 0

    def failed(self, endpoint_id: str, error: str, eject_after: int = 1) -> bool:
        """Count a failure; eject (or keep ejected, with a doubled cooldown) once `eject_after` failures are
        consecutive. True when this call newly ejected the endpoint."""
        entry = self.get(endpoint_id)
        entry.failures += 1
        entry.last_error = error
        if entry.failures < eject_after and not entry.ejected:
            return False
        cooldown = min(self.max_cooldown_s, self.base_cooldown_s * 2 ** max(0, entry.failures - eject_after))
        entry.cooldown_until = self.clock() + cooldown
        newly = not entry.ejected
        if newly:
            entry.ejected = True
            entry.ejections += 1
        return newly

    def restored(self, endpoint_id: str) -> None:
        """A probe succeeded: routable again."""
        entry = self.get(endpoint_id)
        entry.ejected = False
        entry.failures = 0
        entry.cooldown_until = 0.0

    def cooling(self, endpoint_id: str) -> bool:
        """Ejected and its cooldown not over: for upstreams no probe can test (cloud providers), the first request
        after the cooldown is the probe."""
        entry = self.entries.get(endpoint_id)
        return entry is not None and entry.ejected and entry.cooldown_until > self.clock()

    def due_probes(self) -> list[str]:
        now = self.clock()
        return [k for k, v in self.entries.items() if v.ejected and v.cooldown_until <= now]

    def forget_except(self, live_ids: Iterable[str]) -> None:
        """Drop endpoints that left the registry (those with requests still in flight are kept until they finish)."""
        keep = set(live_ids)
        for k in [k for k, v in self.entries.items() if k not in keep and v.in_flight == 0]:
            del self.entries[k]

    def status(self, endpoint_id: str) -> dict[str, object]:
        entry = self.get(endpoint_id)
        return {
            "healthy": not entry.ejected,
            "in_flight": entry.in_flight,
            "requests": entry.requests,
            "ejections": entry.ejections,
            "consecutive_failures": entry.failures,
            "cooldown_remaining_s": round(max(0.0, entry.cooldown_until - self.clock()), 3) if entry.ejected else 0.0,
            "last_error": entry.last_error,
        }
