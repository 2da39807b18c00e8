"""`launch --dry-run` on a laptop: no SLURM needed, and what it prints is what runs (the engine argv the job starts,
the sbatch script submitit submits)."""

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from grace_hpc.serve.resolve import resolve_argv
from tests.support.cli import engine_pids, grace, grace_without_slurm

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_renders_the_slurm_scripts_without_slurm_installed(tiny_project):
    proc = grace_without_slurm(tiny_project, "launch", "--deployment", "pair", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("#SBATCH --gres=gpu:t4:1") == 1 and proc.stdout.count("#SBATCH --gres=gpu:l4:1") == 1
    assert not (tiny_project / "logs" / "pair" / "jobs.json").exists()


def test_dry_run_prints_the_engine_argv_with_the_clusters_prefix_and_the_servers_extra_args(tmp_path):
    conf = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", conf)
    cluster = yaml.safe_load((conf / "cluster.yaml").read_text())
    cluster["engines"] = {"vllm_prefix": ["apptainer", "exec", "--nv", "/img/vllm.sif"]}
    (conf / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    zoo = yaml.safe_load((conf / "deployments" / "zoo.yaml").read_text())
    zoo["servers"][0]["extra_args"] = ["--hf-overrides", '{"rope_scaling": null}']
    (conf / "deployments" / "zoo.yaml").write_text(yaml.safe_dump(zoo))

    proc = grace_without_slurm(tmp_path, "launch", "--deployment", "zoo", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    servers = json.loads(proc.stdout)
    for server in servers:
        for argv in server["argv"].values():
            assert argv[:6] == ["apptainer", "exec", "--nv", "/img/vllm.sif", "vllm", "serve"]
            assert "{port}" in argv  # the job fills in the port it finds free
    first = servers[0]["argv"]
    assert all(argv[-2:] == ["--hf-overrides", '{"rope_scaling": null}'] for argv in first.values())
    text = grace_without_slurm(tmp_path, "launch", "--deployment", "zoo", "--dry-run").stdout
    for argv in first.values():
        assert "  engine argv: " + shlex.join(argv) in text.splitlines()


@pytest.mark.engine
def test_the_printed_engine_argv_is_the_one_the_supervisor_runs(tiny_project):
    dry = grace_without_slurm(tiny_project, "launch", "--deployment", "solo", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    [line] = [x for x in dry.stdout.splitlines() if x.startswith("  engine argv: ")]
    printed = shlex.split(line.removeprefix("  engine argv: "))

    launched = grace(tiny_project, "launch", "--deployment", "solo", "--wait", "--timeout", "120")
    assert launched.returncode == 0, launched.stderr
    try:
        [record] = json.loads((tiny_project / "logs" / "registry" / "registry.json").read_text())["endpoints"].values()
        [engine] = engine_pids(record["port"])
        running = Path(f"/proc/{engine}/cmdline").read_bytes().decode().split("\0")[:-1]
        # the job fills in its bind address and free port, and resolves `llama-server`/`pkg:` on its node
        filled = [a.replace("{host}", "127.0.0.1").replace("{port}", str(record["port"])) for a in printed]
        assert running == resolve_argv(filled)
    finally:
        grace(tiny_project, "stop", "--deployment", "solo")
