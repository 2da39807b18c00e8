"""`fleet run`: the reconcile loop. Each pass observes (manifest + one squeue), decides (policy, pure), then acts:
submits through the launcher (so the manifest stays the one record of jobs) or drains through `stop`.

    pass:  recover a journalled intent -> observe -> sample demand -> decide -> for each server that differs:
           journal the intent -> submit or drain -> clear the intent

Restart-safety: the journal (state.py) holds the action under way. A controller SIGKILLed after sbatch accepted a
job but before the manifest recorded it leaves a job no record knows; the next pass finds it by its job name
(`grace-<deployment>-<server>`, the user's own jobs only) and cancels it before deciding again, so nothing is
duplicated or orphaned. A drain that was cut short is repeated (scancel of an ending job is harmless).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from grace_hpc.config.deployment import Deployment
from grace_hpc.errors import GraceError
from grace_hpc.fleet.demand import Demand
from grace_hpc.fleet.limits import cap_partitions
from grace_hpc.fleet.policy import Decision, Sample, cap_gpus, decide, needed
from grace_hpc.fleet.state import Action, FleetState, Intent, LastDecision, StateFile
from grace_hpc.fleet.usage import UsageEntry, UsageLedger
from grace_hpc.launch.manifest import JobView, Submitted

#: demand history kept beyond the policy's longest window (the window must be covered to decide)
HISTORY_MARGIN_S = 60.0


@dataclass(frozen=True)
class Live:
    """A replica job that is pending or running."""

    row: Submitted
    view: JobView

    @property
    def pending(self) -> bool:
        return self.view.state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING")


class Fleet(Protocol):
    """What the controller does to the world (`SlurmFleet` in world.py; tests pass one of their own)."""

    def observe(self) -> dict[str, list[Live]]: ...  # server -> its live replicas (manifest + one squeue)
    def submit(self, server: str, count: int) -> None: ...  # launch with `count` replicas of `server`
    def drain(self, job_ids: Sequence[str]) -> None: ...  # cancel these manifest jobs and forget them
    def unrecorded(self, server: str) -> list[str]: ...  # live jobs of `server` that no manifest row knows


def launch_count(taken: set[int], add: int) -> int:
    """The replica count that makes the launcher submit exactly `add` jobs: it fills every free replica index below
    the count, and `taken` are the indices already alive."""
    count = free = 0
    while free < add:
        free += count not in taken
        count += 1
    return count


def victims(live: Sequence[Live], remove: int) -> list[Submitted]:
    """Which replicas to let go: pending ones first (they cost nothing yet), then the highest replica index."""
    order = sorted(live, key=lambda r: (not r.pending, -r.row.replica))
    return [r.row for r in order[:remove]]


def extend(history: Sequence[Sample], sample: Sample | None, now: float, keep_s: float) -> tuple[Sample, ...]:
    """The history with `sample` appended (when it is newer than the last one) and samples older than `keep_s`
    dropped, except the newest of those: the policy needs one sample at or before its window's start."""
    samples = [*history, sample] if sample and (not history or sample.at > history[-1].at) else list(history)
    old = [s for s in samples if s.at < now - keep_s]
    return tuple(old[-1:] + [s for s in samples if s.at >= now - keep_s])


class Controller:
    def __init__(self, deployment: Deployment, fleet: Fleet, journal: StateFile,
                 demand: Callable[[], Demand | None], gpus_per_replica: Mapping[str, int],
                 clock: Callable[[], float] = time.time, usage: UsageLedger | None = None,
                 partition_limits: Mapping[str, int] | None = None):
        self.deployment, self.fleet, self.journal, self.demand = deployment, fleet, journal, demand
        self.gpus_per_replica, self.clock, self.usage = gpus_per_replica, clock, usage
        self.partition_limits = partition_limits or {}  # limits.parse_limits: the user's GPU limits in SLURM

    def reconcile(self) -> FleetState:
        """One pass; returns what it decided (also in the journal)."""
        state = self.journal.read()
        if state.intent is not None:
            self._recover(state.intent)
            state = state.with_intent(None)
            self.journal.write(state)
        live = self.fleet.observe()
        now, demand = self.clock(), self.demand()
        servers = self.deployment.servers
        actual = {s.name: len(live.get(s.name, [])) for s in servers}
        history = {}
        for s in servers:
            keep = max(s.scale_up.for_s, s.scale_down.idle_timeout_s) + HISTORY_MARGIN_S
            history[s.name] = extend(state.history.get(s.name, ()), demand.sample(s.models) if demand else None,
                                     now, keep)
        decisions: dict[str, Decision] = cap_gpus(
            {s.name: decide(history[s.name], s, actual[s.name], now) for s in servers}, actual,
            self.gpus_per_replica, self.deployment.max_gpus)
        decisions = cap_partitions(decisions, actual, self.gpus_per_replica, {s.name: s.partition for s in servers},
                                   self.partition_limits)
        state = FleetState({n: LastDecision.of(d, now) for n, d in decisions.items()}, history)
        self.journal.write(state)
        if self.usage is not None:
            self.usage.append(self._usage(live, history, now))
        for name, d in decisions.items():
            change = d.desired - actual[name]
            if change > 0:
                self.journal.write(state.with_intent(Intent(name, Action.SUBMIT, change, (), now)))
                self.fleet.submit(name, launch_count({r.row.replica for r in live.get(name, [])}, change))
            elif change < 0:
                chosen = tuple(r.job_id for r in victims(live[name], -change))
                self.journal.write(state.with_intent(Intent(name, Action.DRAIN, -change, chosen, now)))
                self.fleet.drain(chosen)
            if change:
                self.journal.write(state)  # done: the manifest records the result
        return state

    def _usage(self, live: Mapping[str, Sequence[Live]], history: Mapping[str, Sequence[Sample]], now: float
               ) -> list[UsageEntry]:
        """What each server held (running replicas) and needed (its latest load) at this pass."""
        entries = []
        for s in self.deployment.servers:
            running = sum(not r.pending for r in live.get(s.name, ()))
            latest = history[s.name][-1] if history[s.name] else None
            load = latest.outstanding if latest else 0
            entries.append(UsageEntry(now, s.name, s.partition, self.gpus_per_replica[s.name], running,
                                      min(running, needed(load, s.scale_up.outstanding_per_replica))))
        return entries

    def _recover(self, intent: Intent) -> None:
        """Finish what a killed controller was doing (see the module docstring)."""
        if intent.action is Action.SUBMIT:
            unknown = self.fleet.unrecorded(intent.server)
            if unknown:
                self.fleet.drain(unknown)
        else:
            self.fleet.drain(intent.job_ids)

    def run(self, period_s: float, stop: Callable[[], bool], sleep: Callable[[float], None] = time.sleep,
            report: Callable[[str], None] = print) -> None:
        """Reconcile every `period_s` seconds until `stop()` says so. A pass that fails (squeue busy, sbatch
        refusing, the shared file system hiccuping) is reported and tried again at the next period: the journal
        keeps its intent, so nothing is lost or done twice."""
        while not stop():
            started = self.clock()
            try:
                state = self.reconcile()
            except GraceError as exc:
                report(f"grace-hpc fleet: pass failed, retrying in {period_s:g}s: {exc}")
            else:
                for server, d in state.decisions.items():
                    report(f"grace-hpc fleet: {server}: desired {d.desired} ({d.reason.value}: {d.detail})")
            sleep(max(0.0, period_s - (self.clock() - started)))
