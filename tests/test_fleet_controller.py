"""The reconcile loop against an in-memory scheduler and manifest (the real ones: tests/slurm/test_fleet_slurm.py).

The scheduler here keeps what SLURM keeps (jobs and their states) and the manifest what launch records, so a
controller "SIGKILLed" between the two leaves exactly what a real one would: a job no record knows."""

import itertools
import random
from collections.abc import Sequence

import pytest

from grace_hpc.config.deployment import Deployment
from grace_hpc.errors import SchedulerError
from grace_hpc.fleet.controller import Controller, Live, launch_count, victims
from grace_hpc.fleet.demand import Demand, ModelDemand
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
    """An in-memory SLURM queue plus manifest. `kill_at` raises Killed at that numbered step."""

    def __init__(self) -> None:
        self.queue: dict[str, tuple[str, int, str]] = {}  # job id -> (server, replica, state)
        self.manifest: dict[str, Submitted] = {}
        self.ids = itertools.count(100)
        self.steps = itertools.count()
        self.kill_at: int | None = None

    def step(self) -> None:
        if next(self.steps) == self.kill_at:
            raise Killed

    def observe(self) -> dict[str, list[Live]]:
        live: dict[str, list[Live]] = {}
        for row in self.manifest.values():
            server, _, state = self.queue[row.job_id]
            if state in ("PENDING", "RUNNING"):
                live.setdefault(server, []).append(Live(row, JobView(state, None, None)))
        return live

    def submit(self, server: str, count: int) -> None:
        taken = {r.row.replica for r in self.observe().get(server, [])}
        for replica in range(count):
            if replica in taken:
                continue
            self.step()
            job_id = str(next(self.ids))
            self.queue[job_id] = (server, replica, "PENDING")  # sbatch accepted it
            self.step()
            self.manifest[job_id] = Submitted("d", server, replica, job_id, "slurm", "cpu", ("m",), 1, 0.0, "")

    def drain(self, job_ids: Sequence[str]) -> None:
        self.step()
        for j in job_ids:
            server, replica, _ = self.queue[j]
            self.queue[j] = (server, replica, "CANCELLED")
        self.step()
        for j in job_ids:
            self.manifest.pop(j, None)

    def unrecorded(self, server: str) -> list[str]:
        return [j for j, (s, _, state) in self.queue.items()
                if s == server and state in ("PENDING", "RUNNING") and j not in self.manifest]

    def alive(self, server: str) -> list[tuple[str, int]]:
        return [(j, r) for j, (s, r, state) in self.queue.items() if s == server and state in ("PENDING", "RUNNING")]


class KillableJournal(StateFile):
    def __init__(self, path, world: World) -> None:
        super().__init__(path)
        self.world = world

    def write(self, state) -> None:
        self.world.step()
        super().write(state)


def deployment(low: int = 1, high: int = 3, max_gpus: int | None = None) -> Deployment:
    return Deployment.model_validate({"name": "d", "max_gpus": max_gpus, "servers": [{
        "name": "s", "partition": "cpu", "models": ["m"], "replicas": {"min": low, "max": high},
        "scale_up": {"outstanding_per_replica": 2, "for_s": 10}, "scale_down": {"idle_timeout_s": 30}}]})


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
    def live(replica: int, state: str) -> Live:
        return Live(Submitted("d", "s", replica, str(replica), "slurm", "cpu", ("m",), 1, 0.0, ""),
                    JobView(state, None, None))

    fleet = [live(0, "RUNNING"), live(1, "PENDING"), live(2, "RUNNING"), live(3, "RUNNING")]
    assert [r.replica for r in victims(fleet, 2)] == [1, 3]


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
