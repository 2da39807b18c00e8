#!/usr/bin/env python3
"""The router's upstream client (grace_hpc/router/wire.py) against aiohttp's ClientSession: same nginx, same
process, same minutes.

    python bench/upstream_client.py [--requests 3000] [--rounds 5] [--concurrency 1,32]

Upstream: bench/router.py's nginx, answering every POST with one canned chat completion. Each round sends
`--requests` POSTs of the benchmark's chat body through each client in turn (the order alternating from round to
round), with `--concurrency` requests in flight, each client keeping its connections alive as the router does, and
reads this process's CPU time (user + system) and the wall time around them. With 2+ CPUs the process is pinned to
one core and nginx to another. Prints per-round and median CPU and wall time per request and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from router import BODY, ROOT, cpus, nginx_upstream  # bench/router.py, beside this file

sys.path.insert(0, str(ROOT))
HEADERS = {"Content-Type": "application/json"}


Client = tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]  # one call, close


async def _aiohttp_client(url: str) -> Client:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                                    cookie_jar=aiohttp.DummyCookieJar())
    timeout = aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=60.0)  # what the router passed per request

    async def one() -> None:
        async with session.post(url, data=BODY.encode(), headers=HEADERS, timeout=timeout) as resp:
            await resp.read()

    return one, session.close


async def _wire_client(url: str) -> Client:
    from grace_hpc.router.wire import Timeouts, Wire

    wire, timeouts = Wire(keepalive_s=4.0), Timeouts(connect_s=5.0, read_s=60.0)

    async def one() -> None:
        answer = await wire.request("POST", url, BODY.encode(), HEADERS, timeouts)
        await answer.read()

    return one, wire.close


CLIENTS = {"aiohttp ClientSession": _aiohttp_client, "grace-hpc wire": _wire_client}


async def _measure(one: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU us, wall us) per request for `requests` calls of `one`, `concurrency` at a time."""
    per_task = requests // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm: connections opened, code paths hot
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    n = per_task * concurrency
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


async def _run(url: str, requests: int, rounds: int, concurrency: int) -> dict[str, list[tuple[float, float]]]:
    made = {name: await make(url) for name, make in CLIENTS.items()}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in CLIENTS}
    names = list(CLIENTS)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name].append(await _measure(made[name][0], requests, concurrency))
    for _, close in made.values():
        await close()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=3000, help="requests per client per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", default="1,32", help="requests in flight, comma-separated levels")
    args = p.parse_args()
    import uvloop

    cores = cpus()
    if len(cores) >= 2:
        os.sched_setaffinity(0, {cores[0]})
    with tempfile.TemporaryDirectory() as tmp, nginx_upstream(Path(tmp), cores[1:] or cores) as upstream:
        url = f"{upstream}/chat/completions"
        print(f"upstream client, {args.requests} POSTs per client per round, {args.rounds} rounds alternating, "
              f"{len(cores)} CPUs (this process pinned apart from nginx when 2+)\n")
        print("| in flight | client | CPU per request (median; rounds) | wall per request (median) |")
        print("|---|---|---|---|")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            results = uvloop.run(_run(url, args.requests, args.rounds, concurrency))
            medians = {}
            for name, rows in results.items():
                cpu = statistics.median(c for c, _ in rows)
                wall = statistics.median(w for _, w in rows)
                medians[name] = (cpu, wall)
                print(f"| {concurrency} | {name} | {cpu:.0f} us ({', '.join(f'{c:.0f}' for c, _ in rows)}) "
                      f"| {wall:.0f} us |")
            (a_cpu, a_wall), (w_cpu, w_wall) = medians["aiohttp ClientSession"], medians["grace-hpc wire"]
            print(f"| {concurrency} | wire / aiohttp | {w_cpu / a_cpu:.2f}x | {w_wall / a_wall:.2f}x |")


if __name__ == "__main__":
    main()
