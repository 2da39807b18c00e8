"""When the supervisor restarts an engine that died under it (a CUDA fault, an OOM kill, a segfault) instead of
failing the job: the weights are in the node's page cache and the GPUs are still held, so a restart in place is
back in seconds, while a failed job waits in SLURM's queue again. An engine that keeps dying is not restarted for
ever: more than `max_restarts` exits within `window_s` fail the job, with the last exit's log tail, as before.
Pure: the caller passes the clock."""

from __future__ import annotations

from dataclasses import dataclass, field

#: exits tolerated per window, and the pause before each successive restart (1 s, 4 s, 16 s)
MAX_RESTARTS = 3
WINDOW_S = 600.0
FIRST_PAUSE_S = 1.0


@dataclass
class RestartBudget:
    max_restarts: int = MAX_RESTARTS
    window_s: float = WINDOW_S
    exits: list[float] = field(default_factory=list)

    def pause_before_restart(self, now: float) -> float | None:
        """Record an exit at `now`: the seconds to wait before restarting, or None when the budget is spent."""
        self.exits = [t for t in self.exits if now - t < self.window_s] + [now]
        if len(self.exits) > self.max_restarts:
            return None
        return FIRST_PAUSE_S * 4 ** (len(self.exits) - 1)
