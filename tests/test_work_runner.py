"""The worker end to end: real HTTP upstreams on 127.0.0.1, real parquet parts, a real SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from aiohttp import web

from grace_hpc.cli import main
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import UpstreamError, WorkError
from grace_hpc.work.client import Upstream
from grace_hpc.work.fleet import FleetSpec
from grace_hpc.work.merge import merge
from grace_hpc.work.results import ResultStore, iter_parts
from grace_hpc.work.runner import WorkSpec, run_shard
from grace_hpc.work.scorer import OptionScorer
from grace_hpc.work.shards import Shard
from grace_hpc.work.tasks import OptionsExtract, Task, load_task
from tests.conftest import free_port
from tests.support.scoring import registered

ROOT = Path(__file__).resolve().parents[1]
TASK_YAML = """
name: echo-back
mode: completion
sampling: {max_tokens: 3, temperature: 0.0}
questions:
  - {name: reply, prompt: "the answer to {q} is"}
"""


def write_task(folder: Path) -> Path:
    path = folder / "echo-back.yaml"
    path.write_text(TASK_YAML)
    return path


def rows_csv(folder: Path, n: int, name: str = "in.csv") -> Path:
    path = folder / name
    pd.DataFrame({"q": [f"question {i}" for i in range(n)], "k": range(n)}).to_csv(path, index=False)
    return path


def spec(tmp_path: Path, url: str, n: int = 30, **kw: object) -> WorkSpec:
    task = Task.model_validate(yaml.safe_load(TASK_YAML))
    return WorkSpec(input=rows_csv(tmp_path, n), task=task, output=tmp_path / "out", models=("tiny",),
                    base_url=url, **kw)


class Flaky:
    """A real OpenAI-style server: 503 on the first try of every prompt, 400 for prompts with 'poison'."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.in_flight = 0  # " slow" requests being answered
        self.port = free_port()

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["prompt"]
        self.seen[prompt] = self.seen.get(prompt, 0) + 1
        if "poison" in prompt:
            return web.json_response({"error": {"message": "prompt rejected"}}, status=400)
        if "slow" in prompt:
            self.in_flight += 1
            try:
                await asyncio.sleep(30)
            finally:
                self.in_flight -= 1
        if self.seen[prompt] == 1:
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        return web.json_response({"model": body["model"], "choices": [{"text": " ok", "index": 0}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "tiny", "owned_by": "flaky-engine"}]})


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    server = Flaky()
    app = web.Application()
    app.router.add_post("/v1/completions", server.completions)
    app.router.add_get("/v1/models", server.models)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, handler_cancellation=True)  # a client that hangs up cancels its handler
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", server.port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_transient_failures_are_retried_and_a_rejected_row_is_recorded_with_its_error(
        tmp_path: Path, flaky: Flaky) -> None:
    s = spec(tmp_path, f"http://127.0.0.1:{flaky.port}/v1", n=6, part_rows=4)
    path = s.input
    df = pd.read_csv(path)
    df.loc[3, "q"] = "poison"
    df.to_csv(path, index=False)
    summary = asyncio.run(run_shard(s, Shard(index=0, count=1), handle_sigterm=False))
    assert (summary.ok, summary.failed, summary.parts_written) == (5, 1, 2)
    out = pd.concat(pd.read_parquet(p) for p in iter_parts(s.output))
    failed = out[out.status == "failed"].iloc[0]
    assert "HTTP 400" in failed.error and "prompt rejected" in failed.error and failed.position == 3
    ok = out[out.status == "ok"]
    assert set(ok.attempts) == {2}  # one 503, then the answer
    assert set(ok.engine) == {"flaky-engine"} and set(ok.served_model) == {"tiny"}
    assert json.loads(ok.iloc[0].sampling)["max_tokens"] == 3

    # a rerun retries only the failed row; merge keeps one record per row
    again = asyncio.run(run_shard(s, Shard(index=0, count=1), handle_sigterm=False))
    assert (again.skipped_done, again.ok, again.failed) == (5, 0, 1)
    merged = merge(s.output)
    assert (merged.rows, merged.ok, merged.failed, merged.superseded_failures) == (6, 5, 1, 1)


def test_a_rejected_request_cancels_its_siblings_at_once(tmp_path: Path, flaky: Flaky) -> None:
    """" poison" is refused (HTTP 400); the sibling scoring of the same prompt (" slow": 30 s) is cancelled, not
    left running on the upstream while the worker goes on to the next row."""
    async def go() -> int:
        async with Upstream(f"http://127.0.0.1:{flaky.port}/v1", concurrency=4) as up:
            with pytest.raises(UpstreamError, match="HTTP 400"):
                await OptionScorer(up).score("tiny", "the answer is", OptionsExtract(options=("slow", "poison")))
            await asyncio.sleep(0.5)  # the session is still open: a sibling left running would still be there
            return flaky.in_flight
    assert asyncio.run(go()) == 0


def test_a_task_that_fails_every_row_stops_early_with_the_reason(tmp_path: Path, flaky: Flaky) -> None:
    s = spec(tmp_path, f"http://127.0.0.1:{flaky.port}/v1", n=40)
    pd.DataFrame({"q": ["poison"] * 40}).to_csv(s.input, index=False)
    with pytest.raises(WorkError, match="first 10 rows all failed; last error: .*HTTP 400"):
        asyncio.run(run_shard(s, Shard(index=0, count=1), handle_sigterm=False))


def test_one_writer_per_shard(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "shard-0-of-1"):
        with pytest.raises(WorkError, match="another worker is writing this shard"):
            with ResultStore(tmp_path / "shard-0-of-1"):
                pass


def test_input_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = write_task(tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("question\nhello\n")
    header_only = tmp_path / "header.csv"
    header_only.write_text("q\n")
    for data, message in ((empty, "input file is empty"), (wrong, "needs column(s) q"),
                          (header_only, "the input has no rows"),
                          (tmp_path / "x.xlsx", "unknown input format")):
        code = main(["work", "--input", str(data), "--task", str(task), "--output", str(tmp_path / "o"),
                     "--models", "tiny", "--router", "http://127.0.0.1:9/v1"])
        err = capsys.readouterr().err
        assert code == 1 and message in err and err.count("\n") == 1


@pytest.mark.engine
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_shard_stopped_mid_way_and_rerun_has_every_row_exactly_once(tmp_path: Path, llama_server, sig: int
                                                                     ) -> None:
    server = llama_server(parallel=2)
    n = 120
    data, task, out = rows_csv(tmp_path, n), write_task(tmp_path), tmp_path / "out"
    argv = [sys.executable, "-m", "grace_hpc", "work", "--input", str(data), "--task", str(task),
            "--output", str(out), "--models", "tiny", "--router", server.base_url, "--concurrency", "2",
            "--part-rows", "5", "--shard", "0/1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    log = tmp_path / "first-run.log"
    with open(log, "wb") as fh:  # the child keeps its own descriptor
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while len(list(iter_parts(out))) < 3:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=10)
    if sig == signal.SIGTERM:  # preemption / scancel: finished rows are written, then a one-line reason
        assert proc.returncode == 1 and "stopped by SIGTERM" in log.read_text()
    written = sum(pq.read_metadata(p).num_rows for p in iter_parts(out))
    assert 0 < written < n, "the signal must land mid-way"

    rerun = subprocess.run(argv + ["--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["skipped_done"] == written and summary["ok"] == n - written
    assert f"{n}/{n} rows ({written} already done, 0 failed)" in rerun.stderr  # the job-log progress line

    raw = pd.concat(pd.read_parquet(p) for p in iter_parts(out))
    assert len(raw) == n and raw.row_id.is_unique  # no duplicate in the parts themselves
    merged = merge(out)
    assert (merged.rows, merged.ok, merged.incomplete_shards) == (n, n, [])
    got = pd.read_parquet(merged.output)
    assert sorted(got.position) == list(range(n))
    assert not list(out.glob("shard-0-of-1/.part-*"))  # no temp file left behind


@pytest.mark.engine
def test_a_seed_chat_task_runs_against_a_real_engine_and_keeps_unparsable_answers(tmp_path: Path, llama_server
                                                                                  ) -> None:
    server = llama_server()
    cols = ["story_setup", "priorQ", "speach", "speachQ", "knowledgeQ"]
    data = tmp_path / "s1.jsonl"
    pd.DataFrame([{c: f"{c} of row {i}" for c in cols} for i in range(3)]).to_json(data, orient="records",
                                                                                  lines=True)
    s = WorkSpec(input=data, task=load_task("study1_exp1", ROOT / "configs" / "tasks"), output=tmp_path / "out",
                 models=("tiny",), base_url=server.base_url)
    summary = asyncio.run(run_shard(s, Shard(index=0, count=1), handle_sigterm=False))
    assert (summary.ok, summary.failed) == (3, 0)
    out = pd.read_parquet(next(iter_parts(s.output)))
    answer = json.loads(out.output[0])["answer"]
    # a random-weight model does not follow the format: the text is kept and the gaps are named
    assert isinstance(answer["text"], str) and "no 'Initial Answer: 0-3' line" in answer["problems"]
    assert set(out.served_model) == {"tiny"} and set(out.seed) == {0}


@pytest.mark.engine
def test_routing_from_the_registry_counts_only_requests_in_flight(tmp_path: Path, llama_server) -> None:
    """A grid of 20 values asks 20 prompts at once per row, more than routing/local.yaml's max_queue_depth (16):
    requests waiting for one of the worker's own slots must not make the endpoint look full."""
    server = llama_server(parallel=4, api_key="k-" + "y" * 20)
    registry = tmp_path / "registry" / "registry.json"
    task = tmp_path / "grid.yaml"
    task.write_text("name: grid\nmode: completion\nsampling: {max_tokens: 1}\nquestions: [{name: a, prompt: "
                    "'the answer to {q} and {k} is', grid: {variable: k, values: [" +
                    ", ".join(str(i) for i in range(20)) + "]}}]\n")
    fleet = FleetSpec(registry=registry, routing=ConfigDir.discover(ROOT / "configs").routing("local"))
    s = WorkSpec(input=rows_csv(tmp_path, 3), task=load_task(str(task), tmp_path), output=tmp_path / "out",
                 models=("tiny",), fleet=fleet, concurrency=4, retries=0)
    with registered(registry, server):
        summary = asyncio.run(run_shard(s, Shard(index=0, count=1), handle_sigterm=False))
    assert (summary.ok, summary.failed) == (3, 0)
    out = pd.concat(pd.read_parquet(p) for p in iter_parts(s.output))
    assert set(out.engine) == {"llama.cpp"}  # the registry's provenance, as the router would send it
