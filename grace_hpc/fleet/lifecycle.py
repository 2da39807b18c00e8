"""What happened to a server's replicas since the last pass, and what that asks of the controller (pure).

    assess(book, replicas, lead_s, now) -> Assessment

- A replica whose job will end within `handover_lead_s` (squeue's time left) is *due*: it gets a successor, which
  counts toward the replica target in its place (the old one is not counted any more, it keeps serving).
- A successor that is ready retires its old replica: the controller drains it (WINCH: it stops taking requests,
  finishes those in flight, deregisters, exits).
- A replica that leaves without the controller's order (its endpoint `draining`, or its job ended: preemption, a
  `scancel`, a node failure, its time limit with no successor) is *lost*. One that had been ready is replaced at
  once, whatever the demand windows say, and so is one stopped from outside before it was ready (SIGTERM, a
  cancelled or preempted job). One whose start failed (its engine exited, its job FAILED) is a start-up *failure*:
  the next submission waits `backoff_s(failures)`, and the count is reset when a replica becomes ready.
The controller's own drains never look lost: it removes a drained job's manifest row when it signals it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from grace_hpc.launch.manifest import JobView, Submitted, is_alive
from grace_hpc.serve.supervisor import TERMINATED

#: the first retry after a start-up failure waits this long, each further failure twice as long, up to the cap
BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 1800.0
#: a retired job no longer in the manifest is left alone this long (its drain), then forgotten
RETIRING_KEEP_S = 900.0
PENDING_STATES = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING")
#: a job that ends so without ever being ready failed to start (its engine, its weights, its node)
FAILED_STATES = ("FAILED", "OUT_OF_MEMORY", "BOOT_FAIL", "NODE_FAIL")


@dataclass(frozen=True)
class Replica:
    """A server job the manifest records (ended ones too, until the controller forgets them)."""

    row: Submitted
    view: JobView | None  # None: the scheduler no longer knows the job
    ready: bool = False  # every model of the job has a `ready` endpoint
    leaving: str | None = None  # an endpoint of the job is draining: why (the supervisor's reason)
    error: str | None = None  # an endpoint of the job is gone: why (the engine's exit and log tail)

    @property
    def job_id(self) -> str:
        return self.row.job_id

    @property
    def alive(self) -> bool:
        return is_alive(self.view)

    @property
    def pending(self) -> bool:
        return self.view is not None and self.view.state in PENDING_STATES

    @property
    def time_left(self) -> int | None:
        return self.view.time_left if self.view is not None else None


@dataclass(frozen=True)
class ServerBook:
    """What the controller remembers about one server's replicas between passes (in its journal)."""

    successors: Mapping[str, str] = field(default_factory=dict)  # old job -> its successor (a handover under way)
    ready: tuple[str, ...] = ()  # jobs seen ready: a job that leaves after that was preempted, not a failed start
    settled: tuple[str, ...] = ()  # lost jobs already replaced or counted as failures (until forgotten)
    retiring: Mapping[str, float] = field(default_factory=dict)  # jobs the controller drained -> when
    failures: int = 0  # start-up failures in a row
    retry_at: float = 0.0  # no submission before this (backoff)
    last_failure: str | None = None


@dataclass(frozen=True)
class Assessment:
    book: ServerBook  # updated: failures counted, readiness seen, finished handovers dropped
    alive: tuple[Replica, ...]  # every live job (their replica indices are taken)
    counted: tuple[Replica, ...]  # what counts toward the target: alive, not leaving, not an old with a successor
    replaced: tuple[str, ...]  # lost jobs that had been ready: each is replaced at once
    due: tuple[Replica, ...]  # counted, running, ending within the lead, no successor yet
    retire: tuple[str, ...]  # old jobs whose successor is ready
    ended: tuple[str, ...]  # rows of jobs that ended: forget them in the manifest
    notes: tuple[str, ...]  # what an operator should see (a successor still pending near its old one's end)


def backoff_s(failures: int) -> float:
    """Seconds to wait before the next submission after `failures` start-up failures in a row: 0, 30, 60, 120, ..."""
    return 0.0 if failures <= 0 else min(BACKOFF_BASE_S * 2 ** (failures - 1), BACKOFF_MAX_S)


def due(time_left_s: int | None, lead_s: float) -> bool:
    """Whether a running replica with this much time left needs its successor now."""
    return time_left_s is not None and time_left_s <= lead_s


def failed_start(r: Replica) -> bool:
    """A lost replica that was never seen ready: did its start fail, or was it stopped from outside?"""
    if r.error:
        return True  # the engine exited (the supervisor's `gone` endpoint says how)
    if r.leaving:
        return r.leaving != TERMINATED  # "failed: ..." (the supervisor gave up), not a SIGTERM
    return r.view is not None and r.view.state in FAILED_STATES


def _why(r: Replica) -> str:
    if r.leaving:
        return r.leaving
    if r.error:
        return r.error
    return f"job {r.job_id} ended ({r.view.state if r.view else 'gone from squeue'})"


def assess(book: ServerBook, replicas: Sequence[Replica], lead_s: float, now: float) -> Assessment:
    alive = {r.job_id: r for r in replicas if r.alive}
    seen_ready = {r.job_id for r in alive.values() if r.ready}
    ready = set(book.ready) | seen_ready
    successors = {old: new for old, new in book.successors.items()
                  if old in alive and new in alive and not alive[old].leaving}
    failures, retry_at, last_failure = book.failures, book.retry_at, book.last_failure
    replaced, notes = [], []
    lost = [r for r in replicas if (not r.alive or r.leaving) and r.job_id not in book.settled]
    for r in lost:
        if r.job_id in book.successors and book.successors[r.job_id] in alive:
            continue  # an old replica that ended before its successor was ready: the successor is its replacement
        if r.job_id in ready or not failed_start(r):
            replaced.append(r.job_id)
            notes.append(f"job {r.job_id} left with {r.time_left if r.time_left is not None else '?'}s left, "
                         f"replaced at once: {_why(r)}")
        else:
            failures += 1
            retry_at = now + backoff_s(failures)
            last_failure = _why(r)
    if seen_ready - set(book.ready):  # a replica became ready: the server starts fine again
        failures, retry_at = 0, 0.0
    for old, new in successors.items():
        s = alive[new]
        if s.pending:
            left = alive[old].time_left
            notes.append(f"successor {new} of job {old} still pending ({s.view.reason if s.view else '?'}); "
                         f"{old} ends in {'?' if left is None else left}s")
    retire = tuple(old for old, new in successors.items() if new in seen_ready)
    counted = tuple(r for r in alive.values() if not r.leaving and r.job_id not in successors)
    waiting = set(successors.values())
    due_now = tuple(r for r in counted if not r.pending and r.job_id not in waiting and due(r.time_left, lead_s))
    ended = tuple(r.job_id for r in replicas if not r.alive)
    known = {r.job_id for r in replicas}
    new_book = replace(
        book,
        successors={o: n for o, n in successors.items() if o not in retire},
        ready=tuple(sorted(ready & set(alive))),
        settled=tuple(sorted((set(book.settled) | {r.job_id for r in lost}) & known)),
        retiring={j: at for j, at in book.retiring.items() if at > now - RETIRING_KEEP_S},
        failures=failures, retry_at=retry_at, last_failure=last_failure)
    return Assessment(new_book, tuple(alive.values()), counted, tuple(replaced), due_now, retire, ended, tuple(notes))
