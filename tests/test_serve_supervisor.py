"""The supervisor in this process, with real llama.cpp engines and a real registry file: a failed start leaves
nothing behind, a registry that cannot be read never stops a serving engine, a packed job writes the registry once
per heartbeat, engine arguments reach the engine untouched, a hung engine is taken out of routing, and an engine
that dies after serving is restarted in place."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from grace_hpc.config.catalog import Task
from grace_hpc.errors import EngineError
from grace_hpc.registry.keys import read_key_file
from grace_hpc.registry.records import EndpointState
from grace_hpc.registry.store import Registry
from grace_hpc.serve.engine import EngineProcess
from grace_hpc.serve.inflight import busy_slots, queued
from grace_hpc.serve.spec import ModelLaunch, ServeSpec
from grace_hpc.serve.supervisor import DRAIN_SIGNAL, Supervisor, beat_interval

LLAMA = (sys.executable, "-m", "grace_hpc.engines.llamacpp_server")


def launch(name: str, weights: str, *extra: str, engine: tuple[str, ...] = LLAMA,
           task: Task = Task.GENERATE) -> ModelLaunch:
    argv = (*engine, "-m", weights, "--host", "{host}", "--port", "{port}", "--alias", name, "-c", "512", "-np", "1",
            "-t", "1", *extra)
    return ModelLaunch(model=name, served_model_name=name, categories=("default",), task=task, argv_template=argv,
                       key_env="LLAMA_API_KEY", engine="llama.cpp", dtype=None, quantization=None,
                       tensor_parallel_size=1, max_model_len=512, max_num_seqs=1)


def spec(tmp_path: Path, *models: ModelLaunch, heartbeat_s: float = 0.5, registry: Path | None = None,
         unresponsive_after_s: float = 15.0) -> ServeSpec:
    registry = registry or tmp_path / "registry" / "registry.json"
    return ServeSpec(deployment="t", server="s", partition="cpu", gpu_type="CPU", models=models,
                     registry_path=str(registry), lock_mode="flock", log_dir=str(tmp_path / "logs"),
                     keys_dir=str(registry.parent / "keys"), heartbeat_s=heartbeat_s, bind_host="127.0.0.1",
                     advertise_host="127.0.0.1", ready_timeout_s=60, unresponsive_after_s=unresponsive_after_s)


def endpoints(path: Path) -> dict:
    return json.loads(path.read_text())["endpoints"] if path.is_file() else {}


def completes(record: dict) -> bool:
    key = read_key_file(record["api_key_file"])
    try:
        r = requests.post(f"{record['base_url']}/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": record["served_model_name"], "prompt": "Hello", "max_tokens": 1}, timeout=10)
    except requests.RequestException:
        return False
    return r.status_code == 200


def wait_for(condition: Callable[[], object], timeout_s: float = 60.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not true after {timeout_s}s: {condition}")


@pytest.fixture
def while_serving() -> Iterator[Callable[[Supervisor, Callable[[], None]], None]]:
    """Run a supervisor in this (the main) thread while `scenario` runs beside it; the supervisor is stopped when
    the scenario ends, and the scenario's failure (if any) is raised here."""
    errors: list[BaseException] = []

    def run(supervisor: Supervisor, scenario: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                scenario()
            except BaseException as exc:  # handed to the test thread below
                errors.append(exc)
            finally:
                supervisor.stopping.set()
        side = threading.Thread(target=guarded, daemon=True)
        side.start()
        try:
            supervisor.run()
        finally:
            supervisor.stopping.set()
            side.join(timeout=120)
        if errors:
            raise errors[0]
    yield run


@pytest.mark.engine
@pytest.mark.parametrize("broken", ["engine not installed", "weights package not installed"])
def test_a_failed_start_leaves_no_key_file_no_engine_and_no_entry(tmp_path, tiny_gguf, broken):
    good = launch("good", str(tiny_gguf))
    bad = (launch("bad", str(tiny_gguf), engine=(str(tmp_path / "no-such-engine"),)) if broken.startswith("engine")
           else launch("bad", "pkg:grace_no_such_package/model.gguf"))
    supervisor = Supervisor(spec(tmp_path, good, bad))
    with pytest.raises(EngineError):
        supervisor.run()
    started = [r.engine.process for r in supervisor.running if r.engine.process is not None]
    assert [p.poll() is not None for p in started] == [True]  # the good engine was started, and stopped
    assert list((tmp_path / "registry" / "keys").glob("*.key")) == []
    assert endpoints(tmp_path / "registry" / "registry.json") == {}


@pytest.mark.engine
def test_a_json_valued_engine_argument_reaches_the_engine_untouched(tmp_path, tiny_gguf, while_serving):
    supervisor = Supervisor(spec(tmp_path, launch("tiny", str(tiny_gguf), "--chat-template-kwargs",
                                                  '{"enable_thinking": false}')))
    registry = tmp_path / "registry" / "registry.json"

    def scenario() -> None:
        [record] = wait_for(lambda: [r for r in endpoints(registry).values() if r["state"] == "ready"])
        assert completes(record)
        assert supervisor.running[0].engine.argv[-2:] == ["--chat-template-kwargs", '{"enable_thinking": false}']
    while_serving(supervisor, scenario)


def test_only_the_host_and_port_placeholders_are_filled_in():
    template = launch("m", "w.gguf", "--hf-overrides", '{"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}',
                      "--override-generation-config", '{"temperature": 0.5}', "--url=http://{host}:{port}/x")
    argv = template.argv(host="10.0.0.7", port=8123)
    assert argv[argv.index("--host") + 1] == "10.0.0.7" and argv[argv.index("--port") + 1] == "8123"
    assert argv[-5:] == ["--hf-overrides", '{"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}',
                         "--override-generation-config", '{"temperature": 0.5}', "--url=http://10.0.0.7:8123/x"]


@pytest.mark.engine
def test_a_packed_job_writes_the_registry_once_per_heartbeat_not_once_per_engine(tmp_path, tiny_gguf, while_serving):
    supervisor = Supervisor(spec(tmp_path, launch("one", str(tiny_gguf)), launch("two", str(tiny_gguf)),
                                 heartbeat_s=0.25))
    registry = Registry(tmp_path / "registry" / "registry.json")
    window_s = 4.0
    measured: list[int] = []

    def scenario() -> None:
        wait_for(lambda: [r.state for r in registry.list()] == [EndpointState.READY] * 2)
        before = registry.snapshot().revision
        time.sleep(window_s)
        measured.append(registry.snapshot().revision - before)
    while_serving(supervisor, scenario)
    beats = window_s / 0.25
    print(f"2 engines, {window_s:g} s at one heartbeat per 0.25 s: {measured[0]} registry writes")
    assert measured[0] <= beats + 1  # one write per heartbeat for the whole job (one per engine: about 2 x beats)


@pytest.mark.engine
def test_a_server_started_while_the_registry_is_unreadable_serves_and_registers_when_it_is_back(
        tmp_path, tiny_gguf, while_serving):
    registry = tmp_path / "registry" / "registry.json"
    registry.mkdir(parents=True, mode=0o700)  # a directory where the file should be: every read fails, even root's
    supervisor = Supervisor(spec(tmp_path, launch("tiny", str(tiny_gguf)), heartbeat_s=0.25))

    def scenario() -> None:
        wait_for(lambda: supervisor.running and supervisor.running[0].engine.pid)
        record = supervisor.running[0].record.model_dump(mode="json")
        wait_for(lambda: completes(record))  # serving although nobody can list it yet
        time.sleep(2)
        assert completes(record)
        registry.rmdir()  # the file system is back (here: empty)
        [listed] = wait_for(lambda: list(endpoints(registry).values()), timeout_s=10)
        assert (listed["id"], listed["state"]) == (record["id"], "ready")
    while_serving(supervisor, scenario)
    assert endpoints(registry) == {}  # and it deregistered when stopped


def test_failed_registry_writes_back_off_to_four_heartbeats():
    assert [beat_interval(5.0, n) for n in range(6)] == [5.0, 5.0, 10.0, 20.0, 20.0, 20.0]


@pytest.mark.engine
def test_a_hung_engine_is_taken_out_of_routing_and_put_back_when_it_answers_again(tmp_path, tiny_gguf, while_serving):
    """SIGSTOP: the process lives, so no exit code shows it, and the job's heartbeats alone would keep it READY."""
    supervisor = Supervisor(spec(tmp_path, launch("tiny", str(tiny_gguf)), heartbeat_s=0.25, unresponsive_after_s=2))
    registry = tmp_path / "registry" / "registry.json"

    def state() -> str:
        return next(iter(endpoints(registry).values()))["state"]

    def scenario() -> None:
        wait_for(lambda: endpoints(registry) and state() == "ready")
        pid = supervisor.running[0].engine.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: state() == "unresponsive", timeout_s=30)
            [record] = endpoints(registry).values()
            assert "has not answered /health" in record["last_error"] and str(pid) in record["last_error"]
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: state() == "ready", timeout_s=30)
        assert completes(next(iter(endpoints(registry).values())))
    while_serving(supervisor, scenario)


@pytest.mark.engine
def test_an_engine_killed_while_serving_is_restarted_in_place_under_the_same_endpoint(tmp_path, tiny_gguf,
                                                                                    while_serving):
    supervisor = Supervisor(spec(tmp_path, launch("tiny", str(tiny_gguf)), heartbeat_s=0.25))
    registry = tmp_path / "registry" / "registry.json"

    def scenario() -> None:
        [before] = wait_for(lambda: [r for r in endpoints(registry).values() if r["state"] == "ready"])
        first = supervisor.running[0].engine.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: supervisor.running[0].engine.pid != first, timeout_s=30)
        [after] = wait_for(lambda: [r for r in endpoints(registry).values() if r["state"] == "ready"], timeout_s=60)
        assert (after["id"], after["base_url"]) == (before["id"], before["base_url"])  # routers need no new entry
        assert "engine exited with code -9" in after["last_error"]
        assert completes(after)
    while_serving(supervisor, scenario)


@pytest.mark.engine
def test_an_engine_that_exits_while_starting_fails_the_job_at_once_without_restarts(tmp_path):
    dies = launch("dies", "unused.gguf", engine=(sys.executable, "-c", "print('bad flag --x'); raise SystemExit(3)"))
    supervisor = Supervisor(spec(tmp_path, dies, heartbeat_s=0.25))
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="exited with code 3") as failure:
        supervisor.run()
    assert "bad flag --x" in str(failure.value) and "not restarted" not in str(failure.value)
    assert time.monotonic() - t0 < 30  # no restart pauses
    [left] = endpoints(tmp_path / "registry" / "registry.json").values()
    assert left["state"] == "gone" and "bad flag --x" in left["last_error"]  # kept for `status` to say why


@pytest.mark.engine
def test_a_drain_stops_new_requests_first_and_lets_the_one_in_flight_finish_before_the_engine_stops(
        tmp_path, tiny_gguf, while_serving):
    supervisor = Supervisor(spec(tmp_path, launch("one", str(tiny_gguf), "-c", "4096")))
    registry = Registry(tmp_path / "registry" / "registry.json")
    seen: dict[str, object] = {}
    first_token = threading.Event()

    def stream(record: dict) -> None:
        key = read_key_file(record["api_key_file"])
        with requests.post(f"{record['base_url']}/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "one", "prompt": "Once upon a time", "max_tokens": 3000, "stream": True,
                                 "ignore_eos": True}, stream=True, timeout=120) as r:
            lines = []
            for line in r.iter_lines():
                first_token.set()
                lines.append(line)
        seen["status"], seen["last"] = r.status_code, [line for line in lines if line][-1]
        seen["state_at_end"] = [e.state for e in registry.list()]

    def scenario() -> None:
        wait_for(lambda: [r.state for r in registry.list()] == [EndpointState.READY])
        [record] = endpoints(tmp_path / "registry" / "registry.json").values()
        client = threading.Thread(target=stream, args=(record,))
        client.start()
        assert first_token.wait(30)  # the request is on the engine (2,000 tokens take this engine about a second)
        os.kill(os.getpid(), DRAIN_SIGNAL)  # the fleet controller's drain
        wait_for(lambda: [r.state for r in registry.list()] == [EndpointState.DRAINING], timeout_s=5)
        client.join(timeout=120)
    while_serving(supervisor, scenario)
    assert seen["status"] == 200 and seen["last"] == b"data: [DONE]", seen
    assert seen["state_at_end"] == [EndpointState.DRAINING], ("deregistered (engine stopped) before it finished", seen)
    assert registry.list() == []


def test_in_flight_requests_are_read_from_llamacpp_slots_and_vllm_gauges():
    assert busy_slots('[{"id":0,"is_processing":true},{"id":1,"is_processing":false}]') == 1
    assert queued("vllm:num_requests_running{model_name=\"m\"} 2.0\nvllm:num_requests_waiting{model_name=\"m\"} 3.0\n"
                  ) == 5
    assert queued("# no gauges\n") is None


def test_an_engine_ignores_the_usr_signals_slurm_sends_the_whole_job(tmp_path):
    """submitit's time-limit/preemption warning is USR2 to every process of the job: by default it would kill the
    engine with requests in flight before the supervisor could drain it."""
    engine = EngineProcess([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "e.log", dict(os.environ))
    engine.start()
    try:
        assert engine.pid is not None
        time.sleep(0.5)  # past exec
        os.kill(engine.pid, signal.SIGUSR2)
        os.kill(engine.pid, signal.SIGUSR1)
        time.sleep(0.5)
        assert engine.exit_code() is None
    finally:
        engine.stop(grace_s=1)
