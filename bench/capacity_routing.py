#!/usr/bin/env python3
"""Measured-capacity weights against `max_num_seqs` weights in the router, side by side in one run.

Two real llama.cpp servers of the same model and the same `-np` (so the same `max_num_seqs` in the registry), one
with 1 thread and one with 2 (`--threads 1,2`): a T4 and an H100 replica in miniature. Which one is faster depends
on the machine (on 2 busy cores, 2 spinning threads are *slower* than 1): it is measured, not assumed.
1. `grace-hpc bench`'s runner measures each directly (closed loop) and takes its sustainable output tokens/s.
2. Two routers over two registries of the same two endpoints: one without measurements (the policy weighs by
   `max_num_seqs`: equal), one with them. The same closed-loop load goes through each, in alternating rounds so
   that drift in the machine's load hits both arms alike. These requests are not streamed: the router reuses its
   pooled upstream connections, which llama.cpp closes after every streamed answer, so streamed requests through
   it fail now and then and eject endpoints (reported to the router's owners); non-streamed answers keep the
   connection, and the end-to-end latency compared here does not need streaming.
3. Printed: p50/p95/p99 end-to-end latency per arm, throughput, each arm's share of requests sent to the
   faster endpoint, and the p95 ratio.

Usage: python bench/capacity_routing.py [--clients 8] [--rounds 3] [--duration 8] [--output-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grace_hpc.bench import runner  # noqa: E402  (after the path setup above)
from grace_hpc.bench.loadgen import Budget, closed_loop, sender, session  # noqa: E402
from grace_hpc.bench.stats import LoadMode, RequestResult, summarize  # noqa: E402
from grace_hpc.bench.targets import Target  # noqa: E402
from grace_hpc.bench.workload import Workload, request_bodies  # noqa: E402
from grace_hpc.registry.store import Registry  # noqa: E402
from grace_hpc.router import create_app, serve_in_thread  # noqa: E402
from tests.conftest import Server, free_port, wait_until_serving  # noqa: E402
from tests.support.router_env import record, routing  # noqa: E402

MODEL = "m"
TABLE = routing({"categories": [{"name": "default", "models": [MODEL]}]})


def build_model(folder: Path, layers: int, hidden: int) -> Path:
    path = folder / "model.gguf"
    subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "tiny_gguf.py"), str(path), "--layers",
                    str(layers), "--hidden", str(hidden), "--heads", str(hidden // 64)], check=True,
                   capture_output=True)
    return path


def start(model: Path, threads: int, parallel: int, log: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "grace_hpc.engines.llamacpp_server", "-m", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--alias", MODEL, "-c", "2048", "-np", str(parallel), "-t", str(threads)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, MODEL, None)
    wait_until_serving(server, timeout_s=60)
    return server


async def load(url: str, workload: Workload, clients: int, duration_s: float, offset: int) -> list[RequestResult]:
    target = Target(name=url, base_url=url, model=MODEL)
    async with session(300.0) as http:
        begin = time.perf_counter()
        send = sender(http, target, workload.api, request_bodies(workload, MODEL, offset), begin)
        return await closed_loop(send, clients, Budget(duration_s=duration_s), begin)


def fast_share(url: str, fast_id: str) -> float:
    """Share of the router's requests served by `fast_id`, from its own Prometheus counters."""
    text = requests.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    counts: dict[bool, float] = {True: 0.0, False: 0.0}
    for line in text.splitlines():
        if line.startswith("grace_router_requests_total{"):
            counts[f'served_by="{fast_id}"' in line] += float(line.rsplit(" ", 1)[1])
    total = counts[True] + counts[False]
    return counts[True] / total if total else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8, help="requests in flight through the router")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per arm per round")
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=2, help="-np of both servers (their max_num_seqs)")
    ap.add_argument("--threads", default="1,2", help="-t of the two servers")
    ap.add_argument("--layers", type=int, default=4, help="of the random model: big enough to be compute-bound")
    ap.add_argument("--hidden", type=int, default=512)
    args = ap.parse_args()
    workload = Workload(prompt_tokens=32, output_tokens=args.output_tokens)
    routed = replace(workload, stream=False)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            model = build_model(folder, args.layers, args.hidden)
            for threads in args.threads.split(","):
                servers.append(start(model, int(threads), args.parallel, folder / f"t{threads}.log"))
            records = {f"t{t}": record(f"t{t}", s.base_url, MODEL, max_num_seqs=args.parallel)
                       for t, s in zip(args.threads.split(","), servers, strict=True)}

            # 1. each endpoint's sustainable throughput, measured directly
            plan = runner.LoadPlan(mode=LoadMode.CLOSED, loads=(1, args.parallel, 2 * args.parallel),
                                   budget=Budget(duration_s=args.duration / 2), workload=workload,
                                   ttft_p90_target_ms=60_000)
            targets = [Target(name=n, base_url=r.base_url, model=MODEL, endpoint_id=n) for n, r in records.items()]
            measured = {r.target.name: r.capacity for r in runner.run(targets, plan).results}
            speed = {}
            for name, cap in measured.items():
                if cap is None:
                    raise SystemExit(f"{name}: no level was measured without errors")
                speed[name] = cap.output_tokens_per_s
                print(f"{name}: {cap.output_tokens_per_s:.1f} output tok/s sustained (at {cap.concurrency} in flight)")
            fast, slow = sorted(speed, key=speed.__getitem__, reverse=True)
            print(f"measured speed ratio {fast}/{slow}: {speed[fast] / speed[slow]:.2f}")

            # 2. two routers: registry without measurements (max_num_seqs weights) and with them
            plain, weighted = Registry(folder / "plain.json"), Registry(folder / "weighted.json")
            for name, rec in records.items():
                plain.register(rec)
                weighted.register(rec.model_copy(update={"capacity": measured[name]}))
            results: dict[str, list[RequestResult]] = {"max_num_seqs": [], "measured": []}
            spans = dict.fromkeys(results, 0.0)
            # no supervisor heartbeats these records: keep the router from calling them stale mid-run
            fresh = {"environ": {}, "stale_after_s": 24 * 3600.0}
            with serve_in_thread(create_app(TABLE, plain, **fresh)) as plain_url, \
                    serve_in_thread(create_app(TABLE, weighted, **fresh)) as weighted_url:
                urls = {"max_num_seqs": plain_url + "/v1", "measured": weighted_url + "/v1"}
                for k in range(args.rounds):
                    order = list(urls) if k % 2 == 0 else list(reversed(urls))
                    for arm in order:
                        t0 = time.perf_counter()
                        results[arm] += asyncio.run(load(urls[arm], routed, args.clients, args.duration,
                                                         offset=10_000 * (k + 1)))
                        spans[arm] += time.perf_counter() - t0
                shares = {arm: fast_share(url, fast) for arm, url in urls.items()}
        finally:
            for s in servers:
                s.process.kill()
                s.process.wait(timeout=10)

    # 3. the comparison
    print(f"\nrouter weights, {args.clients} clients, {args.rounds} alternating rounds of {args.duration:g} s, "
          f"{args.output_tokens} output tokens; load average {os.getloadavg()[0]:.1f}")
    print(f"{'weights':>13} {'requests':>8} {'errors':>6} {'out tok/s':>9} {'to ' + fast:>7} "
          f"{'E2E p50':>8} {'E2E p95':>8} {'E2E p99':>8}")
    p95 = {}
    for arm, rs in results.items():
        s = summarize(LoadMode.CLOSED, args.clients, rs)
        tok_s = sum(r.output_tokens for r in rs if r.ok) / spans[arm]
        p95[arm] = s.e2e.p95  # type: ignore[union-attr]
        print(f"{arm:>13} {s.requests:>8} {s.errors:>6} {tok_s:>9.1f} {shares[arm]:>7.0%} "
              f"{s.e2e.p50:>8.0f} {s.e2e.p95:>8.0f} {s.e2e.p99:>8.0f}")  # type: ignore[union-attr]
        for message in s.error_samples:
            print(f"{'':>13} error: {message}")
    print(f"p95 E2E, max_num_seqs weights / measured weights: {p95['max_num_seqs'] / p95['measured']:.2f}x")


if __name__ == "__main__":
    main()
