"""Admin keys on a real router: only an admin key (or a shared key) sees /status, the dashboard's API and /metrics
(when it needs a key) and writes the catalog; a user's key may only send requests, and is told why."""

from __future__ import annotations

import json

import requests
from openai import OpenAI

from grace_hpc.config.loader import ConfigDir
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from grace_hpc.router.models_api import add_models_api
from grace_hpc.router.users import open_users
from tests.support.cli import grace
from tests.support.router_env import canned_upstream, record, routing
from tests.support.users_env import key_store

TABLE = routing({"categories": [{"name": "default", "models": ["tiny"]}]})
ADMIN_ONLY = [("GET", "/status"), ("GET", "/metrics"), ("GET", "/api/dashboard"), ("GET", "/api/fleet"),
              ("GET", "/api/load"), ("GET", "/api/models"), ("POST", "/api/models/parse"), ("POST", "/api/models")]


def create_key(tmp_path, *flags: str) -> str:
    made = grace(tmp_path, "keys", "create", "--key-store", str(tmp_path / "keys" / "keys.json"), *flags)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_only_admin_and_shared_keys_open_the_fleets_pages_a_users_key_gets_a_403_saying_why(tmp_path):
    user_key = create_key(tmp_path, "--user", "ada")
    admin_key = create_key(tmp_path, "--user", "root", "--admin")
    listed = grace(tmp_path, "keys", "list", "--json", "--key-store", str(tmp_path / "keys" / "keys.json"))
    assert [(k["user"], k["admin"]) for k in json.loads(listed.stdout)] == [("ada", False), ("root", True)]
    users = open_users(frozenset({"shared-key"}), key_store(tmp_path), None, metrics_need_key=True)
    registry = Registry(tmp_path / "registry.json")
    with canned_upstream() as up:
        registry.register(record("tiny-1", up, "tiny"))
        app = create_app(TABLE, registry, environ={}, client_keys=frozenset({"shared-key"}), users=users)
        add_models_api(app, ConfigDir(tmp_path / "configs"))
        with serve_in_thread(app) as url:

            def call(method: str, path: str, key: str | None) -> requests.Response:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                return requests.request(method, url + path, headers=headers, json={}, timeout=10)

            with OpenAI(base_url=f"{url}/v1", api_key=user_key, max_retries=0) as client:
                assert client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
                assert [m.id for m in client.models.list()] == ["tiny", "category:default"]
            refused = {f"{m} {p}": call(m, p, user_key) for m, p in ADMIN_ONLY}
            anonymous = {f"{m} {p}": call(m, p, None).status_code for m, p in ADMIN_ONLY}
            admin = {f"{m} {p}": call(m, p, admin_key).status_code for m, p in ADMIN_ONLY}
            shared = call("GET", "/status", "shared-key").status_code
            page = requests.get(f"{url}/ui/", timeout=10).status_code
    assert {k: r.status_code for k, r in refused.items()} == dict.fromkeys(refused, 403)
    error = refused["GET /status"].json()["error"]
    assert error["code"] == "admin_key_required" and "user ada" in error["message"]
    assert "grace-hpc keys create --user NAME --admin" in error["message"]
    assert anonymous == dict.fromkeys(refused, 401)
    # past the gate, the workbench answers on its own terms: this test has no catalog, and sends empty bodies
    assert admin == {"GET /status": 200, "GET /metrics": 200, "GET /api/dashboard": 200, "GET /api/fleet": 200,
                     "GET /api/load": 200, "GET /api/models": 422, "POST /api/models/parse": 400,
                     "POST /api/models": 400}
    assert shared == 200 and page == 200  # the page holds no data: it asks for a key before calling the API


def test_a_rotated_admin_key_stays_an_admin_key(tmp_path):
    store = key_store(tmp_path)
    _, old = store.create("root", admin=True)
    _, new = store.rotate(old.key_id)
    assert new.admin and not store.create("ada")[1].admin
