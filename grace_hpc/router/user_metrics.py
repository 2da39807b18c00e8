"""Per-user and per-category counters for /metrics, and the dashboard's `usage` section (docs/usage.md).

Label sets are bounded: categories come from the routing file, users from the key store (plus `shared` for
$GRACE_ROUTER_KEYS and `anonymous` on a router without keys); past `MAX_USERS` distinct users the rest count as
`other`, so a lab with many keys cannot blow up Prometheus.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from grace_hpc.ledger.records import Served
from grace_hpc.router.metrics import Labels, _counter

MAX_USERS = 200


@dataclass
class UserMetrics:
    requests: dict[Labels, int] = field(default_factory=lambda: defaultdict(int))
    tokens: dict[Labels, int] = field(default_factory=lambda: defaultdict(int))
    cost: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))
    refusals: dict[Labels, int] = field(default_factory=lambda: defaultdict(int))
    users: set[str] = field(default_factory=set)

    def _user(self, user: str) -> str:
        if user in self.users or len(self.users) < MAX_USERS:
            self.users.add(user)
            return user
        return "other"

    def request(self, user: str, category: str, served: Served, prompt: int, completion: int, cost: float) -> None:
        user = self._user(user)
        self.requests[(user, category, served.value)] += 1
        if prompt:
            self.tokens[(user, category, "prompt")] += prompt
        if completion:
            self.tokens[(user, category, "completion")] += completion
        if cost:
            self.cost[(user,)] += cost

    def refusal(self, user: str, reason: str) -> None:
        self.refusals[(self._user(user), reason)] += 1

    def render(self) -> str:
        out: list[str] = []
        _counter(out, "grace_router_user_requests_total", "Requests per user and category, by who served them.",
                 ("user", "category", "served"), self.requests.items())
        _counter(out, "grace_router_user_tokens_total", "Tokens per user and category (upstream `usage`).",
                 ("user", "category", "kind"), self.tokens.items())
        _counter(out, "grace_router_user_cloud_cost_usd_total", "Cloud spend per user (routing file prices).",
                 ("user",), self.cost.items())
        _counter(out, "grace_router_user_refusals_total", "Requests refused per user: rate_limit, category, budget.",
                 ("user", "reason"), self.refusals.items())
        return "\n".join(out) + "\n"


class UserSpend(BaseModel):
    user: str
    today_usd: float
    month_usd: float
    in_flight_usd: float  # reserved by cloud requests not settled yet
    budget_usd_month: float | None  # the user's budget (users.keys.KeyTable.budgets); None: no budget
    budget_used: float | None  # month_usd / budget (may pass 1.0 by the in-flight bound)
    overspend_usd: float  # spend past the budget: what requests in flight at the edge cost above their estimates


class UsageSection(BaseModel):
    month: str
    day: str
    users: list[UserSpend]
    ledger_written: int
    ledger_pending: int
    ledger_error: str | None


def usage_section(month: str, day: str, spent: Mapping[tuple[str, str], float], reserved: Mapping[str, float],
                  budgets: Mapping[str, float | None], *, written: int, pending: int, error: str | None) -> UsageSection:
    """Spend today and this month per user vs budget: every user with a key, then anyone else who spent."""
    names = sorted(set(budgets) | {u for (u, period) in spent if period == month})
    rows = []
    for user in names:
        month_usd, budget = spent.get((user, month), 0.0), budgets.get(user)
        rows.append(UserSpend(user=user, today_usd=round(spent.get((user, day), 0.0), 6),
                              month_usd=round(month_usd, 6), in_flight_usd=round(reserved.get(user, 0.0), 6),
                              budget_usd_month=budget,
                              budget_used=round(month_usd / budget, 4) if budget else None,
                              overspend_usd=round(max(0.0, month_usd - budget), 6) if budget is not None else 0.0))
    return UsageSection(month=month, day=day, users=rows, ledger_written=written, ledger_pending=pending,
                        ledger_error=error)
