"""Exact option probabilities on CPU with a real model: grace-hpc's scoring engine against the full-logits reference.

SmolLM2-135M-Instruct has no BOS token (where llama-cpp-python's server misplaces echoed log-probs, issue #1983);
the tiny model has one. Every probability must equal the in-process float64 reference (tests/support/scoring.py)
to 1e-6: several-token options, case variants, a grid task, and the shipped seed-001 task through `work`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from grace_hpc.config.loader import ConfigDir
from grace_hpc.work.client import Upstream
from grace_hpc.work.merge import merge
from grace_hpc.work.runner import WorkSpec, run_shard
from grace_hpc.work.scorer import OptionScorer
from grace_hpc.work.shards import Shard
from grace_hpc.work.tasks import OptionsExtract, load_task
from tests.support.scoring import (
    SMOL,
    PrefixReference,
    http_engine,
    reference_logprob,
    reference_probs,
    scoring_server_argv,
    smollm2_or_skip,
)

ROOT = Path(__file__).resolve().parents[1]
# Rows of the shipped study1_exp2 task scored through `work` (50 probabilities each). Issue 11's acceptance run is
# GRACE_STUDY_ROWS=20: passed, 42.7 min on the shared 2-core test machine at load 12-19, most of it the reference's
# ~1,000 evaluations; the default keeps the suite's time reasonable with the same coverage per row.
STUDY_ROWS = int(os.environ.get("GRACE_STUDY_ROWS", "4"))


pytestmark = pytest.mark.engine
llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (the scoring engine and the reference)")


@pytest.fixture(scope="module")
def smol_path() -> Path:
    return smollm2_or_skip()


@pytest.fixture(scope="module")
def smol_scoring(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("scoring") / "smol.log"
    with http_engine(scoring_server_argv(smol_path, SMOL), SMOL, log) as url:
        yield url


@pytest.fixture(scope="module")
def tiny_scoring(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("scoring") / "tiny.log"
    with http_engine(scoring_server_argv(tiny_gguf, "tiny"), "tiny", log) as url:
        yield url


@pytest.fixture(scope="module")
def smol_reference(smol_path: Path) -> Any:
    return llama_cpp.Llama(str(smol_path), logits_all=True, n_ctx=1024, verbose=False)


def score(url: str, model: str, prompt: str, rule: OptionsExtract) -> Any:
    async def go() -> Any:
        async with Upstream(url, concurrency=4) as up:
            return await OptionScorer(up).score(model, prompt, rule)
    return asyncio.run(go())


def expected(llm: Any, prompt: str, rule: OptionsExtract, fresh: bool = True) -> list[float]:
    """The reference distribution: every text evaluated from scratch, or (`fresh=False`) reusing the prefix."""
    logprob = partial(reference_logprob, llm) if fresh else PrefixReference(llm)
    return reference_probs(logprob, prompt, [rule.variants(o) for o in rule.options])


PERCENT = OptionsExtract(options=tuple(f"{p}%" for p in range(0, 101, 10)), values=tuple(range(0, 101, 10)))
PARIS = "Question: What is the capital of France?\nAnswer (one word):"


def test_smollm2_several_token_options_equal_the_full_logits_reference(smol_scoring: str, smol_reference: Any
                                                                       ) -> None:
    prompt = "Question: How likely is rain tomorrow, from 0% to 100%?\nAnswer with just the percentage:"
    got = score(smol_scoring, SMOL, prompt, PERCENT)
    assert max(len(t) for t in got.tokens.values()) >= 3  # " 100%": several tokens
    assert got.scores.probs == pytest.approx(expected(smol_reference, prompt, PERCENT), abs=1e-6)


def test_smollm2_case_variants_equal_the_reference_and_paris_wins(smol_scoring: str, smol_reference: Any) -> None:
    rule = OptionsExtract(options=("Paris", "London", "Berlin"), case="any")
    got = score(smol_scoring, SMOL, PARIS, rule)
    assert set(got.tokens) >= {" Paris", " paris", " PARIS"}
    assert got.scores.probs == pytest.approx(expected(smol_reference, PARIS, rule), abs=1e-6)
    assert got.scores.probs[0] > 0.5  # the bug this engine replaces ranked London above Paris


def test_tiny_model_with_bos_equals_the_reference(tiny_scoring: str, tiny_gguf: Path) -> None:
    llm = llama_cpp.Llama(str(tiny_gguf), logits_all=True, n_ctx=1024, verbose=False)
    assert llm.tokenize(b"the answer is")[0] == llm.token_bos()  # this model does add a BOS token
    rule = OptionsExtract(options=("hot water", "100 people", "1000 people", "no"), case="any")
    got = score(tiny_scoring, "tiny", "the answer is", rule)
    assert got.scores.probs == pytest.approx(expected(llm, "the answer is", rule), abs=1e-6)


def test_the_prefix_reusing_reference_equals_the_fresh_one(smol_reference: Any) -> None:
    texts = [(PARIS, " Paris"), (PARIS, " London"), (PARIS + " Paris", "."), ("Question: Why?", " Because")]
    reuse = PrefixReference(smol_reference)
    assert [reuse(p, c) for p, c in texts] == pytest.approx(
        [reference_logprob(smol_reference, p, c) for p, c in texts], abs=1e-9)


def study1_rows(n: int) -> pd.DataFrame:
    """Seed 001 Study 1 style rows (story, statement, items, property, knowledge question)."""
    items = [("exams", "have passing grades"), ("apples", "are red"), ("letters", "are stamped"),
             ("plants", "have sprouted"), ("cars", "are electric")]
    speech = ["Some of the {i} {p}.", "All of the {i} {p}.", "None of the {i} {p}.", "Most of the {i} {p}."]
    rows = []
    for k in range(n):
        i, p = items[k % len(items)]
        rows.append({"story_setup": f"Sam looked at {3} {i} this morning (case {k}).",
                     "speach": speech[k % len(speech)].format(i=i, p=p),
                     "items": i, "property": p, "knowledgeQ": f"Did Sam look at all of the {i}?"})
    return pd.DataFrame(rows)


def test_work_runs_the_shipped_study1_exp2_on_smollm2_and_every_probability_is_exact(
    smol_scoring: str, smol_reference: Any, tmp_path: Path
) -> None:
    data = tmp_path / "study1.csv"
    study1_rows(STUDY_ROWS).to_csv(data, index=False)
    task = load_task("study1_exp2", ConfigDir.discover(ROOT / "configs").root / "tasks")
    # one request in flight: the engine answers one at a time, and in order it reuses each prompt's prefix
    spec = WorkSpec(input=data, task=task, output=tmp_path / "out", models=(SMOL,), base_url=smol_scoring,
                    concurrency=1, verdicts=tmp_path / "verdicts.json")
    summary = asyncio.run(run_shard(spec, Shard(index=0, count=1), handle_sigterm=False))
    assert summary.ok == STUDY_ROWS and summary.failed == 0

    merged = merge(spec.output)
    assert (merged.rows, merged.ok) == (STUDY_ROWS, STUDY_ROWS)
    table = pq.read_table(merged.output).to_pylist()
    grid_q, knowledge_q = task.questions
    checked = 0
    for rec in table:
        row, out = json.loads(rec["input"]), json.loads(rec["output"])
        for state, got in out["state_percentages"]["by_value"].items():
            prompt = grid_q.prompt.format(**row, state=state)
            want = expected(smol_reference, prompt, grid_q.extract, fresh=False)  # type: ignore[arg-type]
            assert list(got["probs"].values()) == pytest.approx(want, abs=1e-6)
            checked += 1
        prompt = knowledge_q.prompt.format(**row)
        want = expected(smol_reference, prompt, knowledge_q.extract, fresh=False)  # type: ignore[arg-type]
        assert list(out["knowledge"]["probs"].values()) == pytest.approx(want, abs=1e-6)
    assert checked == 4 * STUDY_ROWS
