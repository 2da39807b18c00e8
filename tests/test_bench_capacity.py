"""Measured capacity: stored in the registry record by the bench, kept by heartbeats, weighed by the router."""

from __future__ import annotations

import pytest

from grace_hpc.config.routing import Routing
from grace_hpc.errors import RegistryError
from grace_hpc.registry.records import EndpointState, MeasuredCapacity
from grace_hpc.registry.store import Registry
from grace_hpc.router.policy import EndpointAttempt, Load, plan, resolve, weights
from tests.support.router_env import record

TABLE = Routing.model_validate({"categories": [{"name": "default", "models": ["m"]}]})


def measured(tok_s: float) -> MeasuredCapacity:
    return MeasuredCapacity(output_tokens_per_s=tok_s, requests_per_s=tok_s / 64, concurrency=4,
                            ttft_p90_target_ms=2000, measured_at=1.0)


def ep(endpoint_id: str, capacity: MeasuredCapacity | None = None, max_num_seqs: int = 8):
    r = record(endpoint_id, f"http://10.0.0.1:{8000 + len(endpoint_id)}/v1", "m", max_num_seqs=max_num_seqs)
    return r.model_copy(update={"capacity": capacity})


def order(records, loads) -> list[str]:
    attempts = plan(resolve(TABLE, records, "m", None), TABLE, records, loads)
    return [a.record.id for a in attempts if isinstance(a, EndpointAttempt)]


def test_measured_throughput_outweighs_max_num_seqs_when_every_endpoint_has_one():
    fast, slow = ep("fast", measured(300.0)), ep("slow", measured(100.0))
    loads = {"fast": Load(in_flight=3), "slow": Load(in_flight=1)}
    # (3+1)/300 < (1+1)/100: the 3x faster replica takes more in flight
    assert order([slow, fast], loads) == ["fast", "slow"]
    # the same fleet unmeasured: (3+1)/8 > (1+1)/8, the slow one is "less loaded"
    assert order([ep("slow"), ep("fast")], loads) == ["slow", "fast"]


def test_one_unmeasured_endpoint_makes_the_whole_model_fall_back_to_max_num_seqs():
    fleet = [ep("a", measured(300.0), max_num_seqs=2), ep("b", None, max_num_seqs=6)]
    assert weights(fleet) == {"a": 2.0, "b": 6.0}
    assert weights([ep("a", measured(300.0)), ep("b", measured(50.0))]) == {"a": 300.0, "b": 50.0}
    assert weights([]) == {}


def test_the_capacity_written_by_the_bench_survives_heartbeats_and_state_changes(tmp_path):
    registry = Registry(tmp_path / "registry.json")
    registry.register(ep("e1"))
    assert registry.get("e1").capacity is None  # records written before the field existed stay valid
    registry.set_capacity("e1", measured(123.0))
    registry.heartbeat("e1")
    registry.set_state("e1", EndpointState.DRAINING)
    kept = registry.get("e1")
    assert kept.capacity == measured(123.0) and kept.state is EndpointState.DRAINING
    with pytest.raises(RegistryError, match="'gone' is not in the registry"):
        registry.set_capacity("gone", measured(1.0))
