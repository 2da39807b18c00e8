"""Exact option probabilities against real engines.

The echo engine is llama-cpp-python's server (`pip install 'llama-cpp-python[server]'`): it returns prompt
log-probs for `echo: true`, like vLLM. The reference is computed independently: the same GGUF loaded in-process
with llama.cpp, the full logits of every position turned into log-softmax in float64 here.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from grace_hpc.errors import WorkError
from grace_hpc.work.client import Upstream
from grace_hpc.work.scorer import OptionScorer
from grace_hpc.work.tasks import OptionsExtract
from tests.conftest import free_port
from tests.support.scoring import reference_logprob

pytestmark = pytest.mark.engine
llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python[server] (the echo-capable engine)")

PROMPT = "the answer is"
# several tokens each in the tiny vocab (" hot water" = " hot" + " water", " 1000 people" = 4 tokens)
RULE = OptionsExtract(options=("hot water", "100 people", "1000 people", "no", "the"), values=(1, 2, 3, 4, 5))


@pytest.fixture(scope="module")
def echo_server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI server on the tiny model; yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("echo") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_gguf), "--host", "127.0.0.1",
             "--port", str(port), "--model_alias", "tiny", "--n_ctx", "512", "--n_threads", "1"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if requests.get(f"{url}/models", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "llama_cpp.server did not start: " + log.read_text()[-2000:]
        time.sleep(0.1)
    yield url
    proc.kill()
    proc.wait(timeout=10)


def score(url: str, rule: OptionsExtract, prompt: str = PROMPT):
    async def go():
        async with Upstream(url, concurrency=4) as up:
            return await OptionScorer(up).score("tiny", prompt, rule)
    return asyncio.run(go())


def test_multi_token_option_probabilities_match_the_engines_full_logprobs(echo_server: str, tiny_gguf: Path
                                                                          ) -> None:
    got = score(echo_server, RULE)
    assert any(len(toks) >= 3 for toks in got.tokens.values())  # really multi-token

    llm = llama_cpp.Llama(str(tiny_gguf), logits_all=True, n_ctx=512, n_threads=1, verbose=False)
    logps = [reference_logprob(llm, PROMPT, f" {o}") for o in RULE.options]
    total = math.log(sum(math.exp(lp) for lp in logps))
    expected = [math.exp(lp - total) for lp in logps]

    assert got.scores.probs == pytest.approx(expected, abs=1e-6)
    assert got.scores.covered_mass == pytest.approx(math.exp(total), rel=1e-5)
    assert sum(got.scores.probs) == pytest.approx(1.0, abs=1e-12)
    mean = sum(p * v for p, v in zip(expected, RULE.values or (), strict=True))
    assert got.scores.mean == pytest.approx(mean, abs=1e-5)


def test_case_variants_are_scored_and_added_into_their_option(echo_server: str) -> None:
    exact = score(echo_server, OptionsExtract(options=("hot", "no")))
    anycase = score(echo_server, OptionsExtract(options=("hot", "no"), case="any"))
    # each option gains the mass of its other spellings, so the covered mass can only grow
    assert anycase.scores.covered_mass > exact.scores.covered_mass
    assert set(anycase.tokens) == {" hot", " Hot", " HOT", " no", " No", " NO"}


def test_an_engine_that_ignores_echo_fails_clearly(llama_server) -> None:
    server = llama_server()  # llama.cpp's own server (xllamacpp) ignores `echo`
    with pytest.raises(WorkError, match="ignored `echo`"):
        score(server.base_url, OptionsExtract(options=("yes", "no")))
