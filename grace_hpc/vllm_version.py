"""The vLLM releases grace-hpc targets, and every rule that changes between them.

One module outside the packages because three of them need it: config (cluster.yaml `engines.vllm_version`),
the planner (its rules and memory model) and, in the job, the check of the real `vllm --version`.

The rules of what starts (and how much memory it takes) move from release to release, so the planner takes the
target version as an input: `engines.vllm_version` in cluster.yaml, `--vllm-version` on the command line, else
the newest supported. Each property below cites the file of vLLM's source, at the release tag, that sets it
(read from the released wheels: vllm-0.11.0, vllm-0.19.1, vllm-0.33.0).
"""

from __future__ import annotations

import re
from enum import Enum

from grace_hpc.errors import PlanError

__all__ = ["VllmVersion", "DEFAULT_VLLM_VERSION", "logged_release", "version_mismatch"]

_RELEASE = re.compile(r"^v?(\d+)\.(\d+)(?:\.\d+)?(?:[.+-]?(?:dev|rc|post)?\w*)?$")
# How a vLLM server names its release at startup: 0.11 entrypoints/openai/api_server.py "vLLM API server version
# %s"; 0.19 entrypoints/utils.py log_version_and_model: "vLLM server version %s, serving model %s", or the logo
# line "... version 0.19.0" (ANSI colour codes around the number when the log is coloured)
_LOGGED = re.compile(r"(?:vLLM (?:API )?server version|\u2588\s+version)\s+(?:\x1b\[[0-9;]*m)*v?(\d+\.\d+[^\s\x1b,]*)")


class VllmVersion(str, Enum):
    """A vLLM minor release series the rules are written for (0.11.x, 0.19.x, 0.33.x)."""

    V0_11 = "0.11"
    V0_19 = "0.19"
    V0_33 = "0.33"

    @property
    def minor(self) -> int:
        return int(self.value.split(".")[1])

    @classmethod
    def parse(cls, text: str) -> VllmVersion:
        """'0.19', '0.19.1' or 'v0.19.1' -> V0_19; PlanError naming the supported series otherwise."""
        match = _RELEASE.match(text.strip())
        series = f"{match.group(1)}.{match.group(2)}" if match else None
        for version in cls:
            if version.value == series:
                return version
        raise PlanError(
            f"unsupported vLLM version {text!r}; supported: {', '.join(v.value + '.x' for v in cls)} "
            "(set engines.vllm_version in cluster.yaml or --vllm-version to one of them)"
        )

    @classmethod
    def covering(cls, release: str) -> VllmVersion:
        """The newest supported series not newer than `release` (the oldest for older releases): which rule set
        a logged startup of that release is compared under (bench/planner_accuracy.py)."""
        match = _RELEASE.match(release.strip().replace(".x", ".0"))
        if match is None:
            raise PlanError(f"not a vLLM release: {release!r}")
        major, minor = int(match.group(1)), int(match.group(2))
        older = [v for v in cls if (0, v.minor) <= (major, minor)]
        return older[-1] if older else cls.V0_11

    # --- precision and kernels -------------------------------------------------------------------------------

    @property
    def weight_only_marlin_min_sm(self) -> int:
        """Lowest compute capability of FP8 (weight-only Marlin below sm89), AWQ-Marlin and GPTQ-Marlin.
        0.11: 80 (quantization/fp8.py, awq_marlin.py, gptq_marlin.py `get_min_capability`); 0.19 and 0.33: 75
        (same files; Turing runs them weight-only with float16 activations)."""
        return 80 if self is VllmVersion.V0_11 else 75

    @property
    def has_bitsandbytes(self) -> bool:
        """bitsandbytes (pre-quantized and in-flight) exists up to 0.19 (quantization/bitsandbytes.py); 0.33's
        `QuantizationMethods` (quantization/__init__.py) no longer lists it."""
        return self is not VllmVersion.V0_33

    @property
    def online_fp8_loads_full_precision(self) -> bool:
        """`--quantization fp8` on a 16-bit checkpoint: 0.11 allocates every layer in the checkpoint dtype and
        quantizes after loading (quantization/fp8.py Fp8LinearMethod.create_weights), so loading peaks at the
        16-bit size; from 0.19 the weights start on the meta device and are quantized layer by layer
        (fp8.py `uses_meta_device = True`, model_loader/reload/layerwise.py)."""
        return self is VllmVersion.V0_11

    @property
    def flex_attention_below_sm80(self) -> bool:
        """0.11 gives every GPU below sm80 FlexAttention (platforms/cuda.py get_attn_backend_cls: "FlexAttention
        is the default for older GPUs"), which raises on logit soft-capping ("FlexAttention does not support
        logits soft cap yet") and on a quantized KV cache (v1/attention/backends/flex_attention.py). 0.19 picks,
        per layer, the first backend that supports the features (platforms/cuda.py _get_backend_priorities)."""
        return self is VllmVersion.V0_11

    @property
    def bundles_triton_kernels(self) -> bool:
        """Whether the MXFP4 Triton MoE backend is there without extra packages: 0.11 imports the optional
        `triton_kernels` package (utils/__init__.py has_triton_kernels), so a plain install runs Marlin on
        Hopper too (quantization/mxfp4.py get_mxfp4_backend: "Using Marlin backend", vllm#23278); 0.19 ships it
        in vllm/third_party/triton_kernels."""
        return self is not VllmVersion.V0_11

    # --- memory ----------------------------------------------------------------------------------------------

    @property
    def default_sampler(self) -> str:
        """The top-k/top-p implementation the profile run's sampler warm-up uses in a default install (its memory:
        memory.SAMPLER_BYTES_PER_LOGIT). 0.11 samples with FlashInfer whenever `flashinfer` imports
        (v1/sample/ops/topk_topp_sampler.py TopKTopPSampler.__init__: VLLM_USE_FLASHINFER_SAMPLER unset counts as
        on), but the wheel installs FlashInfer only with its `flashinfer` extra (METADATA: flashinfer-python; extra
        == "flashinfer"), so `pip install vllm==0.11.0` sorts in PyTorch ("FlashInfer is not available. Falling
        back to the PyTorch-native implementation"), while an environment with FlashInfer installed beside it
        logs "Using FlashInfer for top-p & top-k sampling." (14 B per logit, not 39). 0.19 makes FlashInfer opt-in
        (VLLM_USE_FLASHINFER_SAMPLER=1) and uses a Triton top-k/top-p kernel for 8+ rows (topk_topp_sampler.py
        apply_top_k_top_p); 0.33 uses FlashInfer by default (envs.py VLLM_USE_FLASHINFER_SAMPLER = True)."""
        return {VllmVersion.V0_11: "pytorch", VllmVersion.V0_19: "triton"}.get(self, "flashinfer")

    @property
    def sliding_window_in_flight_batches(self) -> int:
        """Batches of max_num_batched_tokens a sliding-window layer holds beyond its window per request.
        0.11/0.19: one (v1/kv_cache_interface.py SlidingWindowSpec.max_memory_usage_bytes: window - 1 +
        max_num_batched_tokens); 0.33: `max_in_flight_tokens`, two batches under async scheduling, which is on by
        default (config/vllm.py max_concurrent_batches, async_scheduling None -> True)."""
        return 2 if self is VllmVersion.V0_33 else 1

    @property
    def budget_counts_persistent_allocations(self) -> bool:
        """Whether the profile charges everything allocated since the baseline snapshot, not only the weights, the
        activation peak and non-torch memory. 0.33 charges the drop in free memory since the snapshot
        (utils/mem_utils.py memory_profiling: total_consumed = before_create.free - after_profile.free), which takes in
        the workspaces and the model runner's persistent buffers created after it (v1/worker/gpu_worker.py init_device:
        MemorySnapshot, then _init_workspace_and_model_runner) and blocks still reserved after empty_cache; 0.11 and
        0.19 charge the weights' load delta, the allocated peak over what is allocated when profiling starts and the
        non-torch increase (vllm/utils/__init__.py at 0.11.0, utils/mem_utils.py at 0.19.1), so those buffers are not
        charged (memory.PERSISTENT_GIB)."""
        return self is VllmVersion.V0_33

    @property
    def cudagraphs_in_budget(self) -> bool:
        """CUDA graph memory is profiled and taken out of the KV budget by default from 0.21
        (envs.py VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS: "0" on 0.19, "1" on 0.33; v1/worker/gpu_worker.py
        determine_available_memory: "CUDA graph memory profiling is enabled (default since v0.21.0)")."""
        return self.minor >= 21

    @property
    def largest_gpu_batch_defaults(self) -> bool:
        """0.33 gives GPUs with >= 160 GiB (B200) 16384 batched tokens (engine/arg_utils.py get_batch_defaults);
        0.11/0.19 stop at the >= 70 GiB tier (8192)."""
        return self is VllmVersion.V0_33

    # --- what refuses to start -------------------------------------------------------------------------------

    @property
    def hybrid_kv_refuses_cpu_offload(self) -> bool:
        """With more than one KV-cache group (sliding-window hybrids: gpt-oss, Gemma-2/3) 0.11 and 0.19 assert
        `cpu_offload_gb == 0` when re-initializing the input batch (v1/worker/gpu_model_runner.py, "Cannot
        re-initialize the input batch when CPU weight offloading is enabled", vllm#18298); 0.33 has no such
        assert."""
        return self is not VllmVersion.V0_33

    @property
    def prequantized_bitsandbytes_refuses_tp(self) -> bool:
        """model_loader/bitsandbytes_loader.py (0.11, 0.19): "Prequant BitsAndBytes models with tensor
        parallelism is not supported". In-flight bitsandbytes splits fine."""
        return self.has_bitsandbytes


DEFAULT_VLLM_VERSION = max(VllmVersion, key=lambda v: v.minor)


def logged_release(log_text: str) -> str | None:
    """The vLLM release a server's startup log names ("0.19.1"; the last start when a requeued job appended
    several), or None when it names none."""
    releases = _LOGGED.findall(log_text)
    return releases[-1] if releases else None


def version_mismatch(targeted: VllmVersion, log_text: str) -> str | None:
    """A warning when the job's real vLLM (from its startup log) is not the series the plan targeted, else None:
    the plan's memory and flags assumed `targeted`'s rules."""
    release = logged_release(log_text)
    if release is None:
        return None
    try:
        running = VllmVersion.parse(release)
    except PlanError:
        return (f"the job runs vLLM {release}, which grace-hpc has no rules for; the plan targeted "
                f"{targeted.value} (set engines.vllm_version in cluster.yaml to the release the jobs run)")
    if running is targeted:
        return None
    return (f"the job runs vLLM {release} but the plan targeted {targeted.value}: memory and flags may be off "
            f"(set engines.vllm_version: \"{running.value}\" in cluster.yaml)")
