"""The in-job server supervisor: the one entry point that runs inside every server job.

    pick ports -> make keys -> start engines (logs to files) -> register `starting`
    -> prove each can serve (one real token, or one embedding) -> `ready` -> heartbeat until told to stop
    -> at each heartbeat ask each engine's /health: silent for `unresponsive_after_s` -> `unresponsive` (not
       routable) until it answers again (serve/liveness.py); still silent after `restart_unresponsive_after_s`:
       stopped, and restarted as an engine that exited
    -> on WINCH (the fleet controller: a successor is ready, or a scale-down) or SIGTERM (scancel, preemption, the
       time limit): drain = publish `draining` (the router, which re-reads the registry every second, stops
       choosing it), wait for the engine's in-flight requests to finish, stop the engines, deregister
    -> on USR2 (SLURM's time-limit warning, submitit's preemption signal): drain and requeue via submitit's
       checkpoint; a job of the fleet controller (`spec.handover`) ignores it: its successor takes over instead
    -> on the exit of an engine that had been ready: `starting` again and restart it in place (serve/restarts.py:
       at most 3 exits in 10 min); on an exit during start-up or past that budget, record exit code and log tail,
       deregister, fail the job with that message.

The registry is never a reason to stop serving: a write that fails (NFS ESTALE, a lock held too long, a file
replaced by hand) is retried at the next heartbeats with backoff, for as long as it takes, and the job's entries
are put back once the registry can be written again.
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
from grace_hpc.logging_setup import configure_logging
from grace_hpc.registry.keys import key_path, new_api_key, write_key_file
from grace_hpc.registry.records import EndpointRecord, EndpointState, PlanSummary
from grace_hpc.registry.store import Registry
from grace_hpc.serve.engine import EngineProcess, log_tail
from grace_hpc.serve.inflight import in_flight
from grace_hpc.serve.liveness import Liveness, answers_health
from grace_hpc.serve.readiness import probe
from grace_hpc.serve.resolve import resolve_argv
from grace_hpc.serve.restarts import RestartBudget
from grace_hpc.serve.spec import ModelLaunch, ServeSpec
from grace_hpc.vllm_version import VllmVersion, version_mismatch

#: After a SIGTERM, how long to wait for the USR2 that follows it on preemption (submitit sends both).
REQUEUE_SIGNAL_WAIT_S = 2.0
#: While registry writes fail, retry after 1, 2, 4, 4, ... heartbeats: a sick mount is not hammered, and the job's
#: entries are back within four heartbeats of the registry's return.
MAX_BACKOFF_BEATS = 4
#: After publishing `draining`, how long before in-flight requests are counted: the router re-reads the registry
#: every second (`grace-hpc route`'s poll), so a request it chose just before is on the engine by then.
ROUTER_SETTLE_S = 2.0
#: A drain the fleet controller ordered (DRAIN_SIGNAL) waits this long at most for in-flight requests.
DRAIN_TIMEOUT_S = 600.0
#: A drain on SIGTERM waits at most this long: SLURM kills the job KillWait seconds after SIGTERM (30 s by default).
TERM_DRAIN_S = 20.0
#: A drain before a requeue (submitit's USR2: the time-limit warning or a preemption) waits at most this long:
#: submitit requeues the job only once `checkpoint` returns, and the scheduler's grace time is short.
REQUEUE_DRAIN_S = 15.0
#: In-flight requests are asked of the engine this often, and the drain ends after QUIET_S of zeros in a row: a
#: reading is a moment (a short request can fall between two), and a router slow to re-read the registry (a busy
#: login node) may still be sending; requests keep coming back-to-back until it has seen `draining`.
DRAIN_POLL_S = 0.1
QUIET_S = 1.0
#: An engine that cannot tell (no /slots, no gauges) is waited for this long, then stopped.
UNKNOWN_S = 30.0

#: The fleet controller's "drain and exit": `scancel --signal` reaches every process of the job step, the engine
#: too, and an engine dies of USR1 (default action: terminate) but ignores WINCH (default: ignore; Apache's
#: graceful-stop signal for the same reason), so only the supervisor hears it.
DRAIN_SIGNAL = signal.SIGWINCH
#: why the supervisor stopped (the endpoint's last_error while it drains; the fleet controller reads it)
ORDERED = "drained by the fleet controller (WINCH: a successor is ready, or a scale-down)"
TERMINATED = "stopped by SIGTERM (scancel, preemption or the time limit)"


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


def beat_interval(heartbeat_s: float, failures: int) -> float:
    """Seconds until the next registry write after `failures` failed writes in a row (0: all is well)."""
    return heartbeat_s * min(2 ** max(failures - 1, 0), MAX_BACKOFF_BEATS)


@dataclass
class Running:
    """One engine of this job. `record` is what the job says about it: published whole at every heartbeat."""

    launch: ModelLaunch
    engine: EngineProcess
    record: EndpointRecord
    api_key: str = field(repr=False)
    liveness: Liveness | None = None  # set each time the engine becomes READY
    restarts: RestartBudget = field(default_factory=RestartBudget)
    served: bool = False  # was READY at least once: an exit after that is restarted
    started: float = field(default_factory=time.monotonic)  # this engine process's start

    @property
    def local_root(self) -> str:
        """The engine's root URL from this node (`/health` lives there, not under /v1)."""
        return f"http://127.0.0.1:{self.record.port}"

    @property
    def local_base_url(self) -> str:
        """The engine's OpenAI base URL from this node (its advertised host may not route back to it)."""
        return f"{self.local_root}/v1"

    def set_state(self, state: EndpointState, last_error: str | None = None) -> None:
        update: dict[str, object] = {"state": state}
        if last_error is not None:
            update["last_error"] = last_error
        self.record = self.record.model_copy(update=update)


class Supervisor:
    def __init__(self, spec: ServeSpec, registry: Registry | None = None) -> None:
        self.spec = spec
        self.registry = registry or Registry(Path(spec.registry_path), lock_mode=LockMode(spec.lock_mode))
        self.running: list[Running] = []
        self.stopping = threading.Event()
        self._next_beat = 0.0  # time.monotonic() of the next registry write
        self._beat_failures = 0  # registry writes failed in a row
        self._published: set[str] = set()  # endpoint ids written at least once (missing later: put back)
        self._shut_down = False
        self._stop_reason = TERMINATED
        self._drain_deadline: float | None = None  # set by the signal that starts the drain

    # -- lifecycle --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        handlers = {signal.SIGTERM: self._on_sigterm, DRAIN_SIGNAL: self._on_drain}
        if self.spec.handover:
            handlers[signal.SIGUSR2] = self._on_time_limit_warning
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        t0 = time.time()
        try:
            for launch in self.spec.models:
                self._start(launch)
            self._heartbeat(now=True)  # one write registers every engine `starting`
            self._wait_ready(list(self.running))
            while not self.stopping.wait(self.spec.heartbeat_s):
                restarted = self._check_engines()
                self._check_liveness()
                self._heartbeat()
                self._wait_ready(restarted)
            self.shutdown(self._stop_reason, drain=True)
            if not (self.spec.handover or self._stop_reason == ORDERED):
                # preemption sends USR2 right after SIGTERM: give submitit's handler the chance to requeue us
                time.sleep(REQUEUE_SIGNAL_WAIT_S)
        except BaseException as exc:
            self.shutdown(f"failed: {exc}" if isinstance(exc, Exception) else "interrupted")
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return {"server": self.spec.server, "served_s": round(time.time() - t0, 1), "stopped": self._stop_reason}

    def _on_sigterm(self, signum: int, frame: object) -> None:
        # SLURM sends SIGKILL KillWait seconds after SIGTERM: a drain under way (WINCH) is cut short to fit
        self.limit_drain(TERM_DRAIN_S)
        if not self.stopping.is_set():
            self._stop_reason = TERMINATED
        self.stopping.set()

    def _on_drain(self, signum: int, frame: object) -> None:
        if not self.stopping.is_set():
            self._stop_reason = ORDERED
            self._drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        self.stopping.set()

    def limit_drain(self, seconds: float) -> float:
        """A drain (under way or to come) ends within `seconds` from now; returns its deadline."""
        cap = time.monotonic() + seconds
        self._drain_deadline = cap if self._drain_deadline is None else min(self._drain_deadline, cap)
        return self._drain_deadline

    def _on_time_limit_warning(self, signum: int, frame: object) -> None:
        print("grace-hpc supervisor: USR2 (time limit near): serving on until the fleet controller's successor is "
              "ready (WINCH) or the limit (SIGTERM); not requeued", flush=True)

    def shutdown(self, reason: str, *, drain: bool = False) -> None:
        """Stop taking requests (`draining`), with `drain` wait for those in flight, stop every engine, deregister,
        delete the keys. Every step is idempotent and nothing is skipped on a second call: on preemption the USR2
        handler calls this again while the SIGTERM-triggered call may be half way. An engine whose start failed half
        way is in `running` too, so nothing it made is left behind."""
        self._shut_down = True
        live = [r for r in self.running if r.record.state is not EndpointState.GONE]  # GONE stays, for `status`
        serving = [r for r in live if r.record.state is EndpointState.READY]
        for r in live:
            r.set_state(EndpointState.DRAINING, last_error=reason)
        if live:
            self._quietly(self.registry.publish, [r.record for r in live])
        if drain and serving:
            print(f"grace-hpc supervisor: draining ({reason})", flush=True)
            self._drain(serving)
        for r in self.running:
            r.engine.stop()
        for r in live:
            self._quietly(self.registry.deregister, r.record.id)
        for r in self.running:
            Path(r.record.api_key_file or "").unlink(missing_ok=True)

    def _drain(self, serving: list[Running]) -> None:
        """Wait (until the drain deadline) for the engines to finish the requests they were sent before the router
        saw `draining`."""
        started = time.monotonic()
        serving = [r for r in serving if r.engine.exit_code() is None]
        if not serving:  # SLURM's SIGTERM reaches the engines too: nothing is left to wait for
            return
        deadline = self._drain_deadline if self._drain_deadline is not None else self.limit_drain(TERM_DRAIN_S)
        time.sleep(min(ROUTER_SETTLE_S, max(0.0, deadline - started)))
        quiet_since: float | None = None
        while (now := time.monotonic()) < deadline:
            counts = [0 if r.engine.exit_code() is not None else
                      in_flight(r.local_base_url, r.launch.engine, r.api_key)
                      for r in serving]
            if None in counts and now - started > UNKNOWN_S:
                print(f"grace-hpc supervisor: the engine does not say what it serves; stopped after {UNKNOWN_S:g}s",
                      flush=True)
                return
            quiet_since = (quiet_since or now) if all(c == 0 for c in counts) else None
            if quiet_since is not None and now - quiet_since >= QUIET_S:
                print(f"grace-hpc supervisor: drained in {now - started:.1f}s", flush=True)
                return
            time.sleep(DRAIN_POLL_S)
        print(f"grace-hpc supervisor: drain time is up with requests still in flight on {self.spec.server}", flush=True)

    @staticmethod
    def _quietly(fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except RegistryError as exc:  # cleanup goes on; the reaper removes what we could not
            print(f"grace-hpc supervisor: {exc}", flush=True)

    # -- steps ------------------------------------------------------------------------------------------
    def _start(self, launch: ModelLaunch) -> None:
        spec = self.spec
        job_id, array_task = current_job_id()
        port = free_port(spec.bind_host)
        host = spec.advertise_host or socket.gethostname()
        argv = resolve_argv(launch.argv(host=spec.bind_host, port=port))
        endpoint_id = f"{launch.served_model_name}-{uuid.uuid4().hex[:8]}"
        key = new_api_key()
        env = dict(os.environ, **dict(spec.env), **{launch.key_env: key})
        safe_job = job_id.replace(":", "-")
        engine = EngineProcess(argv, Path(spec.log_dir) / f"{launch.model}-{safe_job}.log", env)
        now = time.time()
        record = EndpointRecord(
            id=endpoint_id, model=launch.model, served_model_name=launch.served_model_name,
            categories=launch.categories, deployment=spec.deployment, server=spec.server,
            partition=spec.partition, gpu_type=spec.gpu_type, engine=launch.engine, host=host, port=port,
            base_url=f"http://{host}:{port}/v1", job_id=job_id, array_task_id=array_task,
            node=socket.gethostname(), pid=os.getpid(), started_at=now, heartbeat_at=now,
            state=EndpointState.STARTING, api_key_file=str(key_path(Path(spec.keys_dir), endpoint_id)),
            plan=PlanSummary(
                dtype=launch.dtype, quantization=launch.quantization,
                tensor_parallel_size=launch.tensor_parallel_size, max_model_len=launch.max_model_len,
                max_num_seqs=launch.max_num_seqs,
            ),
        )
        # in `running` before the key file and the process exist: a failure from here on is cleaned up by shutdown()
        self.running.append(Running(launch, engine, record, key))
        write_key_file(Path(spec.keys_dir), endpoint_id, key)
        engine.start()
        print(f"grace-hpc supervisor: started {launch.model} ({launch.engine}) pid {engine.pid} "
              f"on port {port}, log {engine.log_path}", flush=True)

    def _wait_ready(self, pending: list[Running]) -> None:
        deadline = time.monotonic() + self.spec.ready_timeout_s
        while pending:
            if self.stopping.is_set():
                return
            pending += self._check_engines()
            for r in list(pending):
                reason = probe(r.local_base_url, r.launch.served_model_name,
                               r.api_key, r.launch.task, timeout_s=60)
                if reason is None:
                    r.set_state(EndpointState.READY)
                    r.served = True
                    r.liveness = Liveness(self.spec.unresponsive_after_s, last_answer=time.monotonic())
                    self._heartbeat(now=True)
                    print(f"grace-hpc supervisor: {r.launch.model} ready at {r.record.base_url} "
                          f"after {time.monotonic() - r.started:.1f}s", flush=True)
                    if r.launch.vllm_version and (warning := version_mismatch(
                            VllmVersion(r.launch.vllm_version), log_tail(r.engine.log_path, 1 << 20))):
                        print(f"grace-hpc supervisor: WARNING {r.launch.model}: {warning}", flush=True)
                    pending.remove(r)
            if time.monotonic() > deadline:
                names = ", ".join(r.launch.model for r in pending)
                raise EngineError(f"{names} not serving after {self.spec.ready_timeout_s:.0f}s; see the engine logs "
                                  f"in {self.spec.log_dir}")
            self._heartbeat()
            time.sleep(0.25)

    def _check_engines(self) -> list[Running]:
        """An engine that exited after it had served is restarted in place (same port, key and endpoint id) and
        returned, to be proved ready again. One that exited while starting (bad arguments, too little memory: a
        restart would only fail again, slower) or too often fails the job with the engine's own last words."""
        restarted = []
        for r in self.running:
            if r.engine.exit_code() is None:
                continue
            message = f"{r.launch.model}: {r.engine.failure()}"
            pause = r.restarts.pause_before_restart(time.monotonic()) if r.served else None
            if pause is None:
                r.set_state(EndpointState.GONE, last_error=message[:2000])
                self._quietly(self.registry.publish, [r.record])
                raise EngineError(message if not r.served else f"{message}\n(exited {len(r.restarts.exits)} times "
                                  f"in {r.restarts.window_s:.0f}s: not restarted again)")
            r.set_state(EndpointState.STARTING, last_error=message[:2000])
            r.liveness = None
            self._heartbeat(now=True)
            print(f"grace-hpc supervisor: WARNING {message}\nrestarting it in {pause:g}s "
                  f"(exit {len(r.restarts.exits)} of {r.restarts.max_restarts} allowed in "
                  f"{r.restarts.window_s:.0f}s)", flush=True)
            if self.stopping.wait(pause):
                break
            r.started = time.monotonic()
            r.engine.start()
            restarted.append(r)
        return restarted

    def _check_liveness(self) -> None:
        """Take an engine that stopped answering /health out of routing, and put it back when it answers."""
        for r in self.running:
            if r.liveness is None or r.record.state not in (EndpointState.READY, EndpointState.UNRESPONSIVE):
                continue
            change = r.liveness.observe(answers_health(r.local_root), time.monotonic())
            if r.liveness.silent and time.monotonic() - r.liveness.last_answer >= self.spec.restart_unresponsive_after_s:
                print(f"grace-hpc supervisor: WARNING {r.launch.model} (pid {r.engine.pid}) silent for "
                      f"{self.spec.restart_unresponsive_after_s:.0f}s: stopping it to restart it", flush=True)
                r.engine.stop()  # the next _check_engines sees the exit and restarts it
                continue
            if change is True:
                silent_s = time.monotonic() - r.liveness.last_answer
                message = (f"{r.launch.model} (pid {r.engine.pid}) has not answered /health for {silent_s:.0f}s: "
                           f"taken out of routing until it answers; its log: {r.engine.log_path}")
                r.set_state(EndpointState.UNRESPONSIVE, last_error=message)
                print(f"grace-hpc supervisor: WARNING {message}", flush=True)
                self._heartbeat(now=True)
            elif change is False:
                r.set_state(EndpointState.READY)
                print(f"grace-hpc supervisor: {r.launch.model} answers /health again: back in routing", flush=True)
                self._heartbeat(now=True)

    def _heartbeat(self, *, now: bool = False) -> None:
        """When due (or `now`, after a state change): one registry write for the whole job. A failed write is
        logged and retried with backoff; the engines keep serving whatever the registry does."""
        if self._shut_down or (not now and time.monotonic() < self._next_beat):
            return
        try:
            restored = self.registry.publish([r.record for r in self.running])
        except RegistryError as exc:
            self._beat_failures += 1
            print(f"grace-hpc supervisor: registry write failed ({self._beat_failures} in a row; the engines keep "
                  f"serving, next try in {beat_interval(self.spec.heartbeat_s, self._beat_failures):g}s): {exc}",
                  flush=True)
        else:
            lost = [i for i in restored if i in self._published]
            if self._beat_failures or lost:
                print(f"grace-hpc supervisor: registry written again after {self._beat_failures} failed write(s); "
                      f"put back {len(lost)} missing entr(ies)", flush=True)
            self._published.update(r.record.id for r in self.running)
            self._beat_failures = 0
        self._next_beat = time.monotonic() + beat_interval(self.spec.heartbeat_s, self._beat_failures)


class ServerJob(submitit.helpers.Checkpointable):
    """The callable submitit runs in the job. On USR2 (preemption, time limit) submitit calls `checkpoint`,
    which drains and cleans up, then requeues a fresh copy that starts over and re-registers."""

    def __init__(self, spec: ServeSpec) -> None:
        self.spec = spec
        self._supervisor: Supervisor | None = None

    def __call__(self) -> dict[str, Any]:
        configure_logging()  # a job launched through submitit never passes through `grace-hpc serve`'s CLI
        self._supervisor = Supervisor(self.spec)
        return self._supervisor.run()

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        if self._supervisor is not None:
            # the engines ignore USR2 (serve/engine.py): the requests they hold finish before the requeue
            self._supervisor.limit_drain(REQUEUE_DRAIN_S)
            self._supervisor.shutdown("time limit or preemption: requeued", drain=True)
        return submitit.helpers.DelayedSubmission(ServerJob(self.spec))

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_supervisor": None}
