"""Per-user keys on the real router in front of a real llama.cpp server: who may ask, how often, for what."""

from __future__ import annotations

import logging
import sqlite3
import time

import openai
import pytest
import requests
from openai import OpenAI

from tests.support.cli import grace
from tests.support.router_env import record, routing
from tests.support.users_env import key_store, users_router

pytestmark = pytest.mark.engine
QUESTION = [{"role": "user", "content": "hello"}]


def table() -> object:
    return routing({"categories": [{"name": "default", "models": ["tiny"]}, {"name": "code", "models": ["tiny"]}]})


def ask(url: str, key: str, model: str = "code") -> object:
    with OpenAI(base_url=url, api_key=key, max_retries=0) as client:
        return client.chat.completions.create(model=model, messages=QUESTION, max_tokens=2)


def test_a_keys_rate_limit_and_category_allow_list_are_enforced_others_are_not_slowed(llama_server, tmp_path):
    server = llama_server(alias="tiny")
    store = key_store(tmp_path)
    limited, _ = store.create("ada", rpm=3, categories=("code",))
    free, _ = store.create("bob")
    with users_router(table(), tmp_path / "registry.json", [record("tiny-1", server.base_url, "tiny")], store) \
            as (url, _):
        with pytest.raises(openai.PermissionDeniedError) as denied:
            ask(url, limited, model="default")
        assert denied.value.code == "category_not_allowed" and "'default'" in denied.value.message
        for _ in range(3):
            assert ask(url, limited).choices
        over = requests.post(f"{url}/chat/completions", json={"model": "code", "messages": QUESTION, "max_tokens": 2},
                             headers={"Authorization": f"Bearer {limited}"}, timeout=30)
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(over.headers["Retry-After"]) <= 20  # 3 a minute: a token every 20 s
        assert [ask(url, free, model="default").choices[0].finish_reason is not None for _ in range(5)] == [True] * 5
        with pytest.raises(openai.AuthenticationError):
            ask(url, "gk_00000000_" + "x" * 43)
        metrics = requests.get(f"{url.removesuffix('/v1')}/metrics", timeout=10).text
        assert 'grace_router_user_requests_total{user="ada",category="code",served="local"} 3' in metrics
        assert 'grace_router_user_refusals_total{user="ada",reason="rate_limit"} 1' in metrics
        assert 'grace_router_user_refusals_total{user="ada",reason="category"} 1' in metrics
        assert 'grace_router_user_requests_total{user="bob",category="default",served="local"} 5' in metrics


def test_a_key_revoked_with_the_cli_stops_working_within_one_refresh(llama_server, tmp_path):
    server = llama_server(alias="tiny")
    store = key_store(tmp_path)
    key, rec = store.create("ada")
    poll_s = 0.5
    with users_router(table(), tmp_path / "registry.json", [record("tiny-1", server.base_url, "tiny")], store,
                      poll_interval_s=poll_s) as (url, _):
        assert ask(url, key).choices
        revoked = grace(tmp_path, "keys", "revoke", rec.key_id, "--key-store", str(store.path))
        assert revoked.returncode == 0, revoked.stderr
        done = time.monotonic()
        while True:
            r = requests.get(f"{url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
            if r.status_code == 401:
                break
            assert time.monotonic() - done < poll_s + 0.5, "the revoked key still works after one refresh"
            time.sleep(0.02)
        with pytest.raises(openai.AuthenticationError):
            ask(url, key)


def test_shared_router_keys_keep_working_beside_user_keys_and_metrics_can_require_an_admin_key(llama_server,
                                                                                                 tmp_path):
    server = llama_server(alias="tiny")
    store = key_store(tmp_path)
    user_key, _ = store.create("ada")
    admin_key, _ = store.create("root", admin=True)
    with users_router(table(), tmp_path / "registry.json", [record("tiny-1", server.base_url, "tiny")], store,
                      client_keys=frozenset({"legacy-shared-key"}), metrics_need_key=True) as (url, _):
        assert ask(url, "legacy-shared-key").choices and ask(url, user_key).choices
        base = url.removesuffix("/v1")
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 401
        assert requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {user_key}"},
                            timeout=10).status_code == 403
        shared = requests.get(f"{base}/metrics", headers={"Authorization": "Bearer legacy-shared-key"}, timeout=10)
        assert shared.status_code == 200  # shared keys are admin keys, as before per-user keys
        metrics = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10).text
        assert 'grace_router_user_requests_total{user="shared",category="code",served="local"} 1' in metrics
        assert requests.get(f"{base}/health", timeout=10).status_code == 200  # liveness needs no key


def test_keys_never_reach_logs_the_ledger_usage_or_errors(llama_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = llama_server(alias="tiny")
    store = key_store(tmp_path)
    limited, _ = store.create("ada", rpm=1, categories=("code",))
    gone, gone_rec = store.create("eve")
    store.revoke(key_id=gone_rec.key_id)
    ledger = tmp_path / "ledger.sqlite"
    seen: list[str] = []
    with users_router(table(), tmp_path / "registry.json", [record("tiny-1", server.base_url, "tiny")], store,
                      ledger=str(ledger)) as (url, users):
        for key, model in ((limited, "code"), (limited, "code"), (limited, "default"), (gone, "code"),
                           (limited[:-2] + "zz", "code")):
            r = requests.post(f"{url}/chat/completions", json={"model": model, "messages": QUESTION, "max_tokens": 2},
                              headers={"Authorization": f"Bearer {key}"}, timeout=30)
            seen.append(r.text + str(r.headers))
        assert len(seen) == 5
        deadline = time.monotonic() + 10
        while users.writer.written < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    rows = sqlite3.connect(ledger).execute("SELECT username, key_id, status FROM grace_ledger ORDER BY ts").fetchall()
    assert [(u, s) for u, _, s in rows] == [("ada", 200), ("ada", 429), ("ada", 403)]
    usage = grace(tmp_path, "usage", "--ledger", str(ledger), "--by", "user", "--json")
    everything = "\n".join(seen) + caplog.text + usage.stdout + usage.stderr + "".join(
        p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".gguf")
    for key in (limited, gone):
        assert key not in everything and key.split("_", 2)[2] not in everything  # the whole secret (it may hold "_" itself)
