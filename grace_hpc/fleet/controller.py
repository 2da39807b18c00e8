"""`fleet run`: the reconcile loop. Each pass observes (manifest + one squeue + the registry), decides (policy and
lifecycle, pure), then acts: submits through the launcher (so the manifest stays the one record of jobs), hands
replicas near their time limit over to successors, and drains through `stop`.

    pass:  recover a journalled intent -> observe -> sample demand -> assess each server's replicas (lifecycle.py)
           -> decide -> for each action: journal the intent -> submit, hand over, retire or cancel -> clear it

Restart-safety: the journal (state.py) holds the action under way. A controller SIGKILLed after sbatch accepted a
job but before the manifest recorded it leaves a job no record knows; the next pass finds it by its job name
(`grace-<deployment>-<server>`, the user's own jobs only) and cancels it before deciding again, so nothing is
duplicated or orphaned. A SIGKILL does not reach the controller's sbatch child, which can still submit after the
restarted controller looked: every pass cancels such jobs of that server for SBATCH_SETTLE_S after the intent.
A successor the manifest recorded before the journal paired it with its old replica is paired then. A drain that
was cut short is repeated (signalling an ending job is harmless).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from grace_hpc.config.deployment import Deployment, ServerSpec
from grace_hpc.errors import GraceError
from grace_hpc.fleet.demand import Demand
from grace_hpc.fleet.lifecycle import Assessment, Replica, assess, backoff_s
from grace_hpc.fleet.limits import cap_partitions
from grace_hpc.fleet.policy import Decision, Reason, Sample, cap_gpus, decide, needed
from grace_hpc.fleet.state import Action, FleetState, Intent, LastDecision, StateFile
from grace_hpc.fleet.usage import UsageEntry, UsageLedger

#: demand history kept beyond the policy's longest window (the window must be covered to decide)
HISTORY_MARGIN_S = 60.0
#: how long an sbatch whose controller was killed may still submit: it retries a refused submission 15 times,
#: sleeping 1, 2, ... 15 s (Slurm src/sbatch/sbatch.c: MAX_RETRIES 15, `sleep(++retries)`: 120 s in all), each
#: attempt bounded by MessageTimeout (10 s by default)
SBATCH_SETTLE_S = 300.0


class Fleet(Protocol):
    """What the controller does to the world (`SlurmFleet` in world.py; tests pass one of their own)."""

    def observe(self) -> dict[str, list[Replica]]: ...  # server -> its manifest rows, ended ones too (one squeue)
    def submit(self, server: str, count: int) -> list[str]: ...  # launch with `count` replicas: the new job ids
    def drain(self, job_ids: Sequence[str], *, gracefully: bool = False) -> None: ...  # cancel (or drain: WINCH), forget
    def forget(self, job_ids: Sequence[str]) -> None: ...  # drop rows of ended jobs from the manifest
    def unrecorded(self, server: str) -> list[str]: ...  # live jobs of `server` that no manifest row knows


def launch_count(taken: set[int], add: int) -> int:
    """The replica count that makes the launcher submit exactly `add` jobs: it fills every free replica index below
    the count, and `taken` are the indices already alive."""
    count = free = 0
    while free < add:
        free += count not in taken
        count += 1
    return count


def victims(live: Sequence[Replica], remove: int, keep: Collection[str] = ()) -> list[Replica]:
    """Which replicas to let go: pending ones first (they cost nothing yet), then those ending soonest within the
    hour (a successor would be due), then the highest replica index; never those in `keep` (successors)."""
    order = sorted((r for r in live if r.job_id not in keep),
                   key=lambda r: (not r.pending, min(r.time_left if r.time_left is not None else 3600, 3600),
                                  -r.row.replica))
    return order[:remove]


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
                 partition_limits: Mapping[str, int] | None = None,
                 leads: Callable[[], Mapping[str, float]] | None = None):
        self.deployment, self.fleet, self.journal, self.demand = deployment, fleet, journal, demand
        self.gpus_per_replica, self.clock, self.usage = gpus_per_replica, clock, usage
        self.partition_limits = partition_limits or {}  # limits.parse_limits: the user's GPU limits in SLURM
        # server -> handover_lead_s (handover.handover_lead: configured or measured); read once per pass
        self.leads = leads or (lambda: {s.name: s.handover_lead_s or 0.0 for s in deployment.servers})

    def reconcile(self) -> FleetState:
        """One pass; returns what it decided (also in the journal)."""
        state = self.journal.read()
        if state.intent is not None:
            state = self._recover(state, state.intent).with_intent(None)
            self.journal.write(state)
        now = self.clock()
        state = self._sweep(state, now)
        observed = self.fleet.observe()
        demand, leads = self.demand(), self.leads()
        servers = self.deployment.servers
        seen = {s.name: assess(state.book(s.name), observed.get(s.name, []), leads.get(s.name, 0.0), now)
                for s in servers}
        # a lost replica that had been ready still counts for the policy: the pass replaces it
        actual = {n: len(a.counted) + len(a.replaced) for n, a in seen.items()}
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
        decisions = {s.name: self._explain(decisions[s.name], seen[s.name], now) for s in servers}
        state = FleetState({n: LastDecision.of(d, now) for n, d in decisions.items()}, history, None,
                           {n: a.book for n, a in seen.items()}, {n: a.notes for n, a in seen.items()}, state.sweeps)
        self.journal.write(state)
        if self.usage is not None:
            self.usage.append(self._usage(observed, history, now))
        for s in servers:
            state = self._act(state, s, decisions[s.name], seen[s.name], now)
        return state

    @staticmethod
    def _explain(d: Decision, a: Assessment, now: float) -> Decision:
        """Say why a replacement is made, or why a submission waits (backoff after failed start-ups)."""
        if d.desired > len(a.counted) and a.book.retry_at > now:
            return Decision(len(a.counted), Reason.BACKOFF,
                            f"{a.book.failures} start-up failure(s) in a row, next try in {a.book.retry_at - now:.0f}s "
                            f"(backoff {backoff_s(a.book.failures):g}s): {a.book.last_failure}")
        if a.replaced and d.reason is Reason.STEADY:
            return Decision(d.desired, Reason.REPLACE, "; ".join(n for n in a.notes if "replaced at once" in n))
        return d

    def _act(self, state: FleetState, s: ServerSpec, d: Decision, a: Assessment, now: float) -> FleetState:
        """Submit, cancel, hand over and retire for one server; each action journalled before it is taken."""
        book = a.book
        if a.ended:
            self.fleet.forget(a.ended)
        change = d.desired - len(a.counted)
        if change > 0:
            state = self._journalled(state, Intent(s.name, Action.SUBMIT, change, (), now))
            self.fleet.submit(s.name, launch_count({r.row.replica for r in a.alive}, change))
        chosen: list[Replica] = []
        if change < 0:
            chosen = victims(a.counted, -change, keep=set(book.successors.values()))
            pending = tuple(r.job_id for r in chosen if r.pending)
            running = tuple(r.job_id for r in chosen if not r.pending)
            if pending:
                state = self._journalled(state, Intent(s.name, Action.DRAIN, len(pending), pending, now))
                self.fleet.drain(pending)
            if running:
                state = self._journalled(state, Intent(s.name, Action.RETIRE, len(running), running, now))
                self.fleet.drain(running, gracefully=True)
                book = replace(book, retiring={**book.retiring, **dict.fromkeys(running, now)})
        due = [r for r in a.due if r not in chosen]
        if due and book.retry_at <= now:
            olds = tuple(r.job_id for r in due)
            state = self._journalled(state, Intent(s.name, Action.HANDOVER, len(olds), olds, now))
            new = self.fleet.submit(s.name, launch_count({r.row.replica for r in a.alive}, len(olds)))
            book = replace(book, successors={**book.successors, **dict(zip(olds, new, strict=False))})
        if a.retire:
            state = self._journalled(state, Intent(s.name, Action.RETIRE, len(a.retire), a.retire, now))
            self.fleet.drain(a.retire, gracefully=True)
            book = replace(book, retiring={**book.retiring, **dict.fromkeys(a.retire, now)})
        if state.intent is not None or book != a.book:
            state = state.with_book(s.name, book).with_intent(None)
            self.journal.write(state)  # done: the manifest records the result, the book what it was for
        return state

    def _journalled(self, state: FleetState, intent: Intent) -> FleetState:
        state = state.with_intent(intent)
        self.journal.write(state)
        return state

    def _usage(self, observed: Mapping[str, Sequence[Replica]], history: Mapping[str, Sequence[Sample]], now: float
               ) -> list[UsageEntry]:
        """What each server held (running replicas) and needed (its latest load) at this pass."""
        entries = []
        for s in self.deployment.servers:
            running = sum(r.alive and not r.pending for r in observed.get(s.name, ()))
            latest = history[s.name][-1] if history[s.name] else None
            load = latest.outstanding if latest else 0
            entries.append(UsageEntry(now, s.name, s.partition, self.gpus_per_replica[s.name], running,
                                      min(running, needed(load, s.scale_up.outstanding_per_replica))))
        return entries

    def _recover(self, state: FleetState, intent: Intent) -> FleetState:
        """Finish what a killed controller was doing (see the module docstring)."""
        if intent.action in (Action.SUBMIT, Action.HANDOVER):
            # the jobs no record knows are cancelled by `_sweep`, from now until the killed sbatch cannot submit
            state = replace(state, sweeps={**state.sweeps, intent.server: intent.at + SBATCH_SETTLE_S})
            if intent.action is Action.HANDOVER:
                return self._adopt(state, intent)
        else:
            self.fleet.drain(intent.job_ids, gracefully=intent.action is Action.RETIRE)
        return state

    def _sweep(self, state: FleetState, now: float) -> FleetState:
        """Within a settle window opened by `_recover`, cancel the server's jobs that no manifest row knows (a
        retiring replica, whose row is already gone, drains on); close the windows that have passed."""
        sweeps = {server: until for server, until in state.sweeps.items() if until > now}
        retiring = {j for b in state.books.values() for j in b.retiring}
        for server in sweeps:
            unknown = [j for j in self.fleet.unrecorded(server) if j not in retiring]
            if unknown:
                self.fleet.drain(unknown)
        if sweeps != state.sweeps:
            state = replace(state, sweeps=sweeps)
            self.journal.write(state)
        return state

    def _adopt(self, state: FleetState, intent: Intent) -> FleetState:
        """Pair the successors the manifest recorded after the intent with the old replicas still without one."""
        book = state.book(intent.server)
        mine = [r for r in self.fleet.observe().get(intent.server, []) if r.alive]
        paired = set(book.successors) | set(book.successors.values())
        olds = [j for j in intent.job_ids if j not in book.successors]
        new = [r.job_id for r in sorted(mine, key=lambda r: r.row.submitted_at)
               if r.row.submitted_at >= intent.at and r.job_id not in paired and r.job_id not in intent.job_ids]
        return state.with_book(intent.server, replace(
            book, successors={**book.successors, **dict(zip(olds, new, strict=False))}))

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
                    for note in state.notes.get(server, ()):
                        report(f"grace-hpc fleet: {server}: {note}")
            sleep(max(0.0, period_s - (self.clock() - started)))
