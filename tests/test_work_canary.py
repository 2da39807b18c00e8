"""The log-prob canary: an engine whose echoed prompt log-probs disagree with its own next-token log-probs is refused
before the first row; a correct engine passes, and its verdict is stored for `status` and reused per version."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests

from grace_hpc.config.loader import ConfigDir
from grace_hpc.config.routing import Routing
from grace_hpc.errors import WorkError
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.registry.store import Registry
from grace_hpc.registry.verdicts import (
    LogprobVerdict,
    read_verdicts,
    record_verdict,
    verdict_for_endpoint,
    verdict_path,
)
from grace_hpc.router import create_app, serve_in_thread
from grace_hpc.status import build_rows
from grace_hpc.work.canary import EngineId, canary_error, check_engine
from grace_hpc.work.client import Upstream
from grace_hpc.work.runner import WorkSpec, run_shard
from grace_hpc.work.shards import Shard
from grace_hpc.work.tasks import load_task
from tests.support.scoring import SMOL, http_engine, llama_cpp_python_argv, scoring_server_argv, smollm2_or_skip

ROOT = Path(__file__).resolve().parents[1]


def test_the_refusal_names_the_engine_its_version_what_was_compared_and_what_to_use() -> None:
    err = canary_error(SMOL, EngineId("llama-cpp-python server", None), "http://n1:8000/v1",
                       "echoed log-prob of ' Paris' after 'The capital of France is' is -8.4500, ...")
    text = str(err)
    for part in ("llama-cpp-python server", "version not reported", "http://n1:8000/v1", "' Paris'",
                 "no row was sent", "vLLM", "grace_hpc.engines.scoring_server", "#1983"):
        assert part in text


def test_verdicts_are_kept_per_endpoint_and_model_and_the_latest_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "logprob-verdicts.json"
    old = LogprobVerdict(endpoint="ep1", model="m", engine="vllm", version="0.32", passed=False, detail="x",
                         checked_at=1.0)
    record_verdict(path, old)
    record_verdict(path, old.model_copy(update={"passed": True, "checked_at": 2.0}))
    record_verdict(path, old.model_copy(update={"endpoint": "ep2"}))
    verdicts = read_verdicts(path)
    assert len(verdicts) == 2  # (ep1, m) replaced, (ep2, m) added
    assert verdict_for_endpoint(verdicts, "ep1", "http://x/v1", ("m",)) == {
        "passed": True, "engine": "vllm", "version": "0.32", "checked_at": 2.0}
    assert verdict_for_endpoint(verdicts, "ep3", "http://x/v1", ("m",)) is None


def rows(path: Path, n: int = 3) -> Path:
    pd.DataFrame([{"story_setup": "Sam checked 3 exams.", "speach": "Some of the exams have passing grades.",
                   "items": "exams", "property": "have passing grades",
                   "knowledgeQ": "Did Sam check all of the exams?"}] * n).to_csv(path, index=False)
    return path


def spec_for(url: str, model: str, tmp_path: Path) -> WorkSpec:
    task = load_task("study1_exp2", ConfigDir.discover(ROOT / "configs").root / "tasks")
    return WorkSpec(input=rows(tmp_path / "in.csv"), task=task, output=tmp_path / "out", models=(model,),
                    base_url=url, concurrency=2, verdicts=tmp_path / "logprob-verdicts.json")


def check(url: str, model: str, verdicts: Path) -> LogprobVerdict:
    async def go() -> LogprobVerdict:
        async with Upstream(url, concurrency=2) as up:
            return await check_engine(up, model, verdicts)
    return asyncio.run(go())


@pytest.mark.engine
def test_an_engine_that_ignores_echo_is_refused_before_any_row(llama_server, tmp_path: Path) -> None:
    server = llama_server()  # llama.cpp's own server (xllamacpp) ignores `echo`
    with pytest.raises(WorkError, match=r"canary failed on llama\.cpp server .*ignored `echo`"):
        asyncio.run(run_shard(spec_for(server.base_url, "tiny", tmp_path), Shard(index=0, count=1), handle_sigterm=False))
    assert not list((tmp_path / "out").rglob("part-*.parquet"))


@pytest.fixture(scope="module")
def smol_path() -> Path:
    return smollm2_or_skip()


@pytest.fixture(scope="module")
def smol_scoring(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with http_engine(scoring_server_argv(smol_path, SMOL), SMOL, tmp_path_factory.mktemp("s") / "log") as url:
        yield url


@pytest.mark.engine
def test_llama_cpp_python_server_on_smollm2_is_refused_before_any_row(smol_path: Path, tmp_path: Path) -> None:
    with http_engine(llama_cpp_python_argv(smol_path, SMOL), SMOL, tmp_path / "server.log") as url:
        spec = spec_for(url, SMOL, tmp_path)
        with pytest.raises(WorkError, match=r"canary failed on llama-cpp-python server .*echoed log-prob of") as exc:
            asyncio.run(run_shard(spec, Shard(index=0, count=1), handle_sigterm=False))
    assert "no row was sent" in str(exc.value)
    assert not list((tmp_path / "out").rglob("part-*.parquet"))
    [verdict] = read_verdicts(spec.verdicts)  # type: ignore[arg-type]
    assert (verdict.passed, verdict.model, verdict.endpoint) == (False, SMOL, url)


@pytest.mark.engine
def test_the_scoring_engine_passes_on_smollm2_without_bos(smol_scoring: str, tmp_path: Path) -> None:
    verdict = check(smol_scoring, SMOL, tmp_path / "v.json")
    assert verdict.passed and verdict.engine == "grace-scoring"
    assert "llama-cpp-python" in (verdict.version or "")
    assert "pairs" in verdict.detail


@pytest.mark.engine
def test_the_scoring_engine_passes_on_the_tiny_model_with_bos(tiny_gguf: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the scoring engine needs llama-cpp-python")
    with http_engine(scoring_server_argv(tiny_gguf, "tiny"), "tiny", tmp_path / "log") as url:
        assert check(url, "tiny", tmp_path / "v.json").passed


@pytest.mark.engine
def test_a_verdict_is_reused_for_the_same_engine_version(smol_scoring: str, tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    first = check(smol_scoring, SMOL, path)
    time.sleep(0.01)
    again = check(smol_scoring, SMOL, path)
    assert again.checked_at == first.checked_at  # not checked again


def endpoint(rid: str, now: float) -> EndpointRecord:
    return EndpointRecord(id=rid, model=SMOL, served_model_name=SMOL, engine="llama.cpp", host="n1", port=8000,
                          base_url=f"http://n1:8000/v1/{rid}", started_at=now, heartbeat_at=now,
                          state=EndpointState.READY, external=True)


def test_status_and_the_routers_status_show_each_endpoints_log_prob_verdict(tmp_path: Path) -> None:
    now = time.time()
    registry = Registry(tmp_path / "registry.json")
    for rid in ("good", "bad", "unchecked"):
        registry.register(endpoint(rid, now))
    path = verdict_path(registry.path)
    for rid, passed in (("good", True), ("bad", False)):
        record_verdict(path, LogprobVerdict(endpoint=rid, model=SMOL, engine="e", version=None, passed=passed,
                                            detail="...", checked_at=now))

    rows = build_rows([], registry.list(), {}, {}, now=now, stale_after_s=60, verdicts=read_verdicts(path))
    assert {r.endpoint.rsplit("/", 1)[1]: r.logprobs for r in rows} == {
        "good": "passed", "bad": "FAILED", "unchecked": None}

    table = Routing.model_validate({"categories": [{"name": "default", "models": [SMOL]}]})
    with serve_in_thread(create_app(table, registry, environ={})) as url:
        body = requests.get(f"{url}/status", timeout=10).json()
    shown = {e["id"]: (e["logprobs"] or {}).get("passed") for e in body["endpoints"]}
    assert shown == {"good": True, "bad": False, "unchecked": None}
