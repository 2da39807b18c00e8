"""Cloud budgets under concurrency: 32 requests at the edge of a budget, against a priced cloud stand-in (a real
HTTP server) and a real llama.cpp server. Spend stops within the in-flight bound; later requests go local or 429."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from grace_hpc.ledger import LedgerRecord, Served, open_ledger
from grace_hpc.router import policy
from grace_hpc.router.users import Tab, Users
from grace_hpc.users.budget import cost_usd, estimate_usd
from tests.support.ledger_fixtures import ledger_target, postgres_dsn, read_all  # noqa: F401  (fixtures)
from tests.support.router_env import record, routing
from tests.support.users_env import key_store, priced_cloud, users_router

BUDGET = 1.00
ALREADY_SPENT = 0.95  # this month, in the ledger before the router starts
USAGE = {"prompt_tokens": 10, "completion_tokens": 1000}  # what the stand-in reports for every answer
BODY = {"messages": [{"role": "user", "content": "plan my week"}]}  # no max_tokens: the estimate is a default


def table(cloud_url: str) -> object:
    return routing({
        "categories": [{"name": "default", "models": ["tiny"], "cloud": ["standin"]},
                       {"name": "orchestration", "cloud_only": True, "cloud": ["standin"]}],
        "cloud": [{"name": "standin", "base_url": cloud_url, "api_key_env": "STANDIN_KEY",
                   "default_model": "cloud-model", "price_in_per_mtok": 10.0, "price_out_per_mtok": 10.0}],
    })


@pytest.mark.engine
def test_32_concurrent_requests_at_the_budget_edge_stop_within_the_in_flight_bound(
        llama_server, tmp_path, ledger_target, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="grace_hpc.router.users")
    server = llama_server(alias="tiny")
    store = key_store(tmp_path)
    key, key_rec = store.create("ada", budget_usd_month=BUDGET)
    free_key, _ = store.create("bob")  # no budget
    admin_key, _ = store.create("root", admin=True)  # reads the dashboard's usage section
    earlier = open_ledger(ledger_target)
    earlier.write([LedgerRecord(time.time() - 60, "ada", key_rec.key_id, "orchestration", None, Served.CLOUD,
                                "standin", "cloud-model", None, 0, 0, 1.0, 200, ALREADY_SPENT)])
    earlier.close()
    auth = {"Authorization": f"Bearer {key}"}
    with priced_cloud("cloud-secret", delay_s=0.5, **USAGE) as cloud:
        routes = table(cloud.url)
        provider = routes.provider("standin")
        estimate = estimate_usd(provider, BODY, policy.prompt_size(BODY).low)
        actual = cost_usd(provider, USAGE["prompt_tokens"], USAGE["completion_tokens"])
        fits = int((BUDGET - ALREADY_SPENT) / estimate)  # reservations admit exactly this many
        assert 1 < fits < 32 and actual > estimate  # the edge: some fit, and each costs more than reserved
        with users_router(routes, tmp_path / "registry.json", [record("tiny-1", server.base_url, "tiny")], store,
                          ledger=ledger_target, environ={"STANDIN_KEY": "cloud-secret"}) as (url, users):

            def ask(_: int) -> requests.Response:
                return requests.post(f"{url}/chat/completions", json={**BODY, "model": "orchestration"},
                                     headers=auth, timeout=30)

            with ThreadPoolExecutor(32) as pool:
                answers = list(pool.map(ask, range(32)))
            codes = sorted(r.status_code for r in answers)
            assert codes == [200] * fits + [429] * (32 - fits)
            refused = [r.json()["error"] for r in answers if r.status_code == 429]
            assert {e["code"] for e in refused} == {"budget_exceeded"} and "ada" in refused[0]["message"]
            assert len(cloud.calls) == fits
            assert max(cloud.calls) - min(cloud.calls) < 0.5, "the cloud calls were not concurrent"

            # later requests: local when a local endpoint can take them, never the cloud
            later = requests.post(f"{url}/chat/completions", json={**BODY, "model": "default", "max_tokens": 2},
                                  headers=auth, timeout=30)
            assert later.status_code == 200 and later.headers["X-Grace-Served-By"] == "tiny-1"
            # a user without a budget still reaches the cloud
            other = requests.post(f"{url}/chat/completions", json={**BODY, "model": "orchestration"},
                                  headers={"Authorization": f"Bearer {free_key}"}, timeout=30)
            assert other.status_code == 200 and other.headers["X-Grace-Served-By"] == "cloud:standin"
            usage = requests.get(f"{url.removesuffix('/v1')}/api/usage", timeout=10,
                                 headers={"Authorization": f"Bearer {admin_key}"}).json()
            deadline = time.monotonic() + 10
            while users.writer.written < 32 + 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    spent = ALREADY_SPENT + fits * actual
    (ada,) = [u for u in usage["users"] if u["user"] == "ada"]
    assert ada["month_usd"] == pytest.approx(spent) and ada["budget_usd_month"] == BUDGET
    # the bound: past the budget by at most what the requests in flight cost
    assert ada["overspend_usd"] == pytest.approx(spent - BUDGET) and 0 < ada["overspend_usd"] <= fits * actual
    assert "over the cloud budget" in caplog.text
    rows = [r for r in read_all(ledger_target) if r.username == "ada"]
    assert sum(r.cost_usd for r in rows) == pytest.approx(spent)
    assert sorted(r.status for r in rows if r.category == "orchestration") == [200] * (fits + 1) + [429] * (32 - fits)


def test_with_the_budget_spent_and_no_local_endpoint_the_answer_is_429_budget_exceeded(tmp_path):
    store = key_store(tmp_path)
    key, _ = store.create("ada", budget_usd_month=0.0)
    with priced_cloud("cloud-secret") as cloud, \
            users_router(table(cloud.url), tmp_path / "registry.json", [], store,
                         environ={"STANDIN_KEY": "cloud-secret"}) as (url, _):
        r = requests.post(f"{url}/chat/completions", json={**BODY, "model": "default"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded" and not cloud.calls


def test_a_cloud_request_abandoned_mid_call_is_charged_its_estimate_and_holds_nothing():
    provider = table("http://127.0.0.1:9/v1").provider("standin")
    users = Users()

    async def scenario() -> Tab:
        tab = users.open(None)
        assert users.admit(tab, "orchestration", None, BODY, 3) is None

        async def handler() -> None:
            assert users.reserve(tab, provider)
            await asyncio.sleep(30)  # the cloud call, when the client goes away

        task = asyncio.create_task(handler())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return tab

    tab = asyncio.run(scenario())
    estimate = estimate_usd(provider, BODY, 3)
    assert tab.reservation is None and users.book.reserved[tab.user] == 0
    assert users.book.committed(tab.user, time.time()) == pytest.approx(estimate)
    assert 'grace_router_user_requests_total{user="anonymous",category="orchestration",served="cloud"} 1' in \
        users.metrics.render()


def test_a_second_router_on_the_same_ledger_starts_from_the_spend_the_first_recorded(tmp_path, ledger_target):  # noqa: F811
    store = key_store(tmp_path)
    key, _ = store.create("ada", budget_usd_month=0.02)
    auth = {"Authorization": f"Bearer {key}"}
    body = {**BODY, "model": "orchestration"}
    with priced_cloud("cloud-secret", **USAGE) as cloud:
        routes, environ = table(cloud.url), {"STANDIN_KEY": "cloud-secret"}
        with users_router(routes, tmp_path / "a.json", [], store, ledger=ledger_target, environ=environ) as (url, a):
            codes = [requests.post(f"{url}/chat/completions", json=body, headers=auth, timeout=30).status_code
                     for _ in range(3)]
        assert codes == [200, 200, 429] and a.writer.written == 3  # $0.0202 spent; stopping flushed the last batch
        with users_router(routes, tmp_path / "b.json", [], store, ledger=ledger_target, environ=environ) as (url, _):
            r = requests.post(f"{url}/chat/completions", json=body, headers=auth, timeout=30)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded" and len(cloud.calls) == 2
