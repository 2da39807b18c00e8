"""The scaling policy as a specification: bursts must last, lulls must last longer, bounds always hold."""

from grace_hpc.config.deployment import ServerSpec
from grace_hpc.fleet.policy import Decision, Reason, Sample, cap_gpus, decide


def server(low: int = 1, high: int = 3, per: float = 2, for_s: float = 10, idle_s: float = 60) -> ServerSpec:
    return ServerSpec.model_validate({
        "name": "s", "partition": "cpu", "models": ["m"], "replicas": {"min": low, "max": high},
        "scale_up": {"outstanding_per_replica": per, "for_s": for_s}, "scale_down": {"idle_timeout_s": idle_s}})


def steady(outstanding: int, start: float, end: float, waiting: int = 0) -> list[Sample]:
    return [Sample(float(t), outstanding, waiting) for t in range(int(start), int(end) + 1)]


def test_a_burst_that_lasts_for_s_grows_the_fleet_to_what_its_lowest_load_needs():
    history = steady(2, 0, 89) + steady(6, 90, 100)  # 6 outstanding for 10 s, 2 per replica
    d = decide(history, server(), actual=1, now=100)
    assert (d.desired, d.reason) == (3, Reason.OVERLOADED)


def test_a_burst_shorter_than_for_s_changes_nothing():
    history = steady(0, 0, 95) + steady(6, 96, 100)
    assert decide(history, server(), actual=1, now=100) == Decision(1, Reason.STEADY, "1 alive")


def test_growth_never_passes_replicas_max():
    assert decide(steady(50, 0, 100), server(high=3), actual=1, now=100).desired == 3


def test_pending_replicas_count_so_a_burst_does_not_grow_the_fleet_twice():
    assert decide(steady(6, 0, 100), server(), actual=3, now=100).reason is Reason.STEADY


def test_a_lull_of_idle_timeout_shrinks_to_min():
    history = steady(6, 0, 39) + steady(0, 40, 100)
    d = decide(history, server(idle_s=60), actual=3, now=100)
    assert (d.desired, d.reason) == (1, Reason.IDLE)


def test_a_lull_shorter_than_idle_timeout_keeps_the_replicas():
    history = steady(6, 0, 60) + steady(0, 61, 100)
    assert decide(history, server(idle_s=60), actual=3, now=100).reason is Reason.STEADY


def test_a_partial_lull_shrinks_only_to_what_its_peak_needs():
    history = steady(6, 0, 39) + steady(3, 40, 100)  # 3 outstanding needs 2 replicas of 2
    assert decide(history, server(idle_s=60), actual=3, now=100).desired == 2


def test_an_idle_scale_to_zero_server_returns_to_zero():
    d = decide(steady(0, 0, 100), server(low=0, idle_s=60), actual=1, now=100)
    assert (d.desired, d.reason) == (0, Reason.IDLE)


def test_a_request_waiting_for_a_server_with_no_replica_starts_one_at_once():
    history = steady(0, 0, 99) + [Sample(100, 0, waiting=1)]
    d = decide(history, server(low=0), actual=0, now=100)
    assert (d.desired, d.reason) == (1, Reason.COLD_START)


def test_a_restarted_controller_without_history_decides_nothing_but_the_bounds():
    assert decide([Sample(100, 50)], server(), actual=2, now=100).reason is Reason.STEADY
    assert decide([], server(low=2), actual=1, now=100) == Decision(2, Reason.BELOW_MIN, "1 alive, replicas.min is 2")
    assert decide([], server(high=2), actual=3, now=100).reason is Reason.ABOVE_MAX


def test_a_static_server_never_moves():
    static = ServerSpec(name="s", partition="cpu", models=("m",), replicas=2)
    assert decide(steady(100, 0, 1000), static, actual=2, now=1000).reason is Reason.STEADY
    assert decide(steady(0, 0, 1000), static, actual=2, now=1000).reason is Reason.STEADY


def test_max_gpus_trims_growth_and_never_touches_shrinking_servers():
    decisions = {"a": Decision(3, Reason.OVERLOADED, ""), "b": Decision(1, Reason.IDLE, "")}
    capped = cap_gpus(decisions, actual={"a": 1, "b": 2}, gpus_per_replica={"a": 2, "b": 1}, max_gpus=5)
    assert capped["a"].desired == 2 and capped["a"].reason is Reason.GPU_CAP
    assert "max_gpus 5 allows 2" in capped["a"].detail
    assert capped["b"] == decisions["b"]


def test_without_max_gpus_nothing_is_trimmed():
    decisions = {"a": Decision(9, Reason.OVERLOADED, "")}
    assert cap_gpus(decisions, {"a": 1}, {"a": 8}, None) == decisions
