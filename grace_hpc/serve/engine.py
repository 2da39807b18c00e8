"""One engine child process (vLLM or llama.cpp): started with its output streamed to a log file, stopped
gracefully as a whole process group, never left behind as an orphan."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from grace_hpc.errors import EngineError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL the engine if the supervisor dies (even by SIGKILL): no orphan engines. And ignore
    USR1/USR2: SLURM signals every process of the job (`--signal`, `scancel --signal`), and submitit's time-limit and
    preemption warning is USR2, whose default action would kill the engine with requests in flight before the
    supervisor could drain it. An ignored disposition survives exec; an engine that installs its own handler for
    them (vLLM's front end for USR1 in some releases) keeps it."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux/glibc: SLURM's job cleanup (proctrack) still reaps the process group


def log_tail(path: Path, max_bytes: int = 2000) -> str:
    """The last `max_bytes` of a log, for error messages."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


@dataclass
class EngineProcess:
    """A started engine. `argv` never holds the API key; it is passed in `env` only."""

    argv: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.log_path.open("ab") as log:  # the child inherits its own descriptor: nothing buffered here
                self.process = subprocess.Popen(
                    self.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    start_new_session=True,  # its own process group: vLLM's workers are stopped with it
                    preexec_fn=_die_with_parent,  # only calls prctl
                )
        except OSError as exc:
            raise EngineError(
                f"cannot start engine {self.argv[0]!r}: {exc.strerror}; is it installed on this node "
                "(vLLM: the 'serve' extra or engines.vllm_prefix in cluster.yaml)?"
            ) from exc

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_code(self) -> int | None:
        """None while running."""
        return self.process.poll() if self.process else None

    def failure(self) -> str:
        """What to tell the user when the engine has exited: its code and its own last words."""
        return (
            f"engine exited with code {self.exit_code()} (log: {self.log_path}); last output:\n"
            f"{log_tail(self.log_path)}"
        )

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace_s`. Idempotent."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.05)
        if self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=10)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.process is not None  # internal invariant, checked by callers
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
