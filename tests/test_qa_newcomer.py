"""What a newcomer meets first: the README's commands, and one clear line that says what to do for each mistake."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest

from grace_hpc.bench.targets import Selection, select
from grace_hpc.cli import build_parser, main
from grace_hpc.config.catalog import ModelSpec
from grace_hpc.config.cluster import Cluster, EngineCommands, Partition, Paths
from grace_hpc.config.deployment import Deployment, ServerSpec
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import ConfigError
from grace_hpc.registry.records import EndpointRecord, EndpointState

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of this repository's configs/ and routing/, to misspell things in."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "routing", tmp_path / "routing")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], project: Path, *argv: str) -> tuple[int, str, list[str]]:
    """The CLI on `project`'s configs: (exit code, stdout, stderr lines)."""
    code = main([*argv, "--config-dir", str(project / "configs")])
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_every_command_the_readme_shows_is_one_the_cli_accepts():
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = [line.split("  #")[0].strip() for line in readme.splitlines()
                if line.strip().startswith("python -m grace_hpc ")]
    assert len(commands) >= 10  # the extraction finds the README's commands at all
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[3:])  # argparse exits (failing the test) on an unknown command


@pytest.mark.parametrize("model", [Cluster, Partition, Paths, EngineCommands, Deployment, ServerSpec, ModelSpec])
def test_the_readme_configuration_reference_names_every_key_a_file_may_hold(model):
    reference = (ROOT / "README.md").read_text().split("## Configuration reference")[1].split("## Design")[0]
    assert [key for key in model.model_fields if f"`{key}`" not in reference and f"`{key}[]`" not in reference] == []


@pytest.mark.parametrize("command", [("plan", "--deployment", "zoo"), ("launch", "--deployment", "zoo", "--dry-run")])
def test_a_misspelt_partition_is_one_line_naming_the_server_and_the_partition_it_means(capsys, project, command):
    edit(project / "configs" / "deployments" / "zoo.yaml", "partition: t4\n", "partition: t5\n")
    code, out, err = run(capsys, project, *command)
    assert (code, out) == (1, "")
    assert err == [f"grace-hpc {command[0]}: error: deployment 'zoo', server 't4-intent': unknown partition 't5' in "
                   "cluster.yaml (did you mean 't4'?); known: h100, a100, l4, t4, cpu"]


@pytest.mark.parametrize("command", [("plan", "--model", "gemma-9b-it", "--gpu", "T4"), ("models", "show", "gemma-9b-it")])
def test_an_unknown_model_is_answered_with_the_names_it_may_mean_not_the_whole_catalog(capsys, project, command):
    code, _, [line] = run(capsys, project, *command)
    assert code == 1
    assert "unknown model 'gemma-9b-it'" in line and "did you mean 'gemma-2-9b-it'" in line
    assert "`grace-hpc models` lists all" in line and "smollm2-135m-embed" not in line


def test_launch_only_a_server_that_is_not_in_the_deployment_is_an_error_not_a_silent_no_op(capsys, project):
    code, out, [line] = run(capsys, project, "launch", "--deployment", "zoo", "--only", "t4-intnt", "--dry-run")
    assert (code, out) == (1, "")
    assert "unknown server or model 't4-intnt' in deployment 'zoo' (did you mean 't4-intent'?)" in line


def test_a_server_that_fits_nowhere_is_refused_briefly_with_the_command_that_explains(capsys, project):
    (project / "configs" / "deployments" / "big.yaml").write_text(
        "name: big\nservers:\n  - {name: huge, partition: t4, models: [deepseek-v3]}\n")
    code, out, [line] = run(capsys, project, "launch", "--deployment", "big", "--dry-run")
    assert (code, out) == (1, "")
    assert line.startswith("grace-hpc launch: error: does not fit: huge on t4: deepseek-v3 does not fit on 2 x T4")
    assert "what would fit: a partition with larger GPUs" in line
    assert line.endswith("(`grace-hpc plan --deployment big` shows every reason and what would fit)")
    assert "FlashAttention" not in line and len(line) < 400  # the planner's notes stay in `plan`


def test_a_dry_run_says_what_the_launch_would_refuse_with_one_pull_for_every_missing_checkpoint(capsys, project):
    code, out, _ = run(capsys, project, "launch", "--deployment", "zoo", "--dry-run")
    assert code == 0
    [refusal] = [line for line in out.splitlines() if line.startswith("launch would refuse: ")]
    assert refusal.startswith("launch would refuse: the weights of 7 models (qwen2.5-coder-7b-instruct, "
                              "nemotron-orchestrator-8b, ")
    assert "set paths.hf_cache in cluster.yaml" in refusal
    assert refusal.count("grace-hpc pull") == 1
    assert "`grace-hpc pull Qwen/Qwen2.5-Coder-7B-Instruct nvidia/Nemotron-Orchestrator-8B" in refusal


def test_emitted_sbatch_scripts_serve_a_deployment_kept_outside_configs_with_this_python(capsys, project):
    elsewhere = project / "mine" / "lab-fleet.yaml"  # its `name:` is not its file name
    elsewhere.parent.mkdir()
    elsewhere.write_text("name: lab\nservers:\n  - {name: chat, partition: cpu, models: [smollm2-135m-instruct]}\n")
    code, out, _ = run(capsys, project, "launch", "--deployment", str(elsewhere), "--emit-sbatch",
                       str(project / "scripts"))
    assert code == 0
    [script] = [Path(p) for p in out.split()]
    command = shlex.split(script.read_text().splitlines()[-1])
    assert command[:4] == ["exec", sys.executable, "-m", "grace_hpc"]
    deployment = command[command.index("--deployment") + 1]
    assert ConfigDir(project / "configs").deployment(deployment).name == "lab"  # what `serve` in the job loads


def test_emitted_sbatch_scripts_are_one_job_per_replica_as_launch_submits(capsys, project):
    (project / "configs" / "deployments" / "two.yaml").write_text(
        "name: two\nservers:\n  - {name: chat, partition: cpu, models: [smollm2-135m-instruct], replicas: 2}\n")
    code, out, _ = run(capsys, project, "launch", "--deployment", "two", "--emit-sbatch", str(project / "scripts"))
    assert code == 0
    assert [Path(p).name for p in out.split()] == ["two-chat-replica0.sbatch", "two-chat-replica1.sbatch"]


def test_the_catalog_listed_into_a_pipe_keeps_whole_names(capsys, project):
    code, out, _ = run(capsys, project, "models")
    assert code == 0
    assert "smollm2-135m-instruct" in out and "HuggingFaceTB/SmolLM2-135M-Instruct" in out


def test_a_plan_table_never_cuts_a_model_name(capsys, project):
    (project / "configs" / "deployments" / "s.yaml").write_text(
        "name: s\nservers:\n  - {name: safety-t4, partition: t4, num_gpus: 1, "
        "models: [llama-3.1-nemotron-safety-guard-8b-v3], max_model_len: 8192}\n")
    code, out, _ = run(capsys, project, "plan", "--deployment", "s")
    assert code == 0 and "…" not in out
    cells = "".join(line.split("│")[5].strip() for line in out.splitlines() if line.count("│") > 5)
    assert cells == "llama-3.1-nemotron-safety-guard-8b-v3"


def test_models_show_prints_the_engine_command_on_one_line_to_copy(capsys, project):
    code, out, _ = run(capsys, project, "models", "show", "gemma-2-9b-it")
    assert code == 0
    [command] = [line for line in out.splitlines() if line.startswith("command on h100: ")]
    assert command.endswith("--max-num-seqs 1024")
    [cpu] = [line for line in out.splitlines() if line.startswith("│ cpu ")]
    assert cpu.split("│")[2].strip() == "CPU"  # as the web page says it: a CPU partition has no "0 x CPU" GPUs


def test_status_of_a_project_with_nothing_launched_says_how_to_start(capsys, project):
    code, out, _ = run(capsys, project, "status", "--no-probe")
    assert code == 0
    assert out.split() == ("no servers: nothing launched from this project is pending or running, and the registry is "
                           "empty; `grace-hpc launch --deployment NAME` starts some (`grace-hpc demo` tries the "
                           "embedded default)").split()


def test_bench_with_nothing_running_says_how_to_start_servers(capsys, project):
    code, _, err = run(capsys, project, "bench", "--requests", "1")
    assert (code, err) == (1, ["grace-hpc bench: error: no endpoint is ready to measure: `grace-hpc launch` starts "
                               "servers (`grace-hpc status` shows where they are)"])


@pytest.mark.parametrize(("selection", "asked"), [
    (Selection(model="qwen"), "serving model 'qwen'"), (Selection(category="code"), "serving category 'code'"),
    (Selection(endpoint="e9"), "called 'e9'")])
def test_bench_names_what_was_asked_for_and_what_is_ready(selection, asked):
    ready = EndpointRecord(
        id="e1", model="smollm2", served_model_name="smollm2", deployment="d", server="s", partition="cpu",
        gpu_type="CPU", engine="llama.cpp", host="n1", port=8000, base_url="http://n1:8000/v1", job_id="1", node="n1",
        pid=1, started_at=0.0, heartbeat_at=0.0, state=EndpointState.READY, categories=("docs",))
    with pytest.raises(ConfigError) as caught:
        select([ready], selection)
    assert str(caught.value) == f"no ready endpoint is {asked}; ready endpoints: e1 (smollm2)"


def test_removing_a_model_that_is_not_there_names_the_close_ones(capsys, project):
    code, _, [line] = run(capsys, project, "models", "remove", "bge-m", "--dry-run")
    assert code == 1 and "unknown model 'bge-m'" in line and "did you mean 'bge-m3'" in line
