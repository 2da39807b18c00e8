"""The launch manifest, `logs/<deployment>/jobs.json`: every server job `launch` submitted that `stop` has not ended.

A row is added right after each submission, under the manifest's lock (read, change, atomic replace), so a launch
that fails half way still leaves every job it did submit where `stop` and `status` find it, and two launches or a
launch and a stop at the same time lose nothing. `job_states_of` says which recorded jobs are still alive."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import filelock

from grace_hpc.config.cluster import LockMode
from grace_hpc.errors import ConfigError, SubmissionError
from grace_hpc.registry.fs import LocalFileSystem
from grace_hpc.slurm.queue import FINISHED, JobInfo, JobState, job_states

#: seconds to wait for another launch/stop holding the manifest (each holds it for one small file write)
LOCK_TIMEOUT_S = 30.0

#: local-executor job states (SLURM states are JobState values): the controller process lives / has ended
LOCAL_RUNNING, LOCAL_ENDED = "RUNNING", "ENDED"
ENDED_STATES = frozenset({s.value for s in FINISHED} | {LOCAL_ENDED})


@dataclass(frozen=True)
class Submitted:
    deployment: str
    server: str
    replica: int
    job_id: str  # SLURM job id, or local:<pid>
    executor: str
    partition: str
    models: tuple[str, ...]
    num_gpus: int
    submitted_at: float
    folder: str


class Manifest:
    """The manifest at `path`. Creating one touches no file."""

    def __init__(self, path: Path, lock_mode: LockMode = LockMode.FLOCK, lock_timeout_s: float = LOCK_TIMEOUT_S):
        self.path = Path(path)
        lock_path = str(self.path.with_name(self.path.name + ".lock"))
        self._lock: filelock.BaseFileLock = (
            filelock.FileLock(lock_path, timeout=lock_timeout_s, preserve_lock_file=True)
            if lock_mode is LockMode.FLOCK else filelock.SoftFileLock(lock_path, timeout=lock_timeout_s))
        self._fs = LocalFileSystem()

    def read(self) -> list[Submitted]:
        try:
            rows = json.loads(self.path.read_text())
            return [Submitted(**{**r, "models": tuple(r["models"])}) for r in rows]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{self.path}: unreadable launch manifest ({exc}); delete it after `scancel`ing "
                              "its jobs") from exc

    def add(self, row: Submitted) -> None:
        with self._locked():
            self._write([*self.read(), row])

    def remove(self, job_ids: set[str]) -> None:
        with self._locked():
            self._write([r for r in self.read() if r.job_id not in job_ids])

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                yield
        except filelock.Timeout as exc:
            raise SubmissionError(f"{self.path}: another launch or stop has held its lock for {LOCK_TIMEOUT_S:g}s; "
                                  f"if none is running, delete {self._lock.lock_file}") from exc

    def _write(self, rows: list[Submitted]) -> None:
        data = json.dumps([asdict(r) for r in rows], indent=1).encode()
        self._fs.replace(self._fs.write_temp(self.path.parent, f".{self.path.name}", data), self.path)


def local_state(job_id: str) -> str:
    """RUNNING while the local executor's controller (`local:<pid>`) lives; a zombie (nobody reaped it) has ENDED."""
    try:
        pid = int(job_id.removeprefix("local:"))
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ValueError, OSError):
        return LOCAL_ENDED
    return LOCAL_ENDED if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X") else LOCAL_RUNNING


class JobView(NamedTuple):
    state: str  # SLURM's (JobState values), or RUNNING/ENDED for a local job
    reason: str | None  # SLURM's pending reason
    node: str | None
    time_left: int | None = None  # seconds before a running SLURM job's time limit (None: unknown, local, pending)


def job_states_of(
    job_ids: Iterable[str], *, query: Callable[[Sequence[str]], dict[str, JobInfo]] = job_states
) -> dict[str, JobView]:
    """Each job's state: one scheduler query for the SLURM ids (ids SLURM no longer knows are absent), the
    controller process for local ones. Raises SchedulerError when the scheduler cannot be asked."""
    ids = set(job_ids)
    slurm = sorted(i for i in ids if not i.startswith("local:"))
    found = {i: JobView(info.state.value, info.reason, info.node,
                        info.time_left if info.state is JobState.RUNNING else None)
             for i, info in query(slurm).items()} if slurm else {}
    found.update({i: JobView(local_state(i), None, None) for i in ids if i.startswith("local:")})
    return found


def is_alive(view: JobView | None) -> bool:
    """Pending, running or requeued: known to the scheduler and not finished."""
    return view is not None and view.state not in ENDED_STATES
