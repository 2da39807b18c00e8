"""The in-job server supervisor: the one entry point that runs inside every server job.

    pick ports -> make keys -> start engines (logs to files) -> register `starting`
    -> prove each can serve (one real token) -> `ready` -> heartbeat until told to stop
    -> on SIGTERM/USR2: `draining`, stop engines, deregister (USR2: requeue via submitit's checkpoint)
    -> on engine exit: record exit code and log tail, deregister, fail the job with that message.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from grace_hpc.config.cluster import LockMode
from grace_hpc.errors import EngineError, RegistryError
from grace_hpc.registry.keys import new_api_key, write_key_file
from grace_hpc.registry.records import EndpointRecord, EndpointState, PlanSummary
from grace_hpc.registry.store import Registry
from grace_hpc.serve.engine import EngineProcess, log_tail
from grace_hpc.serve.readiness import probe
from grace_hpc.serve.resolve import resolve_argv
from grace_hpc.serve.spec import ModelLaunch, ServeSpec
from grace_hpc.vllm_version import VllmVersion, version_mismatch

#: After a SIGTERM, how long to wait for the USR2 that follows it on preemption (submitit sends both).
REQUEUE_SIGNAL_WAIT_S = 2.0


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def current_job_id() -> tuple[str, int | None]:
    """(job id, array task id): SLURM's, or `local:<pid>` under submitit's local executor or by hand."""
    if os.environ.get("SLURM_JOB_ID"):
        array = os.environ.get("SLURM_ARRAY_TASK_ID")
        job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ["SLURM_JOB_ID"]
        return (f"{job}_{array}" if array else job), (int(array) if array else None)
    # submitit's local executor: the controller's pid is the job id `launch` recorded
    return f"local:{os.environ.get('SUBMITIT_LOCAL_JOB_ID') or os.getpid()}", None


@dataclass
class Running:
    launch: ModelLaunch
    engine: EngineProcess
    record: EndpointRecord
    api_key: str = field(repr=False)


class Supervisor:
    def __init__(self, spec: ServeSpec, registry: Registry | None = None) -> None:
        self.spec = spec
        self.registry = registry or Registry(Path(spec.registry_path), lock_mode=LockMode(spec.lock_mode))
        self.running: list[Running] = []
        self.stopping = threading.Event()
        self._last_beat = time.monotonic()
        self._failed: set[str] = set()  # endpoint ids whose engine died: kept as `gone` so `status` shows why

    # -- lifecycle --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        t0 = time.time()
        try:
            for launch in self.spec.models:
                self.running.append(self._start(launch))
            self._wait_ready()
            while not self.stopping.wait(self.spec.heartbeat_s):
                self._check_engines()
                self._heartbeat()
            self.shutdown("stopped by SIGTERM")
            # preemption sends USR2 right after SIGTERM: give submitit's handler the chance to requeue us
            time.sleep(REQUEUE_SIGNAL_WAIT_S)
        except BaseException as exc:
            self.shutdown(f"failed: {exc}" if isinstance(exc, Exception) else "interrupted")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        return {"server": self.spec.server, "served_s": round(time.time() - t0, 1)}

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.stopping.set()

    def shutdown(self, reason: str) -> None:
        """Drain, stop every engine, deregister. Every step is idempotent and nothing is skipped on a second call:
        on preemption the USR2 handler calls this again while the SIGTERM-triggered call may be half way."""
        for r in self.running:
            if r.record.id not in self._failed:
                self._quietly(self.registry.set_state, r.record.id, EndpointState.DRAINING, last_error=reason)
        for r in self.running:
            r.engine.stop()
        for r in self.running:
            if r.record.id not in self._failed:
                self._quietly(self.registry.deregister, r.record.id)
            Path(r.record.api_key_file or "").unlink(missing_ok=True)

    @staticmethod
    def _quietly(fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except RegistryError as exc:  # cleanup goes on; the reaper removes what we could not
            print(f"grace-hpc supervisor: {exc}", flush=True)

    # -- steps ------------------------------------------------------------------------------------------
    def _start(self, launch: ModelLaunch) -> Running:
        spec = self.spec
        job_id, array_task = current_job_id()
        port = free_port(spec.bind_host)
        host = spec.advertise_host or socket.gethostname()
        endpoint_id = f"{launch.served_model_name}-{uuid.uuid4().hex[:8]}"
        key = new_api_key()
        key_file = write_key_file(Path(spec.keys_dir), endpoint_id, key)
        argv = resolve_argv([a.format(host=spec.bind_host, port=port) for a in launch.argv_template])
        env = dict(os.environ, **dict(spec.env), **{launch.key_env: key})
        safe_job = job_id.replace(":", "-")
        engine = EngineProcess(argv, Path(spec.log_dir) / f"{launch.model}-{safe_job}.log", env)
        engine.start()
        now = time.time()
        record = EndpointRecord(
            id=endpoint_id, model=launch.model, served_model_name=launch.served_model_name,
            categories=launch.categories, deployment=spec.deployment, server=spec.server,
            partition=spec.partition, gpu_type=spec.gpu_type, engine=launch.engine, host=host, port=port,
            base_url=f"http://{host}:{port}/v1", job_id=job_id, array_task_id=array_task,
            node=socket.gethostname(), pid=os.getpid(), started_at=now, heartbeat_at=now,
            state=EndpointState.STARTING, api_key_file=str(key_file),
            plan=PlanSummary(
                dtype=launch.dtype, quantization=launch.quantization,
                tensor_parallel_size=launch.tensor_parallel_size, max_model_len=launch.max_model_len,
                max_num_seqs=launch.max_num_seqs,
            ),
        )
        self.registry.register(record)
        print(f"grace-hpc supervisor: started {launch.model} ({launch.engine}) pid {engine.pid} "
              f"on port {port}, log {engine.log_path}", flush=True)
        return Running(launch, engine, record, key)

    def _wait_ready(self) -> None:
        pending = list(self.running)
        deadline = time.monotonic() + self.spec.ready_timeout_s
        while pending:
            if self.stopping.is_set():
                return
            self._check_engines()
            for r in list(pending):
                reason = probe(r.record.base_url.replace(r.record.host, "127.0.0.1", 1), r.launch.served_model_name,
                               r.api_key, r.launch.task, timeout_s=60)
                if reason is None:
                    self.registry.set_state(r.record.id, EndpointState.READY)
                    print(f"grace-hpc supervisor: {r.launch.model} ready at {r.record.base_url} "
                          f"after {time.time() - r.record.started_at:.1f}s", flush=True)
                    if r.launch.vllm_version and (warning := version_mismatch(
                            VllmVersion(r.launch.vllm_version), log_tail(r.engine.log_path, 1 << 20))):
                        print(f"grace-hpc supervisor: WARNING {r.launch.model}: {warning}", flush=True)
                    pending.remove(r)
            if time.monotonic() > deadline:
                names = ", ".join(r.launch.model for r in pending)
                raise EngineError(f"{names} not serving after {self.spec.ready_timeout_s:.0f}s; see the engine logs "
                                  f"in {self.spec.log_dir}")
            if time.monotonic() - self._last_beat >= self.spec.heartbeat_s:
                self._heartbeat()
            time.sleep(0.25)

    def _check_engines(self) -> None:
        for r in self.running:
            if r.engine.exit_code() is not None:
                message = f"{r.launch.model}: {r.engine.failure()}"
                self._failed.add(r.record.id)
                self._quietly(self.registry.set_state, r.record.id, EndpointState.GONE, last_error=message[:2000])
                raise EngineError(message)

    def _heartbeat(self) -> None:
        self._last_beat = time.monotonic()
        for r in self.running:
            try:
                self.registry.heartbeat(r.record.id)
            except RegistryError:
                # reaped while we were unreachable (e.g. a long NFS outage): come back under the same id
                current = self.registry.get(r.record.id)
                if current is None:
                    self.registry.register(r.record.model_copy(update={"heartbeat_at": time.time()}))


class ServerJob(submitit.helpers.Checkpointable):
    """The callable submitit runs in the job. On USR2 (preemption, time limit) submitit calls `checkpoint`,
    which drains and cleans up, then requeues a fresh copy that starts over and re-registers."""

    def __init__(self, spec: ServeSpec) -> None:
        self.spec = spec
        self._supervisor: Supervisor | None = None

    def __call__(self) -> dict[str, Any]:
        self._supervisor = Supervisor(self.spec)
        return self._supervisor.run()

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        if self._supervisor is not None:
            self._supervisor.shutdown("preempted: requeued")
        return submitit.helpers.DelayedSubmission(ServerJob(self.spec))

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_supervisor": None}
