"""Where SLURM jobs are: one `squeue` call for all ids, then one `sacct` call for the ids squeue no longer knows.

`parse_queue_lines` and `match_jobs` are pure and tested on recorded output of Slurm 22.05; `job_states` is the only
function here that runs a command. Output format (both commands print `|`-separated fields, one job per line):

    squeue --states=all -h -o '%i|%T|%r|%N|%M|%P|%L' -j 4,5_3,8_5
    4|CANCELLED|None|vm|0:13|t4|INVALID
    6|RUNNING|None|vm|0:41|t4|1:19             <- %L: the time left before the job's limit (the fleet's handover)
    8_[5,7]|PENDING|Resources||0:00|t4|2:00     <- pending array tasks are folded into one line
    sacct -X -n -P -o JobID,State,Reason,NodeList,Elapsed,Partition -j 4,8
    4|CANCELLED by 0|None|vm|00:00:13|t4
    8_[1-9%25]|PENDING|None|None assigned|00:00:00|t4

Facts this relies on (verified on the test cluster, Slurm 22.05.8):
- `squeue -j` hides finished jobs unless `--states=all`, and forgets them after MinJobAge (300 s by default).
- `squeue -j` with one unknown id exits 1 with "Invalid job id specified"; with several ids it drops unknown ones.
- `sacct -j 8_5` prints nothing for a task still folded into `8_[1-9%25]`: query the array's base id (`-j 8`).
- sacct's State can carry a suffix (`CANCELLED by 0`); only the first word is the state.
- squeue's `%L` is the time left of a running job (`INVALID` for a finished one, the whole limit for a pending
  one, `UNLIMITED` without a limit); sacct has no such field, so its lines have six fields, squeue's seven.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from enum import Enum

from pydantic import BaseModel, ConfigDict

from grace_hpc.errors import SchedulerError

SQUEUE_FORMAT = "%i|%T|%r|%N|%M|%P|%L"
SACCT_FIELDS = "JobID,State,Reason,NodeList,Elapsed,Partition"

#: squeue's transient failures (slurmctld busy or restarting) are retried this many times, with backoff
ATTEMPTS = 3


class JobState(str, Enum):
    """Job states as squeue `%T` and sacct `State` spell them (Slurm `JOB_STATE_STRING`)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETING = "COMPLETING"
    STAGE_OUT = "STAGE_OUT"
    SIGNALING = "SIGNALING"
    RESIZING = "RESIZING"
    REQUEUED = "REQUEUED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    REQUEUE_FED = "REQUEUE_FED"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    STOPPED = "STOPPED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    REVOKED = "REVOKED"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    UNKNOWN = "UNKNOWN"  # a state this parser does not know (a newer Slurm): treated as not finished

    @classmethod
    def parse(cls, text: str) -> JobState:
        word = text.strip().split(" ", 1)[0].upper()  # "CANCELLED by 0" -> CANCELLED
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN

    @property
    def finished(self) -> bool:
        """The job will not run again under this id (a requeued job passes through REQUEUED/PENDING instead)."""
        return self in FINISHED


FINISHED = frozenset({
    JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.PREEMPTED,
    JobState.NODE_FAIL, JobState.OUT_OF_MEMORY, JobState.BOOT_FAIL, JobState.DEADLINE, JobState.REVOKED,
    JobState.SPECIAL_EXIT,
})


class JobInfo(BaseModel):
    """One job (or array task) as the scheduler reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str  # as asked for: "123" or "123_4"
    state: JobState
    reason: str | None = None  # pending reason ("Resources", "Priority"); None when SLURM says "None"
    node: str | None = None  # node list; None while pending
    elapsed: int | None = None  # seconds the job has run
    partition: str | None = None
    time_left: int | None = None  # seconds before the job's time limit (squeue's %L; None: unknown or unlimited)


_LINE = re.compile(
    r"^(?P<job>[0-9]+(?:_(?:[0-9]+|\[[0-9,\-%]+\]))?)\|(?P<state>[^|]*)\|(?P<reason>[^|]*)\|(?P<node>[^|]*)\|"
    r"(?P<elapsed>[^|]*)\|(?P<partition>[^|]*)(?:\|(?P<left>[^|]*))?$"
)
_JOB_ID = re.compile(r"^(?P<base>[0-9]+)(?:_(?P<task>[0-9]+))?$")
_ARRAY = re.compile(r"^(?P<base>[0-9]+)_(?:(?P<task>[0-9]+)|\[(?P<ranges>[0-9,\-]+)(?:%[0-9]+)?\])$")
_DURATION = re.compile(r"^(?:(?P<d>[0-9]+)-)?(?:(?P<h>[0-9]+):)?(?P<m>[0-9]+):(?P<s>[0-9]+)$")


def is_slurm_job_id(text: str) -> bool:
    return _JOB_ID.match(text) is not None


def parse_duration(text: str) -> int | None:
    """SLURM elapsed time (`0:13`, `00:00:13`, `1:02:03`, `2-03:04:05`) in seconds; None for empty/INVALID."""
    m = _DURATION.match(text.strip())
    if not m:
        return None
    d, h = int(m["d"] or 0), int(m["h"] or 0)
    return ((d * 24 + h) * 60 + int(m["m"])) * 60 + int(m["s"])


def _none(text: str) -> str | None:
    text = text.strip()
    return None if text in ("", "None", "None assigned", "(null)") else text


def parse_queue_lines(text: str, source: str) -> list[JobInfo]:
    """Parse `squeue -o SQUEUE_FORMAT` or `sacct -P -o SACCT_FIELDS` output; `job_id` is the line's id verbatim
    (possibly a folded array `8_[1-9%25]`). A line that does not match raises: guessing would mis-reap."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if not m:
            raise SchedulerError(f"{source}: cannot parse output line {line!r} (expected JOBID|STATE|REASON|NODES|"
                                 "ELAPSED|PARTITION[|TIME_LEFT]); is this a Slurm version grace-hpc does not know?")
        out.append(JobInfo(job_id=m["job"], state=JobState.parse(m["state"]), reason=_none(m["reason"]),
                           node=_none(m["node"]), elapsed=parse_duration(m["elapsed"]),
                           partition=_none(m["partition"]),
                           time_left=parse_duration(m["left"]) if m["left"] else None))
    return out


def _tasks(ranges: str) -> set[int]:
    tasks: set[int] = set()
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        tasks.update(range(int(lo), int(hi or lo) + 1))
    return tasks


def _covers(line_id: str, base: str, task: str | None) -> bool:
    """Whether a reported id (`8`, `8_5`, `8_[1-9%25]`) stands for the asked job `base[_task]`."""
    if task is None:
        return line_id == base
    m = _ARRAY.match(line_id)
    if not m or m["base"] != base:
        return False
    return m["task"] == task if m["task"] is not None else int(task) in _tasks(m["ranges"])


def match_jobs(asked: Iterable[str], reported: Sequence[JobInfo]) -> dict[str, JobInfo]:
    """Map each asked id to the reported line that covers it (exact id first, then a folded array range).
    Ids nothing covers are left out."""
    found: dict[str, JobInfo] = {}
    for job_id in asked:
        m = _JOB_ID.match(job_id)
        if not m:
            continue
        exact = [j for j in reported if j.job_id == job_id]
        covering = exact or [j for j in reported if _covers(j.job_id, m["base"], m["task"])]
        if covering:
            found[job_id] = covering[0].model_copy(update={"job_id": job_id})
    return found


def squeue_argv(job_ids: Sequence[str]) -> list[str]:
    return ["squeue", "--states=all", "-h", "-o", SQUEUE_FORMAT, "-j", ",".join(job_ids)]


def sacct_argv(job_ids: Sequence[str]) -> list[str]:
    # array tasks folded into a pending range are only found through the array's base id (see module docstring)
    bases = sorted({j.split("_", 1)[0] for j in job_ids}, key=int)
    return ["sacct", "-X", "-n", "-P", "-o", SACCT_FIELDS, "-j", ",".join(bases)]


Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise SchedulerError(f"{argv[0]} not found: is this a SLURM login node? (or use the local executor)") from exc
    except subprocess.TimeoutExpired as exc:
        raise SchedulerError(f"{' '.join(argv)} did not answer within 60 s (slurmctld overloaded?)") from exc


def _failure(proc: subprocess.CompletedProcess[str]) -> SchedulerError:
    output = proc.stderr.strip() or proc.stdout.strip()
    return SchedulerError(f"`{' '.join(proc.args)}` exited {proc.returncode}: {output}")


def job_states(
    job_ids: Sequence[str], *, run: Runner = _run, sleep: Callable[[float], None] = time.sleep
) -> dict[str, JobInfo]:
    """The state of each SLURM job id (`123` or `123_4`): one squeue call, then one sacct call (where accounting
    exists) for the ids squeue no longer knows. Ids neither knows are absent from the result. Raises
    SchedulerError (with the command, exit code and stderr) when squeue keeps failing."""
    asked = sorted(set(job_ids))
    bad = [j for j in asked if not is_slurm_job_id(j)]
    if bad:
        raise SchedulerError(f"not SLURM job ids: {', '.join(bad)} (expected 123 or 123_4)")
    if not asked:
        return {}
    argv = squeue_argv(asked)
    for attempt in range(ATTEMPTS):
        proc = run(argv)
        # a single id squeue has forgotten is an error to squeue; to us it means "ask sacct"
        if proc.returncode == 0 or "Invalid job id specified" in proc.stderr:
            break
        if attempt == ATTEMPTS - 1:
            raise _failure(proc)
        sleep(0.5 * 2**attempt)
    found = match_jobs(asked, parse_queue_lines(proc.stdout, "squeue") if proc.returncode == 0 else [])
    missing = [j for j in asked if j not in found]
    if missing:
        proc = run(sacct_argv(missing))
        if proc.returncode == 0:
            found.update(match_jobs(missing, parse_queue_lines(proc.stdout, "sacct")))
        elif "accounting storage is disabled" not in proc.stderr.lower():
            raise _failure(proc)
    return found


def named_argv(job_name: str) -> list[str]:
    return ["squeue", "--me", "-h", "-o", SQUEUE_FORMAT, "--name", job_name]


def jobs_named(job_name: str, *, run: Runner = _run) -> list[JobInfo]:
    """The user's jobs called `job_name` that squeue still lists (pending, running, or just ended)."""
    proc = run(named_argv(job_name))
    if proc.returncode != 0:
        raise _failure(proc)
    return parse_queue_lines(proc.stdout, "squeue")


def held_argv(job_names: Sequence[str], start: str, user: str) -> list[str]:
    # sacct has no --me in 22.05, and shows every user's jobs to root: name the user
    return ["sacct", "-X", "-n", "-P", "-u", user, "-S", start, "-E", "now", "--name", ",".join(job_names),
            "-o", "JobID,JobName,Partition,AllocTRES,Start,End"]


def accounting(job_names: Sequence[str], start: str, user: str, *, run: Runner = _run) -> str:
    """sacct's lines for `user`'s jobs with these names since `start` (YYYY-MM-DDTHH:MM:SS); parsed by the
    caller (grace_hpc/fleet/usage.py)."""
    proc = run(held_argv(job_names, start, user))
    if proc.returncode != 0:
        raise _failure(proc)
    return proc.stdout


def assoc_argv(user: str) -> list[str]:
    return ["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=Partition,GrpTRES,MaxTRES"]


def association_limits(user: str, *, run: Runner = _run) -> str | None:
    """sacctmgr's association lines for `user` (parsed by grace_hpc/fleet/limits.py); None where sacctmgr is
    missing or refuses (no accounting database): the limits are then SLURM's to enforce alone."""
    try:
        proc = run(assoc_argv(user))
    except SchedulerError:
        return None
    return proc.stdout if proc.returncode == 0 else None
