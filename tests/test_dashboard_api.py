"""The dashboard's JSON API: what each section says, where its data comes from, and what it never shows."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from grace_hpc.config.loader import ConfigDir
from grace_hpc.launch.manifest import Manifest, Submitted
from grace_hpc.registry.records import EndpointState
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from grace_hpc.router.dashboard import use_jobs
from grace_hpc.router.dashboard_view import JobTable, Severity, SourceState, fleet_section
from grace_hpc.router.fleet_jobs import CachedJobs, ManifestJobs
from tests.support.router_env import canned_upstream, record, routing

ROOT = Path(__file__).resolve().parents[1]
TABLE = routing({
    "connect_timeout_s": 1.0, "read_timeout_s": 5.0,
    "categories": [{"name": "default", "models": ["chat"]}, {"name": "code", "models": ["chat"]},
                   {"name": "nowhere", "models": ["absent-model"]}],
})
CHAT = {"model": "code", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


class FixedJobs:
    """A jobs source with a given answer, counting its reads."""

    def __init__(self, table: JobTable) -> None:
        self.table, self.reads = table, 0

    def read(self, records: list) -> JobTable:
        self.reads += 1
        return self.table


def serve(tmp_path: Path, records: list, *, keys: frozenset[str] = frozenset(), jobs: object = None):
    registry = Registry(tmp_path / "registry.json")
    for r in records:
        registry.register(r)
    app = create_app(TABLE, registry, environ={}, client_keys=keys, poll_interval_s=0.1)
    if jobs is not None:
        use_jobs(app, jobs)
    return serve_in_thread(app)


def dashboard(url: str, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = requests.get(f"{url}/api/dashboard", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def row_of(section: dict, endpoint: str) -> dict:
    [row] = [r for r in section["rows"] if r.get("endpoint_id", r.get("id")) == endpoint]
    return row


def test_a_router_without_a_project_shows_its_registry_and_says_jobs_are_not_known(tmp_path):
    rec = record("chat-1", "http://127.0.0.1:9/v1", "chat", max_num_seqs=4, quantization="awq")
    with serve(tmp_path, [rec]) as url:
        data = dashboard(url)
    assert set(data) == {"generated_at", "refresh_s", "fleet", "load", "routing"}
    fleet = data["fleet"]
    assert fleet["registry"] == {"state": "ok", "detail": None}
    assert fleet["scheduler"]["state"] == "absent" and "grace-hpc route" in fleet["scheduler"]["detail"]
    row = row_of(fleet, "chat-1")
    assert (row["model"], row["endpoint_state"], row["healthy"], row["severity"]) == ("chat", "ready", True, "ok")
    assert row["plan"] == {"dtype": None, "quantization": "awq", "tensor_parallel_size": 1, "max_model_len": 1024}
    load = row_of(data["load"], "chat-1")
    assert (load["in_flight"], load["capacity"], load["requests"], len(load["per_bucket"])) == (0, 4, 0, 90)
    assert [c["name"] for c in data["routing"]["categories"]] == ["default", "code", "nowhere"]
    assert data["routing"]["local_share"] is None  # no request yet


def test_requests_move_the_load_and_routing_numbers_and_failures_show_as_errors_and_ejections(tmp_path):
    with canned_upstream() as upstream:
        live = record("live", upstream, "chat", max_num_seqs=4)
        dead = record("dead", "http://127.0.0.1:9/v1", "chat", max_num_seqs=4)  # port 9: connection refused
        with serve(tmp_path, [live, dead]) as url:
            for _ in range(5):
                assert requests.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10).status_code == 200
            nowhere = requests.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "nowhere"}, timeout=10)
            assert nowhere.status_code == 503
            data = dashboard(url)
    load = {r["id"]: r for r in data["load"]["rows"]}
    assert load["live"]["requests"] == 5 and load["live"]["p50_s"] is not None and load["live"]["errors"] == 0
    assert load["live"]["per_bucket"][-1] + load["live"]["per_bucket"][-2] == 5
    # the dead endpoint was tried (rotation puts it first once), failed at once and was ejected
    assert (load["dead"]["requests"], load["dead"]["errors"], load["dead"]["ejections"]) == (0, 1, 1)
    assert (load["dead"]["healthy"], load["dead"]["severity"]) == (False, "bad")
    assert row_of(data["fleet"], "dead")["severity"] == "bad"
    assert "ejected by the router" in " ".join(row_of(data["fleet"], "dead")["flags"])
    cats = {c["name"]: c for c in data["routing"]["categories"]}
    assert (cats["code"]["requests"], cats["code"]["local"], cats["code"]["cloud"]) == (5, 5, 0)
    assert (cats["nowhere"]["requests"], cats["nowhere"]["errors"]) == (0, 1)
    assert (data["routing"]["requests"], data["routing"]["local_share"], data["routing"]["cloud_share"]) == (5, 1, 0)


def test_each_section_has_its_own_url_and_the_api_needs_a_key_the_page_does_not(tmp_path):
    rec = record("chat-1", "http://127.0.0.1:9/v1", "chat")
    with serve(tmp_path, [rec], keys=frozenset({"sekrit-router-key"})) as url:
        for path in ("/api/dashboard", "/api/fleet", "/api/load", "/api/routing"):
            denied = requests.get(url + path, timeout=10)
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
            ok = requests.get(url + path, headers={"Authorization": "Bearer sekrit-router-key"}, timeout=10)
            assert ok.status_code == 200 and ok.headers["Cache-Control"] == "no-store"
            assert "sekrit-router-key" not in ok.text
        fleet = requests.get(url + "/api/fleet", headers={"Authorization": "Bearer sekrit-router-key"}, timeout=10)
        assert set(fleet.json()) == {"registry", "scheduler", "summary", "rows"}
        page = requests.get(url + "/ui", timeout=10)  # follows the redirect to /ui/
        assert page.status_code == 200 and page.url.endswith("/ui/") and "<title>grace-hpc router</title>" in page.text
        assert "chat-1" not in page.text  # the page is a shell: data only comes from the keyed API
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            asset = requests.get(f"{url}/ui/{name}", timeout=10)
            assert asset.status_code == 200 and asset.headers["Content-Type"].startswith(kind)
        for bad in ("/ui/..%2Fapp.py", "/ui/samples.py", "/ui/%2e%2e%2f__init__.py"):
            assert requests.get(url + bad, timeout=10).status_code == 404


def test_the_page_uses_relative_urls_and_never_writes_markup():
    static = ROOT / "grace_hpc" / "router" / "static"
    text = "\n".join(p.read_text() for p in static.iterdir())
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text
    assert 'fetch(API' in text and 'const API = "../api/dashboard"' in text


def test_registry_and_slurm_outages_are_reported_with_the_data_that_is_still_known(tmp_path):
    rec = record("chat-1", "http://127.0.0.1:9/v1", "chat")
    table = JobTable(error="squeue not found: is this a SLURM login node? (or use the local executor)")
    with serve(tmp_path, [rec], jobs=FixedJobs(table)) as url:
        (tmp_path / "registry.json").write_text("{ not json")  # a torn write on a shared file system
        deadline = time.monotonic() + 10
        while (data := dashboard(url))["fleet"]["registry"]["state"] == "ok" and time.monotonic() < deadline:
            time.sleep(0.1)
    fleet = data["fleet"]
    assert fleet["registry"]["state"] == "unavailable" and "last good read" in fleet["registry"]["detail"]
    assert fleet["scheduler"] == {"state": "unavailable", "detail": table.error}
    assert row_of(fleet, "chat-1")["endpoint_state"] == "ready"  # still shown from the last good registry snapshot
    assert row_of(fleet, "chat-1")["job_state"] == "UNKNOWN"


def test_fleet_rows_join_manifest_jobs_slurm_state_and_the_registry():
    now = 1_000_000.0
    running = record("chat-1", "http://127.0.0.1:9/v1", "chat").model_copy(update={
        "job_id": "41", "partition": "t4", "gpu_type": "T4", "deployment": "zoo", "server": "chat",
        "node": "gpu7", "started_at": now - 600, "heartbeat_at": now - 2})
    gone = running.model_copy(update={"id": "chat-2", "base_url": "http://127.0.0.1:10/v1", "job_id": "43",
                                      "state": EndpointState.GONE, "last_error": "chat: engine exited with -9"})
    jobs = (Submitted("zoo", "chat", 0, "41", "slurm", "t4", ("chat",), 2, now - 700, "/f"),
            Submitted("zoo", "big", 0, "42", "slurm", "h100", ("llama",), 4, now - 60, "/f"),
            Submitted("zoo", "chat", 1, "43", "slurm", "t4", ("chat",), 2, now - 700, "/f"))
    table = JobTable(jobs, {"41": ("RUNNING", None, "gpu7"), "42": ("PENDING", "Resources", None),
                            "43": ("FAILED", None, "gpu8")},
                     {"41": 3600.0, "42": 7200.0}, {"t4": "T4", "h100": "H100-80GB"})
    health = {"chat-1": {"healthy": True, "in_flight": 1}, "chat-2": {"healthy": True, "in_flight": 0}}
    fleet = fleet_section([running, gone], health, table, now=now, stale_after_s=30, registry_error=None)
    rows = {(r.server, r.job_id): r for r in fleet.rows}
    ok = rows[("chat", "41")]
    assert (ok.gpus, ok.gpu, ok.node, ok.uptime_s, ok.time_left_s, ok.severity) == (2, "T4", "gpu7", 600.0, 3000.0,
                                                                                      Severity.OK)
    pending = rows[("big", "42")]
    assert (pending.job_state, pending.reason, pending.endpoint_state) == ("PENDING", "Resources", "unregistered")
    assert (pending.gpus, pending.gpu) == (4, "H100-80GB")
    assert (pending.time_left_s, pending.severity, pending.endpoint_id) == (7200.0, Severity.WARN, None)
    failed = rows[("chat", "43")]
    assert failed.severity is Severity.BAD and "chat: engine exited with -9" in failed.flags
    assert fleet.scheduler.state is SourceState.OK and fleet.summary == "1/3 ready, 1 need a look"


def test_a_stale_heartbeat_turns_a_row_red_even_while_its_port_answers():
    now = 1_000_000.0
    frozen = record("chat-1", "http://127.0.0.1:9/v1", "chat").model_copy(update={"heartbeat_at": now - 120})
    fleet = fleet_section([frozen], {"chat-1": {"healthy": True}}, None, now=now, stale_after_s=30,
                          registry_error=None)
    assert fleet.rows[0].severity is Severity.BAD and fleet.rows[0].flags[0].startswith("stale")


def test_manifest_jobs_time_limits_come_from_the_server_or_its_partition(tmp_path):
    project = tmp_path / "project"
    (project / "configs" / "deployments").mkdir(parents=True)
    cluster = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    (project / "configs" / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    (project / "configs" / "deployments" / "zoo.yaml").write_text(
        "name: zoo\nservers:\n  - {name: a, partition: t4, models: [m], time: '02:00:00'}\n"
        "  - {name: b, partition: t4, models: [m]}\n")
    config = ConfigDir(project / "configs")
    source = ManifestJobs(config, config.cluster())
    t4_max = next(p["max_time"] for p in cluster["partitions"] if p["name"] == "t4")
    from grace_hpc.launch.resources import slurm_time_minutes

    jobs = [Submitted("zoo", "a", 0, "1", "slurm", "t4", ("m",), 1, 0.0, "/f"),
            Submitted("zoo", "b", 0, "2", "slurm", "t4", ("m",), 1, 0.0, "/f"),
            Submitted("zoo", "a", 0, "local:999999999", "local", "t4", ("m",), 1, 0.0, "/f"),
            Submitted("gone-deployment", "x", 0, "4", "slurm", "t4", ("m",), 1, 0.0, "/f")]
    assert source.time_limits(jobs) == {"1": 7200.0, "2": 60.0 * slurm_time_minutes(t4_max)}
    Manifest(project / "logs" / "zoo" / "jobs.json").add(jobs[2])  # a local job whose controller is gone
    table = source.read([])
    assert (table.jobs, table.states, table.error) == ((), {"local:999999999": ("ENDED", None, None)}, None)
    assert table.partition_gpus["t4"] == "T4"


def test_concurrent_pages_share_one_jobs_read_until_it_is_older_than_the_ttl():
    clock = [0.0]
    source = FixedJobs(JobTable())
    cache = CachedJobs(source, lambda: clock[0], ttl_s=10.0)
    release = threading.Event()
    slow_read = source.read

    def read(records: list) -> JobTable:
        release.wait(5)
        return slow_read(records)

    source.read = read  # type: ignore[method-assign]  # a read that takes a while, as squeue can

    async def pages() -> None:
        tasks = [asyncio.create_task(cache.get([])) for _ in range(5)]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(*tasks)
        await cache.get([])
        clock[0] = 11.0
        await cache.get([])

    asyncio.run(pages())
    assert source.reads == 2


@pytest.mark.parametrize("path", ["/api/usage", "/api/elastic"])
def test_sections_without_a_source_are_absent_not_empty(tmp_path, path):
    with serve(tmp_path, []) as url:
        assert requests.get(url + path, timeout=10).status_code == 404
        assert not {"usage", "elastic"} & set(dashboard(url))


def test_an_engine_that_stopped_answering_is_red_although_its_job_runs_and_its_heartbeat_is_fresh():
    now = 1_000_000.0
    hung = record("chat-1", "http://127.0.0.1:9/v1", "chat").model_copy(update={
        "heartbeat_at": now - 1, "state": EndpointState.UNRESPONSIVE,
        "last_error": "chat (pid 7) has not answered /health for 15s"})
    fleet = fleet_section([hung], {"chat-1": {"healthy": True}}, None, now=now, stale_after_s=30, registry_error=None)
    assert fleet.rows[0].severity is Severity.BAD and fleet.rows[0].endpoint_state == "unresponsive"
