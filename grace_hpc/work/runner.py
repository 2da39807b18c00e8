"""Running one shard: read its rows in chunks, ask every model, write parquet parts, skip what is already done.

Memory stays flat in the input size: rows stream through a bounded queue (2 x concurrency) and results leave
in parts of `part_rows`; only the done-set of (row id, model) keys is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from grace_hpc.errors import GraceError, WorkError
from grace_hpc.work.canary import check_engine
from grace_hpc.work.client import Reply, Upstream, gather_all
from grace_hpc.work.fleet import Fleet, FleetSpec
from grace_hpc.work.inputs import iter_rows, read_columns
from grace_hpc.work.parse import parse_answer_probabilities_knowledge
from grace_hpc.work.progress import Progress
from grace_hpc.work.prompts import check_columns, question_prompts
from grace_hpc.work.results import ResultStore
from grace_hpc.work.scorer import OptionScorer
from grace_hpc.work.shards import Shard, row_id
from grace_hpc.work.tasks import OptionsExtract, ParsedExtract, Question, Task

__all__ = ["WorkSpec", "ShardSummary", "run_shard", "run_shard_sync"]

log = logging.getLogger("grace_hpc.work")
ABORT_AFTER = 10  # this many failed rows before any success: stop, the upstream or the task is broken


class WorkSpec(BaseModel):
    """Everything a shard worker needs (picklable for submitit). No API key: workers read GRACE_ROUTER_KEY."""

    model_config = ConfigDict(frozen=True)

    input: Path
    task: Task
    output: Path
    models: tuple[str, ...] = Field(min_length=1)  # model names, or one category
    base_url: str | None = None  # a router (or engine) URL; None: route in-process over `fleet`'s registry
    fleet: FleetSpec | None = None
    concurrency: int = Field(default=8, ge=1)
    retries: int = Field(default=4, ge=0)
    timeout_s: float = Field(default=300.0, gt=0)
    part_rows: int = Field(default=200, ge=1)
    flush_s: float = Field(default=30.0, gt=0)
    chunk_rows: int = Field(default=2048, ge=1)
    verdicts: Path | None = None  # the log-prob canary's verdict file (beside the registry); None: not stored

    @model_validator(mode="after")
    def _one_way_to_the_fleet(self) -> WorkSpec:
        if (self.base_url is None) == (self.fleet is None):
            raise ValueError("give exactly one of base_url (a router or engine) and fleet (route from the registry)")
        return self

    def upstream(self, api_key: str | None) -> Upstream:
        if self.fleet is not None:
            return Fleet.from_spec(self.fleet, self.concurrency, self.retries, self.timeout_s)
        assert self.base_url is not None  # by _one_way_to_the_fleet
        return Upstream(self.base_url, api_key, self.concurrency, self.retries, self.timeout_s)


class ShardSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    shard: str
    rows_in_shard: int  # rows x models this shard owns
    skipped_done: int
    ok: int
    failed: int
    parts_written: int
    seconds: float

    @property
    def complete(self) -> bool:
        return self.skipped_done + self.ok == self.rows_in_shard


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Shard:
    """One run of one shard (state shared by the producer, the row workers and the writer)."""

    def __init__(self, spec: WorkSpec, shard: Shard, upstream: Upstream, store: ResultStore) -> None:
        self.spec, self.shard, self.upstream, self.store = spec, shard, upstream, store
        self.scorer = OptionScorer(upstream)
        self.buffer: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.parts = self.ok = self.failed = 0
        self.last_error = ""
        self.owners: dict[str, str | None] = {}

    async def ask(self, q: Question, model: str, prompt: str) -> tuple[Any, list[Reply]]:
        task, s = self.spec.task, self.spec.task.sampling
        if isinstance(q.extract, OptionsExtract):
            scored = await self.scorer.score(model, prompt, q.extract)
            return {**scored.scores.as_dict(), "tokens": scored.tokens}, list(scored.replies)
        params: dict[str, Any] = {"model": model, "temperature": s.temperature, "top_p": s.top_p,
                                  "max_tokens": s.max_tokens}
        if s.seed is not None:
            params["seed"] = s.seed
        if s.stop:
            params["stop"] = list(s.stop)
        if task.mode == "chat":
            messages = [{"role": "user", "content": prompt}]
            if task.system:
                messages.insert(0, {"role": "system", "content": task.system})
            reply = await self.upstream.post("/chat/completions", {**params, "messages": messages})
            text = _field(reply, ("choices", 0, "message", "content"))
        else:
            reply = await self.upstream.post("/completions", {**params, "prompt": prompt})
            text = _field(reply, ("choices", 0, "text"))
        if isinstance(q.extract, ParsedExtract):
            return {"text": text, **parse_answer_probabilities_knowledge(text).as_dict()}, [reply]
        return {"text": text}, [reply]

    async def row(self, position: int, rid: str, row: Mapping[str, Any], model: str) -> dict[str, Any]:
        started = time.monotonic()
        replies: list[Reply] = []
        record: dict[str, Any] = {
            "row_id": rid, "position": position, "model": model, "task": self.spec.task.name,
            "input": json.dumps(row, default=str, ensure_ascii=False),
            "sampling": self.spec.task.sampling.model_dump_json(), "seed": self.spec.task.sampling.seed,
            "shard": str(self.shard), "engine": self.owners.get(model),
        }
        try:
            output: dict[str, Any] = {}
            for q in self.spec.task.questions:
                asked = await gather_all(*(self.ask(q, model, p) for _, p in question_prompts(q, row)))
                for _, r in asked:
                    replies += r
                if q.grid is None:
                    output[q.name] = asked[0][0]
                else:
                    output[q.name] = {"grid": q.grid.variable,
                                      "by_value": {str(v): a[0] for v, a in zip(q.grid.values, asked, strict=True)}}
            record.update(status="ok", error=None, output=json.dumps(output, ensure_ascii=False))
        except GraceError as exc:
            record.update(status="failed", error=str(exc), output=None)
        last = replies[-1] if replies else None
        if last is not None:
            record["served_model"] = last.body.get("model")
            record["engine"] = last.headers.get("x-grace-engine", record["engine"])
            record["quantization"] = last.headers.get("x-grace-quantization")
        record.update(requests=len(replies), attempts=sum(r.attempts for r in replies),
                      latency_s=time.monotonic() - started, finished_at=_now())
        return record

    def collect(self, record: dict[str, Any], progress: Progress) -> None:
        if record["status"] == "ok":
            self.ok += 1
        else:
            self.failed += 1
            self.last_error = record["error"]
        progress.advance(failed=record["status"] != "ok")
        self.buffer.append(record)
        if len(self.buffer) >= self.spec.part_rows or time.monotonic() - self.last_flush >= self.spec.flush_s:
            self.flush()
        if self.ok == 0 and self.failed >= ABORT_AFTER:
            raise WorkError(f"shard {self.shard}: the first {self.failed} rows all failed; last error: "
                            f"{self.last_error}")

    def flush(self) -> None:
        if self.buffer:
            self.store.write_part(self.buffer)
            self.parts += 1
            self.buffer = []
        self.last_flush = time.monotonic()

    async def engines(self) -> None:
        """Provenance fallback when no router header names the engine: `owned_by` from GET /models."""
        try:
            reply = await self.upstream.get("/models")
        except GraceError as exc:
            log.warning("GET /models failed (%s); engine provenance will come from router headers only", exc)
            return
        for m in reply.body.get("data") or []:
            if isinstance(m, dict) and "id" in m:
                self.owners[str(m["id"])] = m.get("owned_by")


async def _canary(upstream: Upstream, model: str, verdicts: Path | None) -> None:
    """The log-prob canary for `model`: through the upstream, or per endpoint when routing from the registry."""
    if not isinstance(upstream, Fleet):
        await check_engine(upstream, model, verdicts)
        return
    endpoints = upstream.endpoints(model)
    if not endpoints:
        raise WorkError(f"no ready endpoint in {upstream.spec.registry} serves {model!r}; see `grace-hpc status`")
    for record in endpoints:
        async with Upstream(record.base_url, upstream.key(record), concurrency=2, retries=upstream.retries,
                            timeout_s=upstream.timeout_s) as direct:
            await check_engine(direct, record.served_model_name, verdicts, endpoint=record.id)


def _field(reply: Reply, path: tuple[Any, ...]) -> str:
    value: Any = reply.body
    try:
        for key in path:
            value = value[key]
    except (KeyError, IndexError, TypeError) as exc:
        raise WorkError(f"answer lacks {'.'.join(map(str, path))}: {json.dumps(reply.body)[:200]}") from exc
    return "" if value is None else str(value)


async def run_shard(spec: WorkSpec, shard: Shard, api_key: str | None = None, *, progress_out: Any = None,
                    handle_sigterm: bool = True) -> ShardSummary:
    """Process this shard's pending rows; safe to rerun at any time (exactly-once via results.py)."""
    started = time.monotonic()
    check_columns(spec.task, read_columns(spec.input), str(spec.input))
    total = sum(1 for pos, _ in iter_rows(spec.input, spec.chunk_rows) if shard.owns(pos)) * len(spec.models)
    queue: asyncio.Queue[tuple[int, str, dict[str, Any], str] | None] = asyncio.Queue(2 * spec.concurrency)
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    terminated: list[bool] = []

    def on_sigterm() -> None:  # SLURM preemption, time limit or scancel: SIGTERM, then SIGKILL after KillWait
        terminated.append(True)
        if me is not None:
            me.cancel()

    if handle_sigterm:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    upstream = spec.upstream(api_key)
    with ResultStore(spec.output / shard.dirname) as store:
        done = store.done_keys()
        async with upstream:
            state = _Shard(spec, shard, upstream, store)
            await state.engines()
            if any(isinstance(q.extract, OptionsExtract) for q in spec.task.questions):
                for model in spec.models:  # before any row: refuse an engine whose prompt log-probs are wrong
                    await _canary(upstream, model, spec.verdicts)
            skipped = 0
            with Progress(f"shard {shard}", total, out=progress_out or sys.stderr) as progress:

                async def produce() -> None:
                    nonlocal skipped
                    for pos, row in iter_rows(spec.input, spec.chunk_rows):
                        if not shard.owns(pos):
                            continue
                        rid = row_id(pos, row, spec.task.id_column)
                        for model in spec.models:
                            if (rid, model) in done:
                                skipped += 1
                                progress.advance(skipped=True)
                            else:
                                await queue.put((pos, rid, row, model))
                    for _ in range(spec.concurrency):
                        await queue.put(None)

                async def work() -> None:
                    while (item := await queue.get()) is not None:
                        state.collect(await state.row(*item), progress)

                tasks = [asyncio.create_task(produce())]
                try:
                    tasks += [asyncio.create_task(work()) for _ in range(spec.concurrency)]
                    await asyncio.gather(*tasks)
                except asyncio.CancelledError:
                    if not terminated:
                        raise
                    raise WorkError(f"shard {shard} stopped by SIGTERM after {state.ok + state.failed} rows; "
                                    "rerun it (or let SLURM requeue it) to finish: written rows are kept") from None
                finally:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    state.flush()  # finished records only: a row still in flight is redone by the next run
                    if handle_sigterm:
                        loop.remove_signal_handler(signal.SIGTERM)
        summary = ShardSummary(shard=str(shard), rows_in_shard=total, skipped_done=skipped, ok=state.ok,
                               failed=state.failed, parts_written=state.parts, seconds=time.monotonic() - started)
        if summary.complete:
            store.mark_done(summary.model_dump())
    return summary


def run_shard_sync(spec: WorkSpec, shard: Shard, environ: Mapping[str, str] | None = None) -> ShardSummary:
    """Entry point for a SLURM array task (submitit pickles this function; the key comes from the job's
    environment, never from the pickle on the shared file system). Signals are left to submitit, which
    requeues a preempted or timed-out task (ShardJob is Checkpointable); a requeued task skips written rows."""
    env = os.environ if environ is None else environ
    return asyncio.run(run_shard(spec, shard, env.get("GRACE_ROUTER_KEY"), handle_sigterm=False))
