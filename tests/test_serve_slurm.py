"""A server job on the real local SLURM rides out a registry it cannot read: it keeps answering, and once the
registry is back it is listed again."""

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.support.cli import grace

pytestmark = [pytest.mark.slurm, pytest.mark.engine]

OUTAGE_S = 60


def records(project: Path) -> list[dict]:
    path = project / "logs" / "registry" / "registry.json"
    return list(json.loads(path.read_text())["endpoints"].values()) if path.is_file() else []


def complete(record: dict, key: str) -> int:
    r = requests.post(f"{record['base_url']}/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": record["served_model_name"], "prompt": "Hello", "max_tokens": 2}, timeout=30)
    return r.status_code


def job_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_server_keeps_answering_through_a_registry_outage_and_is_listed_again_after(slurm_cluster, tiny_project):
    cluster_yaml = tiny_project / "configs" / "cluster.yaml"
    cluster = yaml.safe_load(cluster_yaml.read_text())
    cluster["heartbeat_s"] = 1  # the supervisor retries at 1, 2, 4, 4, ... s: back within about 4 s
    cluster_yaml.write_text(yaml.safe_dump(cluster))
    launched = grace(tiny_project, "launch", "--deployment", "pair", "--only", "on-t4", "--executor", "slurm",
                     "--wait", "--timeout", "120")
    assert launched.returncode == 0, launched.stdout + launched.stderr
    try:
        [record] = records(tiny_project)
        key = Path(record["api_key_file"]).read_text().strip()
        registry = tiny_project / "logs" / "registry" / "registry.json"
        registry.rename(registry.with_name("registry.json.away"))
        registry.mkdir(mode=0o700)  # a directory where the file was: every read fails (EISDIR), even root's
        answered = 0
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < OUTAGE_S:
                assert complete(record, key) == 200, f"stopped answering {time.monotonic() - t0:.0f}s into the outage"
                assert job_state(record["job_id"]) == "RUNNING"
                answered += 1
                time.sleep(2)
        finally:
            registry.rmdir()  # back, but empty: as if it had been lost, or reaped while the job could not write
        back = time.monotonic()
        while time.monotonic() - back < 30 and not [r for r in records(tiny_project) if r["id"] == record["id"]]:
            time.sleep(0.2)
        print(f"{answered} completions answered during a {OUTAGE_S}s registry outage; "
              f"listed again {time.monotonic() - back:.1f}s after it ended")
        [again] = records(tiny_project)
        assert (again["id"], again["state"], again["port"]) == (record["id"], "ready", record["port"])
        assert complete(again, key) == 200
        logs = "".join(p.read_text(errors="replace") for p in (tiny_project / "logs").rglob("*_log.out"))
        assert "registry write failed" in logs and "the engines keep serving" in logs
    finally:
        stopped = grace(tiny_project, "stop", "--deployment", "pair")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert records(tiny_project) == []
