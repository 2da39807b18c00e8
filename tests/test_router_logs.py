"""Logs a cluster admin can use: timestamped, levelled lines from `route` and `serve`, and the opt-in JSON access
log (one line per request; never a prompt, an answer or a key)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import requests

from grace_hpc.errors import ConfigError
from grace_hpc.logging_setup import configure_logging
from tests.support.router_env import canned_answer, key_file, record, router, routing, sse_answer, standin_upstream

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) grace_hpc\.[a-z_.]+: .+$")


def test_configured_logging_writes_utc_timestamps_levels_and_names_at_the_level_asked():
    code = ("import logging; from grace_hpc.logging_setup import configure_logging; configure_logging(); "
            "configure_logging(); log = logging.getLogger('grace_hpc.router'); log.debug('hidden'); "
            "log.info('routed'); logging.getLogger('grace_hpc.serve').warning('slow')")
    env = {**os.environ, "GRACE_LOG_LEVEL": "info"}
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           check=True).stderr.splitlines()
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), lines  # configured twice, printed once
    assert lines[0].endswith("INFO grace_hpc.router: routed") and lines[1].endswith("WARNING grace_hpc.serve: slow")
    with pytest.raises(ConfigError, match="GRACE_LOG_LEVEL='LOUD' is not a log level"):
        configure_logging({"GRACE_LOG_LEVEL": "loud"})


def test_route_logs_an_ejection_as_a_timestamped_warning_and_writes_its_access_log(tmp_path):
    table = tmp_path / "routing.yaml"
    table.write_text("connect_timeout_s: 1.0\ncategories:\n  - {name: default, models: [chat]}\n")
    from grace_hpc.registry.store import Registry

    registry = Registry(tmp_path / "registry.json")
    registry.register(record("dead", "http://127.0.0.1:9/v1", "chat"))
    env = {k: v for k, v in os.environ.items() if k != "GRACE_ROUTER_KEYS"}
    proc = subprocess.Popen([sys.executable, "-m", "grace_hpc", "route", "--port", "0", "--print-url", "--routing",
                             str(table), "--registry", str(registry.path), "--access-log", str(tmp_path / "a.jsonl")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        r = requests.post(f"{url}/v1/chat/completions", json={"model": "chat", "messages": []}, timeout=10)
        assert r.status_code == 502
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and LINE.match(warnings[0])
    assert "ejected dead: dead: cannot connect to 127.0.0.1:9: " in warnings[0]
    [access] = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert (access["served_by"], access["status"]) == ("-", 502)


def test_the_access_log_has_one_json_line_per_request_and_no_prompt_answer_or_key(tmp_path):
    log_path = tmp_path / "access.jsonl"
    secret_prompt, endpoint_key = "my private medical question", "endpoint-key-123"

    async def answer(request, n):
        return await (canned_answer if n == 0 else sse_answer(2))(request, n)

    table = routing({"categories": [{"name": "default", "models": ["chat"]}]})
    with standin_upstream(answer) as upstream:
        records = [record("e1", upstream.url, "chat", key=key_file(tmp_path, "e1", endpoint_key))]
        with router(table, tmp_path / "registry.json", records, access_log=log_path) as url:
            question = [{"role": "user", "content": secret_prompt}]
            headers = {"X-Request-Id": "row-1"}
            assert requests.post(f"{url}/chat/completions", json={"model": "default", "messages": question},
                                 headers=headers, timeout=10).ok
            assert requests.post(f"{url}/chat/completions", json={"model": "chat", "messages": question,
                                                                  "stream": True}, timeout=10).ok
            assert requests.post(f"{url}/chat/completions", json={"model": "nope"}, timeout=10).status_code == 404
    text = log_path.read_text()  # complete once the router stopped
    rows = [json.loads(line) for line in text.splitlines()]
    assert [(r["request_id"], r["category"], r["model"], r["served_by"], r["status"]) for r in rows] == [
        ("row-1", "default", "default", "e1", 200),
        (rows[1]["request_id"], "default", "chat", "e1", 200),
        (rows[2]["request_id"], None, "nope", "-", 404),
    ]
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (1, 1)  # from the canned answer's usage
    assert all(r["latency_ms"] >= 0 and r["route"] == "/v1/chat/completions" for r in rows)
    assert secret_prompt not in text and endpoint_key not in text and "w0" not in text and '"ok"' not in text
