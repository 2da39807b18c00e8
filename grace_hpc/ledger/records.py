"""One ledger record per request: who asked, for what, who served it, what it cost. Never a key, only its id."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from operator import attrgetter


class Served(str, Enum):
    LOCAL = "local"  # an endpoint of the fleet
    CLOUD = "cloud"  # a cloud provider
    NONE = "none"  # refused or failed: nothing served it


@dataclass(frozen=True)
class LedgerRecord:
    ts: float  # unix time the request arrived
    username: str
    key_id: str | None  # the key's public id; None for $GRACE_ROUTER_KEYS or a loopback router without keys
    category: str
    requested_model: str | None
    served: Served
    served_by: str | None  # endpoint id, or the cloud provider's name
    model: str | None  # the endpoint's catalog model, or the provider's model
    partition: str | None  # the endpoint's SLURM partition
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    status: int
    cost_usd: float  # cloud only; 0 for local

    def row(self) -> tuple[object, ...]:
        values = _VALUES(self)  # attrgetter, not dataclasses.astuple: astuple deep-copies (~30 us a record)
        return values[:5] + (self.served.value,) + values[6:]

    @classmethod
    def from_row(cls, row: tuple[object, ...]) -> LedgerRecord:
        values = list(row)
        values[5] = Served(values[5])
        return cls(*values)  # type: ignore[arg-type]  # columns are in field order (COLUMNS)


COLUMNS = tuple(f.name for f in fields(LedgerRecord))
_VALUES = attrgetter(*COLUMNS)
