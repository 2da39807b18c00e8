"""Is a READY engine still answering? A hung engine (a deadlocked CUDA kernel, a stopped process, a wedged HTTP
loop) keeps its process alive, so exit codes never show it and the job's heartbeats would keep it routable for
ever: clients would wait on it until their own timeouts. The supervisor asks the engine's `/health` at every
heartbeat; an engine that has not answered for `unresponsive_after_s` is published UNRESPONSIVE (the router routes
around it within one registry poll) and READY again at its next answer.

`/health` is answered by vLLM's API server without the scheduler (vllm/entrypoints/openai/api_server.py: it only
checks that the engine core is alive) and by llama.cpp's HTTP threads without a slot, so a busy engine answers it;
one missed answer under load is not a verdict: the engine must stay silent for the whole window.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

#: one /health call; a healthy engine answers in milliseconds even at full load
HEALTH_TIMEOUT_S = 3.0


def answers_health(root_url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """GET ROOT/health (no key needed on vLLM or llama.cpp): True on any 200."""
    try:
        return requests.get(f"{root_url}/health", timeout=(timeout_s, timeout_s)).status_code == 200
    except requests.RequestException:
        return False


@dataclass
class Liveness:
    """Per engine: when it last answered. Pure: the caller passes the clock and the answer."""

    unresponsive_after_s: float
    last_answer: float
    silent: bool = False

    def observe(self, answered: bool, now: float) -> bool | None:
        """Record one check; returns True when the engine just fell silent, False when it just came back, None when
        nothing changed."""
        if answered:
            self.last_answer = now
            if self.silent:
                self.silent = False
                return False
            return None
        if not self.silent and now - self.last_answer >= self.unresponsive_after_s:
            self.silent = True
            return True
        return None
