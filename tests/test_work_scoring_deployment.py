"""Seed 001's option tasks on the embedded default: the shipped `scoring` deployment (SmolLM2-135M on the scoring
engine, `engine: scoring`) is launched by the local executor, its endpoint passes the log-prob canary, and `work`
routes to it in-process from the registry and writes exact option probabilities."""

import json
from pathlib import Path

import pandas as pd
import pytest

from grace_hpc.registry.verdicts import read_verdicts, verdict_path
from tests.support.cli import grace, wait_gone

pytest.importorskip("llama_cpp", reason="the scoring engine needs llama-cpp-python (the `test` extra)")


@pytest.mark.engine
def test_the_scoring_deployment_serves_option_tasks_with_exact_log_probs(embedded_default: Path) -> None:
    project = embedded_default
    launched = grace(project, "launch", "--deployment", "scoring", "--wait", "--timeout", "180")
    assert launched.returncode == 0, launched.stderr
    registry = project / "logs" / "registry" / "registry.json"
    [record] = json.loads(registry.read_text())["endpoints"].values()
    try:
        rows = project / "rows.csv"
        pd.DataFrame([{"story_setup": "Sam checked 3 exams.", "speach": "Some of the exams have passing grades.",
                       "items": "exams", "property": "have passing grades",
                       "knowledgeQ": "Did Sam check all of the exams?"}]).to_csv(rows, index=False)
        work = grace(project, "work", "--input", str(rows), "--task", "study1_exp2", "--output",
                     str(project / "out"), "--category", "default", "--routing", "local", "--shard", "0/1")
        assert work.returncode == 0, work.stderr
        [verdict] = read_verdicts(verdict_path(registry))
        assert (verdict.passed, verdict.engine, verdict.endpoint) == (True, "grace-scoring", record["id"])
        [part] = list((project / "out").rglob("part-*.parquet"))
        assert (pd.read_parquet(part)["status"] == "ok").all()
    finally:
        stopped = grace(project, "stop", "--deployment", "scoring")
        assert stopped.returncode == 0, stopped.stderr
        assert wait_gone([record["pid"]]) == []
