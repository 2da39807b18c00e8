"""The GPUs grace-hpc plans for: usable memory as CUDA reports it, compute capability, native precisions.

`memory_gib` is what `torch.cuda.mem_get_info()` returns as *total* (the number vLLM multiplies by
`--gpu-memory-utilization`), not the marketing size: an "80 GB" H100 reports 79.18 GiB, an A100-40GB 39.39 GiB,
a T4 14.74 GiB (vLLM startup logs print it as `total_gpu_memory (39.39GiB)` / `Total GPU memory was 39.39 GiB`).
Compute capabilities are NVIDIA's table, https://developer.nvidia.com/cuda-gpus .

bf16 needs sm80+ (vLLM refuses it below: `_check_if_gpu_supports_dtype` raises "Bfloat16 is only supported on GPUs
with compute capability of at least 8.0"), so V100s (sm70) and T4s (sm75) run float16, without FlashAttention
(precision.attention_notes); fp8 tensor cores need sm89+ (Ada, Hopper, Blackwell).

The pseudo-GPU "CPU" stands for a partition without GPUs (gpus_per_node 0): llama.cpp runs there from host RAM.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from grace_hpc.errors import PlanError

__all__ = ["GPU", "GPUS", "CPU_NAME", "get_gpu", "cpu_device"]

CPU_NAME = "CPU"


@dataclass(frozen=True)
class GPU:
    """One GPU model. `memory_gib` is usable device memory as CUDA reports it (GiB = 2**30 bytes)."""

    name: str
    memory_gib: float
    compute_capability: tuple[int, int]
    bf16: bool
    fp8: bool
    # streaming multiprocessors (torch.cuda.get_device_properties().multi_processor_count): vLLM 0.19's Triton
    # top-k/top-p keeps one vocabulary-wide buffer per SM (memory.triton_topk_buffer_bytes)
    sms: int

    @property
    def sm(self) -> int:
        """Compute capability as vLLM compares it: (8, 9) -> 89."""
        return self.compute_capability[0] * 10 + self.compute_capability[1]

    @property
    def is_cpu(self) -> bool:
        return self.name == CPU_NAME


def _gpu(name: str, memory_gib: float, cc: tuple[int, int], sms: int) -> GPU:
    sm = cc[0] * 10 + cc[1]
    return GPU(name=name, memory_gib=memory_gib, compute_capability=cc, bf16=sm >= 80, fp8=sm >= 89, sms=sms)


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        # memory: torch.cuda.mem_get_info()'s total in GiB, from vLLM startup logs and PyTorch OOM messages
        # ("GPU 0; 31.75 GiB total capacity"); where none was found, nvidia-smi's total minus the ~0.45 GiB the
        # driver keeps (H100: 81,559 MiB in nvidia-smi, 79.18 GiB in vLLM). SMs: NVIDIA's datasheets (H100 as the
        # SXM5 board, 132; the PCIe card has 114)
        _gpu("B200", 178.35, (10, 0), 148),  # unsloth#3411: "Total VRAM: 178.35 GB" (torch, GiB)
        _gpu("H200", 139.81, (9, 0), 132),  # nvidia-smi 143,771 MiB
        _gpu("GH200", 94.50, (9, 0), 132),  # the 96 GB HBM3 module, nvidia-smi 97,871 MiB
        _gpu("H100-80GB", 79.18, (9, 0), 132),
        _gpu("A100-80GB", 79.14, (8, 0), 108),
        _gpu("RTX-A6000", 47.54, (8, 6), 84),  # PyTorch OOM messages: "47.54 GiB total capacity"
        _gpu("L40S", 44.39, (8, 9), 142),
        _gpu("L40", 44.39, (8, 9), 142),  # the L40S's board memory (nvidia-smi 46,068 MiB both)
        _gpu("A40", 44.35, (8, 6), 84),  # nvidia-smi 46,068 MiB; ECC on
        _gpu("A100-40GB", 39.39, (8, 0), 108),
        _gpu("V100-32GB", 31.75, (7, 0), 80),  # PyTorch OOM messages: "31.75 GiB total capacity"
        _gpu("L4", 22.06, (8, 9), 58),
        _gpu("A10G", 21.99, (8, 6), 80),
        _gpu("V100-16GB", 15.77, (7, 0), 80),  # PyTorch OOM messages: "15.77 GiB total capacity"
        _gpu("RTX-4080", 15.69, (8, 9), 76),
        _gpu("T4", 14.74, (7, 5), 40),
    )
}


def cpu_device(ram_gib: float) -> GPU:
    """The pseudo-device of a CPU-only partition: `ram_gib` of host memory, no GPU precision rules."""
    return GPU(name=CPU_NAME, memory_gib=ram_gib, compute_capability=(0, 0), bf16=False, fp8=False, sms=0)


def get_gpu(name: str) -> GPU:
    """The GPU called `name` (case-insensitive); PlanError listing the valid names otherwise.

    "CPU" returns a 64 GiB host-memory pseudo-device; `packing.plan_server` sizes it from the partition instead.
    """
    for key, gpu in GPUS.items():
        if key.lower() == name.strip().lower():
            return gpu
    if name.strip().upper() == CPU_NAME:
        return cpu_device(64.0)
    # `--gpu H100` means the H100-80GB: names a user shortens by their memory suffix come first
    close = [k for k in GPUS if k.lower().startswith(name.strip().lower())] or difflib.get_close_matches(
        name.strip(), list(GPUS), n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise PlanError(f"unknown GPU {name!r}{hint}; valid GPUs: {', '.join(GPUS)}, {CPU_NAME}")
