"""The dashboard in a real headless Chromium, its own JavaScript polling the API: over the embedded fleet (a real
llama.cpp server launched through the local executor, the real `grace-hpc route`), and over a keyed router whose
SLURM, registry and finally itself go down. Screenshots go to logs/test-artifacts/ (or $GRACE_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from grace_hpc.router.dashboard import use_jobs
from grace_hpc.router.dashboard_view import JobTable
from tests.support.browser import Browser, browser_paths, headless_chromium
from tests.support.cli import engine_pids, grace, wait_gone
from tests.support.router_env import record, routing

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("GRACE_TEST_ARTIFACTS", ROOT / "logs" / "test-artifacts"))
CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

FLEET_ROW = "return document.querySelector('#fleet tr[data-server=\"cpu1\"]')"
LOAD_ROW = "return document.querySelector(`#load tr[data-endpoint=\"${arguments[0]}\"]`)"


def cells(row_script: str) -> str:
    """A script returning {class: text} of the row's cells and the row's severity class."""
    return (f"const tr = (function() {{ {row_script} }}).apply(null, arguments); if (!tr) return null;"
            "const out = {severity: tr.className};"
            "tr.querySelectorAll('td').forEach((td, i) => { out[td.classList[td.classList.length - 1] || i] ="
            " td.textContent; });"
            "return out;")


@contextmanager
def route(project: Path) -> Iterator[str]:
    """`grace-hpc route` in the project, on a free port; yields its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRACE_", "SLURM_", "SUBMITIT_"))}
    proc = subprocess.Popen([sys.executable, "-m", "grace_hpc", "route", "--port", "0", "--print-url",
                             "--routing", str(project / "routing.yaml")], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), proc.stderr.read() if proc.poll() is not None else "no URL printed"
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if browser_paths() is None:
        pytest.skip("needs Debian's chromium and chromium-driver (tests/run-all.sh installs them as root)")
    with headless_chromium(tmp_path / "chromium") as b:
        yield b


@pytest.mark.engine
def test_the_dashboard_shows_the_real_fleet_its_load_and_a_killed_engine_in_red(tiny_project, browser):
    (tiny_project / "routing.yaml").write_text("categories:\n  - {name: default, models: [tiny]}\n"
                                               "connect_timeout_s: 1.0\n")
    launched = grace(tiny_project, "launch", "--deployment", "solo", "--wait", "--timeout", "120")
    assert launched.returncode == 0, launched.stderr
    registry = json.loads((tiny_project / "logs" / "registry" / "registry.json").read_text())
    [record] = registry["endpoints"].values()
    engines = engine_pids(record["port"])
    key = Path(record["api_key_file"]).read_text().strip()  # the supervisor removes it when its engine dies
    try:
        with route(tiny_project) as url:
            browser.open(f"{url}/ui")
            browser.wait_for("return Number(document.body.dataset.refreshes) >= 1")
            row = browser.wait_for(cells(FLEET_ROW))
            assert row["severity"] == "sev-ok"
            assert row["state"] == "RUNNING" and row["endpoint-state"] == "ready" and row["health"] == "healthy"
            assert "tiny" in browser.run("return document.querySelector('#fleet tbody').textContent")
            assert record["job_id"] in browser.run("return document.querySelector('#fleet tbody').textContent")
            before = browser.wait_for(cells(LOAD_ROW), record["id"])
            assert before["requests"] == "0" and before["in-flight"].startswith("0 / ")

            for _ in range(3):
                assert requests.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
            after = browser.wait_for(cells(LOAD_ROW), record["id"], until=lambda r: r["requests"] == "3", timeout_s=10)
            assert after["p50"].endswith("ms") or after["p50"].endswith(" s")
            assert browser.run("return document.querySelector('#routing tr[data-category=\"default\"] .requests')"
                               ".textContent") == "3"
            browser.screenshot(ARTIFACTS / "dashboard-live.png")

            for pid in engines:
                os.kill(pid, signal.SIGKILL)
            assert wait_gone(engines) == []
            failed = requests.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)
            failed_at = browser.run("return Date.now()")
            # the first refresh that asked the router after the failure draws the row red
            browser.wait_for("return Number(document.body.dataset.asked) > arguments[0]", failed_at, timeout_s=10)
            red = browser.run(cells(FLEET_ROW))
            assert red["severity"] == "sev-bad", red
            if failed.status_code == 502:  # the router tried the dead engine and ejected it
                assert red["health"] == "ejected" and "ejected by the router" in red["flags"]
                assert browser.run(cells(LOAD_ROW), record["id"])["severity"] == "sev-bad"
            else:  # the supervisor saw its engine die first (it checks every heartbeat_s) and marked it gone
                assert failed.status_code == 503 and red["endpoint-state"] == "gone", (failed.status_code, red)
            browser.screenshot(ARTIFACTS / "dashboard-killed-engine.png")
            page_text = browser.run("return document.documentElement.outerHTML")
            assert key not in page_text
    finally:
        grace(tiny_project, "stop", "--deployment", "solo")
        assert wait_gone([record["pid"], *engines]) == []


class SlurmDown:
    def read(self, records: list) -> JobTable:
        return JobTable(error="`squeue --states=all -h ...` exited 1: slurm_load_jobs error: Unable to contact "
                              "slurm controller (connect failure)")


def test_the_page_asks_for_the_key_and_says_what_is_down_instead_of_showing_old_data_as_true(tmp_path, browser):
    registry = Registry(tmp_path / "registry.json")
    registry.register(record("chat-1", "http://127.0.0.1:9/v1", "chat"))
    app = create_app(routing({"categories": [{"name": "default", "models": ["chat"]}]}), registry, environ={},
                     client_keys=frozenset({"sekrit-router-key"}), poll_interval_s=0.1)
    use_jobs(app, SlurmDown())
    with serve_in_thread(app) as url:
        browser.open(f"{url}/ui/")
        browser.wait_for("return !document.getElementById('key-form').hidden")
        assert browser.run("return document.getElementById('live').textContent") == "key needed"
        assert browser.run("return document.querySelectorAll('#fleet tbody tr').length") == 0
        browser.run("document.getElementById('key').value = arguments[0];"
                    "document.getElementById('key-form').requestSubmit();", "sekrit-router-key")
        browser.wait_for("return document.querySelector('#fleet tr[data-endpoint=\"chat-1\"]')")
        assert browser.run("return document.getElementById('key-form').hidden") is True
        assert "sekrit-router-key" not in browser.run("return document.documentElement.outerHTML")
        assert browser.run("return document.getElementById('key').value") == ""
        banners = browser.run("return document.getElementById('banners').textContent")
        assert "SLURM unavailable" in banners and "Unable to contact slurm controller" in banners

        (tmp_path / "registry.json").write_text("{ torn")
        browser.wait_for("return document.getElementById('banners').textContent.includes('Registry unavailable')")
        assert browser.run("return document.querySelector('#fleet tr[data-endpoint=\"chat-1\"] .endpoint-state')"
                           ".textContent") == "ready"  # the last good snapshot, under a banner saying so
        browser.screenshot(ARTIFACTS / "dashboard-degraded.png")
    browser.wait_for("return document.getElementById('live').textContent === 'router unreachable'")
    assert browser.run("return document.body.classList.contains('stale')") is True
    assert browser.run("return document.querySelectorAll('#fleet tbody tr').length") == 1  # kept, dimmed
