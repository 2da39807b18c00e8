"""`fleet status`: per server, what the controller wants, what runs, what waits and why (pure over its inputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from grace_hpc.config.deployment import Deployment
from grace_hpc.fleet.controller import Live
from grace_hpc.fleet.handover import Lead
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


def fleet_rows(deployment: Deployment, state: FleetState, live: Mapping[str, Sequence[Live]],
               leads: Mapping[str, Lead], now: float) -> list[FleetRow]:
    rows = []
    for s in deployment.servers:
        mine = live.get(s.name, ())
        last = state.decisions.get(s.name)
        intent = state.intent if state.intent and state.intent.server == s.name else None
        rows.append(FleetRow(
            s.name, s.replicas.min, s.replicas.max, last.desired if last else None,
            sum(not r.pending for r in mine), {r.row.job_id: r.view.reason or "?" for r in mine if r.pending},
            last.reason.value if last else None, last.detail if last else None,
            round(now - last.at, 1) if last else None,
            f"{intent.action.value} {intent.count}" if intent else None,
            leads[s.name].seconds, leads[s.name].source))
    return rows
