"""Per-user keys: shown once, stored only as salted digests, revoked and rotated; token buckets (pure)."""

from __future__ import annotations

import json
import time
from datetime import date, timedelta

import pytest

from grace_hpc.errors import ConfigError
from grace_hpc.users import keys
from grace_hpc.users.keys import KeyStore
from grace_hpc.users.limits import TokenBucket
from tests.support.cli import grace
from tests.support.users_env import key_store

TODAY = date(2026, 12, 1)


def test_a_created_key_is_identified_and_its_store_holds_no_trace_of_it(tmp_path):
    store = key_store(tmp_path)
    key, record = store.create("ada", rpm=10, budget_usd_month=5.0, categories=("code",))
    text = store.path.read_text()
    assert key not in text and key.split("_")[-1] not in text
    assert store.path.stat().st_mode & 0o777 == 0o600 and store.path.parent.stat().st_mode & 0o777 == 0o700
    found = store.table().identify(key, TODAY)
    assert found == record and (found.user, found.rpm, found.categories) == ("ada", 10, ("code",))


def test_a_wrong_secret_an_unknown_id_and_junk_are_not_keys(tmp_path):
    store = key_store(tmp_path)
    key, _ = store.create("ada")
    table = store.table()
    assert table.identify(key[:-1] + ("A" if key[-1] != "A" else "B"), TODAY) is None
    assert table.identify("gk_00000000_" + key.split("_", 2)[2], TODAY) is None
    assert table.identify("sk-not-ours", TODAY) is None


def test_a_verified_key_is_not_hashed_again_and_its_id_with_another_secret_is_still_refused(tmp_path, monkeypatch):
    store = key_store(tmp_path)
    key, record = store.create("ada")
    table = store.table()
    digests = []
    real = keys.key_digest
    monkeypatch.setattr(keys, "key_digest", lambda salt, token: digests.append(token) or real(salt, token))
    assert table.identify(key, TODAY) == record and table.identify(key, TODAY) == record
    assert len(digests) == 1  # the HMAC ran once: later requests with the key find it remembered
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert table.identify(forged, TODAY) is None and len(digests) == 2
    assert store.table().identify(key, TODAY) == record and len(digests) == 3  # a new table remembers nothing


def test_the_same_key_in_another_store_does_not_match_its_salt_differs(tmp_path):
    a, b = KeyStore(tmp_path / "a" / "keys.json", time.time), KeyStore(tmp_path / "b" / "keys.json", time.time)
    key, _ = a.create("ada")
    b.create("bob")
    assert json.loads(a.path.read_text())["salt"] != json.loads(b.path.read_text())["salt"]
    assert b.table().identify(key, TODAY) is None


def test_revoked_and_expired_keys_stop_and_rotation_keeps_the_policy(tmp_path):
    store = key_store(tmp_path)
    old, record = store.create("ada", rpm=7, expires=TODAY + timedelta(days=1))
    new, rotated = store.rotate(record.key_id)
    table = store.table()
    assert table.identify(old, TODAY) is None
    assert table.identify(new, TODAY).rpm == 7 and rotated.user == "ada"
    assert table.identify(new, TODAY + timedelta(days=2)) is None  # past its last day
    assert [r.key_id for r in store.revoke(user="ada")] == [rotated.key_id]
    assert store.table().identify(new, TODAY) is None
    with pytest.raises(ConfigError, match="no active key"):
        store.revoke(key_id=rotated.key_id)


def test_a_store_readable_by_others_is_refused_with_the_fix(tmp_path):
    store = key_store(tmp_path)
    store.create("ada")
    store.path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        store.table()


def test_bad_settings_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="rpm"):
        key_store(tmp_path).create("ada", rpm=0)
    with pytest.raises(ConfigError, match="user"):
        key_store(tmp_path).create("ada; rm -rf /")


def test_keys_cli_prints_the_key_once_and_lists_only_ids(tmp_path):
    store = str(tmp_path / "k" / "keys.json")
    created = grace(tmp_path, "keys", "create", "--user", "ada", "--budget-usd", "20/month", "--rpm", "30",
                      "--categories", "code,math", "--expires", "2027-01-31", "--key-store", store)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("gk_") and key not in created.stderr
    listed = grace(tmp_path, "keys", "list", "--json", "--key-store", store)
    (row,) = json.loads(listed.stdout)
    assert key not in listed.stdout and "digest" not in row
    assert (row["user"], row["budget_usd_month"], row["rpm"], row["categories"], row["expires"]) == \
        ("ada", 20.0, 30, ["code", "math"], "2027-01-31")
    revoked = grace(tmp_path, "keys", "revoke", row["key_id"], "--key-store", store)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout and key not in revoked.stdout
    again = grace(tmp_path, "keys", "rotate", row["key_id"], "--key-store", store)
    assert again.returncode == 1 and "no active key" in again.stderr


def test_a_token_bucket_allows_its_burst_then_refills_at_its_rate():
    bucket = TokenBucket(rpm=60)  # one a second, bursts of 60
    assert all(bucket.take(100.0) == 0 for _ in range(60))
    assert bucket.take(100.0) == pytest.approx(1.0)
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert bucket.take(101.0) == 0


def test_a_users_budget_is_the_smallest_on_their_keys_so_another_key_cannot_lift_it(tmp_path):
    store = key_store(tmp_path)
    store.create("ada", budget_usd_month=5.0)
    store.create("ada")  # no budget of its own
    _, dear = store.create("ada", budget_usd_month=2.0)
    store.create("bob")
    assert store.table().budgets == {"ada": 2.0, "bob": None}
    store.revoke(key_id=dear.key_id)
    assert store.table().budgets == {"ada": 5.0, "bob": None}
