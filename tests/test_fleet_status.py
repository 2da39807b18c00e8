"""`fleet status` rows and the controller's own sbatch script."""

from pathlib import Path

from grace_hpc.config.deployment import Deployment
from grace_hpc.fleet.handover import Lead
from grace_hpc.fleet.lifecycle import Replica, ServerBook
from grace_hpc.fleet.policy import Reason
from grace_hpc.fleet.state import Action, FleetState, Intent, LastDecision
from grace_hpc.fleet.status import fleet_rows
from grace_hpc.launch.manifest import JobView, Submitted
from tests.support.cli import grace

DEPLOYMENT = Deployment.model_validate({"name": "d", "servers": [
    {"name": "a", "partition": "t4", "models": ["m"], "replicas": {"min": 0, "max": 3}},
    {"name": "b", "partition": "t4", "models": ["n"]}]})


def live(job_id: str, state: str, reason: str | None = None, time_left: int | None = None) -> Replica:
    return Replica(Submitted("d", "a", int(job_id), job_id, "slurm", "t4", ("m",), 1, 0.0, ""),
                   JobView(state, reason, None, time_left))


def test_rows_show_desired_running_pending_with_slurms_reason_and_the_last_decision():
    state = FleetState({"a": LastDecision(3, Reason.OVERLOADED, "6 outstanding", 90.0)}, {},
                       Intent("a", Action.SUBMIT, 1, (), 95.0))
    leads = {"a": Lead(120.0, "configured"), "b": Lead(600.0, "default")}
    a, b = fleet_rows(DEPLOYMENT, state, {"a": [live("1", "RUNNING"), live("2", "PENDING", "Resources"),
                                                live("3", "PENDING", "QOSMaxGpuPerUserLimit")]}, leads, now=100.0)
    assert (a.desired, a.running, a.pending) == (3, 1, {"2": "Resources", "3": "QOSMaxGpuPerUserLimit"})
    assert (a.reason, a.detail, a.decided_age_s, a.action_under_way) == ("overloaded", "6 outstanding", 10.0,
                                                                         "submit 1")
    assert (b.desired, b.running, b.pending, b.reason, b.action_under_way) == (None, 0, {}, None, None)


def test_a_successor_still_pending_and_a_backoff_are_shown_with_slurms_reason_and_the_last_failure():
    book = ServerBook(successors={"1": "2"}, failures=2, retry_at=160.0, last_failure="tiny: engine exited 1")
    state = FleetState({}, {}, None, {"a": book}, {"a": ("successor 2 of job 1 still pending (Resources); 1 ends "
                                                         "in 40s",)})
    leads = {"a": Lead(120.0, "configured"), "b": Lead(600.0, "default")}
    a, _ = fleet_rows(DEPLOYMENT, state, {"a": [live("1", "RUNNING", time_left=40),
                                                live("2", "PENDING", "Resources")]}, leads, now=100.0)
    assert a.handovers == [{"old": "1", "old_time_left_s": 40, "successor": "2", "successor_state": "PENDING",
                            "successor_reason": "Resources"}]
    assert (a.failures, a.retry_in_s, a.last_failure) == (2, 60.0, "tiny: engine exited 1")
    assert a.notes == ["successor 2 of job 1 still pending (Resources); 1 ends in 40s"]


def test_the_controller_job_script_runs_fleet_run_on_a_cpu_partition(tmp_path):
    out = tmp_path / "fleet.sbatch"
    configs = Path(__file__).resolve().parents[1] / "configs"
    proc = grace(tmp_path, "fleet", "run", "--config-dir", str(configs), "--deployment", "local",
                 "--emit-sbatch", str(out))
    assert proc.returncode == 0, proc.stderr
    script = out.read_text().splitlines()
    assert "#SBATCH --job-name=grace-local+fleet" in script and "#SBATCH --partition=cpu" in script
    assert not any(line.startswith("#SBATCH --gres") for line in script)
    assert script[-1] == f"exec python3 -m grace_hpc fleet run --config-dir {configs} --deployment local"
