"""`work submit`: the rendered array script (golden file, hostile values) and a real SLURM array."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from grace_hpc.cli import main
from grace_hpc.work.merge import merge
from grace_hpc.work.runner import WorkSpec
from grace_hpc.work.submit import ArrayOptions, render_sbatch, submit_array, worker_argv
from grace_hpc.work.tasks import load_task
from tests.support.scoring import registered

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "sbatch" / "worker_array.sbatch"
# The arguments the committed sbatch/worker_array.sbatch was rendered with (see docs/work.md to regenerate).
GOLDEN_ARGS = ["work", "submit", "--input", "data/study1.csv", "--task", "study1_exp2", "--output",
               "results/study1_exp2", "--category", "default", "--router", "http://router.example:8000/v1",
               "--shards", "8", "--parallelism", "4", "--partition", "t4", "--render-only"]


def test_the_committed_array_script_is_what_the_renderer_writes(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)  # the golden file names relative paths, resolved from the checkout
    assert main(GOLDEN_ARGS) == 0
    rendered = capsys.readouterr().out
    assert rendered == GOLDEN.read_text()
    assert subprocess.run(["bash", "-n"], input=rendered, text=True).returncode == 0


@pytest.mark.parametrize("hostile", ["a'; echo foo", "two words", "new\nline", "$(touch pwned)"])
def test_hostile_values_reach_the_worker_as_single_arguments(hostile: str, tmp_path: Path) -> None:
    spec = WorkSpec(input=tmp_path / hostile / "in.csv", task=load_task("study2_exp1", ROOT / "configs" / "tasks"),
                    output=tmp_path / hostile, models=(hostile, "m2"), base_url="http://h/v1")
    argv = worker_argv(spec, hostile)
    script = render_sbatch(argv, ArrayOptions(), {"GRACE_NOTE": hostile})
    command = script.split("\nexec ", 1)[1]  # the last command; a quoted newline may span lines
    assert shlex.split(command) == argv
    assert f"export GRACE_NOTE={shlex.quote(hostile)}" in script
    # executing the script's shell part prints the arguments back unchanged, and runs nothing else
    shell = script.replace("exec python", "exec printf '%s\\0' python")
    out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split("\0")[:-1] == argv and not (tmp_path / "pwned").exists()


def test_an_sbatch_value_with_a_space_stays_one_argument_of_sbatch() -> None:
    script = render_sbatch(["python"], ArrayOptions(partition="t4 --wrap=x"), {})
    assert '#SBATCH --partition="t4 --wrap=x"' in script  # sbatch asks for partition "t4 --wrap=x": refused


@pytest.mark.slurm
@pytest.mark.engine
def test_an_array_of_4_shards_answers_every_row_exactly_once(slurm_cluster: str, submitit_folder: Path,
                                                             llama_server, tmp_path: Path) -> None:
    server = llama_server(parallel=4)
    n = 240
    data = tmp_path / "rows.parquet"
    pd.DataFrame({"q": [f"row {i}" for i in range(n)]}).to_parquet(data)
    task = tmp_path / "short.yaml"
    task.write_text("name: short\nmode: completion\nsampling: {max_tokens: 2}\n"
                    "questions: [{name: a, prompt: 'the answer to {q} is'}]\n")
    spec = WorkSpec(input=data, task=load_task(str(task), tmp_path), output=tmp_path / "out", models=("tiny",),
                    base_url=server.base_url, concurrency=2, part_rows=20)
    jobs = submit_array(spec, ArrayOptions(shards=4, parallelism=4, partition="t4", time_min=10, mem_gb=1),
                        submitit_folder, cluster="slurm")
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1  # one array
    summaries = [j.result() for j in jobs]
    assert sorted(s.shard for s in summaries) == ["0/4", "1/4", "2/4", "3/4"]
    assert sum(s.ok for s in summaries) == n and all(s.failed == 0 for s in summaries)

    merged = merge(spec.output)
    assert (merged.rows, merged.ok, merged.shards, merged.incomplete_shards) == (n, n, 4, [])
    got = pd.read_parquet(merged.output)
    assert sorted(got.position) == list(range(n)) and got.row_id.is_unique
    assert set(got.shard) == {"0/4", "1/4", "2/4", "3/4"}


@pytest.mark.slurm
@pytest.mark.engine
def test_the_rendered_array_script_runs_on_slurm(slurm_cluster: str, llama_server, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server = llama_server()
    pd.DataFrame({"q": [f"row {i}" for i in range(30)]}).to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "short.yaml").write_text("name: short\nmode: completion\nsampling: {max_tokens: 2}\n"
                                         "questions: [{name: a, prompt: 'the answer to {q} is'}]\n")
    monkeypatch.chdir(tmp_path)
    assert main(["work", "submit", "--input", "rows.csv", "--task", "short.yaml", "--output", "out",
                 "--models", "tiny", "--router", server.base_url, "--shards", "3", "--partition", "t4",
                 "--time-min", "5", "--mem-gb", "1", "--render-only"]) == 0
    (tmp_path / "array.sbatch").write_text(capsys.readouterr().out)
    done = subprocess.run(["sbatch", "--wait", "array.sbatch"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + "".join(p.read_text() for p in tmp_path.glob("*.out"))
    merged = merge(tmp_path / "out")
    assert (merged.rows, merged.ok, merged.shards, merged.incomplete_shards) == (30, 30, 3, [])


@pytest.mark.slurm
@pytest.mark.engine
def test_work_submit_routes_from_the_registry_on_compute_nodes_without_a_router(
    slurm_cluster: str, llama_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    server = llama_server(parallel=4, api_key="k-" + "x" * 20)  # the key reaches workers only via its key file
    registry = tmp_path / "registry" / "registry.json"
    n = 120
    pd.DataFrame({"q": [f"row {i}" for i in range(n)]}).to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "short.yaml").write_text("name: short\nmode: completion\nsampling: {max_tokens: 2}\n"
                                         "questions: [{name: a, prompt: 'the answer to {q} is'}]\n")
    monkeypatch.delenv("GRACE_ROUTER_URL", raising=False)
    monkeypatch.setenv("GRACE_CONFIG_DIR", str(ROOT / "configs"))
    monkeypatch.chdir(tmp_path)
    with registered(registry, server):
        assert main(["work", "submit", "--input", "rows.csv", "--task", "short.yaml", "--output", "out",
                     "--models", "tiny", "--registry", str(registry), "--routing", "local", "--shards", "4",
                     "--partition", "t4", "--time-min", "5", "--mem-gb", "1", "--wait"]) == 0
    printed = capsys.readouterr()
    assert "4/4 shards done" in printed.err and "rows/s" in printed.err  # --wait shows progress
    merged = merge(tmp_path / "out")
    assert (merged.rows, merged.ok, merged.shards, merged.incomplete_shards) == (n, n, 4, [])
    got = pd.read_parquet(merged.output)
    assert sorted(got.position) == list(range(n)) and got.row_id.is_unique
    assert set(got.engine) == {"llama.cpp"}  # provenance from the registry record, as the router would send
