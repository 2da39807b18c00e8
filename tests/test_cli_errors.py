"""Every failure the user can cause ends in one clear line, never a traceback; best-effort views stay best effort."""

import configparser
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.cli import grace, grace_without_slurm

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("args", "message"), [
    (["work", "submit", "--shards", "0"], "argument --shards: must be a whole number >= 1 (got '0')"),
    (["work", "submit", "--parallelism", "many"], "argument --parallelism: must be a whole number >= 1 (got 'many')"),
    (["route", "--port", "99999"], "argument --port: must be a port number from 0 (any free port) to 65535 "
                                   "(got '99999')"),
])
def test_an_out_of_range_number_is_a_usage_error_naming_the_option(tmp_path, args, message):
    proc = grace(tmp_path, *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(f"error: {message}")


def test_a_reader_that_stops_early_is_not_an_error(tmp_path):
    """`grace-hpc models --json | head -1`: the pipe closes before the catalog is written."""
    with subprocess.Popen([sys.executable, "-m", "grace_hpc", "models", "--json", "--config-dir",
                           str(ROOT / "configs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before the child has written anything: its first write meets a closed pipe
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141
    assert stderr == ""


def test_status_without_a_working_scheduler_still_shows_the_fleet_and_says_why(tiny_project):
    manifest = tiny_project / "logs" / "pair" / "jobs.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps([{
        "deployment": "pair", "server": "on-t4", "replica": 0, "job_id": "4242", "executor": "slurm",
        "partition": "t4", "models": ["tiny"], "num_gpus": 1, "submitted_at": 0.0, "folder": "f"}]))
    proc = grace_without_slurm(tiny_project, "status", "--json", "--no-probe")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    [row] = status["servers"]
    assert (row["server"], row["job_id"], row["job_state"]) == ("on-t4", "4242", "UNKNOWN")
    assert "SLURM job states unknown: squeue not found" in status["summary"]


def test_the_python_version_claimed_is_the_one_the_code_and_its_checks_target():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # asyncio.Runner (the router and the workers) is new in 3.11
    assert "asyncio.Runner" in "".join(p.read_text() for p in (ROOT / "grace_hpc").rglob("*.py"))
    assert setup["options"]["python_requires"] == ">=3.11"
    assert pyproject["tool"]["ruff"]["target-version"] == "py311"
    assert pyproject["tool"]["mypy"]["python_version"] == "3.11"
