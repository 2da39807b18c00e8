"""The dashboard's `usage` section: present exactly when the router keeps a ledger; spend vs budget per user."""

from __future__ import annotations

import requests

from tests.support.router_env import canned_upstream, record, routing
from tests.support.users_env import key_store, users_router

TABLE = routing({"categories": [{"name": "default", "models": ["tiny"]}]})


def test_without_a_ledger_the_section_is_absent_and_its_url_is_404(tmp_path):
    with canned_upstream() as up, users_router(TABLE, tmp_path / "registry.json", [record("up-1", up, "tiny")],
                                               key_store(tmp_path)) as (url, _):
        base = url.removesuffix("/v1")
        assert "usage" not in requests.get(f"{base}/api/dashboard", timeout=10).json()
        assert requests.get(f"{base}/api/usage", timeout=10).status_code == 404


def test_with_a_ledger_every_user_with_a_key_is_listed_with_its_budget(tmp_path):
    store = key_store(tmp_path)
    key, _ = store.create("ada", budget_usd_month=5.0, admin=True)  # the dashboard shows everyone's spend
    store.create("bob")
    with canned_upstream() as up, users_router(TABLE, tmp_path / "registry.json", [record("up-1", up, "tiny")], store,
                                               ledger=str(tmp_path / "ledger.sqlite")) as (url, _):
        base = url.removesuffix("/v1")
        assert requests.get(f"{base}/api/usage", timeout=10).status_code == 401  # same key rule as /status
        usage = requests.get(f"{base}/api/dashboard", headers={"Authorization": f"Bearer {key}"},
                             timeout=10).json()["usage"]
    assert [(u["user"], u["month_usd"], u["budget_usd_month"], u["budget_used"]) for u in usage["users"]] == \
        [("ada", 0.0, 5.0, 0.0), ("bob", 0.0, None, None)]
    assert usage["ledger_error"] is None
