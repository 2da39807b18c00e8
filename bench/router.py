#!/usr/bin/env python3
"""Router overhead benchmark: direct vs through grace-hpc, vLLM's Rust router and LiteLLM's proxy, same machine,
same run.

    python bench/router.py [--rates 200,1000] [--duration 10] [--rounds 3] [--litellm PATH/TO/litellm]
                           [--vllm-router PATH/TO/vllm-router] [--ledger] [--floor]

Upstream: nginx (apt `nginx-light`) answering every POST with one canned chat completion, so the upstream costs
almost nothing and what is measured is the proxy. Load: an open-loop generator in its own process (latency is
measured from each request's *scheduled* send time, as wrk2 does, so a stalled proxy cannot hide its queueing) at
fixed rates, and `wrk` (apt `wrk`) closed-loop at saturation. With 2+ CPUs every proxy is pinned to one core
(`taskset`), the upstream and the load generator to the others. All proxies run at once and are measured in
interleaved rounds (`--rounds`, the order rotating), so the minutes-long swings of a shared machine land on every path
alike; the table shows each cell's median over the rounds.
Prints one table: p50/p99 added over direct at each rate, max req/s, the proxy's CPU time per request, and the
ratios. An added latency is never shown negative: when the direct path itself stalled (its percentile is above the
proxied one, which only queueing in the shared machine's load generator or upstream can cause) the cell reads
`void` with both numbers. `--ledger` adds the router as a lab runs it with its usage ledger on: a per-user key on
every request and the SQLite ledger (docs/usage.md); its max req/s ratio to the keyless, ledger-off router is taken
round by round and its median printed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANNED = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
})
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 1})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinned(argv: list[str], cores: list[int]) -> list[str]:
    if len(cpus()) < 2 or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", ",".join(map(str, cores)), *argv]


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, headers: dict[str, str] | None = None,
              timeout_s: float = 60.0) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before answering; see its log")
        try:
            requests.post(url, data=BODY, headers={"Content-Type": "application/json", **(headers or {})}, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


@contextmanager
def process(argv: list[str], log: Path, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        # its own process group: `measure_round` pauses a proxy and its children (LiteLLM's server) together
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def nginx_upstream(work: Path, cores: list[int]) -> Iterator[str]:
    port = free_port()
    conf = work / "nginx.conf"
    # `return 200` answers POST too (a static file would get 405); escaping for nginx's single-quoted string
    conf.write_text(f"""
worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fcgi;
  uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  server {{ listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{CANNED}'; }} }}
}}
""")
    with process(pinned(["nginx", "-p", str(work), "-c", str(conf)], cores), work / "nginx.log") as proc:
        url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{url}/chat/completions", proc)
        yield url


Proxy = tuple[str, int | None, dict[str, str]]  # base URL, the pid whose CPU time is measured, request headers


@contextmanager
def grace_router(work: Path, upstream: str, cores: list[int], ledger: str = "off") -> Iterator[Proxy]:
    """`ledger` a SQLite path: the ledger on, and a user key (keys.json beside the registry) on every request."""
    sys.path.insert(0, str(ROOT))
    from grace_hpc.registry.records import EndpointRecord, EndpointState, PlanSummary
    from grace_hpc.registry.store import Registry
    from grace_hpc.users.keys import KeyStore

    port = int(upstream.rsplit(":", 1)[1].split("/")[0])
    now = time.time()
    folder = Path(tempfile.mkdtemp(prefix="reg-", dir=work))  # 0700, one per start: a proxy may be started twice
    registry = Registry(folder / "registry.json")
    registry.register(EndpointRecord(
        id="nginx", model="bench", served_model_name="bench", engine="external", host="127.0.0.1", port=port,
        base_url=upstream, started_at=now, heartbeat_at=now, state=EndpointState.READY,
        plan=PlanSummary(max_num_seqs=256), external=True))
    headers = {}
    if ledger != "off":
        key, _ = KeyStore(folder / "keys.json", time.time).create("bench")
        headers["Authorization"] = f"Bearer {key}"
    routing = work / "routing.yaml"
    routing.write_text("categories:\n  - {name: default, models: [bench]}\n")
    router_port = free_port()
    argv = [sys.executable, "-m", "grace_hpc", "route", "--port", str(router_port), "--routing", str(routing),
            "--registry", str(registry.path), "--ledger", ledger]
    # cwd: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH (ROOT)
    with process(pinned(argv, cores), folder / "grace.log", env=dict(os.environ, PYTHONPATH=str(ROOT)),
                 cwd=ROOT) as proc:
        url = f"http://127.0.0.1:{router_port}/v1"
        wait_http(f"{url}/chat/completions", proc, headers)
        yield url, proc.pid, headers


@contextmanager
def litellm_proxy(work: Path, upstream: str, cores: list[int], litellm: str) -> Iterator[Proxy]:
    port = free_port()
    conf = work / "litellm.yaml"
    conf.write_text(
        "model_list:\n  - model_name: bench\n    litellm_params: {model: openai/bench, api_base: "
        f"'{upstream}', api_key: unused}}\nlitellm_settings: {{telemetry: false}}\n")
    # no master key on either proxy, so neither pays for client auth (grace-hpc runs keyless on loopback too)
    env = dict(os.environ, LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", DISABLE_SCHEMA_UPDATE="True",
               LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
               LITELLM_LOCAL_MODEL_COST_MAP="True")  # offline: no fetch of the price list at start
    argv = [litellm, "--config", str(conf), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    with process(pinned(argv, cores), work / "litellm.log", env=env) as proc:
        url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{url}/chat/completions", proc, timeout_s=180)
        yield url, proc.pid, {}


@contextmanager
def vllm_router_proxy(work: Path, upstream: str, cores: list[int], exe: str) -> Iterator[Proxy]:
    """vLLM's Rust router (PyPI `vllm-router`) over the same nginx: it takes workers' root URLs, routes
    /v1/chat/completions to one of them, and health-checks them on GET /health (nginx answers 200 to anything)."""
    port = free_port()
    argv = [exe, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", upstream.removesuffix("/v1"),
            "--policy", "round_robin", "--log-level", "error"]
    with process(pinned(argv, cores), work / "vllm-router.log") as proc:
        url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{url}/chat/completions", proc, timeout_s=120)
        yield url, proc.pid, {}


@contextmanager
def relay_floor(work: Path, upstream: str, cores: list[int]) -> Iterator[Proxy]:
    """The least a Python proxy built like grace-hpc can cost: aiohttp's server and grace-hpc's upstream client
    (grace_hpc/router/wire.py) on uvloop, relaying the body with no routing, accounting or logging (`_floor`
    below). The gap to grace-hpc is what routing costs."""
    port = free_port()
    argv = [sys.executable, __file__, "_floor", str(port), f"{upstream}/chat/completions"]
    with process(pinned(argv, cores), work / "floor.log") as proc:
        url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{url}/chat/completions", proc)
        yield url, proc.pid, {}


def _floor(port: int, upstream: str) -> None:
    import uvloop
    from aiohttp import web

    sys.path.insert(0, str(ROOT))
    from grace_hpc.router.wire import Timeouts, Wire

    timeouts = Timeouts(connect_s=5.0, read_s=60.0)

    async def relay(request: web.Request) -> web.Response:
        answer = await request.app[wire].request("POST", upstream, await request.read(),
                                                 {"Content-Type": "application/json"}, timeouts)
        return web.Response(body=await answer.read(), status=answer.status, content_type="application/json")

    async def lifespan(app: web.Application) -> Iterator[None]:
        app[wire] = Wire(keepalive_s=4.0)
        yield
        await app[wire].close()

    wire = web.AppKey("wire", Wire)
    app = web.Application()
    app.cleanup_ctx.append(lifespan)
    app.router.add_post("/v1/chat/completions", relay)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop())


# -- load -------------------------------------------------------------------------------------------------------
async def _open_loop(url: str, rate: float, duration: float, extra: dict[str, str]) -> dict[str, float]:
    import aiohttp

    n = int(rate * duration)
    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json", **extra}
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm the pool and the proxy
        for _ in range(50):
            async with session.post(url, data=BODY, headers=headers) as r:
                await r.read()

        async def one(scheduled: float) -> None:
            nonlocal errors
            try:
                async with session.post(url, data=BODY, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - scheduled)

        # the generator's own garbage collector must not stall the schedule: with 10,000 tasks alive a full
        # collection here took 32 ms (measured with a gc.callbacks hook), charged to whichever path was under test
        gc.collect()
        gc.freeze()
        gc.disable()
        start = time.perf_counter() + 0.05
        tasks = []
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
    gc.enable()
    latencies.sort()
    return {"p50_ms": latencies[len(latencies) // 2] * 1e3, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
            "errors": errors, "n": n}


def open_loop(url: str, rate: float, duration: float, cores: list[int], headers: dict[str, str]) -> dict[str, float]:
    argv = pinned([sys.executable, __file__, "_load", url, str(rate), str(duration), json.dumps(headers)], cores)
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def cpu_seconds(pid: int) -> float:
    """User+system CPU of `pid` and its descendants (LiteLLM's CLI runs its server in a child), from /proc."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime+stime
    family, grew = {pid}, True
    while grew:
        grew = False
        for child, (ppid, _) in stats.items():
            if ppid in family and child not in family:
                family.add(child)
                grew = True
    total = sum(stats[p][1] for p in family if p in stats)
    return total / os.sysconf("SC_CLK_TCK")


def saturate(url: str, duration: float, cores: list[int], pid: int | None, headers: dict[str, str],
             connections: int = 64) -> dict[str, float]:
    """Closed-loop max req/s, and the proxy's CPU time per request: the second is what a noisy, shared machine
    distorts least (other tenants take wall time from the proxy; they still slow its caches)."""
    script = Path(tempfile.mkdtemp()) / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(BODY)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in
              {"Content-Type": "application/json", **headers}.items()]
    script.write_text("\n".join(lines) + "\n")
    argv = pinned(["wrk", "-t1", f"-c{connections}", f"-d{duration:.0f}s", "-s", str(script), url], cores)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} error responses under wrk:\n{out}")
    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "cpu_us_per_request": cpu / requests_done * 1e6}


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "_load":
        url, rate, duration, headers = sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), json.loads(sys.argv[5])
        import uvloop  # the generator's loop costs less per request, as the proxies' do

        print(json.dumps(uvloop.run(_open_loop(url, rate, duration, headers))))
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "_floor":
        _floor(int(sys.argv[2]), sys.argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="200,1000", help="fixed request rates, comma-separated (default 200,1000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds: every path is measured once per round, medians are shown (default 3)")
    p.add_argument("--litellm", default=shutil.which("litellm"), help="the `litellm` proxy executable, if any")
    p.add_argument("--ledger", action="store_true",
                   help="also measure grace-hpc with a user key and its usage ledger on (SQLite)")
    p.add_argument("--floor", action="store_true",
                   help="also measure a bare relay (aiohttp's server, grace-hpc's upstream client, no routing): "
                        "the floor of a Python proxy like grace-hpc")
    p.add_argument("--vllm-router", default=shutil.which("vllm-router"),
                   help="the `vllm-router` executable (PyPI vllm-router), if any")
    args = p.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            p.error(f"{tool} not found: apt-get install nginx-light wrk")
    all_cpus = cpus()
    proxy_cores, other_cores = (all_cpus[-1:], all_cpus[:-1]) if len(all_cpus) > 1 else (all_cpus, all_cpus)
    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as running:
        work = Path(tmp)
        upstream = running.enter_context(nginx_upstream(work, other_cores))
        starts = {"direct": lambda: _nullcontext((upstream, None, {})),
                  "grace-hpc": lambda: grace_router(work, upstream, proxy_cores)}
        if args.ledger:
            starts["grace-hpc+ledger"] = lambda: grace_router(work, upstream, proxy_cores, str(work / "ledger.sqlite"))
        if args.floor:
            starts["relay floor"] = lambda: relay_floor(work, upstream, proxy_cores)
        if args.vllm_router:
            starts["vllm-router"] = lambda: vllm_router_proxy(work, upstream, proxy_cores, args.vllm_router)
        if args.litellm:
            starts["litellm"] = lambda: litellm_proxy(work, upstream, proxy_cores, args.litellm)
        proxies = {name: running.enter_context(start()) for name, start in starts.items()}
        rounds = [measure_round(proxies, rates, args.duration, other_cores, i) for i in range(args.rounds)]
    results = {name: medians([r[name] for r in rounds], rates) for name in proxies}
    print_table(results, rates, len(all_cpus), len(rounds))
    if args.ledger:
        print_ledger([r["grace-hpc+ledger"]["rps"] / r["grace-hpc"]["rps"] for r in rounds], results)
    return 0


def measure_round(proxies: dict[str, Proxy], rates: list[float], duration: float, cores: list[int],
                  index: int) -> dict[str, dict]:
    """Every running path once: wrk first, then the open loop at each rate below 80 % of the max req/s wrk just
    found (above it an open loop measures a queue growing, not the proxy). The order rotates from round to round,
    so a burst of other tenants' load lands on a different path each time. The proxies not being measured are
    paused (SIGSTOP), so their timers cannot wake on the measured proxy's core."""
    names = list(proxies)
    names = names[index % len(names):] + names[:index % len(names)]
    row: dict[str, dict] = {}
    for name in names:
        base, pid, headers = proxies[name]
        pause_all_but(proxies, name)
        row[name] = saturate(f"{base}/chat/completions", duration, cores, pid, headers)
    for rate in rates:
        for name in names:
            base, _, headers = proxies[name]
            if rate <= 0.8 * row[name]["rps"]:
                pause_all_but(proxies, name)
                row[name].setdefault("rates", {})[rate] = open_loop(f"{base}/chat/completions", rate, duration, cores,
                                                                    headers)
    print(f"round {index + 1}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def pause_all_but(proxies: dict[str, Proxy], name: str) -> None:
    for other, (_, pid, _) in proxies.items():
        if pid is not None:
            os.killpg(pid, signal.SIGCONT if other == name else signal.SIGSTOP)


def medians(rows: list[dict], rates: list[float]) -> dict:
    """One path's medians over the rounds; a rate it could not sustain in some round counts as over capacity."""
    out = {key: statistics.median(r[key] for r in rows) for key in ("rps", "cpu_us_per_request")}
    out["rates"] = {}
    for rate in rates:
        runs = [r["rates"][rate] for r in rows if rate in r.get("rates", {})]
        if len(runs) == len(rows):
            out["rates"][rate] = {k: statistics.median(run[k] for run in runs) for k in ("p50_ms", "p99_ms")}
            out["rates"][rate]["errors"] = sum(run["errors"] for run in runs)
            out["rates"][rate]["n"] = sum(run["n"] for run in runs)
    return out


@contextmanager
def _nullcontext(value: Proxy) -> Iterator[Proxy]:
    yield value


def added(proxied: float, direct: float) -> str:
    """The latency a proxy adds over the direct path, or `void` when the direct path was the slower one: then
    the machine's queueing (load generator, upstream, other tenants) dominated, not the proxy."""
    if proxied < direct:
        return f"void (direct path stalled: {direct:.2f})"
    return f"+{proxied - direct:.2f}"


def print_table(results: dict[str, dict], rates: list[float], ncpu: int, rounds: int) -> None:
    direct = results["direct"]
    header = ("| path | " + " | ".join(f"added p50 / p99 at {r:.0f} req/s (ms)" for r in rates)
              + " | max req/s (wrk, 64 conn) | vs direct | proxy CPU per request | req/s per proxy core |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nrouter overhead (nginx upstream, {ncpu} CPUs, proxy pinned to one core; medians of {rounds} interleaved "
          f"rounds; load average {load} at the end: other tenants' load inflates latencies, CPU per request much "
          "less)\n")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, row in results.items():
        cells = []
        for r in rates:
            m, d = row["rates"].get(r), direct["rates"][r]
            if m is None:
                cells.append(f"over capacity (max {row['rps']:.0f} req/s)")
                continue
            err = f", {m['errors']}/{m['n']} errors" if m["errors"] else ""
            if name == "direct":
                cells.append(f"{m['p50_ms']:.2f} / {m['p99_ms']:.2f} (absolute)")
            else:
                cells.append(f"{added(m['p50_ms'], d['p50_ms'])} / {added(m['p99_ms'], d['p99_ms'])}{err}")
        cpu = row["cpu_us_per_request"]
        per_core = f"{1e6 / cpu:.0f}" if cpu else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {row['rps']:.0f} | {row['rps'] / direct['rps']:.2f} | "
              + (f"{cpu:.0f} us" if cpu else "-") + f" | {per_core} |")
    for other, label in (("relay floor", "the relay floor"), ("vllm-router", "vllm-router"),
                         ("litellm", "LiteLLM")):
        if other in results and "grace-hpc" in results:
            g, o = results["grace-hpc"], results[other]
            print(f"grace-hpc vs {label}: {g['rps'] / o['rps']:.2f}x its max req/s, "
                  f"{g['cpu_us_per_request'] / o['cpu_us_per_request']:.2f}x its proxy CPU per request "
                  f"({g['cpu_us_per_request'] - o['cpu_us_per_request']:+.0f} us)")


def print_ledger(ratios: list[float], results: dict[str, dict]) -> None:
    """The ledger's cost (issue 15's aim: within 15 % of the max req/s): the on/off ratio of each round's wrk runs,
    taken minutes apart at most, and its median."""
    on, off = results["grace-hpc+ledger"], results["grace-hpc"]
    print(f"\nledger on (user key + SQLite ledger) vs off (keyless): {statistics.median(ratios):.1%} of the max req/s "
          f"(median of {len(ratios)} rounds: {', '.join(f'{r:.1%}' for r in ratios)}), "
          f"{on['cpu_us_per_request'] - off['cpu_us_per_request']:+.0f} us of proxy CPU per request "
          f"({on['cpu_us_per_request']:.0f} vs {off['cpu_us_per_request']:.0f})")

if __name__ == "__main__":
    raise SystemExit(main())
