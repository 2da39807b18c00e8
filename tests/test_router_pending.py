"""The router's `/status` says why a model has no replica: its jobs and SLURM's pending reasons, from the one cached
jobs read the dashboard uses (never an `squeue` per request); a streamed cold start's comments say the same."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from grace_hpc.config.loader import ConfigDir
from grace_hpc.launch.manifest import Submitted
from grace_hpc.registry.store import Registry
from grace_hpc.router import coldstart, create_app, serve_in_thread
from grace_hpc.router.dashboard import use_jobs
from grace_hpc.router.dashboard_view import JobTable
from grace_hpc.router.fleet_jobs import ManifestJobs
from tests.support.cli import grace
from tests.support.router_env import canned_upstream, record, routing
from tests.support.slurm_env import blocked_server

TABLE = routing({"categories": [{"name": "default", "models": ["chat"]},
                                {"name": "cold", "models": ["cold"], "cold_start_wait_s": 1},
                                {"name": "nowhere", "models": ["never-launched"]}]})
NOW = time.time()
JOBS = JobTable((Submitted("zoo", "chat", 0, "41", "slurm", "t4", ("chat",), 1, NOW, "/f"),
                 Submitted("zoo", "big", 0, "42", "slurm", "h100", ("cold",), 4, NOW, "/f"),
                 Submitted("zoo", "big", 1, "43", "slurm", "h100", ("cold",), 4, NOW, "/f")),
                {"41": ("RUNNING", None, "node1"), "42": ("PENDING", "Resources", None),
                 "43": ("PENDING", "QOSMaxGpuPerUserLimit", None)})


class CountedJobs:
    def __init__(self, table: JobTable) -> None:
        self.table, self.reads = table, 0

    def read(self, records: list) -> JobTable:
        self.reads += 1
        return self.table


def stream_lines(url: str, model: str) -> list[str]:
    r = requests.post(f"{url}/v1/chat/completions", stream=True, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True})
    return [line for line in r.iter_lines(decode_unicode=True) if line]


def test_status_names_each_model_without_a_replica_with_its_jobs_and_reasons_from_one_cached_read(tmp_path,
                                                                                                monkeypatch):
    monkeypatch.setattr(coldstart, "KEEPALIVE_S", 0.3)
    jobs = CountedJobs(JOBS)
    registry = Registry(tmp_path / "registry.json")
    with canned_upstream() as up:
        registry.register(record("chat-1", up, "chat"))
        app = create_app(TABLE, registry, environ={}, poll_interval_s=0.1)
        use_jobs(app, jobs)
        with serve_in_thread(app) as url:
            assert requests.post(f"{url}/v1/chat/completions", timeout=10, json={
                "model": "nowhere", "messages": [{"role": "user", "content": "hi"}]}).status_code == 503
            comments = [line for line in stream_lines(url, "cold") if line.startswith(":")]
            statuses = [requests.get(f"{url}/status", timeout=10).json() for _ in range(5)]
    assert comments[0] == (": waiting for a replica of cold (job 42 PENDING: Resources; "
                           "job 43 PENDING: QOSMaxGpuPerUserLimit)")
    assert len(comments) >= 2
    not_ready = statuses[-1]["not_ready"]
    assert (not_ready["jobs_source"], not_ready["jobs_error"]) == ("ok", None)
    assert not_ready["models"] == [  # chat has a ready replica; never-launched was asked for and has no job
        {"model": "cold", "jobs": [
            {"job_id": "42", "deployment": "zoo", "server": "big", "state": "PENDING", "reason": "Resources"},
            {"job_id": "43", "deployment": "zoo", "server": "big", "state": "PENDING",
             "reason": "QOSMaxGpuPerUserLimit"}]},
        {"model": "never-launched", "jobs": []}]
    assert jobs.reads == 1  # a cold start's comments and five /status reads: one jobs read (JOBS_TTL_S)


def test_a_router_without_a_project_says_the_jobs_are_unknown(tmp_path):
    app = create_app(TABLE, Registry(tmp_path / "registry.json"), environ={}, poll_interval_s=0.1)
    with serve_in_thread(app) as url:
        requests.post(f"{url}/v1/chat/completions", timeout=10,
                      json={"model": "nowhere", "messages": [{"role": "user", "content": "hi"}]})
        not_ready = requests.get(f"{url}/status", timeout=10).json()["not_ready"]
    assert not_ready == {"jobs_source": "absent", "jobs_error": None,
                         "models": [{"model": "never-launched", "jobs": []}]}


@pytest.mark.slurm
def test_a_server_slurm_cannot_start_shows_its_pending_reason_in_the_routers_status(slurm_cluster, tiny_project):
    with blocked_server(tiny_project):
        launched = grace(tiny_project, "launch", "--deployment", "busy", "--executor", "slurm")
        assert launched.returncode == 0, launched.stderr
        config = ConfigDir(tiny_project / "configs")
        app = create_app(TABLE, Registry(tiny_project / "logs" / "registry" / "registry.json"), environ={})
        use_jobs(app, ManifestJobs(config, config.cluster()))
        with serve_in_thread(app) as url:
            time.sleep(2)  # SLURM gives a reason at its next scheduling pass
            [model] = requests.get(f"{url}/status", timeout=30).json()["not_ready"]["models"]
        [job] = model["jobs"]
        reason = subprocess.run(["squeue", "-h", "-j", job["job_id"], "-o", "%r"], capture_output=True, text=True,
                                check=True).stdout.strip()
    assert (model["model"], job["deployment"], job["server"], job["state"]) == ("tiny", "busy", "big", "PENDING")
    assert job["reason"] == reason and reason in ("Resources", "Priority")  # SLURM's own words


def test_keepalive_text_is_one_line_whatever_slurm_says():
    from grace_hpc.router.pending import describe

    table = JobTable((Submitted("d", "s", 0, "7", "slurm", "t4", ("m",), 1, NOW, "/f"),),
                     {"7": ("PENDING", "Bad\nreason", None)})
    assert describe("m", table) == "waiting for a replica of m (job 7 PENDING: Bad reason)"
    assert describe("m", JobTable(error="squeue: timed out")) == \
        "waiting for a replica of m (SLURM's view unavailable: squeue: timed out)"
