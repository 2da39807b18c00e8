"""`bench submit`: the benchmark as a SLURM job on the node of each endpoint it measures, so the load does not cross
the cluster network and `nvidia-smi` (when the node's cgroups let a job without GPUs see them) reports the server's
GPU. The script is rendered by the launcher's own `render_sbatch`; `sbatch` is the only I/O."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import replace

from grace_hpc.bench.report import file_stem
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import ConfigError, SubmissionError
from grace_hpc.launch.resources import job_resources, render_sbatch
from grace_hpc.registry.records import EndpointRecord

#: options of `bench` passed on unchanged to the job (everything but the selection, output and submit options)
FORWARDED = ("concurrency", "rate", "duration", "requests", "prompt_tokens", "output_tokens", "dataset", "api",
             "registry", "ttft_target")
FLAGS = ("no_record", "no_stream")


def bench_argv(config: ConfigDir, record: EndpointRecord, args: argparse.Namespace, output: str,
               python: str = "python3") -> list[str]:
    argv = [python, "-m", "grace_hpc", "bench", "--config-dir", str(config.root), "--endpoint", record.id,
            "--output", output]
    for name in FORWARDED:
        value = getattr(args, name)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    argv += ["--" + name.replace("_", "-") for name in FLAGS if getattr(args, name)]
    return argv


def bench_scripts(config: ConfigDir, records: Sequence[EndpointRecord], args: argparse.Namespace,
                  stamp: str) -> Iterator[tuple[EndpointRecord, str]]:
    """One sbatch script per endpoint: its partition and node, two CPUs for the load generator, no GPU."""
    cluster = config.cluster()
    log_dir = config.resolve(cluster.paths.logs) / "bench"
    for record in records:
        if not record.partition or not record.node:
            raise ConfigError(f"endpoint {record.id!r} has no SLURM partition and node in the registry (launched "
                              "locally or added by hand): run `grace-hpc bench --endpoint` where it runs instead")
        res = job_resources(cluster.partition(record.partition), job_name=f"bench-{record.id}", num_gpus=0,
                            time=args.time)
        res = replace(res, cpus_per_task=2, mem_gb=4, extra=(*res.extra, ("nodelist", record.node)))
        output = str(log_dir / f"{file_stem(record.id)}-{stamp}.json")
        yield record, render_sbatch(res, bench_argv(config, record, args, output), log_dir=str(log_dir),
                                    setup=cluster.engines.setup)


def submit_script(script: str) -> str:
    """`sbatch --parsable` with the script on stdin; the job id. SubmissionError carries the command and stderr."""
    argv = ["sbatch", "--parsable"]
    try:
        proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SubmissionError(f"{' '.join(argv)} failed: {exc} (is SLURM installed and reachable here?)") from exc
    if proc.returncode != 0:
        raise SubmissionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[:500]}")
    return proc.stdout.strip().split(";", 1)[0]
