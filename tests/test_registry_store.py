"""The registry file: what goes in comes out, in the documented format, owner-only, versioned for cheap polling."""

import json
import os
import stat
from pathlib import Path

import pytest

from grace_hpc.config.cluster import LockMode
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import RegistryError
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.registry.store import Registry

ROOT = Path(__file__).resolve().parents[1]


def record(rid="a", *, model="m", categories=("chat",), job_id="7", heartbeat_at=1000.0, **kw):
    return EndpointRecord(
        id=rid, model=model, served_model_name=model, categories=categories, engine="vllm", host="n1", port=8000,
        base_url="http://n1:8000/v1", job_id=job_id, node="n1", pid=1, started_at=1000.0, heartbeat_at=heartbeat_at,
        **kw)


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "shared" / "registry.json", clock=lambda: 2000.0)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_registry_touches_no_file_and_reads_empty(tmp_path):
    reg = Registry(tmp_path / "nowhere" / "registry.json")
    assert reg.list() == [] and reg.get("a") is None
    assert not (tmp_path / "nowhere").exists()


def test_register_then_read_back_in_the_documented_format_owner_only(registry):
    stored = registry.register(record())
    assert registry.get("a") == stored
    body = json.loads(registry.path.read_text())
    assert body["schema_version"] == 1 and body["revision"] == 1 and list(body["endpoints"]) == ["a"]
    assert EndpointRecord.model_validate(body["endpoints"]["a"]) == stored
    assert mode(registry.path) == 0o600 and mode(registry.path.parent) == 0o700
    assert mode(registry.lock_path) == 0o600


def test_publish_writes_a_whole_job_in_one_revision_and_puts_back_what_went_missing(registry):
    registry.register(record("a"))
    registry.register(record("other", job_id="9"))
    before = registry.snapshot().revision
    put_back = registry.publish([record("a", state=EndpointState.READY), record("b")])
    snapshot = registry.snapshot()
    assert put_back == ("b",) and snapshot.revision == before + 1
    assert {r.id: (r.state, r.heartbeat_at) for r in snapshot.records} == {
        "a": (EndpointState.READY, 2000.0), "b": (EndpointState.STARTING, 2000.0), "other": (EndpointState.STARTING, 1000.0)}


def test_heartbeat_set_state_and_deregister_change_only_their_entry(registry):
    registry.register(record("a"))
    registry.register(record("b", model="other"))
    registry.heartbeat("a")
    registry.set_state("a", EndpointState.DRAINING, last_error="preempted")
    a, b = registry.get("a"), registry.get("b")
    assert (a.heartbeat_at, a.state, a.last_error) == (2000.0, EndpointState.DRAINING, "preempted")
    assert b == record("b", model="other")
    registry.set_state("a", EndpointState.READY)
    assert registry.get("a").last_error == "preempted"  # kept unless a new one is given
    assert registry.deregister("a") is True and registry.deregister("a") is False
    assert [r.id for r in registry.list()] == ["b"]


def test_heartbeat_of_an_unknown_id_says_to_register_again(registry):
    with pytest.raises(RegistryError, match="'ghost' is not in the registry .*register it again"):
        registry.heartbeat("ghost")
    with pytest.raises(RegistryError, match="not in the registry"):
        registry.set_state("ghost", EndpointState.READY)


def test_register_again_replaces_the_entry(registry):
    registry.register(record("a", heartbeat_at=1.0))
    registry.register(record("a", heartbeat_at=5.0))
    assert [r.heartbeat_at for r in registry.list()] == [5.0]


def test_list_filters_by_model_state_and_category(registry):
    registry.register(record("a", model="m1", categories=("chat", "code")))
    registry.register(record("b", model="m2", categories=("chat",), state=EndpointState.READY))
    registry.register(record("c", model="m2", categories=("embed",)))
    assert [r.id for r in registry.list(model="m2")] == ["b", "c"]
    assert [r.id for r in registry.list(state=EndpointState.READY)] == ["b"]
    assert [r.id for r in registry.list(category="chat")] == ["a", "b"]
    assert [r.id for r in registry.list(model="m2", category="chat", state=EndpointState.READY)] == ["b"]


def test_snapshot_version_changes_exactly_when_the_file_does(registry):
    empty = registry.snapshot()
    assert (empty.records, registry.changed_since(empty.version)) == ([], False)
    registry.register(record("a"))
    assert registry.changed_since(empty.version)
    snap = registry.snapshot()
    assert snap.revision == 1 and [r.id for r in snap.records] == ["a"]
    assert not registry.changed_since(snap.version)
    registry.heartbeat("a")
    assert registry.changed_since(snap.version) and registry.snapshot().revision == 2


def test_a_write_that_changes_nothing_does_not_rewrite_the_file(registry):
    registry.register(record("a"))
    snap = registry.snapshot()
    assert registry.deregister("missing") is False
    assert not registry.changed_since(snap.version)


@pytest.mark.parametrize("lock_mode", list(LockMode))
def test_both_lock_modes_work(tmp_path, lock_mode):
    reg = Registry(tmp_path / "r.json", lock_mode=lock_mode)
    reg.register(record("a"))
    assert reg.deregister("a") and reg.list() == []


def test_from_cluster_uses_cluster_yaml_then_grace_registry(tmp_path):
    config = ConfigDir(ROOT / "configs")
    cluster = config.cluster()
    assert Registry.from_cluster(cluster, config, environ={}).path == ROOT / "logs" / "registry" / "registry.json"
    override = tmp_path / "elsewhere.json"
    reg = Registry.from_cluster(cluster, config, environ={"GRACE_REGISTRY": str(override)})
    assert reg.path == override and reg.lock_mode is cluster.lock_mode


def test_the_registry_never_stores_a_key_only_a_reference(registry, tmp_path):
    registry.register(record("a", api_key_file=str(tmp_path / "a.key")))
    assert "api_key\"" not in registry.path.read_text()
    assert os.path.basename(registry.get("a").api_key_file) == "a.key"
