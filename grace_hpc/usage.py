"""`grace-hpc usage`: the ledger summed by user, category, model, partition or day (pure; docs/usage.md).

Each row: requests, errors, tokens, cloud spend, the share of answered requests served locally, and what the same
tokens would have cost in the cloud (local tokens priced at their category's first cloud provider, plus what the
cloud really cost): the line a lab takes to its budget meeting. GPU-hours per partition come from `sacct`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

from grace_hpc.config.routing import CloudProvider, Routing
from grace_hpc.errors import ConfigError
from grace_hpc.ledger.records import LedgerRecord, Served
from grace_hpc.users.budget import cost_usd


class By(str, Enum):
    USER = "user"
    CATEGORY = "category"
    MODEL = "model"
    PARTITION = "partition"
    DAY = "day"


def group_of(record: LedgerRecord, by: By) -> str:
    if by is By.USER:
        return record.username
    if by is By.CATEGORY:
        return record.category
    if by is By.MODEL:
        return record.model or "-"
    if by is By.PARTITION:
        return record.partition or (f"cloud:{record.served_by}" if record.served is Served.CLOUD else "-")
    return datetime.fromtimestamp(record.ts, UTC).strftime("%Y-%m-%d")


@dataclass
class UsageRow:
    group: str
    requests: int = 0
    errors: int = 0  # answered with a status >= 400 (refusals included)
    local: int = 0
    cloud: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cloud_usd: float = 0.0
    cloud_equivalent_usd: float = 0.0

    @property
    def local_share(self) -> float | None:
        served = self.local + self.cloud
        return self.local / served if served else None

    def add(self, record: LedgerRecord, equivalent: float) -> None:
        self.requests += 1
        self.errors += record.status >= 400
        self.local += record.served is Served.LOCAL and record.status < 400
        self.cloud += record.served is Served.CLOUD and record.status < 400
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        self.cloud_usd += record.cost_usd
        self.cloud_equivalent_usd += equivalent

    def as_dict(self) -> dict[str, object]:
        share = self.local_share
        return {"group": self.group, "requests": self.requests, "errors": self.errors, "local": self.local,
                "cloud": self.cloud, "local_share": None if share is None else round(share, 4),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cloud_usd": round(self.cloud_usd, 6), "cloud_equivalent_usd": round(self.cloud_equivalent_usd, 6)}


@dataclass
class UsageReport:
    since: float
    by: By
    rows: list[UsageRow]
    total: UsageRow
    gpu_hours: dict[str, float] = field(default_factory=dict)  # per partition, from sacct
    gpu_note: str | None = None  # why GPU-hours are missing (no SLURM, no jobs), when they are


def reference_price(routing: Routing) -> Callable[[str], CloudProvider | None]:
    """Category -> the provider its tokens are priced at: its first cloud provider, else `default`'s, else the
    routing file's first."""
    fallback = next(iter(routing.category("default").cloud), None) or (routing.cloud[0].name if routing.cloud else None)

    def price(category: str) -> CloudProvider | None:
        names = [c.cloud for c in routing.categories if c.name == category]
        name = (names[0][0] if names and names[0] else None) or fallback
        return routing.provider(name) if name else None

    return price


def summarize(records: Iterable[LedgerRecord], by: By, since: float,
              price: Callable[[str], CloudProvider | None]) -> UsageReport:
    groups: dict[str, UsageRow] = {}
    total = UsageRow("total")
    for r in records:
        if r.served is Served.LOCAL:
            provider = price(r.category)
            equivalent = cost_usd(provider, r.prompt_tokens, r.completion_tokens) if provider else 0.0
        else:
            equivalent = r.cost_usd
        group = group_of(r, by)
        groups.setdefault(group, UsageRow(group)).add(r, equivalent)
        total.add(r, equivalent)
    return UsageReport(since, by, [groups[k] for k in sorted(groups)], total)



def parse_since(text: str, now: float) -> float:
    """`7d`, `12h`, `30m` before `now`, or a date `2026-11-01` (UTC) -> unix time."""
    units = {"d": 86400, "h": 3600, "m": 60}
    if text[-1:] in units and text[:-1].isdigit():
        return now - int(text[:-1]) * units[text[-1]]
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ConfigError(f"--since {text!r}: use 7d, 12h, 30m or a date like 2026-11-01") from None
