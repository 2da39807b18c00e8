"""Cloud budgets that hold under concurrency (pure): reserve an estimate before a cloud call, settle after.

A request may go to the cloud only if the user's settled spend this month, plus what requests in flight have
reserved, plus its own estimate stays within the budget. So concurrent requests cannot all see the same remaining
money: the overspend is at most what in-flight requests cost above their estimates (their completion beyond the
estimate's `max_tokens`), and `BudgetBook.overspend` reports it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from grace_hpc.config.routing import CloudProvider

#: completion tokens assumed when a request sets no `max_tokens` (its reservation; the actual cost is settled)
DEFAULT_COMPLETION_ESTIMATE = 512


def cost_usd(provider: CloudProvider, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * provider.price_in_per_mtok + completion_tokens * provider.price_out_per_mtok) / 1e6


def estimate_usd(provider: CloudProvider, body: Mapping[str, object], prompt_tokens: int) -> float:
    """What a request may cost before it is sent: its prompt estimate, and its `max_tokens` (else a default)."""
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    completion = limit if isinstance(limit, int) and limit >= 0 else DEFAULT_COMPLETION_ESTIMATE
    return cost_usd(provider, prompt_tokens, completion)


def month_of(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m")


def day_of(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Reservation:
    user: str
    amount: float


@dataclass
class BudgetBook:
    """Settled cloud spend per (user, month) and (user, day), and per-user reservations of requests in flight."""

    spent: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    reserved: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def committed(self, user: str, now: float) -> float:
        """Spent this month plus reserved by requests in flight."""
        return self.spent[(user, month_of(now))] + self.reserved[user]

    def exhausted(self, user: str, budget: float | None, now: float) -> bool:
        return budget is not None and self.committed(user, now) >= budget

    def reserve(self, user: str, budget: float | None, estimate: float, now: float) -> Reservation | None:
        """Hold `estimate` for one cloud request, or None when it would take the user over budget."""
        if budget is not None and self.committed(user, now) + estimate > budget:
            return None
        self.reserved[user] += estimate
        return Reservation(user, estimate)

    def settle(self, reservation: Reservation, actual: float, now: float) -> None:
        self.release(reservation)
        self.spent[(reservation.user, month_of(now))] += actual
        self.spent[(reservation.user, day_of(now))] += actual

    def release(self, reservation: Reservation) -> None:
        self.reserved[reservation.user] = max(0.0, self.reserved[reservation.user] - reservation.amount)

    def overspend(self, user: str, budget: float | None, now: float) -> float:
        if budget is None:
            return 0.0
        return max(0.0, self.spent[(user, month_of(now))] - budget)

    def merge(self, totals: Mapping[tuple[str, str], float]) -> None:
        """Take the ledger's totals (spend by other routers sharing it) where they exceed what this router saw."""
        for period, total in totals.items():
            self.spent[period] = max(self.spent[period], total)
