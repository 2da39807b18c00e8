"""`status` rows: every server shows, and what is wrong with it is flagged, not hidden."""

from grace_hpc.launch.manifest import Submitted
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.status import build_rows, summary

NOW = 10_000.0


def job(job_id, server="s", models=("m",), gpus=1):
    return Submitted("d", server, 0, job_id, "slurm", "t4", models, gpus, NOW - 100, "/f")


def record(rid, job_id, *, heartbeat_age=1.0, state=EndpointState.READY, external=False, last_error=None):
    return EndpointRecord(
        id=rid, model="m", served_model_name="m", deployment="d", server="s", partition="t4", gpu_type="T4",
        engine="vllm", host="n1", port=8000, base_url="http://n1:8000/v1", job_id=job_id, node="n1", pid=1,
        started_at=NOW - 60, heartbeat_at=NOW - heartbeat_age, state=state, external=external, last_error=last_error,
    )


def test_a_pending_job_shows_its_slurm_reason_before_it_registers():
    rows = build_rows([job("7")], [], {"7": ("PENDING", "Resources", None)}, {}, now=NOW, stale_after_s=30)
    assert len(rows) == 1
    assert (rows[0].job_state, rows[0].reason, rows[0].registry_state) == ("PENDING", "Resources", "unregistered")


def test_a_ready_endpoint_with_a_running_job_has_no_flags_and_counts_its_gpus():
    jobs = [job("7", gpus=2)]
    rows = build_rows(jobs, [record("a", "7")], {"7": ("RUNNING", None, "n1")}, {"a": True}, now=NOW,
                      stale_after_s=30)
    assert rows[0].flags == () and rows[0].reachable is True and rows[0].uptime_s == 60
    assert summary(rows, jobs) == "1/1 endpoints ready, 2 GPU(s) held, 0 flagged"


def test_stale_unreachable_and_finished_but_registered_endpoints_are_flagged():
    rows = build_rows([], [record("a", "7", heartbeat_age=95)], {"7": ("CANCELLED", None, None)}, {"a": False},
                      now=NOW, stale_after_s=30)
    flags = " | ".join(rows[0].flags)
    assert "stale: no heartbeat for 95s" in flags
    assert "unreachable" in flags
    assert "job cancelled but still registered" in flags
    assert summary(rows, []) == "0/1 endpoints ready, 0 GPU(s) held, 1 flagged"


def test_a_failed_job_that_never_registered_points_at_its_logs():
    rows = build_rows([job("9")], [], {"9": ("FAILED", None, None)}, {}, now=NOW, stale_after_s=30)
    assert rows[0].flags == ("job failed: see logs/d/",)


def test_external_endpoints_have_no_job_state_and_show_their_last_error():
    rows = build_rows([], [record("x", None, external=True, last_error="HTTP 500\nmore")], {}, {"x": True},
                      now=NOW, stale_after_s=1e9)
    assert rows[0].job_state == "-" and rows[0].flags == ("HTTP 500",)


def test_the_routers_view_adds_load_and_flags_an_endpoint_it_ejected():
    router = {"a": {"healthy": False, "in_flight": 3, "last_error": "ConnectionRefused"}}
    rows = build_rows([], [record("a", "7")], {"7": ("RUNNING", None, "n1")}, {"a": True}, now=NOW,
                      stale_after_s=30, router=router)
    assert rows[0].in_flight == 3
    assert rows[0].flags == ("ejected by the router: ConnectionRefused",)
