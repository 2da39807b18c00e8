"""The controller's journal, `logs/<deployment>/fleet.json`: the last decision per server, the demand history the
policy needs, what it remembers of each server's replicas (handovers under way, start-up failures and their
backoff: lifecycle.ServerBook), and the one action under way (`intent`).

The intent is written (atomic replace) *before* the controller submits or cancels and cleared after the manifest
records the result, so a controller killed in between finds it at its next start and repairs exactly that window:
a submission SLURM accepted that the manifest never recorded is cancelled (for `sweeps`' settle window, since the
killed controller's sbatch may still be submitting), a drain is repeated, and a successor the manifest did record
before the journal paired it with its old replica is paired then (never submitted twice).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

import filelock

from grace_hpc.errors import ConfigError, GraceError
from grace_hpc.fleet.lifecycle import ServerBook
from grace_hpc.fleet.policy import Decision, Reason, Sample
from grace_hpc.registry.fs import LocalFileSystem

SCHEMA_VERSION = 1


class Action(str, Enum):
    SUBMIT = "submit"
    DRAIN = "drain"  # scancel (pending replicas, jobs no record knows)
    RETIRE = "retire"  # WINCH: running replicas drain their in-flight requests and exit
    HANDOVER = "handover"  # submit a successor for each of `job_ids`


@dataclass(frozen=True)
class Intent:
    server: str
    action: Action
    count: int  # submit: replicas to add; drain/retire: replicas to remove; handover: successors
    job_ids: tuple[str, ...] = ()  # drain/retire: the jobs chosen; handover: the old jobs
    at: float = 0.0


@dataclass(frozen=True)
class LastDecision:
    desired: int
    reason: Reason
    detail: str
    at: float

    @classmethod
    def of(cls, d: Decision, at: float) -> LastDecision:
        return cls(d.desired, d.reason, d.detail, at)


@dataclass(frozen=True)
class FleetState:
    decisions: Mapping[str, LastDecision] = field(default_factory=dict)
    history: Mapping[str, tuple[Sample, ...]] = field(default_factory=dict)
    intent: Intent | None = None
    books: Mapping[str, ServerBook] = field(default_factory=dict)
    notes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # the last pass's warnings per server
    # server -> until when each pass cancels its jobs no manifest row knows (controller.py SBATCH_SETTLE_S)
    sweeps: Mapping[str, float] = field(default_factory=dict)

    def with_intent(self, intent: Intent | None) -> FleetState:
        return replace(self, intent=intent)

    def with_book(self, server: str, book: ServerBook) -> FleetState:
        return replace(self, books={**self.books, server: book})

    def book(self, server: str) -> ServerBook:
        return self.books.get(server, ServerBook())

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "decisions": {s: {**asdict(d), "reason": d.reason.value} for s, d in self.decisions.items()},
            "history": {s: [[x.at, x.outstanding, x.waiting] for x in h] for s, h in self.history.items()},
            "intent": None if self.intent is None else {**asdict(self.intent), "action": self.intent.action.value,
                                                        "job_ids": list(self.intent.job_ids)},
            "books": {s: {**asdict(b), "ready": list(b.ready), "settled": list(b.settled)} for s, b in self.books.items()},
            "notes": {s: list(n) for s, n in self.notes.items()},
            "sweeps": dict(self.sweeps),
        }

    @classmethod
    def from_json(cls, doc: dict) -> FleetState:
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version is not {SCHEMA_VERSION}")
        intent = doc.get("intent")
        return cls(
            {s: LastDecision(int(d["desired"]), Reason(d["reason"]), str(d["detail"]), float(d["at"]))
             for s, d in doc["decisions"].items()},
            {s: tuple(Sample(float(a), int(o), int(w)) for a, o, w in h) for s, h in doc["history"].items()},
            None if intent is None else Intent(intent["server"], Action(intent["action"]), int(intent["count"]),
                                               tuple(intent["job_ids"]), float(intent["at"])),
            {s: ServerBook(dict(b["successors"]), tuple(b["ready"]), tuple(b["settled"]), dict(b["retiring"]),
                           int(b["failures"]), float(b["retry_at"]), b["last_failure"])
             for s, b in doc.get("books", {}).items()},  # absent in a journal written before handovers existed
            {s: tuple(n) for s, n in doc.get("notes", {}).items()},
            {s: float(t) for s, t in doc.get("sweeps", {}).items()},  # absent before the settle window existed
        )


class StateFile:
    """`fleet.json` in a deployment's log folder, and `fleet.lock` beside it that one controller holds while it
    runs. Creating one touches no file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fs = LocalFileSystem()
        self._lock = filelock.FileLock(str(self.path.with_name("fleet.lock")), timeout=0, preserve_lock_file=True)

    def read(self) -> FleetState:
        try:
            return FleetState.from_json(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return FleetState()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{self.path}: unreadable fleet journal ({exc}); stop the controller, delete the "
                              "file and start it again (it rebuilds from the manifest and squeue)") from exc

    def write(self, state: FleetState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(state.to_json(), indent=1).encode()
        self._fs.replace(self._fs.write_temp(self.path.parent, f".{self.path.name}", data), self.path)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held by the one controller of this deployment: a second one is refused, not left to fight the first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                yield
        except filelock.Timeout as exc:
            raise GraceError(f"another fleet controller holds {self._lock.lock_file}; `grace-hpc fleet status` "
                             "shows what it decides (stop it first to run this one)") from exc
