"""The load samples behind the dashboard: a bounded ring of 10 s buckets per series over an injected clock."""

from __future__ import annotations

import pytest

from grace_hpc.router.samples import BUCKET_S, LoadSamples, bin_value, latency_bin
from tests.test_router_health_metrics import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_requests_errors_and_ejections_are_counted_per_endpoint_and_per_category(clock):
    s = LoadSamples(clock)
    s.served("code", "e1", False, 200, 0.1)
    s.served("code", "e1", False, 502, 0.1)
    s.served("math", "cloud:deepseek", True, 200, 2.0)
    s.failed("e2")
    s.ejected("e2")
    s.unserved("math")
    ep = s.summaries(s.endpoints, ["e1", "e2", "cloud:deepseek", "never-seen"])
    assert (ep["e1"].requests, ep["e1"].errors, ep["e1"].ejections) == (2, 1, 0)
    assert (ep["e2"].requests, ep["e2"].errors, ep["e2"].ejections) == (0, 1, 1)
    assert ep["never-seen"].requests == 0 and ep["never-seen"].p50_s is None
    cat = s.summaries(s.categories)
    assert (cat["code"].requests, cat["code"].cloud, cat["code"].errors) == (2, 0, 1)
    # a request nothing could serve is an error, not a request someone answered
    assert (cat["math"].requests, cat["math"].cloud, cat["math"].errors) == (1, 1, 1)


def test_percentiles_are_within_the_bins_precision(clock):
    s = LoadSamples(clock)
    for i in range(100):
        s.served("c", "e", False, 200, 0.010 if i < 90 else 1.0)  # 90 fast, 10 slow
    summary = s.summaries(s.endpoints)["e"]
    assert summary.p50_s == pytest.approx(0.010, rel=0.13)
    assert summary.p95_s == pytest.approx(1.0, rel=0.13)
    for seconds in (0.0012, 0.05, 0.3, 7.0, 250.0):
        assert bin_value(latency_bin(seconds)) == pytest.approx(seconds, rel=0.13)
    assert latency_bin(0.0) == 0 and latency_bin(1e9) == latency_bin(1e10)  # clamped at both ends


def test_the_rate_is_over_the_last_minute_including_the_current_bucket_and_buckets_run_oldest_first(clock):
    s = LoadSamples(clock)
    for _ in range(7):  # ten requests every 10 s for 70 s
        for _ in range(10):
            s.served("c", "e", False, 200, 0.01)
        clock.now += BUCKET_S
    clock.now -= 5.0  # half way through the seventh bucket
    summary = s.summaries(s.endpoints)["e"]
    assert summary.requests_per_s == round(60 / 55, 3)  # five full buckets and half of the current one
    assert summary.requests == 70
    assert len(summary.per_bucket) == 90
    assert summary.per_bucket[-8:] == (0, 10, 10, 10, 10, 10, 10, 10)
    s.served("c", "fresh", False, 200, 0.01)
    assert s.summaries(s.endpoints)["fresh"].requests_per_s > 0  # a first request shows at once


def test_the_window_forgets_requests_older_than_15_minutes_and_reuses_its_buckets(clock):
    s = LoadSamples(clock)
    s.served("c", "e", False, 200, 0.01)
    clock.now += 890
    s.served("c", "e", False, 200, 0.01)
    assert s.summaries(s.endpoints)["e"].requests == 2
    clock.now += 20  # the first request is now over 900 s old
    assert s.summaries(s.endpoints)["e"].requests == 1
    clock.now += 900 * 3  # the same ring slots, three windows later
    s.served("c", "e", False, 200, 0.01)
    assert s.summaries(s.endpoints)["e"].requests == 1
    assert len(s.endpoints["e"].slots) == 90  # bounded, whatever the traffic


def test_series_idle_for_a_whole_window_are_dropped_when_a_new_one_appears(clock):
    s = LoadSamples(clock)
    s.served("c", "old-endpoint", False, 200, 0.01)
    clock.now += 900
    s.served("c", "new-endpoint", False, 200, 0.01)
    assert set(s.endpoints) == {"new-endpoint"}
    assert set(s.categories) == {"c"}
