"""An embedding model on the real vLLM (the CPU build in .venv-vllm): served with its pooling runner, proven ready
by a real embedding, and answering /v1/embeddings through the router. Slow and heavy like tests/test_vllm_cpu.py,
whose project and tiny model it reuses; skipped where .venv-vllm is not installed."""

from __future__ import annotations

import math
from pathlib import Path

import openai
import yaml

from grace_hpc.config.routing import Routing
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
from tests.support.cli import grace, grace_json
from tests.test_vllm_cpu import (  # noqa: F401 - pytest finds the fixtures by name in this module
    DEPLOYMENT,
    engine_logs,
    pytestmark,
    registry_path,
    registry_records,
    tiny_hf,
    vllm_project,
)


def test_an_embedding_model_on_vllm_is_ready_by_a_real_embedding_and_serves_embeddings(
        vllm_project: Path) -> None:  # noqa: F811 - the fixture imported above, by name
    models = vllm_project / "configs" / "models.yaml"
    catalog = yaml.safe_load(models.read_text())
    catalog["models"][0]["task"] = "embed"  # the tiny Llama, served as an embedder (vLLM converts *ForCausalLM)
    models.write_text(yaml.safe_dump(catalog))
    launched = grace(vllm_project, "launch", "--deployment", DEPLOYMENT, "--wait", "--timeout", "300", timeout=400)
    try:
        assert launched.returncode == 0, f"{launched.stdout}\n{launched.stderr}\n{engine_logs(vllm_project, 3000)}"
        [record] = registry_records(vllm_project)
        assert record["state"] == "ready"
        assert "'runner': 'pooling'" in engine_logs(vllm_project)  # vLLM read the flag
        categories = [{"name": name, "models": ["tiny-hf"]} for name in ("default", "embeddings")]
        table = Routing.model_validate({"categories": categories})
        app = create_app(table, Registry(registry_path(vllm_project)), environ={}, poll_interval_s=0.1)
        with serve_in_thread(app) as url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as c:
            result = c.embeddings.create(model="embeddings", input=["Hello world", "def f(): pass"])
        vectors = [d.embedding for d in result.data]
        width = yaml.safe_load(models.read_text())["models"][0]["architecture"]["hidden_size"]
        assert [len(v) for v in vectors] == [width, width] and vectors[0] != vectors[1]
        assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-3) for v in vectors)  # vLLM normalizes
    finally:
        stopped = grace_json(vllm_project, "stop", "--deployment", DEPLOYMENT)
    assert [s["deregistered"] for s in stopped] == [True]
