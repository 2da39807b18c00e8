"""The workbench's JSON API on a real router: /api/models/parse answers what `models add --json` would, adding
writes models.yaml only with a key on a router that has keys, and pasted text is bounded and never trusted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml

from grace_hpc.cli import main
from grace_hpc.config.loader import ConfigDir
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from grace_hpc.router.models_api import add_models_api
from tests.support.router_env import routing
from tests.test_planner_importers import TINY_CONFIG
from tests.test_workbench_catalog import SHIPPED
from tests.test_workbench_catalog import conf as conf  # the fixture, shared
from tests.test_workbench_pages import PAGES, page

KEY = "router-key-workbench"
AUTH = {"Authorization": f"Bearer {KEY}"}
TABLE = routing({"categories": [{"name": "default", "models": ["chat"]}], "max_body_bytes": 1_000_000})


@contextmanager
def router(conf: Path, keys: frozenset[str] = frozenset({KEY})) -> Iterator[str]:
    app = create_app(TABLE, Registry(conf.parent / "registry.json"), environ={}, client_keys=keys)
    add_models_api(app, ConfigDir(conf))
    with serve_in_thread(app) as url:
        yield url


def test_parse_gives_the_entry_and_writes_nothing(conf: Path) -> None:
    with router(conf) as url:
        r = requests.post(f"{url}/api/models/parse", json={"text": page("mistral-7b-instruct-v0.1-gguf.txt")},
                          headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["complete"], body["plans"], body["entry"]["hf_id"]) == (False, [],
                                                                          "mistralai/Mistral-7B-Instruct-v0.1")
    assert body["entry"]["variants"][0]["gguf_type"] == "Q4_K_M" and "num_hidden_layers" in body["missing"]
    assert (conf / "models.yaml").read_text() == SHIPPED


def test_an_unreadable_page_is_a_422_naming_the_fields_and_a_key_is_required(conf: Path) -> None:
    with router(conf) as url:
        r = requests.post(f"{url}/api/models/parse", json={"text": page("qwen2.5-7b-instruct.txt")}, headers=AUTH,
                          timeout=30)
        assert r.status_code == 422 and "--license" in r.json()["error"]["message"]
        assert requests.post(f"{url}/api/models/parse", json={"text": "x"}, timeout=30).status_code == 401
        assert requests.get(f"{url}/api/models", timeout=30).status_code == 401
        assert requests.post(f"{url}/api/models/parse", data="text=x", headers=AUTH, timeout=30).status_code == 400
        assert requests.post(f"{url}/api/models/parse", json={"text": ["x"]}, headers=AUTH,
                             timeout=30).status_code == 400


def test_pasted_text_is_bounded(conf: Path) -> None:
    with router(conf) as url:
        too_long = requests.post(f"{url}/api/models/parse", json={"text": "acme/x-1B\n" + "a" * 500_000},
                                 headers=AUTH, timeout=30)
        too_big = requests.post(f"{url}/api/models/parse", json={"text": "a" * 2_000_000}, headers=AUTH, timeout=30)
    assert too_long.status_code == 422 and "characters" in too_long.json()["error"]["message"]
    assert too_big.status_code == 413  # over the router's max_body_bytes: refused before it is read


def test_adding_writes_the_catalog_and_the_listing_shows_it(conf: Path) -> None:
    with router(conf) as url:
        r = requests.post(f"{url}/api/models", json={"text": page("mixtral-8x7b-instruct-v0.1.txt")}, headers=AUTH,
                          timeout=30)
        assert r.status_code == 201, r.text
        assert r.json()["written"] and r.json()["backup"].endswith("models.yaml.bak")
        listed = requests.get(f"{url}/api/models", headers=AUTH, timeout=30).json()
        again = requests.post(f"{url}/api/models", json={"text": page("mixtral-8x7b-instruct-v0.1.txt")},
                              headers=AUTH, timeout=30)
    [incomplete] = listed["incomplete"]
    assert incomplete["name"] == "mixtral-8x7b-instruct-v0.1" and "incomplete" in incomplete["reason"]
    assert len(listed["models"]) == len(yaml.safe_load(SHIPPED)["models"])
    assert yaml.safe_load((conf / "models.yaml").read_text())["incomplete"][0]["moe"] is True
    assert again.status_code == 422 and "already in the catalog" in again.json()["error"]["message"]


def test_a_keyless_router_does_not_write_the_catalog(conf: Path) -> None:
    with router(conf, keys=frozenset()) as url:
        r = requests.post(f"{url}/api/models", json={"text": page("mixtral-8x7b-instruct-v0.1.txt")}, timeout=30)
        parse = requests.post(f"{url}/api/models/parse", json={"text": page("mixtral-8x7b-instruct-v0.1.txt")},
                              timeout=30)
    assert r.status_code == 403 and "--keys-file" in r.json()["error"]["message"]
    assert parse.status_code == 200 and (conf / "models.yaml").read_text() == SHIPPED


def test_a_cached_model_added_through_the_api_has_the_numbers_of_plan_json(conf: Path, capsys) -> None:
    snapshot = conf.parent / "hf" / "models--acme--tiny" / "snapshots" / "r1"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY_CONFIG))
    with router(conf) as url:
        r = requests.post(f"{url}/api/models", json={"hf_id": "acme/tiny", "license": "mit", "dry_run": True},
                          headers=AUTH, timeout=60)
        assert r.status_code == 200 and not r.json()["written"] and (conf / "models.yaml").read_text() == SHIPPED
        r = requests.post(f"{url}/api/models", json={"hf_id": "acme/tiny", "license": "mit"}, headers=AUTH,
                          timeout=60)
    assert r.status_code == 201, r.text
    for row in r.json()["plans"]:
        code = main(["plan", "--model", "tiny", "--gpu", row["gpu"], "--json", "--config-dir", str(conf)])
        assert code == (0 if row["fits"] else 2)  # the CPU partition has no GGUF of it to run
        assert json.loads(capsys.readouterr().out) == row["plan"]


@pytest.mark.parametrize("name", sorted(p.name for p in PAGES.glob("*.txt")))
def test_every_fixture_page_parses_through_the_api_as_through_the_cli(conf: Path, name: str, capsys) -> None:
    flags = ["--license", "apache-2.0"] if name.startswith("qwen") else []
    assert main(["models", "add", "--from-page", str(PAGES / name), "--dry-run", "--json", "--name", "x",
                 *flags, "--config-dir", str(conf)]) == 0
    cli = json.loads(capsys.readouterr().out)
    body = {"text": page(name), "name": "x", **({"license": "apache-2.0"} if flags else {})}
    with router(conf) as url:
        api = requests.post(f"{url}/api/models/parse", json=body, headers=AUTH, timeout=30).json()
    assert {k: cli[k] for k in api} == api
