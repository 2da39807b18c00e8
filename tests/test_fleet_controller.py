"""The reconcile loop against an in-memory scheduler and manifest (the real ones: tests/slurm/test_fleet_slurm.py).

The scheduler here keeps what SLURM keeps (jobs and their states) and the manifest what launch records, so a
controller "SIGKILLed" between the two leaves exactly what a real one would: a job no record knows."""

import itertools
import random
from collections.abc import Sequence

import pytest

from grace_hpc.config.deployment import Deployment
from grace_hpc.errors import SchedulerError
from grace_hpc.fleet.controller import SBATCH_SETTLE_S, Controller, launch_count, victims
from grace_hpc.fleet.demand import Demand, ModelDemand
from grace_hpc.fleet.lifecycle import Replica, backoff_s
from grace_hpc.fleet.policy import Reason
from grace_hpc.fleet.state import Action, StateFile
from grace_hpc.fleet.usage import UsageLedger
from grace_hpc.launch.manifest import JobView, Submitted


class Killed(BaseException):
    """SIGKILL: nothing after it runs (not an Exception, so no handler can catch it)."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class World:
    """An in-memory SLURM queue plus manifest and registry. `kill_at` raises Killed at that numbered step."""

    def __init__(self, clock: "Clock | None" = None) -> None:
        self.queue: dict[str, tuple[str, int, str]] = {}  # job id -> (server, replica, state)
        self.manifest: dict[str, Submitted] = {}
        self.ends: dict[str, float] = {}  # job id -> the end of its wall time (running jobs with a limit)
        self.ready: set[str] = set()  # jobs whose endpoints are `ready` in the registry
        self.draining: dict[str, str] = {}  # jobs whose endpoints are `draining`: why
        self.signalled: list[tuple[str, str]] = []  # (job id, "drain"|"cancel")
        self.recorded: list[str] = []  # every job the manifest ever recorded
        self.ids = itertools.count(100)
        self.steps = itertools.count()
        self.kill_at: int | None = None
        self.clock = clock

    def step(self) -> None:
        if next(self.steps) == self.kill_at:
            raise Killed

    def observe(self) -> dict[str, list[Replica]]:
        out: dict[str, list[Replica]] = {}
        now = self.clock.now if self.clock else 0.0
        for row in self.manifest.values():
            server, _, state = self.queue[row.job_id]
            left = int(self.ends[row.job_id] - now) if state == "RUNNING" and row.job_id in self.ends else None
            view = JobView(state, "Resources" if state == "PENDING" else None, None, left)
            out.setdefault(server, []).append(Replica(row, view, ready=row.job_id in self.ready,
                                                      leaving=self.draining.get(row.job_id)))
        return out

    def submit(self, server: str, count: int) -> list[str]:
        taken = {r.row.replica for r in self.observe().get(server, []) if r.alive}
        new = []
        for replica in range(count):
            if replica in taken:
                continue
            self.step()
            job_id = str(next(self.ids))
            self.queue[job_id] = (server, replica, "PENDING")  # sbatch accepted it
            self.step()
            self.manifest[job_id] = Submitted("d", server, replica, job_id, "slurm", "cpu", ("m",), 1,
                                              self.clock.now if self.clock else 0.0, "")
            self.recorded.append(job_id)
            new.append(job_id)
        return new

    def drain(self, job_ids: Sequence[str], *, gracefully: bool = False) -> None:
        self.step()
        for j in job_ids:
            server, replica, _ = self.queue[j]
            self.queue[j] = (server, replica, "COMPLETED" if gracefully else "CANCELLED")
            self.signalled.append((j, "drain" if gracefully else "cancel"))
        self.step()
        for j in job_ids:
            self.manifest.pop(j, None)

    def forget(self, job_ids: Sequence[str]) -> None:
        for j in job_ids:
            self.manifest.pop(j, None)

    def unrecorded(self, server: str) -> list[str]:
        return [j for j, (s, _, state) in self.queue.items()
                if s == server and state in ("PENDING", "RUNNING") and j not in self.manifest]

    def alive(self, server: str) -> list[tuple[str, int]]:
        return [(j, r) for j, (s, r, state) in self.queue.items() if s == server and state in ("PENDING", "RUNNING")]

    def start(self, job_id: str, *, wall_s: float | None = None, ready: bool = True) -> None:
        """SLURM starts the job (with a wall time ending `wall_s` from now) and its engine becomes ready."""
        server, replica, _ = self.queue[job_id]
        self.queue[job_id] = (server, replica, "RUNNING")
        if wall_s is not None and self.clock:
            self.ends[job_id] = self.clock.now + wall_s
        if ready:
            self.ready.add(job_id)

    def end(self, job_id: str, state: str = "COMPLETED") -> None:
        server, replica, _ = self.queue[job_id]
        self.queue[job_id] = (server, replica, state)
        self.ready.discard(job_id)


class KillableJournal(StateFile):
    def __init__(self, path, world: World) -> None:
        super().__init__(path)
        self.world = world

    def write(self, state) -> None:
        self.world.step()
        super().write(state)


def deployment(low: int = 1, high: int = 3, max_gpus: int | None = None, lead: float | None = None) -> Deployment:
    return Deployment.model_validate({"name": "d", "max_gpus": max_gpus, "servers": [{
        "name": "s", "partition": "cpu", "models": ["m"], "replicas": {"min": low, "max": high},
        "scale_up": {"outstanding_per_replica": 2, "for_s": 10}, "scale_down": {"idle_timeout_s": 30},
        "handover_lead_s": lead}]})


class Router:
    def __init__(self, clock: Clock) -> None:
        self.clock, self.outstanding, self.waiting = clock, 0, 0

    def __call__(self) -> Demand:
        return Demand(self.clock.now, {"m": ModelDemand(self.outstanding, self.waiting)})


def controller(tmp_path, world: World, clock: Clock, router: Router, **kw) -> Controller:
    return Controller(deployment(**kw), world, KillableJournal(tmp_path / "fleet.json", world), router,
                      {"s": 1}, clock)


def passes(c: Controller, clock: Clock, seconds: int, period: int = 5) -> None:
    for _ in range(seconds // period):
        c.reconcile()
        clock.now += period


def test_a_burst_raises_replicas_to_three_and_the_idle_timeout_brings_them_back_to_one(tmp_path):
    world, clock = World(), Clock()
    router = Router(clock)
    c = controller(tmp_path, world, clock, router)
    passes(c, clock, 10)
    assert len(world.alive("s")) == 1
    router.outstanding = 6
    passes(c, clock, 20)
    assert len(world.alive("s")) == 3
    assert c.journal.read().decisions["s"].reason in (Reason.OVERLOADED, Reason.STEADY)
    router.outstanding = 0
    passes(c, clock, 25)
    assert len(world.alive("s")) == 3  # a lull shorter than idle_timeout_s keeps them
    passes(c, clock, 15)
    assert [r for _, r in world.alive("s")] == [0]
    assert c.journal.read().decisions["s"].reason is Reason.STEADY


def test_a_scale_to_zero_server_starts_on_the_first_waiting_request_and_returns_to_zero(tmp_path):
    world, clock = World(), Clock()
    router = Router(clock)
    c = controller(tmp_path, world, clock, router, low=0)
    passes(c, clock, 10)
    assert world.alive("s") == []
    router.waiting = 1
    c.reconcile()
    assert len(world.alive("s")) == 1
    assert c.journal.read().decisions["s"].reason is Reason.COLD_START
    router.waiting = 0
    passes(c, clock, 45)
    assert world.alive("s") == []


def test_max_gpus_holds_the_fleet_below_replicas_max(tmp_path):
    world, clock = World(), Clock()
    router = Router(clock)
    router.outstanding = 50
    c = controller(tmp_path, world, clock, router, max_gpus=2)
    passes(c, clock, 30)
    assert len(world.alive("s")) == 2
    assert c.journal.read().decisions["s"].reason is Reason.GPU_CAP


@pytest.mark.parametrize("seed", range(20))
def test_a_controller_killed_at_any_step_converges_on_restart_without_duplicates_or_orphans(tmp_path, seed):
    rng = random.Random(seed)
    world, clock = World(), Clock()
    router = Router(clock)
    for phase_load in (6, 0, 6):  # scale up, scale down, scale up again
        router.outstanding = phase_load
        for _ in range(12):
            world.kill_at = next(world.steps) + rng.randrange(8)
            try:
                controller(tmp_path, world, clock, router).reconcile()
            except Killed:
                pass
            clock.now += 5
    world.kill_at = None
    restarted = controller(tmp_path, world, clock, router)
    state = restarted.reconcile()  # one reconcile period after the last kill
    alive = world.alive("s")
    assert world.unrecorded("s") == [], "orphan: a live job no manifest row knows"
    assert len({r for _, r in alive}) == len(alive), "duplicate replica"
    assert len(alive) == state.decisions["s"].desired
    assert restarted.journal.read().intent is None


def test_a_job_the_killed_controllers_sbatch_submits_after_the_restart_is_cancelled_within_the_settle_window(
        tmp_path):
    # real SLURM, CI: a SIGKILL leaves the controller's sbatch child running; slurmctld, busy, accepted its job after
    # the restarted controller had looked, and that job ran with no manifest row (test_fleet_slurm's orphan check)
    world, clock = World(), Clock()
    router = Router(clock)
    world.kill_at = 2  # the pass's journal write, the submit intent, then sbatch: killed before SLURM has the job
    with pytest.raises(Killed):
        controller(tmp_path, world, clock, router).reconcile()
    world.kill_at = None
    restarted = controller(tmp_path, world, clock, router)
    restarted.reconcile()  # recovers the intent: nothing unrecorded yet; submits replica 0 again
    world.queue["999"] = ("s", 0, "PENDING")  # the orphaned sbatch gets through now
    clock.now += 5
    restarted.reconcile()
    assert world.unrecorded("s") == [] and ("999", "cancel") in world.signalled
    assert len(world.alive("s")) == 1
    clock.now += SBATCH_SETTLE_S
    restarted.reconcile()
    assert restarted.journal.read().sweeps == {}  # the window closes: no squeue by name in every pass for ever


def test_an_interrupted_submission_is_journalled_before_sbatch_runs(tmp_path):
    world, clock = World(), Clock()
    router = Router(clock)
    c = controller(tmp_path, world, clock, router, low=2)
    world.kill_at = 3  # journal write, journal intent, then sbatch of the first job: killed right after it
    with pytest.raises(Killed):
        c.reconcile()
    intent = c.journal.read().intent
    assert intent is not None and (intent.server, intent.action, intent.count) == ("s", Action.SUBMIT, 2)


def test_launch_count_fills_free_replica_indices():
    assert launch_count(set(), 2) == 2
    assert launch_count({0, 2}, 1) == 2  # replica 1 is free
    assert launch_count({0, 1}, 2) == 4


def test_victims_are_pending_replicas_first_then_the_highest_index():
    def live(replica: int, state: str) -> Replica:
        return Replica(Submitted("d", "s", replica, str(replica), "slurm", "cpu", ("m",), 1, 0.0, ""),
                       JobView(state, None, None))

    fleet = [live(0, "RUNNING"), live(1, "PENDING"), live(2, "RUNNING"), live(3, "RUNNING")]
    assert [r.row.replica for r in victims(fleet, 2)] == [1, 3]


def test_a_failing_pass_is_reported_and_the_loop_goes_on(tmp_path):
    world, clock = World(), Clock()
    router = Router(clock)
    calls = []

    def flaky_observe():
        calls.append(clock.now)
        if len(calls) == 1:
            raise SchedulerError("`squeue ...` exited 1: slurm_load_jobs error: Socket timed out")
        return World.observe(world)

    world.observe = flaky_observe
    lines: list[str] = []
    c = controller(tmp_path, world, clock, router)
    c.run(5, stop=lambda: len(calls) >= 2, sleep=lambda s: setattr(clock, "now", clock.now + s), report=lines.append)
    assert lines[0].startswith("grace-hpc fleet: pass failed, retrying in 5s: `squeue ...` exited 1")
    assert lines[1] == "grace-hpc fleet: s: desired 1 (below-min: 0 alive, replicas.min is 1)"
    assert len(world.alive("s")) == 1


def test_each_pass_records_what_the_fleet_held_and_what_the_load_needed(tmp_path):
    world, clock = World(), Clock()
    router = Router(clock)
    ledger = UsageLedger(tmp_path / "fleet-usage.jsonl")
    c = Controller(deployment(low=2), world, StateFile(tmp_path / "fleet.json"), router, {"s": 4}, clock, ledger)
    c.reconcile()  # submits two: pending, so nothing is held yet
    for job_id, (server, replica, _) in list(world.queue.items()):
        world.queue[job_id] = (server, replica, "RUNNING")
    router.outstanding = 3  # 2 per replica: the load needs both
    clock.now += 5
    c.reconcile()
    assert [(e.running, e.needed, e.gpus_per_replica) for e in ledger.read()] == [(0, 0, 4), (2, 2, 4)]


# -- wall-time handover, preemption, crash backoff ----------------------------------------------------------------


def timed_world(tmp_path, **kw) -> tuple[World, Clock, Router, Controller, str]:
    """A controller over a world that keeps time, after its first pass: the one replica it submitted, pending."""
    clock = Clock()
    world, router = World(clock), Router(clock)
    c = controller(tmp_path, world, clock, router, **kw)
    c.reconcile()
    [(first, _)] = world.alive("s")
    return world, clock, router, c, first


def handover_world(tmp_path, **kw):
    """One ready replica whose 120 s wall time started now; handover_lead_s 60; passes every 5 s."""
    world, clock, router, c, first = timed_world(tmp_path, lead=60, **kw)
    world.start(first, wall_s=120)
    return world, clock, router, c, first


def test_a_replica_gets_one_successor_when_its_time_left_falls_within_the_lead_and_is_retired_once_it_is_ready(
        tmp_path):
    world, clock, _, c, first = handover_world(tmp_path)
    passes(c, clock, 55)  # 65 s left: not yet
    assert world.alive("s") == [(first, 0)]
    passes(c, clock, 10)  # 55 s left: the successor is submitted, once
    [(successor, replica)] = [(j, r) for j, r in world.alive("s") if j != first]
    assert replica == 1 and c.journal.read().books["s"].successors == {first: successor}
    assert c.journal.read().decisions["s"].desired == 1, "the successor replaces the old replica, it is not an extra"
    world.start(successor, wall_s=120, ready=False)
    passes(c, clock, 20)  # starting: the old replica keeps serving, nothing else is submitted
    assert sorted(j for j, _ in world.alive("s")) == sorted([first, successor])
    assert world.signalled == []
    world.ready.add(successor)
    c.reconcile()
    assert world.signalled == [(first, "drain")], "the old replica drains, it is not cancelled"
    assert world.alive("s") == [(successor, 1)]
    assert c.journal.read().books["s"].successors == {}


def test_a_successor_still_pending_near_the_old_replicas_end_is_in_the_journal_with_slurms_reason(tmp_path):
    world, clock, _, c, first = handover_world(tmp_path)
    passes(c, clock, 100)  # 20 s left, the successor never started
    state = c.journal.read()
    [successor] = state.books["s"].successors.values()
    assert state.notes["s"] == (f"successor {successor} of job {first} still pending (Resources); {first} ends in "
                                "25s",)
    assert len(world.alive("s")) == 2


@pytest.mark.parametrize("kill_at", range(1, 6))
def test_a_controller_killed_while_handing_over_never_submits_a_second_successor(tmp_path, kill_at):
    world, clock, router, c, first = handover_world(tmp_path)
    passes(c, clock, 60)  # the next pass, at 60 s left, submits the successor
    world.kill_at = next(world.steps) + kill_at  # somewhere in the pass that submits the successor
    with pytest.raises(Killed):
        c.reconcile()
    world.kill_at = None
    for _ in range(3):
        clock.now += 5
        controller(tmp_path, world, clock, router, lead=60).reconcile()
    successors = [j for j, _ in world.alive("s") if j != first]
    assert len(successors) == 1 and world.unrecorded("s") == []
    assert world.recorded == [first, *successors], "a second successor was submitted (and cancelled later)"
    assert c.journal.read().books["s"].successors == {first: successors[0]}


def test_a_ready_replica_that_starts_draining_on_its_own_is_replaced_at_once_whatever_the_demand(tmp_path):
    world, clock, _, c, first = handover_world(tmp_path, low=1, high=3)
    world.ends.pop(first)  # no wall time: only the preemption matters here
    passes(c, clock, 10)
    world.draining[first] = "stopped by SIGTERM (scancel, preemption or the time limit)"
    c.reconcile()
    [replacement] = [j for j, _ in world.alive("s") if j != first]
    d = c.journal.read().decisions["s"]
    assert (d.desired, d.reason) == (1, Reason.REPLACE) and "stopped by SIGTERM" in d.detail
    world.end(first)
    passes(c, clock, 20)  # the ended job is forgotten, not replaced a second time
    assert [j for j, _ in world.alive("s")] == [replacement]


def test_a_scale_down_the_controller_orders_is_a_drain_not_a_preemption_to_replace(tmp_path):
    world, clock, router, c, _ = handover_world(tmp_path, low=1, high=3)
    router.outstanding = 6
    passes(c, clock, 20)
    for job, _ in world.alive("s"):
        world.start(job)
    router.outstanding = 0
    passes(c, clock, 40)
    assert len(world.alive("s")) == 1
    assert Reason.REPLACE not in {c.journal.read().decisions["s"].reason}
    assert {how for _, how in world.signalled} == {"drain"}, "running replicas drain their requests"


def test_the_backoff_doubles_from_30_seconds_up_to_half_an_hour():
    assert [backoff_s(n) for n in (0, 1, 2, 3, 4, 10)] == [0, 30, 60, 120, 240, 1800]


def test_an_engine_that_keeps_failing_at_start_is_resubmitted_with_backoff_until_a_replica_is_ready(tmp_path):
    clock = Clock()
    world, router = World(clock), Router(clock)
    c = controller(tmp_path, world, clock, router)
    submitted_at = []
    for _ in range(100):  # 500 s of passes every 5 s; each job fails before it is ready
        before = set(world.queue)
        c.reconcile()
        submitted_at += [clock.now] * len(set(world.queue) - before)
        for job, _ in world.alive("s"):
            world.end(job, "FAILED")
        clock.now += 5
    gaps = [b - a for a, b in zip(submitted_at, submitted_at[1:], strict=False)]
    assert gaps[:4] == [35, 65, 125, 245], "retried after 30, 60, 120, 240 s (plus the pass that saw it fail)"
    state = c.journal.read()
    assert state.decisions["s"].reason is Reason.BACKOFF and "FAILED" in state.books["s"].last_failure


def test_a_replica_that_becomes_ready_resets_the_backoff(tmp_path):
    world, clock, _, c, job = timed_world(tmp_path)
    world.end(job, "FAILED")
    clock.now += 5
    c.reconcile()
    assert c.journal.read().books["s"].failures == 1 and world.alive("s") == []
    clock.now += 30
    c.reconcile()
    [(job, _)] = world.alive("s")
    world.start(job)
    clock.now += 5
    c.reconcile()
    book = c.journal.read().books["s"]
    assert (book.failures, book.retry_at) == (0, 0.0)


def test_a_replica_stopped_from_outside_before_it_was_ready_is_replaced_not_counted_as_a_failed_start(tmp_path):
    world, clock, _, c, job = timed_world(tmp_path)
    world.start(job, ready=False)
    world.end(job, "CANCELLED")  # preempted, or scancel'd by an admin, while the engine was loading
    clock.now += 5
    c.reconcile()
    book = c.journal.read().books["s"]
    assert book.failures == 0 and len(world.alive("s")) == 1
