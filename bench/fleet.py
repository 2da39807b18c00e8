"""Static vs elastic on the local SLURM: one bursty request trace (compressed in time) through the router, against
a deployment sized for its peak (`replicas: 3`) and an elastic one (`{min: 1, max: 3}` with `fleet run`). Prints
GPU-seconds held (SLURM's Start/End of every job of the run, times the plan's GPUs) and client latency, side by side.

    python bench/fleet.py [--partition t4] [--quiet-rate 0.2] [--burst-rate 2] [--seconds 15,20,30]

The trace: `quiet-rate` req/s, then `burst-rate`, then `quiet-rate` again, for the three `--seconds`. The model is
the embedded SmolLM2-135M on llama.cpp (CPU), 8 tokens per answer. Every job the bench submits is stopped at its end.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import getpass
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grace_hpc.config.loader import ConfigDir  # noqa: E402  (after the path fix, so it runs from a checkout)
from grace_hpc.config.routing import Routing  # noqa: E402
from grace_hpc.fleet.demand import DemandFile  # noqa: E402
from grace_hpc.fleet.usage import held_seconds, parse_held  # noqa: E402
from grace_hpc.launch.launcher import job_name_of, launch, plan_deployment  # noqa: E402
from grace_hpc.registry.records import EndpointState  # noqa: E402
from grace_hpc.registry.store import Registry  # noqa: E402
from grace_hpc.router import create_app, serve_in_thread  # noqa: E402
from grace_hpc.slurm.queue import accounting  # noqa: E402

MODEL = "smollm2-135m-instruct"


def project(partition: str) -> Path:
    """A throw-away project: this checkout's catalog, its cluster with jobs small enough for the one test node."""
    folder = Path(tempfile.mkdtemp(prefix="grace-bench-fleet-"))
    conf = folder / "configs"
    (conf / "deployments").mkdir(parents=True)
    shutil.copy(ROOT / "configs" / "models.yaml", conf / "models.yaml")
    cluster = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    for p in cluster["partitions"]:
        p.update(cpus_per_gpu=1, mem_per_gpu_gb=1)
    (conf / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    return folder


def deployment(folder: Path, name: str, partition: str, replicas: str) -> None:
    (folder / "configs" / "deployments" / f"{name}.yaml").write_text(
        f"name: {name}\nservers:\n  - name: s\n    partition: {partition}\n    models: [{MODEL}]\n"
        f"    engine: llama.cpp\n    max_model_len: 1024\n    replicas: {replicas}\n"
        "    scale_up: {outstanding_per_replica: 1, for_s: 2}\n    scale_down: {idle_timeout_s: 10}\n")


def trace(rates: list[float], seconds: list[float]) -> list[float]:
    """Send times (s from the start), evenly spaced within each phase."""
    times, t0 = [], 0.0
    for rate, length in zip(rates, seconds, strict=True):
        times += [t0 + i / rate for i in range(int(rate * length))]
        t0 += length
    return times


def ask(url: str) -> tuple[float, int]:
    started = time.monotonic()
    try:
        status = requests.post(f"{url}/v1/chat/completions", timeout=900, json={
            "model": "default", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi."}]}).status_code
    except requests.RequestException:
        status = 0
    return time.monotonic() - started, status


def replay(url: str, times: list[float]) -> list[tuple[float, int]]:
    start = time.monotonic()
    with cf.ThreadPoolExecutor(max_workers=64) as pool:
        futures = []
        for t in times:
            time.sleep(max(0.0, start + t - time.monotonic()))
            futures.append(pool.submit(ask, url))
        return [f.result() for f in futures]


def ready_count(registry: Registry) -> int:
    return sum(r.state is EndpointState.READY for r in registry.list())


def run_mode(folder: Path, name: str, times: list[float], elastic: bool) -> dict:
    config = ConfigDir(folder / "configs")
    dep = config.deployment(name)
    registry = Registry.from_cluster(config.cluster(), config, environ={})
    routing = Routing.model_validate({"categories": [{"name": "default", "models": [MODEL],
                                                      "cold_start_wait_s": 120}]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRACE_", "SLURM_", "SUBMITIT_"))}
    env["PYTHONPATH"] = str(ROOT)
    t_start = time.time()
    controller = None
    if elastic:
        controller = subprocess.Popen([sys.executable, "-m", "grace_hpc", "fleet", "run", "--deployment", name,
                                       "--executor", "slurm", "--period", "1"], cwd=folder, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        launch(config, dep, executor_kind="slurm")
    want = 1 if elastic else 3
    while ready_count(registry) < want:
        time.sleep(0.5)
    app = create_app(routing, registry, environ={}, poll_interval_s=0.2, demand_file=DemandFile(registry.path.parent))
    try:
        with serve_in_thread(app) as url:
            results = replay(url, times)
            time.sleep(15)  # the same tail for both: the elastic fleet shrinks back after its idle timeout
        t_end = time.time()
    finally:
        if controller is not None:
            controller.terminate()
            controller.wait(timeout=60)
        planned = {job_name_of(name, ps.server.name): ps.plan.num_gpus
                   for ps in plan_deployment(config.cluster(), config.catalog(), dep)}
        subprocess.run([sys.executable, "-m", "grace_hpc", "stop", "--deployment", name], cwd=folder, env=env,
                       capture_output=True, timeout=180)
    time.sleep(2)  # sacct records the end of the stopped jobs
    start = datetime.fromtimestamp(t_start - 60).strftime("%Y-%m-%dT%H:%M:%S")
    jobs = parse_held(accounting(sorted(planned), start, getpass.getuser()))
    held = sum(held_seconds(jobs, planned, t_start, t_end).values())
    latencies = sorted(s for s, _ in results)
    return {"mode": "elastic 1..3" if elastic else "static 3", "requests": len(results),
            "errors": sum(status != 200 for _, status in results), "jobs": len(jobs),
            "gpu_seconds_held": round(held), "p50_s": round(statistics.median(latencies), 2),
            "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2), "wall_s": round(t_end - t_start)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partition", default="t4")
    parser.add_argument("--quiet-rate", type=float, default=0.2)
    parser.add_argument("--burst-rate", type=float, default=2.0)
    parser.add_argument("--seconds", default="15,20,30", help="lengths of the quiet, burst and quiet phases")
    args = parser.parse_args()
    seconds = [float(s) for s in args.seconds.split(",")]
    times = trace([args.quiet_rate, args.burst_rate, args.quiet_rate], seconds)
    folder = project(args.partition)
    tag = uuid.uuid4().hex[:6]
    rows = []
    for elastic in (False, True):
        name = f"bench-{'elastic' if elastic else 'static'}-{tag}"
        deployment(folder, name, args.partition, "{min: 1, max: 3}" if elastic else "3")
        rows.append(run_mode(folder, name, times, elastic))
    print(f"bursty trace: {len(times)} requests over {sum(seconds):g}s ({args.quiet_rate:g} / {args.burst_rate:g} / "
          f"{args.quiet_rate:g} req/s), SmolLM2-135M on llama.cpp, partition {args.partition}")
    keys = ["mode", "requests", "errors", "jobs", "gpu_seconds_held", "p50_s", "p95_s", "wall_s"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
