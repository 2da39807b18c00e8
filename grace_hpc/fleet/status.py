"""`fleet status`: per server, what the controller wants, what runs, what waits and why (pure over its inputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from grace_hpc.config.deployment import Deployment
from grace_hpc.fleet.handover import Lead
from grace_hpc.fleet.lifecycle import Replica
from grace_hpc.fleet.state import FleetState


@dataclass(frozen=True)
class FleetRow:
    server: str
    min: int
    max: int
    desired: int | None  # None: no controller has decided yet
    running: int
    pending: dict[str, str]  # job id -> SLURM's pending reason ("Priority", "Resources", ...)
    reason: str | None
    detail: str | None
    decided_age_s: float | None
    action_under_way: str | None  # a journalled intent: the controller is (or was killed while) acting
    handover_lead_s: float  # a successor is due this long before a replica's wall time ends
    handover_lead_source: str
    handovers: list[dict[str, object]]  # old job, its successor, the successor's state and reason, old's time left
    failures: int  # start-up failures in a row
    retry_in_s: float | None  # the backoff before the next submission (None: none)
    last_failure: str | None
    notes: list[str]  # the last pass's warnings (a successor still pending near its old one's end, a replacement)


def fleet_rows(deployment: Deployment, state: FleetState, observed: Mapping[str, Sequence[Replica]],
               leads: Mapping[str, Lead], now: float) -> list[FleetRow]:
    rows = []
    for s in deployment.servers:
        mine = [r for r in observed.get(s.name, ()) if r.alive]
        by_id = {r.job_id: r for r in mine}
        book = state.book(s.name)
        last = state.decisions.get(s.name)
        intent = state.intent if state.intent and state.intent.server == s.name else None
        rows.append(FleetRow(
            s.name, s.replicas.min, s.replicas.max, last.desired if last else None,
            sum(not r.pending for r in mine), {r.row.job_id: r.view.reason or "?" for r in mine if r.pending},
            last.reason.value if last else None, last.detail if last else None,
            round(now - last.at, 1) if last else None,
            f"{intent.action.value} {intent.count}" if intent else None,
            leads[s.name].seconds, leads[s.name].source,
            [{"old": old, "old_time_left_s": by_id[old].time_left if old in by_id else None, "successor": new,
              "successor_state": by_id[new].view.state if new in by_id and by_id[new].view else "gone",
              "successor_reason": by_id[new].view.reason if new in by_id and by_id[new].view else None}
             for old, new in book.successors.items()],
            book.failures, round(book.retry_at - now, 1) if book.retry_at > now else None, book.last_failure,
            list(state.notes.get(s.name, ()))))
    return rows
