"""`bench submit`: one sbatch script per endpoint, rendered by the launcher's renderer, on the endpoint's node."""

from __future__ import annotations

import shlex

from grace_hpc.registry.store import Registry
from tests.support.cli import grace
from tests.support.router_env import record

HOSTILE = "ep'; echo pwned #"


def register(project, endpoint_id: str, partition: str | None, node: str | None):
    path = project / "registry.json"
    Registry(path).register(record(endpoint_id, "http://10.1.2.3:8000/v1", "tiny").model_copy(
        update={"partition": partition, "node": node}))
    return path


def test_each_endpoint_gets_a_script_on_its_node_forwarding_the_options(tiny_project):
    registry = register(tiny_project, HOSTILE, "t4", "gpu-node-7")
    proc = grace(tiny_project, "bench", "submit", "--registry", str(registry), "--model", "tiny",
                 "--concurrency", "1,8", "--duration", "20", "--output-tokens", "100", "--no-record", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "#SBATCH --partition=t4" in lines and "#SBATCH --nodelist=gpu-node-7" in lines
    assert not any(line.startswith("#SBATCH --gres") for line in lines)  # the server holds the GPU
    [command] = [line for line in lines if line.startswith("exec ")]
    argv = shlex.split(command.removeprefix("exec "))
    assert argv[1:4] == ["-m", "grace_hpc", "bench"]
    assert argv[argv.index("--endpoint") + 1] == HOSTILE  # quoted: one argument, nothing executed
    for option, value in (("--concurrency", "1,8"), ("--duration", "20.0"), ("--output-tokens", "100"),
                          ("--registry", str(registry))):
        assert argv[argv.index(option) + 1] == value
    assert "--no-record" in argv and argv[argv.index("--output") + 1].endswith(".json")


def test_an_endpoint_without_a_slurm_node_is_refused_with_what_to_do(tiny_project):
    registry = register(tiny_project, "local-1", None, None)
    proc = grace(tiny_project, "bench", "submit", "--registry", str(registry), "--endpoint", "local-1", "--dry-run")
    assert proc.returncode == 1
    assert "has no SLURM partition and node" in proc.stderr and "grace-hpc bench --endpoint" in proc.stderr


def test_bad_options_fail_before_anything_is_submitted(tiny_project):
    registry = register(tiny_project, "e1", "t4", "n1")
    proc = grace(tiny_project, "bench", "submit", "--registry", str(registry), "--concurrency", "0,4")
    assert proc.returncode == 1 and "--concurrency '0,4': expected comma-separated positive integers" in proc.stderr
