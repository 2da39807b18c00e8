"""`grace-hpc demo`: the whole product once, end to end, on the embedded default.

launch the `local` deployment (a real instruct model on llama.cpp's CPU server, submitit's local executor)
-> wait until it proves it can generate -> start the router -> ask a question through it by task category
-> print the answer, who served it, and `status` -> stop the fleet (unless --keep)."""

from __future__ import annotations

import argparse
import time

from grace_hpc.cli.common import add_common, config_dir
from grace_hpc.cli.common import console as make_console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the embedded default end to end: launch, route a request, status, stop")
    add_common(p, json_output=False)
    p.add_argument("--deployment", default="local")
    p.add_argument("--routing", default="local", help="routing table name or file (default: routing/local.yaml)")
    p.add_argument("--category", default="docs", help="task category of the demo request (default: docs)")
    p.add_argument("--prompt", default="In one sentence, what is a GPU?")
    p.add_argument("--keep", action="store_true", help="leave the fleet running (stop it with `grace-hpc stop`)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import requests

    from grace_hpc.cli.progress_view import watch_launch
    from grace_hpc.cli.status import _table
    from grace_hpc.errors import EngineError, UpstreamError
    from grace_hpc.launch.launcher import launch, manifest_of
    from grace_hpc.launch.stopping import stop_rows
    from grace_hpc.router import create_app
    from grace_hpc.router.serve import serve_in_thread
    from grace_hpc.status import collect, router_view

    console = make_console()
    config = config_dir(args)
    cluster = config.cluster()
    deployment = config.deployment(args.deployment)
    routing = config.routing(args.routing)
    console.rule(f"1. launch deployment {deployment.name!r}")
    t0 = time.monotonic()
    result = launch(config, deployment, executor_kind="auto")
    for s in result.kept:
        console.print(f"{s.server} is already running (job {s.job_id}): using it, and leaving it running")
    try:
        final = watch_launch(result, timeout_s=600)
        failed = [p for p in final if p.state != "ready"]
        if failed:
            raise EngineError("; ".join(f"{p.job.server}: {p.state}: {p.detail}" for p in failed))
        console.print(f"fleet ready in {time.monotonic() - t0:.1f}s")

        console.rule(f"2. route a {args.category!r} request through the router")
        with serve_in_thread(create_app(routing, result.registry)) as url:
            console.print(f"router listening on {url}/v1")
            t1 = time.monotonic()
            try:
                reply = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
                    "model": args.category, "max_tokens": 64, "temperature": 0,
                    "messages": [{"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                                 {"role": "user", "content": args.prompt}]})
            except requests.RequestException as exc:
                raise UpstreamError(f"the router did not answer: {exc}") from exc
            if reply.status_code != 200:
                raise UpstreamError(f"router answered HTTP {reply.status_code}: {reply.text[:300]}")
            body = reply.json()
            console.print(f"[bold]Q:[/bold] {args.prompt}")
            console.print(f"[bold]A:[/bold] {body['choices'][0]['message']['content'].strip()}")
            console.print(f"served by {reply.headers.get('X-Grace-Served-By')} (model {body.get('model')}) "
                          f"in {time.monotonic() - t1:.2f}s, {body.get('usage', {}).get('completion_tokens')} tokens")

            console.rule("3. status (with the router's view of each endpoint)")
            rows, line = collect(config, cluster, router=router_view(url, None))
            console.print(_table(rows, line))
    finally:
        if not args.keep:
            console.rule("4. stop")
            # only what this demo started: a fleet that was already running is the user's, and stays
            for s in stop_rows(result.registry, manifest_of(config, cluster, deployment.name), result.submitted, 60):
                console.print(f"stopped {s.server} (job {s.job_id}), deregistered: {s.deregistered}")
    return 0
