"""The dashboard's data, assembled purely from what the router already holds (see docs/dashboard.md).

Inputs: the registry snapshot, the health book's view of each endpoint, the load samples' summaries, the routing
table and, when the router was given a project, the launch manifests' jobs with SLURM's view of them. Output:
frozen models that are the JSON API. Each section says where its data came from and whether that source answered,
so the page can say "SLURM unavailable" instead of showing stale or empty tables as if they were true.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from pydantic import BaseModel, ConfigDict

from grace_hpc.config.routing import Routing
from grace_hpc.launch.manifest import ENDED_STATES, Submitted
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.router.policy import stale
from grace_hpc.router.samples import Summary
from grace_hpc.status import StatusRow, build_rows

JobStates = Mapping[str, tuple[str, str | None, str | None]]  # job id -> (state, pending reason, node)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Severity(str, Enum):
    """How a row is drawn: OK (green), WARN (amber: starting, pending, draining), BAD (red: needs a look)."""

    OK = "ok"
    WARN = "warn"
    BAD = "bad"


class SourceState(str, Enum):
    OK = "ok"
    UNAVAILABLE = "unavailable"  # it exists but did not answer: the data shown may be old or partial
    ABSENT = "absent"  # this router was not given it


class Source(Frozen):
    state: SourceState
    detail: str | None = None


@dataclass(frozen=True)
class JobTable:
    """The launch manifests' jobs and SLURM's view of them (see `grace_hpc.status.server_jobs`)."""

    jobs: tuple[Submitted, ...] = ()
    states: JobStates = field(default_factory=dict)
    time_limit_s: Mapping[str, float] = field(default_factory=dict)  # SLURM job id -> its time limit
    partition_gpus: Mapping[str, str] = field(default_factory=dict)  # partition -> GPU type, for jobs not registered
    error: str | None = None  # why the jobs are unknown (SLURM down, unreadable manifest)


class PlanView(Frozen):
    dtype: str | None
    quantization: str | None
    tensor_parallel_size: int
    max_model_len: int | None


class FleetRow(Frozen):
    deployment: str | None
    server: str | None
    model: str
    endpoint_id: str | None  # None: a job not registered yet (pending, starting)
    partition: str | None
    gpu: str | None
    gpus: int | None
    job_id: str | None
    job_state: str  # SLURM's state, RUNNING/ENDED for local jobs, "-" for external endpoints, UNKNOWN
    reason: str | None  # SLURM's pending reason
    node: str | None
    endpoint_state: str  # the registry's state, or "unregistered"
    healthy: bool | None  # the router's view; None when it has no endpoint to judge
    uptime_s: float | None
    time_left_s: float | None  # until the SLURM time limit; None for local jobs and unknown limits
    heartbeat_age_s: float | None
    plan: PlanView | None
    flags: tuple[str, ...]
    severity: Severity


class FleetSection(Frozen):
    registry: Source
    scheduler: Source
    summary: str
    rows: tuple[FleetRow, ...]


class LoadRow(Frozen):
    id: str  # endpoint id, or cloud:<provider>
    model: str | None
    in_registry: bool
    in_flight: int
    capacity: int | None  # max_num_seqs
    healthy: bool
    requests: int  # answered in the window
    requests_per_s: float
    p50_s: float | None
    p95_s: float | None
    errors: int
    ejections: int
    per_bucket: tuple[int, ...]  # requests per bucket, oldest first
    severity: Severity


class LoadSection(Frozen):
    window_s: float
    bucket_s: float
    rows: tuple[LoadRow, ...]


class CategoryRow(Frozen):
    name: str
    requests: int
    local: int
    cloud: int
    errors: int  # answered with 5xx, or nothing could serve it
    requests_per_s: float
    p50_s: float | None


class RoutingSection(Frozen):
    window_s: float
    requests: int
    local_share: float | None  # None before the first request
    cloud_share: float | None
    categories: tuple[CategoryRow, ...]


def fleet_severity(row: StatusRow, healthy: bool | None, is_stale: bool) -> Severity:
    if (row.registry_state in (EndpointState.GONE.value, EndpointState.UNRESPONSIVE.value)
            or row.job_state in ENDED_STATES or healthy is False
            or is_stale or row.reachable is False):
        return Severity.BAD
    # UNKNOWN: no jobs source, or SLURM did not answer; the section's `scheduler` says which, not every row
    if row.registry_state != EndpointState.READY.value or row.job_state not in ("RUNNING", "-", "UNKNOWN") or row.flags:
        return Severity.WARN
    return Severity.OK


def fleet_section(
    records: list[EndpointRecord],
    health: Mapping[str, Mapping[str, object]],  # endpoint id -> HealthBook.status()
    table: JobTable | None,  # None: this router knows no launch manifests (and so no jobs)
    *,
    now: float,
    stale_after_s: float,
    registry_error: str | None,
) -> FleetSection:
    """Every registered endpoint and every launched job not registered yet, with what is wrong with it."""
    known = table or JobTable()
    rows = build_rows(list(known.jobs), records, known.states, {}, now=now, stale_after_s=stale_after_s,
                      router=dict(health))
    by_url = {r.base_url: r for r in records}
    out = tuple(_fleet_row(row, by_url.get(row.endpoint or ""), health, known, now - stale_after_s) for row in rows)
    if table is None:
        scheduler = Source(state=SourceState.ABSENT, detail="no launch manifests: start the router with "
                                                            "`grace-hpc route` in the project to see jobs and SLURM")
    elif table.error:
        scheduler = Source(state=SourceState.UNAVAILABLE, detail=table.error)
    else:
        scheduler = Source(state=SourceState.OK)
    registry = (Source(state=SourceState.UNAVAILABLE, detail=f"{registry_error} (showing the last good read)")
                if registry_error else Source(state=SourceState.OK))
    ready = sum(1 for r in out if r.severity is Severity.OK)
    bad = sum(1 for r in out if r.severity is Severity.BAD)
    return FleetSection(registry=registry, scheduler=scheduler, summary=f"{ready}/{len(out)} ready, {bad} need a look",
                        rows=out)


def _fleet_row(row: StatusRow, rec: EndpointRecord | None, health: Mapping[str, Mapping[str, object]],
               table: JobTable, stale_before: float) -> FleetRow:
    job = row.job_id or ""
    seen = health.get(rec.id, {}).get("healthy") if rec else None
    healthy = seen if isinstance(seen, bool) else None
    limit = table.time_limit_s.get(job)
    manifest_gpus = next((j.num_gpus for j in table.jobs if j.job_id == job), None)
    return FleetRow(
        deployment=row.deployment, server=row.server, model=row.model, endpoint_id=rec.id if rec else None,
        partition=row.partition, gpu=row.gpu or table.partition_gpus.get(row.partition or ""),
        gpus=manifest_gpus if manifest_gpus is not None or rec is None else rec.plan.tensor_parallel_size,
        job_id=row.job_id, job_state=row.job_state, reason=row.reason, node=row.node,
        endpoint_state=row.registry_state, healthy=healthy,
        uptime_s=_round(row.uptime_s),
        time_left_s=None if limit is None else round(max(0.0, limit - (row.uptime_s or 0.0))),
        heartbeat_age_s=_round(row.heartbeat_age_s),
        plan=PlanView.model_validate(rec.plan.model_dump(exclude={"max_num_seqs"})) if rec else None,
        flags=row.flags,
        severity=fleet_severity(row, healthy, rec is not None and stale(rec, stale_before)),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def load_section(
    records: list[EndpointRecord],
    health: Mapping[str, Mapping[str, object]],
    summaries: Mapping[str, Summary],  # every registered endpoint, plus any other series with recent requests
    *,
    window_s: float,
    bucket_s: float,
) -> LoadSection:
    """Per endpoint (and cloud provider): load now against capacity, and the window's traffic."""
    by_id = {r.id: r for r in records}
    rows = []
    for sid, s in summaries.items():
        rec = by_id.get(sid)
        h = health.get(sid, {})
        in_flight = h.get("in_flight", 0)
        healthy = h.get("healthy", True) is not False
        capacity = rec.plan.max_num_seqs if rec else None
        severity = Severity.OK
        if not healthy:
            severity = Severity.BAD
        elif s.errors or s.ejections or (capacity and isinstance(in_flight, int) and in_flight >= capacity):
            severity = Severity.WARN
        rows.append(LoadRow(
            id=sid, model=rec.model if rec else None, in_registry=rec is not None,
            in_flight=in_flight if isinstance(in_flight, int) else 0, capacity=capacity, healthy=healthy,
            requests=s.requests, requests_per_s=s.requests_per_s, p50_s=s.p50_s, p95_s=s.p95_s, errors=s.errors,
            ejections=s.ejections, per_bucket=s.per_bucket, severity=severity,
        ))
    return LoadSection(window_s=window_s, bucket_s=bucket_s, rows=tuple(rows))


def routing_section(routing: Routing, summaries: Mapping[str, Summary], *, window_s: float) -> RoutingSection:
    """Requests per category (every configured one, in the routing file's order) and the local/cloud split."""
    cats = []
    for c in routing.categories:
        s = summaries[c.name]
        cats.append(CategoryRow(name=c.name, requests=s.requests, local=s.requests - s.cloud, cloud=s.cloud,
                                errors=s.errors, requests_per_s=s.requests_per_s, p50_s=s.p50_s))
    total = sum(c.requests for c in cats)
    cloud = sum(c.cloud for c in cats)
    return RoutingSection(
        window_s=window_s, requests=total, local_share=round((total - cloud) / total, 4) if total else None,
        cloud_share=round(cloud / total, 4) if total else None, categories=tuple(cats),
    )
