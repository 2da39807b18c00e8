"""Embedding models are served as embedders on both engines, proven ready by a real embedding, and the README's
`client.embeddings.create(model="embeddings", ...)` works on the embedded default through the router."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from grace_hpc.config.loader import ConfigDir
from grace_hpc.planner import get_gpu, plan_model, render_llamacpp_argv, render_vllm_argv
from tests.support.cli import grace, grace_json

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ConfigDir(ROOT / "configs")


def test_an_embedding_model_gets_vllms_pooling_runner():
    plan = plan_model(CONFIG.catalog().get("bge-m3"), get_gpu("T4"), 1)
    argv = render_vllm_argv(plan, host="h", port=1, served_model_name="bge-m3")
    assert argv[-2:] == ["--runner", "pooling"] and "--task" not in argv
    generate = plan_model(CONFIG.catalog().get("llama-3.1-8b-instruct"), get_gpu("H100-80GB"), 1)
    assert "--runner" not in render_vllm_argv(generate, host="h", port=1, served_model_name="m")


def test_an_embedding_gguf_gets_llama_servers_embedding_mode():
    plan = plan_model(CONFIG.catalog().get("smollm2-135m-embed"), get_gpu("CPU"), 1)
    assert plan.fits and plan.engine == "llama.cpp"
    assert render_llamacpp_argv(plan, host="h", port=1, served_model_name="e")[-1] == "--embedding"
    chat = plan_model(CONFIG.catalog().get("smollm2-135m-instruct"), get_gpu("CPU"), 1)
    assert "--embedding" not in render_llamacpp_argv(chat, host="h", port=1, served_model_name="c")


@pytest.mark.engine
def test_the_readmes_embeddings_example_works_on_the_embedded_default(embedded_default):
    from openai import OpenAI

    tmp_path = embedded_default
    router = None
    try:
        launched = grace(tmp_path, "launch", "--deployment", "local", "--only", "smollm2-embed", "--wait",
                         "--timeout", "120")
        assert launched.returncode == 0, launched.stdout + launched.stderr  # ready: the probe got a real embedding
        router = subprocess.Popen([sys.executable, "-m", "grace_hpc", "route", "--routing", "local", "--port", "0",
                                   "--print-url"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        url = router.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), router.stderr.read()
        texts = ["The capital of France is Paris.", "Paris is the capital of France.", "def add(a, b): return a + b"]
        with OpenAI(base_url=f"{url}/v1", api_key="unused-on-loopback") as client:
            result = client.embeddings.create(model="embeddings", input=texts)
        vectors = [d.embedding for d in sorted(result.data, key=lambda d: d.index)]
        assert [len(v) for v in vectors] == [576] * 3  # SmolLM2-135M's hidden size
        assert all(math.isfinite(x) for v in vectors for x in v)

        def cosine(a: list[float], b: list[float]) -> float:
            return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
        print(f"cosine(paraphrase) {cosine(vectors[0], vectors[1]):.3f}, cosine(code) {cosine(vectors[0], vectors[2]):.3f}")
        assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])  # real vectors from a real model
    finally:
        if router is not None:
            router.terminate()
            router.communicate(timeout=30)
        stopped = grace_json(tmp_path, "stop", "--deployment", "local")
    assert all(s["deregistered"] for s in stopped)
