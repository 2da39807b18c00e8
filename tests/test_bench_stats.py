"""The benchmark's pure parts: what a stream says, what TTFT/TPOT/throughput mean, what is sustainable, what is sent."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from grace_hpc.bench.capacity import sustainable
from grace_hpc.bench.loadgen import Budget, open_loop_count
from grace_hpc.bench.probes import EngineReading, engine_sample, parse_engine_metrics, parse_nvidia_smi
from grace_hpc.bench.report import seed_row
from grace_hpc.bench.stats import LoadMode, Percentiles, RequestResult, summarize
from grace_hpc.bench.stream import DONE, Chunk, parse_line
from grace_hpc.bench.workload import Api, Workload, load_dataset, request_body
from grace_hpc.cli.bench import parse_levels
from grace_hpc.errors import ConfigError


# -- the stream -------------------------------------------------------------------------------------------------
def test_chat_and_completion_chunks_carry_text_and_the_last_one_carries_usage():
    chat = b'data: {"choices":[{"index":0,"delta":{"content":" Paris"}}]}\n'
    legacy = b'data: {"choices":[{"index":0,"text":" Paris"}]}'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":16}}'
    assert parse_line(chat) == Chunk(text=" Paris")
    assert parse_line(legacy) == Chunk(text=" Paris")
    assert parse_line(usage) == Chunk(completion_tokens=16, prompt_tokens=7)
    assert parse_line(b"data: [DONE]") is DONE


def test_role_only_chunks_comments_and_event_lines_are_not_tokens():
    assert parse_line(b'data: {"choices":[{"delta":{"role":"assistant","content":null}}]}') == Chunk()
    assert parse_line(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}') == Chunk()
    for line in (b"", b": keep-alive", b"event: error", b"\n"):
        assert parse_line(line) is None


def test_an_error_inside_the_stream_is_reported():
    line = b'data: {"error": {"message": "upstream died", "type": "upstream_error", "code": "stream_interrupted"}}'
    assert parse_line(line) == Chunk(error="upstream died")
    assert parse_line(b"data: {not json").error.startswith("unparseable")  # type: ignore[union-attr]


# -- the definitions ----------------------------------------------------------------------------------------------
def result(scheduled: float, first: float, end: float, tokens: int, sent: float | None = None) -> RequestResult:
    step = (end - first) / (tokens - 1)
    times = tuple(first + i * step for i in range(tokens))
    return RequestResult(scheduled, scheduled if sent is None else sent, end, first_token_s=first,
                         token_times_s=times, output_tokens=tokens, prompt_tokens=10)


def test_ttft_and_e2e_count_from_the_scheduled_time_and_tpot_is_the_mean_token_gap():
    late = result(scheduled=1.0, sent=1.5, first=2.0, end=2.9, tokens=10)  # the client sent it 0.5 s late
    assert late.ttft_s == pytest.approx(1.0)  # not 0.5: an open loop that falls behind must show it
    assert late.e2e_s == pytest.approx(1.9)
    assert late.tpot_s == pytest.approx(0.1)
    assert late.gaps_s == pytest.approx((0.1,) * 9)
    assert RequestResult(0.0, 0.0, 1.0, first_token_s=0.5, token_times_s=(0.5,), output_tokens=1).tpot_s is None


def test_a_level_counts_only_successes_in_throughput_and_percentiles_and_keeps_error_messages():
    ok = [result(scheduled=i * 0.5, first=i * 0.5 + 0.1, end=i * 0.5 + 1.0, tokens=10) for i in range(4)]
    failed = RequestResult(0.2, 0.2, 0.3, error="HTTP 503: busy")
    stats = summarize(LoadMode.CLOSED, 4, [*ok, failed, failed])
    assert (stats.requests, stats.errors, stats.error_samples) == (6, 2, ("HTTP 503: busy",))
    assert stats.span_s == pytest.approx(2.5)  # first scheduled (0.0) to last end (2.5)
    assert stats.requests_per_s == pytest.approx(4 / 2.5)
    assert stats.output_tokens_per_s == pytest.approx(40 / 2.5)
    assert stats.ttft.p50 == pytest.approx(100.0)
    assert stats.tpot.p99 == pytest.approx(100.0)
    assert stats.e2e.p50 == pytest.approx(1000.0)
    assert stats.mean_output_tokens == 10


def test_percentiles_interpolate_and_an_empty_sample_has_none():
    p = Percentiles.of([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (p.p50, p.p90, p.p99) == pytest.approx((50.5, 90.1, 99.01))
    assert Percentiles.of([]) is None


# -- capacity ----------------------------------------------------------------------------------------------------
def level(load: float, tok_s: float, ttft_p90_ms: float, errors: int = 0, mode: LoadMode = LoadMode.CLOSED):
    return replace(summarize(mode, load, [result(0.0, 0.1, 1.0, 10)]), output_tokens_per_s=tok_s,
                   requests_per_s=tok_s / 10, errors=errors, ttft=Percentiles(0, 0, ttft_p90_ms, 0, 0))


def test_capacity_is_the_best_closed_loop_level_that_meets_the_ttft_target_without_errors():
    levels = [level(1, 50, 100), level(4, 150, 400), level(16, 170, 2500), level(8, 200, 900, errors=1),
              level(3, 999, 10, mode=LoadMode.OPEN)]
    cap = sustainable(levels, ttft_p90_target_ms=1000, now=123.0)
    assert (cap.output_tokens_per_s, cap.concurrency, cap.requests_per_s, cap.measured_at) == (150, 4, 15, 123.0)
    assert sustainable([level(1, 50, 1500)], ttft_p90_target_ms=1000, now=0) is None


# -- what is sent ------------------------------------------------------------------------------------------------
def test_synthetic_requests_are_streamed_greedy_fixed_length_and_differ_from_each_other():
    work = Workload(api=Api.CHAT, prompt_tokens=32, output_tokens=16)
    a, b = request_body(work, "tiny", 0), request_body(work, "tiny", 1)
    assert a["stream"] is True and a["stream_options"] == {"include_usage": True}
    assert (a["max_tokens"], a["temperature"], a["ignore_eos"]) == (16, 0.0, True)
    assert len(a["messages"][0]["content"].split()) == 32
    assert a["messages"] != b["messages"]  # no prefix-cache hits between requests
    legacy = request_body(Workload(api=Api.COMPLETIONS, prompt_tokens=8), "tiny", 0)
    assert "messages" not in legacy and isinstance(legacy["prompt"], str)
    whole = request_body(Workload(stream=False), "tiny", 0)
    assert whole["stream"] is False and "stream_options" not in whole


def test_a_dataset_line_gives_its_prompt_and_its_own_output_length(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "hello", "output_tokens": 5}) + "\n\n"
                    + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    work = Workload(api=Api.CHAT, output_tokens=9, dataset=load_dataset(path))
    first, second, third = (request_body(work, "m", i) for i in range(3))
    assert first["messages"] == [{"role": "user", "content": "hello"}] and first["max_tokens"] == 5
    assert second["messages"] == [{"role": "user", "content": "hi"}] and second["max_tokens"] == 9
    assert third["messages"] == first["messages"]  # cycles


@pytest.mark.parametrize("line", ['{"output_tokens": 3}', '{"prompt": "a", "messages": []}', "not json",
                                  '{"prompt": "a", "output_tokens": 0}'])
def test_a_bad_dataset_line_is_named_with_what_a_line_must_hold(tmp_path, line):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl: line 2: .*`prompt` \(string\) or `messages`"):
        load_dataset(path)


def test_load_levels_and_open_loop_budgets():
    assert parse_levels("1,4,16,64", "--concurrency", integer=True) == (1, 4, 16, 64)
    assert parse_levels("0.5, 2", "--rate", integer=False) == (0.5, 2.0)
    for bad in ("", "0,4", "a,b", "1.5"):
        with pytest.raises(ConfigError, match="--concurrency"):
            parse_levels(bad, "--concurrency", integer=True)
    assert open_loop_count(2.0, Budget(duration_s=10)) == 20
    assert open_loop_count(2.0, Budget(duration_s=10, requests=5)) == 5
    assert open_loop_count(0.01, Budget(duration_s=10)) == 1


# -- probes and the seed --------------------------------------------------------------------------------------------
VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 5.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:num_requests_running{engine="0",model_name="other"} 1.0
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1234.0
"""


def test_engine_gauges_are_read_from_vllm_and_llamacpp_metrics_and_absent_when_not_exposed():
    assert parse_engine_metrics(VLLM_METRICS) == EngineReading(running=4.0, waiting=5.0, kv_usage=0.25)
    llama = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 6\nllamacpp:kv_cache_usage_ratio 0.5\n"
    assert parse_engine_metrics(llama) == EngineReading(2.0, 6.0, 0.5)
    assert parse_engine_metrics("") is None
    assert parse_engine_metrics("404 page not found") is None
    peak = engine_sample([EngineReading(1, 0, None), EngineReading(2, 4, None)])
    assert (peak.running_max, peak.waiting_max, peak.kv_cache_usage_max) == (2, 4, None)


def test_nvidia_smi_rows_are_parsed_and_unreadable_rows_skipped():
    assert parse_nvidia_smi("45, 30512\n[N/A], [N/A]\n100, 80000\n") == [(45.0, 30512.0), (100.0, 80000.0)]


def test_the_seed_rows_match_their_models_on_a100_only():
    assert seed_row("gemma-2-2b-it", "A100-40GB").requests_per_s == (50, 80)
    assert seed_row("llama-3.1-70b-instruct", "A100-80GB").tpot_ms == (40, 60)
    assert seed_row("gemma-2-2b-it", "T4") is None
    assert seed_row("tiny", "A100-40GB") is None
