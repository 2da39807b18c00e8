"""Targets x load levels -> a BenchRun. Targets are measured one after another (never at the same time, so one
does not steal the other's client CPU), each level after a warm-up, with the engine and GPU sampled meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from grace_hpc.bench.capacity import sustainable
from grace_hpc.bench.loadgen import Budget, Clock, closed_loop, open_loop, sender, session
from grace_hpc.bench.probes import Sampler
from grace_hpc.bench.stats import LevelStats, LoadMode, summarize
from grace_hpc.bench.targets import Target
from grace_hpc.bench.workload import Workload, request_bodies
from grace_hpc.errors import UpstreamError
from grace_hpc.registry.records import MeasuredCapacity


@dataclass(frozen=True)
class LoadPlan:
    mode: LoadMode
    loads: tuple[float, ...]  # concurrencies (closed) or requests per second (open), in order
    budget: Budget
    workload: Workload
    ttft_p90_target_ms: float
    request_timeout_s: float = 300.0  # the longest silence allowed inside one stream
    warmup_requests: int = 1  # sent before the first level and not counted (first-request compilation, caches)
    sample_interval_s: float = 1.0


@dataclass(frozen=True)
class TargetResult:
    target: Target
    levels: tuple[LevelStats, ...]
    capacity: MeasuredCapacity | None  # sustainable at the TTFT target (closed loop, endpoints measured directly)


@dataclass(frozen=True)
class BenchRun:
    started_at: float  # unix time
    plan: LoadPlan
    results: tuple[TargetResult, ...]


OnLevel = Callable[[Target, LevelStats], None]


async def measure_target(target: Target, plan: LoadPlan, *, clock: Clock = time.perf_counter,
                         wall: Callable[[], float] = time.time, on_level: OnLevel | None = None) -> TargetResult:
    bodies = request_bodies(plan.workload, target.model)
    levels = []
    async with session(plan.request_timeout_s) as http:
        start = clock()
        send = sender(http, target, plan.workload.api, bodies, start, clock)
        for _ in range(plan.warmup_requests):
            warm = await send(clock() - start)
            if not warm.ok:
                raise UpstreamError(f"{target.name}: the warm-up request to {target.base_url} failed: {warm.error} "
                                    "(is the server ready? `grace-hpc status` shows it)")
        for load in plan.loads:
            sampler = Sampler(http, target, plan.sample_interval_s)
            sampler.start()
            start = clock()
            send = sender(http, target, plan.workload.api, bodies, start, clock)
            if plan.mode is LoadMode.CLOSED:
                results = await closed_loop(send, int(load), plan.budget, start, clock)
            else:
                results = await open_loop(send, load, plan.budget, start, clock)
            engine, gpu = await sampler.stop()
            stats = replace(summarize(plan.mode, load, results), engine=engine, gpu=gpu)
            levels.append(stats)
            if on_level is not None:
                on_level(target, stats)
    capacity = sustainable(levels, plan.ttft_p90_target_ms, wall()) if target.endpoint_id else None
    return TargetResult(target, tuple(levels), capacity)


def run(targets: Sequence[Target], plan: LoadPlan, *, on_level: OnLevel | None = None,
        wall: Callable[[], float] = time.time) -> BenchRun:
    started = wall()

    async def all_targets() -> tuple[TargetResult, ...]:
        return tuple([await measure_target(t, plan, wall=wall, on_level=on_level) for t in targets])

    return BenchRun(started, plan, asyncio.run(all_targets()))
