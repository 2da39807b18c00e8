"""`status`: one view of servers from the launch manifests, the registry and one scheduler query.

`build_rows` is pure (tested on recorded inputs); `collect` does the I/O: files, one `squeue`, HTTP probes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from grace_hpc.config.cluster import Cluster
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import SchedulerError, UpstreamError
from grace_hpc.launch.launcher import all_manifests
from grace_hpc.launch.manifest import ENDED_STATES, LOCAL_ENDED, Submitted, job_states_of
from grace_hpc.registry.keys import read_key_file
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.registry.store import Registry
from grace_hpc.registry.verdicts import LogprobVerdict, read_verdicts, verdict_for_endpoint, verdict_path


@dataclass(frozen=True)
class StatusRow:
    deployment: str | None
    server: str | None
    model: str
    partition: str | None
    gpu: str | None
    job_id: str | None
    job_state: str  # SLURM state (RUNNING, PENDING, ...), or RUNNING/ENDED for local jobs, "-" for external
    reason: str | None  # SLURM pending reason
    node: str | None
    endpoint: str | None
    registry_state: str  # an EndpointState value, or "unregistered"
    reachable: bool | None  # None: not probed (no endpoint yet)
    uptime_s: float | None
    heartbeat_age_s: float | None
    flags: tuple[str, ...]
    in_flight: int | None = None  # requests the router has outstanding on it (with --router)
    capacity: int | None = None  # the endpoint's max_num_seqs
    logprobs: str | None = None  # the work canary's verdict on its prompt log-probs: "passed", "FAILED", None: unchecked


def build_rows(
    jobs: list[Submitted],
    records: list[EndpointRecord],
    job_info: dict[str, tuple[str, str | None, str | None]],  # job id -> (state, reason, node)
    reachable: dict[str, bool],
    *,
    now: float,
    stale_after_s: float,
    router: dict[str, dict[str, object]] | None = None,  # endpoint id -> the router's /status entry
    verdicts: Sequence[LogprobVerdict] = (),  # the log-prob canary's verdicts (grace_hpc/registry/verdicts.py)
) -> list[StatusRow]:
    rows: list[StatusRow] = []
    registered_jobs = set()
    for r in records:
        registered_jobs.add(r.job_id)
        state, reason, node = job_info.get(r.job_id or "", ("-" if r.external else "UNKNOWN", None, None))
        age = now - r.heartbeat_at
        flags = []
        if age > stale_after_s:
            flags.append(f"stale: no heartbeat for {age:.0f}s")
        if reachable.get(r.id) is False:
            flags.append("unreachable")
        if state in ENDED_STATES:
            flags.append(f"job {state.lower()} but still registered: run `grace-hpc registry reap`")
        seen_by_router = (router or {}).get(r.id, {})
        if seen_by_router.get("healthy") is False:
            flags.append(f"ejected by the router: {seen_by_router.get('last_error') or 'failing'}")
        if r.last_error:
            flags.append(r.last_error.splitlines()[0][:120])
        in_flight = seen_by_router.get("in_flight")
        rows.append(StatusRow(
            r.deployment, r.server, r.model, r.partition, r.gpu_type, r.job_id, state, reason, r.node or node,
            r.base_url, r.state.value, reachable.get(r.id), now - r.started_at, age, tuple(flags),
            in_flight if isinstance(in_flight, int) else None, r.plan.max_num_seqs, _logprobs(verdicts, r)))
    for j in jobs:
        if j.job_id in registered_jobs:
            continue
        state, reason, node = job_info.get(j.job_id, ("UNKNOWN", None, None))
        if state in ENDED_STATES and state != LOCAL_ENDED:
            flags: tuple[str, ...] = (f"job {state.lower()}: see logs/{j.deployment}/",)
        elif state in ENDED_STATES:
            continue  # a local job that ended cleanly: nothing to show
        else:
            flags = ()
        for model in j.models:
            rows.append(StatusRow(j.deployment, j.server, model, j.partition, None, j.job_id, state, reason, node,
                                  None, "unregistered", None, None, None, flags))
    return rows


def _logprobs(verdicts: Sequence[LogprobVerdict], r: EndpointRecord) -> str | None:
    v = verdict_for_endpoint(list(verdicts), r.id, r.base_url, (r.model, r.served_model_name))
    return None if v is None else ("passed" if v["passed"] else "FAILED")


def summary(rows: list[StatusRow], jobs: list[Submitted]) -> str:
    if not rows:
        return ("no servers: nothing launched from this project is pending or running, and the registry is empty; "
                "`grace-hpc launch --deployment NAME` starts some (`grace-hpc demo` tries the embedded default)")
    ready = sum(1 for r in rows if r.registry_state == EndpointState.READY.value and r.reachable is not False)
    live_jobs = {r.job_id for r in rows if r.job_state == "RUNNING"}
    gpus = sum(j.num_gpus for j in jobs if j.job_id in live_jobs)
    flagged = sum(1 for r in rows if r.flags)
    return f"{ready}/{len(rows)} endpoints ready, {gpus} GPU(s) held, {flagged} flagged"


def probe_reachable(record: EndpointRecord, timeout_s: float = 2.0) -> bool:
    headers = {}
    if record.api_key_file:
        try:
            headers["Authorization"] = f"Bearer {read_key_file(Path(record.api_key_file))}"
        except Exception:  # an unreadable key makes the endpoint unusable from here: unreachable
            return False
    try:
        return requests.get(f"{record.base_url}/models", headers=headers, timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


def router_view(url: str, api_key: str | None, timeout_s: float = 3.0) -> dict[str, dict[str, object]]:
    """The router's own view of each endpoint (in-flight requests, health), from its GET /status."""
    base = url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = requests.get(f"{base}/status", headers=headers, timeout=timeout_s)
        if r.status_code == 403:
            raise UpstreamError(f"router at {base}: GRACE_ROUTER_KEY is not an admin key, and only admin keys may "
                                "read its status; use one made by `grace-hpc keys create --user NAME --admin`")
        r.raise_for_status()
        return {e["id"]: e for e in r.json()["endpoints"]}
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise UpstreamError(f"router at {base} gave no status ({type(exc).__name__}); is `grace-hpc route` "
                            "running there, and is GRACE_ROUTER_KEY set if it needs a key?") from exc


def server_jobs(
    config: ConfigDir, cluster: Cluster, records: list[EndpointRecord]
) -> tuple[list[Submitted], dict[str, tuple[str, str | None, str | None]], str | None]:
    """The launch manifests' jobs still worth showing, (state, reason, node) of every job they or `records` name
    (one `squeue` and `sacct` call for the SLURM ones), and why SLURM's states are missing when it did not answer:
    best effort, as in `launch --wait`, so the registry's view still shows."""
    jobs = [j for m in all_manifests(config, cluster) for j in m.read()]
    ids = {j.job_id for j in jobs} | {r.job_id for r in records if r.job_id}
    scheduler_problem = None
    try:
        views = job_states_of(ids)
    except SchedulerError as exc:
        views = job_states_of(i for i in ids if i.startswith("local:"))
        scheduler_problem = str(exc)
    info = {i: (v.state, v.reason, v.node) for i, v in views.items()}
    # drop manifest entries of jobs long gone, so `status` shows the fleet, not its history
    jobs = [j for j in jobs if info.get(j.job_id, ("UNKNOWN",))[0] not in ENDED_STATES or j.job_id in
            {r.job_id for r in records}]
    return jobs, info, scheduler_problem


def collect(
    config: ConfigDir, cluster: Cluster, *, probe: bool = True, router: dict[str, dict[str, object]] | None = None
) -> tuple[list[StatusRow], str]:
    registry = Registry.from_cluster(cluster, config)
    records = registry.list()
    jobs, info, scheduler_problem = server_jobs(config, cluster, records)
    reachable: dict[str, bool] = {}
    if probe and records:
        with ThreadPoolExecutor(max_workers=min(16, len(records))) as pool:
            reachable = dict(zip([r.id for r in records], pool.map(probe_reachable, records), strict=True))
    rows = build_rows(jobs, records, info, reachable, now=time.time(), stale_after_s=cluster.stale_after_s,
                      router=router, verdicts=read_verdicts(verdict_path(registry.path)))
    return rows, summary(rows, jobs) + (f"; SLURM job states unknown: {scheduler_problem}" if scheduler_problem else "")


def rows_as_json(rows: list[StatusRow]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]
