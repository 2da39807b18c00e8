"""What a server job asks SLURM for, rendered two ways, with hostile values written so that sbatch reads them back."""

import subprocess
from pathlib import Path

import pytest

from grace_hpc.config.cluster import Partition
from grace_hpc.errors import ConfigError
from grace_hpc.launch.resources import (
    SIGNAL_DELAY_S,
    job_resources,
    parse_directive,
    render_sbatch,
    signal_delay_s,
    slurm_parameters,
    slurm_time_minutes,
)

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("05:30", 6), ("04:00:00", 240), ("01:00:01", 61), ("1-00:00:00", 1440), ("2-12", 3600),
     ("1-02:03", 1563)],
)
def test_slurm_time_strings_become_whole_minutes_rounding_seconds_up(text, minutes):
    assert slurm_time_minutes(text) == minutes


def test_a_bad_time_string_says_what_a_good_one_looks_like():
    with pytest.raises(ConfigError, match="examples: 90, 04:00:00, 1-00:00:00"):
        slurm_time_minutes("tomorrow")


def test_resources_scale_cpus_and_memory_with_gpus_and_type_the_gres():
    p = Partition(name="a100", gpu="A100-40GB", gres_type="a100_40g", gpus_per_node=4, cpus_per_gpu=8,
                  mem_per_gpu_gb=60, max_time="2-00:00:00", account="lab", qos="high")
    res = job_resources(p, job_name="grace-x-y", num_gpus=2)
    assert (res.gres, res.cpus_per_task, res.mem_gb, res.time_min) == ("gpu:a100_40g:2", 16, 120, 2880)
    params = slurm_parameters(res)
    assert params["gres"] == "gpu:a100_40g:2"
    assert params["account"] == "lab" and params["qos"] == "high"
    assert params["additional_parameters"] == {"requeue": True}
    assert params["signal_delay_s"] == 120


def test_cpu_partition_asks_for_no_gres():
    p = Partition(name="cpu", gpu="CPU", gpus_per_node=0, cpus_per_gpu=2, mem_per_gpu_gb=4)
    res = job_resources(p, job_name="j", num_gpus=0)
    assert res.gres is None and res.cpus_per_task == 2 and "gres" not in slurm_parameters(res)


def test_extra_directives_reach_submitit_flags_included():
    p = Partition(name="t4", gpu="T4", gpus_per_node=2, extra_directives=("--reservation=llm", "--exclusive"))
    extra = slurm_parameters(job_resources(p, job_name="j", num_gpus=1))["additional_parameters"]
    assert extra == {"requeue": True, "reservation": "llm", "exclusive": True}  # submitit: `#SBATCH --exclusive`


def test_a_backslash_submitit_would_garble_is_refused_with_the_way_out():
    p = Partition(name="t4", gpu="T4", gpus_per_node=2, constraint="a\\b")
    with pytest.raises(ConfigError, match="emit-sbatch"):
        slurm_parameters(job_resources(p, job_name="j", num_gpus=1))


def test_extra_directives_are_parsed_or_refused():
    assert parse_directive("--reservation=llm") == ("reservation", "llm")
    assert parse_directive("--exclusive") == ("exclusive", None)
    with pytest.raises(ConfigError, match="--name"):
        parse_directive("reservation llm")


def test_sbatch_script_matches_its_golden_file_and_writes_values_as_sbatch_reads_them():
    p = Partition(name="t4", gpu="T4", gpus_per_node=2, cpus_per_gpu=4, mem_per_gpu_gb=16, max_time="04:00:00",
                  account="a'; echo pwned", constraint="has space",
                  extra_directives=('--reservation=r $(id) "q" \\ # not a comment',))
    res = job_resources(p, job_name="grace-demo-x", num_gpus=1)
    text = render_sbatch(res, ["python3", "-m", "grace_hpc", "serve", "--config-dir", "/shared/my configs",
                               "--deployment", "demo", "--server", "x"],
                         log_dir="/shared/logs/demo", setup=("module load cuda/12.4",))
    golden = GOLDEN / "server_t4.sbatch"
    assert text == golden.read_text()
    # sbatch reads directives itself (src/sbatch/opt.c get_argument): double quotes, backslash escapes, no shell
    assert '#SBATCH --account="a\'; echo pwned"' in text
    assert '#SBATCH --reservation="r $(id) \\"q\\" \\\\ # not a comment"' in text
    # the command line is for bash: shell-quoted
    assert "exec python3 -m grace_hpc serve --config-dir '/shared/my configs'" in text


@pytest.mark.parametrize("value", ["two\nlines", "tab\there"])
def test_a_value_sbatch_cannot_read_back_is_refused(value):
    p = Partition(name="t4", gpu="T4", gpus_per_node=2, constraint=value)
    with pytest.raises(ConfigError, match="control character"):
        render_sbatch(job_resources(p, job_name="j", num_gpus=1), ["true"], log_dir="/l")


@pytest.mark.slurm
def test_sbatch_reads_values_with_spaces_quotes_backslashes_and_hashes_as_written(slurm_cluster, tmp_path):
    comment = 'has space "q" \\ # not a comment'
    name = "grace-it's a name"
    partition = Partition(name="t4", gpu="T4", gpus_per_node=2, cpus_per_gpu=1, mem_per_gpu_gb=1,
                          extra_directives=(f"--comment={comment}",))
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(job_resources(partition, job_name=name, num_gpus=1), ["sleep", "60"],
                                    log_dir=str(tmp_path)))
    job_id = subprocess.run(["sbatch", "--parsable", "--hold", str(script)], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        seen = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%j|%k"], capture_output=True, text=True,
                              check=True).stdout.rstrip("\n")
        assert seen == f"{name}|{comment}"
    finally:
        subprocess.run(["scancel", job_id], check=True)


def test_the_time_limit_warning_comes_at_most_a_quarter_of_a_short_job_before_its_end():
    assert signal_delay_s(2) == 30  # a 2-minute job: not while its Python is still starting
    assert signal_delay_s(60) == SIGNAL_DELAY_S


def test_a_fleet_job_handed_over_to_a_successor_is_not_requeued_and_gets_no_signal_its_engine_would_die_of(tmp_path):
    from grace_hpc.launch.launcher import sbatch_preview, slurm_executor

    res = job_resources(Partition(name="t4", gpu="T4", gpus_per_node=2), job_name="grace-d-s", num_gpus=1, time="2")
    static = sbatch_preview(slurm_executor(tmp_path, res, (), render_only=True)).splitlines()
    fleet = sbatch_preview(slurm_executor(tmp_path, res, (), render_only=True, handover=True)).splitlines()
    assert "#SBATCH --requeue" in static and "#SBATCH --signal=USR2@30" in static
    assert "#SBATCH --no-requeue" in fleet and "#SBATCH --signal=URG@30" in fleet
    assert not any(line.startswith(("#SBATCH --requeue", "#SBATCH --signal=USR2")) for line in fleet)
