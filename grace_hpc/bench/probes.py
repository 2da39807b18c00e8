"""What the server itself says during a load level: its engine's Prometheus gauges (queue depth, KV-cache use)
and, on a GPU node, `nvidia-smi`'s utilisation. Parsers are pure; `Sampler` polls both once a second.

Engines that expose nothing (llama.cpp without `--metrics`, the router) and nodes without `nvidia-smi` give None:
absent, never zero."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence

import aiohttp

from grace_hpc.bench.stats import EngineSample, GpuSample
from grace_hpc.bench.targets import Target
from grace_hpc.serve.gauges import EngineReading, parse_engine_metrics

NVIDIA_SMI_QUERY = "utilization.gpu,memory.used"


#: how long one /metrics read may take before it is skipped (an engine under load answers it between steps)
METRICS_TIMEOUT_S = 2.0


def engine_sample(readings: Sequence[EngineReading]) -> EngineSample | None:
    if not readings:
        return None

    def peak(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    return EngineSample(peak([r.running for r in readings]), peak([r.waiting for r in readings]),
                        peak([r.kv_usage for r in readings]))


def nvidia_smi_argv() -> list[str]:
    return ["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"]


def parse_nvidia_smi(text: str) -> list[tuple[float, float]]:
    """`45, 30512` per GPU -> [(utilisation %, memory used MiB)]; lines it cannot read ([N/A]) are skipped."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2:
            try:
                rows.append((float(parts[0]), float(parts[1])))
            except ValueError:
                continue
    return rows


def gpu_sample(readings: Sequence[list[tuple[float, float]]]) -> GpuSample | None:
    rows = [row for reading in readings for row in reading]
    if not rows:
        return None
    return GpuSample(sum(u for u, _ in rows) / len(rows), max(m for _, m in rows))


class Sampler:
    """Polls the target's `/metrics` and `nvidia-smi` every `interval_s` between `start()` and `stop()`."""

    def __init__(self, http: aiohttp.ClientSession, target: Target, interval_s: float = 1.0) -> None:
        self.http, self.target, self.interval_s = http, target, interval_s
        self.engine: list[EngineReading] = []
        self.gpu: list[list[tuple[float, float]]] = []
        self._task: asyncio.Task[None] | None = None
        self._smi = shutil.which("nvidia-smi")
        self._metrics = target.metrics_url

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> tuple[EngineSample | None, GpuSample | None]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return engine_sample(self.engine), gpu_sample(self.gpu)

    async def _poll(self) -> None:
        while self._metrics or self._smi:
            await asyncio.gather(self._read_engine(), self._read_gpu())
            await asyncio.sleep(self.interval_s)

    async def _read_engine(self) -> None:
        if not self._metrics:
            return
        headers = {"Authorization": f"Bearer {self.target.api_key}"} if self.target.api_key else {}
        try:
            # a busy engine answers /metrics late: a slow answer is still a reading, a missed one is only skipped
            async with self.http.get(self._metrics, headers=headers, timeout=aiohttp.ClientTimeout(
                    total=max(METRICS_TIMEOUT_S, self.interval_s * 2))) as resp:
                text = await resp.text() if resp.status == 200 else ""
        except (TimeoutError, aiohttp.ClientError):
            return  # no answer this time: says nothing about whether the engine exposes its gauges
        reading = parse_engine_metrics(text)
        if reading is None and not self.engine:
            self._metrics = None  # not exposed (404, or no engine gauges): stop asking
        elif reading is not None:
            self.engine.append(reading)

    async def _read_gpu(self) -> None:
        if not self._smi:
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                *nvidia_smi_argv(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            out, _ = await proc.communicate()
        except OSError:
            out, proc = b"", None
        rows = parse_nvidia_smi(out.decode(errors="replace")) if proc is not None and proc.returncode == 0 else []
        if rows:
            self.gpu.append(rows)
        elif not self.gpu:
            self._smi = None  # no driver or no visible GPU: absent, not zero
