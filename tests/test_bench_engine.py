"""`grace-hpc bench` against real llama.cpp servers (tiny GGUF): what it measures is what the engine streamed.

Short levels (seconds) on a shared 2-core machine: the assertions are about structure and ratios inside one run
(TTFT inside E2E, TPOT from the real gaps, a queue showing as TTFT, throughput following the offered rate up to
capacity), never about absolute speed."""

from __future__ import annotations

import json

import pytest

from grace_hpc.bench import runner
from grace_hpc.bench.loadgen import Budget
from grace_hpc.bench.stats import LoadMode
from grace_hpc.bench.targets import Target
from grace_hpc.bench.workload import Workload
from grace_hpc.registry.store import Registry
from tests.support.cli import grace
from tests.support.router_env import key_file, record, router, routing

pytestmark = pytest.mark.engine

SECRET = "bench-secret-key"
OUTPUT_TOKENS = 16


def test_closed_loop_on_a_real_server_measures_ttft_tpot_and_throughput_and_records_capacity(
        llama_server, tiny_project):
    server = llama_server(alias="tiny-served", api_key=SECRET, parallel=4)
    registry_path = tiny_project / "registry.json"
    Registry(registry_path).register(
        record("tiny-1", server.base_url, "tiny", served="tiny-served", key=key_file(tiny_project, "k", SECRET)))
    out = tiny_project / "bench.json"
    proc = grace(tiny_project, "bench", "--registry", str(registry_path), "--endpoint", "tiny-1",
                 "--concurrency", "1,4,16", "--duration", "1.5", "--prompt-tokens", "16",
                 "--output-tokens", str(OUTPUT_TOKENS), "--ttft-target", "60000", "--json",
                 "--output", str(out), "--plot", str(tiny_project / "plots"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == doc
    assert SECRET not in proc.stdout + proc.stderr + out.read_text()
    for lv in doc["targets"][0]["levels"]:
        assert lv["errors"] == 0 and lv["requests"] >= 2, lv
        assert lv["mean_output_tokens"] == OUTPUT_TOKENS  # ignore_eos: every request generates all its tokens
        assert 0 < lv["ttft_ms"]["p50"] < lv["e2e_ms"]["p50"]
        assert lv["ttft_ms"]["p99"] < lv["e2e_ms"]["p99"]
        # TPOT is (E2E - TTFT) / (tokens - 1): the streamed gaps, so it agrees with the mean gap between chunks
        assert lv["tpot_ms"]["mean"] == pytest.approx(lv["itl_ms"]["mean"], rel=0.35)
        assert lv["tpot_ms"]["p50"] * (OUTPUT_TOKENS - 1) < lv["e2e_ms"]["p99"]
        assert lv["engine"] is None and lv["gpu"] is None  # llama.cpp without --metrics, no GPU: absent, not zero
    levels = {lv["load"]: lv for lv in doc["targets"][0]["levels"]}
    # 16 clients on 4 slots: each request waits for about three others before its first token
    assert levels[16]["ttft_ms"]["p50"] > 2 * levels[4]["ttft_ms"]["p50"]
    capacity = Registry(registry_path).get("tiny-1").capacity
    assert capacity is not None and capacity == type(capacity).model_validate(doc["targets"][0]["capacity"])
    assert capacity.output_tokens_per_s == max(lv["output_tokens_per_s"] for lv in doc["targets"][0]["levels"])
    assert (tiny_project / "plots" / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_open_loop_throughput_follows_the_offered_rate_then_flattens_at_capacity_with_no_client_errors(
        llama_server):
    """Achieved throughput is min(offered rate, capacity): the shape that closed-loop levels only approximate, and
    one that survives how busy this shared machine is (the tiny model's capacity at 64 output tokens has been 6-60
    requests/s here: above 8 or close to it, far below 150)."""
    server = llama_server(parallel=4)
    target = Target(name="tiny", base_url=server.base_url, model=server.alias, endpoint_id="tiny")
    plan = runner.LoadPlan(mode=LoadMode.OPEN, loads=(2.0, 8.0, 150.0), budget=Budget(duration_s=2.0, requests=150),
                           workload=Workload(prompt_tokens=16, output_tokens=64), ttft_p90_target_ms=2000)
    [result] = runner.run([target], plan).results
    light, medium, heavy = result.levels
    assert [(s.requests, s.errors) for s in result.levels] == [(4, 0), (16, 0), (150, 0)]
    assert light.requests_per_s > 0.7 * 2  # below capacity, throughput is the offered rate...
    assert medium.requests_per_s > 1.5 * light.requests_per_s
    assert heavy.requests_per_s < 0.65 * 150  # ...above it, capacity: the curve flattens
    assert heavy.ttft.p90 > 10 * light.ttft.p90  # requests waited for a slot: latency counted from their schedule
    assert result.capacity is None  # capacity is measured in closed loop only


def test_whole_answers_are_timed_end_to_end_with_their_usage_and_no_ttft(llama_server):
    server = llama_server(parallel=2)
    target = Target(name="tiny", base_url=server.base_url, model=server.alias)
    plan = runner.LoadPlan(mode=LoadMode.CLOSED, loads=(2,), budget=Budget(requests=4),
                           workload=Workload(prompt_tokens=16, output_tokens=8, stream=False), ttft_p90_target_ms=2000)
    [level] = runner.run([target], plan).results[0].levels
    assert (level.requests, level.errors, level.mean_output_tokens) == (4, 0, 8)
    assert level.ttft is None and level.tpot is None and level.e2e.p50 > 0


def test_through_the_router_a_category_is_one_target_with_no_capacity_recorded(llama_server, tiny_project):
    a, b = llama_server(alias="tiny", parallel=1), llama_server(alias="tiny", parallel=1)
    table = routing({"categories": [{"name": "default", "models": ["tiny"]}]})
    records = [record("ep-a", a.base_url, "tiny"), record("ep-b", b.base_url, "tiny")]
    with router(table, tiny_project / "registry.json", records) as url:
        proc = grace(tiny_project, "bench", "--through-router", url, "--category", "default", "--concurrency", "2",
                     "--requests", "6", "--output-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    [target] = doc["targets"]
    assert (target["name"], target["endpoint_id"], target["capacity"]) == ("router:category:default", None, None)
    level = target["levels"][0]
    assert level["requests"] == 6 and level["requests"] - level["errors"] >= 1
    # no error of the client's own: only what the router answered. (Today the router sometimes answers 503: its
    # pooled upstream connection is reused after llama.cpp closed it at the end of a stream, the endpoint is ejected;
    # reported to the router's owners, not papered over here.)
    assert all(e.startswith("HTTP 5") for e in level["error_samples"]), level["error_samples"]
