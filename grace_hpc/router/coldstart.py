"""Demand as the router sees it, for the fleet controller, and the cold-start wait for a model with no replica.

The router counts, per model, the requests in flight to its endpoints (the health book's `in_flight`) and the
requests it could not give a local endpoint: those it holds waiting for a first replica (`cold_start_wait_s` of the
category) and those it answered otherwise (cloud, 503) in the last `REMEMBER_S` seconds. Every `PUBLISH_S` it
writes them to `demand.json` beside the registry (grace_hpc/fleet/demand.py), where the controller reads them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from grace_hpc.errors import GraceError
from grace_hpc.fleet.demand import Demand, DemandFile, ModelDemand
from grace_hpc.registry.records import EndpointRecord

#: a request turned away counts as waiting demand for this long (the controller samples every few seconds)
REMEMBER_S = 30.0
PUBLISH_S = 1.0
POLL_S = 0.25
#: seconds between two keep-alive comments of a streamed request that waits (read at each tick: a test may shorten it)
KEEPALIVE_S = 5.0


class DemandBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.held: Counter[str] = Counter()
        self.turned_away: dict[str, list[float]] = {}

    def unserved(self, model: str) -> None:
        """A request for `model` found no local endpoint (it went to the cloud, or got a 503)."""
        self.turned_away.setdefault(model, []).append(self.clock())

    @contextmanager
    def holding(self, model: str) -> Iterator[None]:
        """A request for `model` is waiting for its first replica."""
        self.held[model] += 1
        try:
            yield
        finally:
            self.held[model] -= 1

    def wanted(self) -> set[str]:
        """Models with requests held for them now or turned away in the last REMEMBER_S seconds."""
        since = self.clock() - REMEMBER_S
        return {m for m, n in self.held.items() if n} | {m for m, t in self.turned_away.items() if t and t[-1] >= since}

    def demand(self, records: Iterable[EndpointRecord], in_flight: Mapping[str, int], at: float) -> Demand:
        since = self.clock() - REMEMBER_S
        for model, times in list(self.turned_away.items()):
            self.turned_away[model] = [t for t in times if t >= since]
        outstanding: Counter[str] = Counter()
        for r in records:
            outstanding[r.model] += in_flight.get(r.id, 0)
        models = set(outstanding) | {m for m, n in self.held.items() if n} | {m for m, t in self.turned_away.items()
                                                                              if t}
        return Demand(at, {m: ModelDemand(outstanding[m], self.held[m] + len(self.turned_away.get(m, ())))
                           for m in models})


async def publish(book: DemandBook, target: DemandFile, records: Callable[[], list[EndpointRecord]],
                  in_flight: Callable[[str], int], wall_clock: Callable[[], float] = time.time) -> None:
    """Write the demand every PUBLISH_S until cancelled (off the event loop: a shared file system can be slow)."""
    while True:
        current = records()
        demand = book.demand(current, {r.id: in_flight(r.id) for r in current}, wall_clock())
        try:
            await asyncio.to_thread(target.write, demand)
        except GraceError:
            pass  # the next write retries; the controller keeps deciding on the last demand it read
        await asyncio.sleep(PUBLISH_S)


async def wait_for_replica(book: DemandBook, model: str, ready: Callable[[], bool], wait_s: float,
                           clock: Callable[[], float] = time.monotonic, *,
                           keepalive: Callable[[], Awaitable[bool]] | None = None) -> bool:
    """Hold a request for `model` up to `wait_s` seconds until `ready()`; False when no replica came. `keepalive`
    (a streamed request's, coldstream.py) is awaited at once and every `KEEPALIVE_S`; it returns
    False when the client has gone, which ends the wait."""
    deadline = clock() + wait_s
    tick_at = clock()
    with book.holding(model):
        while not ready():
            now = clock()
            if now >= deadline:
                return False
            if keepalive is not None and now >= tick_at:
                if not await keepalive():
                    return False
                tick_at = now + KEEPALIVE_S
            await asyncio.sleep(POLL_S)
    return True
