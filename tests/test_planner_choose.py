"""The choice ladder, packing, and what a does-not-fit answer says (real catalog: configs/models.yaml)."""

from __future__ import annotations

import pytest

from grace_hpc.config.cluster import Partition
from grace_hpc.config.deployment import ServerSpec
from grace_hpc.config.loader import PROJECT_ROOT, ConfigDir
from grace_hpc.errors import PlanError
from grace_hpc.planner import PlanRequest, get_gpu, plan_model, plan_server
from grace_hpc.planner.packing import split_utilization

CATALOG = ConfigDir(PROJECT_ROOT / "configs").catalog()
H100, A100, L4, T4 = (get_gpu(n) for n in ("H100-80GB", "A100-40GB", "L4", "T4"))
GIB = 1024**3


def test_llama_8b_fits_one_a100_40gb_in_bf16_with_its_full_context() -> None:
    plan = plan_model(CATALOG.get("llama-3.1-8b-instruct"), A100, 1)
    assert plan.fits and plan.engine == "vllm" and plan.dtype == "bfloat16" and plan.quantization is None
    assert plan.tensor_parallel_size == 1 and plan.max_model_len == 131072
    budget = plan.gpu_memory_utilization * 39.39
    kv = budget - plan.weights_gib_per_gpu - plan.activation_gib_per_gpu - plan.overhead_gib_per_gpu
    assert plan.kv_cache_gib_per_gpu == pytest.approx(kv)
    assert plan.kv_cache_tokens == int(kv * GIB // (131072 * 16)) * 16  # 128 KiB per token, blocks of 16
    assert plan.max_concurrency == pytest.approx(plan.kv_cache_tokens / 131072, abs=0.01)


def test_llama_70b_on_a100_40gb_needs_four_gpus_in_bf16() -> None:
    # 70.6 B x 2 bytes = 131 GiB: 3 x 35.5 GiB budgets are too small, and 64 heads do not split 3 ways anyway
    plan = plan_model(CATALOG.get("llama-3-70b-instruct"), A100, 4)
    assert plan.fits and plan.dtype == "bfloat16" and plan.tensor_parallel_size == 4
    assert plan.weights_gib_per_gpu == pytest.approx(131.4 / 4, rel=0.02)


def test_llama_70b_on_two_a100_40gb_falls_to_the_4bit_checkpoint() -> None:
    plan = plan_model(CATALOG.get("llama-3-70b-instruct"), A100, 2)
    assert plan.fits and plan.quantization == "awq" and plan.tensor_parallel_size == 2
    assert plan.weights_ref == "casperhansen/llama-3-70b-instruct-awq"


def test_the_ladder_prefers_fp8_before_4bit() -> None:
    # gemma-2-27b on one L4 (22 GiB): bf16 (50 GiB) no, fp8 (26 GiB) no, then 4-bit GGUF (no AWQ in catalog)
    plan = plan_model(CATALOG.get("gemma-2-27b-it"), L4, 1)
    assert plan.fits and plan.engine == "llama.cpp"
    plan2 = plan_model(CATALOG.get("gemma-2-27b-it"), L4, 2)
    assert plan2.fits and plan2.quantization == "fp8" and plan2.quantization_online


def test_nothing_fits_says_what_would() -> None:
    # gpt-oss's MXFP4 experts need sm80+: nothing runs on a T4; the suggested GPU holds its ~65 GiB on one GPU
    plan = plan_model(CATALOG.get("gpt-oss-120b"), T4, 2)
    assert not plan.fits and plan.tensor_parallel_size == 1
    text = " ".join(plan.reasons)
    assert "does not fit on 2 x T4" in text and "cloud" in text and "--gpu A100-80GB" in text


def test_pinned_options_are_kept() -> None:
    plan = plan_model(CATALOG.get("llama-3.1-8b-instruct"), H100, 1, PlanRequest(
        max_model_len=4096, gpu_memory_utilization=0.5, max_num_seqs=32, kv_cache_dtype="fp8", quantization="fp8"))
    assert (plan.max_model_len, plan.gpu_memory_utilization, plan.max_num_seqs) == (4096, 0.5, 32)
    assert plan.kv_cache_dtype == "fp8" and plan.quantization == "fp8"


def test_quantization_none_pins_unquantized_weights() -> None:
    plan = plan_model(CATALOG.get("llama-3.1-8b-instruct"), L4, 1, PlanRequest(quantization="none"))
    assert plan.quantization is None and plan.fits
    with pytest.raises(PlanError, match="no 'awq' weights for gemma-2-27b-it"):
        plan_model(CATALOG.get("gemma-2-27b-it"), L4, 1, PlanRequest(quantization="awq"))


def test_max_model_len_beyond_the_model_is_an_error() -> None:
    with pytest.raises(PlanError, match="exceeds gemma-2-9b-it's max_position_embeddings"):
        plan_model(CATALOG.get("gemma-2-9b-it"), H100, 1, PlanRequest(max_model_len=16384))


def test_pinned_cpu_offload_moves_weights_to_host_ram() -> None:
    plan = plan_model(CATALOG.get("llama-3.1-8b-instruct"), T4, 1, PlanRequest(cpu_offload_gb=4))
    assert plan.cpu_offload_gb == 4 and plan.weights_gib_per_gpu == pytest.approx(14.99 - 4, abs=0.01)


def test_pkg_gguf_weights_are_served_by_llama_cpp_on_a_cpu_partition() -> None:
    spec = CATALOG.get("smollm2-135m-instruct")
    cpu = Partition(name="cpu", gpu="CPU", gpus_per_node=0, mem_per_gpu_gb=4)
    server = ServerSpec(name="smollm2", partition="cpu", models=(spec.name,), max_model_len=2048)
    sp = plan_server(server, cpu, CATALOG)
    (plan,) = sp.plans
    assert sp.fits and sp.num_gpus == 0 and plan.engine == "llama.cpp" and plan.gpu_layers == 0
    assert plan.weights_ref == spec.weights and plan.max_model_len == 2048
    assert plan.quantization == "gguf:Q4_1"


def test_split_utilization_gives_every_model_its_need_plus_a_proportional_share() -> None:
    assert split_utilization([0.2, 0.1], 0.9) == [0.6, 0.3]
    assert split_utilization([0.5, 0.5], 0.9) is None


def test_seed_002_packs_four_7b_models_on_one_h100() -> None:
    names = ("qwen2.5-coder-7b-instruct", "nemotron-orchestrator-8b", "qwen2.5-math-7b-instruct", "biomistral-7b")
    h100 = Partition(name="h100", gpu="H100-80GB", gpus_per_node=1)
    sp = plan_server(ServerSpec(name="zoo", partition="h100", models=names, max_model_len=8192), h100, CATALOG)
    assert sp.fits and sp.num_gpus == 1 and len(sp.plans) == 4
    assert sum(p.gpu_memory_utilization for p in sp.plans) <= 1 - 4 * 1.0 / 79.18
    for p in sp.plans:  # qwen2.5-math-7b is a 4096-token model: it keeps its own context
        assert p.fits and p.dtype == "bfloat16" and p.max_concurrency >= 1
        assert p.max_model_len == (4096 if p.model == "qwen2.5-math-7b-instruct" else 8192)


def test_packing_compresses_models_that_do_not_fit_together_in_bf16() -> None:
    # two 7-8B models are 29 GiB in bf16; one L4 has 22: each falls to a 4-bit format within half of it
    names = ("llama-3.1-8b-instruct", "qwen2.5-7b-instruct")
    l4 = Partition(name="l4", gpu="L4", gpus_per_node=1)
    sp = plan_server(ServerSpec(name="x", partition="l4", models=names, max_model_len=4096), l4, CATALOG)
    assert sp.fits
    assert all(p.engine == "llama.cpp" or p.quantization in ("fp8", "awq", "gptq") for p in sp.plans)
    assert sum(p.gpu_memory_utilization for p in sp.plans) < 1


def test_packing_a_model_that_cannot_fit_alone_says_so() -> None:
    names = ("llama-3.1-8b-instruct", "llama-3-70b-instruct")
    l4 = Partition(name="l4", gpu="L4", gpus_per_node=1)
    sp = plan_server(ServerSpec(name="x", partition="l4", models=names, max_model_len=4096), l4, CATALOG)
    assert not sp.fits
    assert sp.reasons[0] == "llama-3-70b-instruct alone does not fit on 1 x L4"


def test_an_unknown_model_names_the_close_catalog_names_and_how_to_list_them_all() -> None:
    h100 = Partition(name="h100", gpu="H100-80GB", gpus_per_node=1)
    with pytest.raises(PlanError, match=r"unknown model 'gemma-2-9b' .*did you mean 'gemma-2-9b-it'.*`grace-hpc models`"):
        plan_server(ServerSpec(name="x", partition="h100", models=("gemma-2-9b",)), h100, CATALOG)


def test_an_unknown_gpu_suggests_the_catalog_name_it_shortens() -> None:
    with pytest.raises(PlanError, match=r"unknown GPU 'H100' \(did you mean 'H100-80GB'\?\)"):
        get_gpu("H100")


def test_plan_json_has_the_cli_contract_keys() -> None:
    data = plan_model(CATALOG.get("llama-3.1-8b-instruct"), H100, 1).to_json()
    for key in ("fits", "engine", "dtype", "quantization", "tensor_parallel_size", "max_model_len",
                "gpu_memory_utilization", "weights_gib_per_gpu", "activation_gib_per_gpu", "overhead_gib_per_gpu",
                "kv_cache_gib_per_gpu", "kv_cache_tokens", "max_concurrency", "argv", "reasons"):
        assert key in data
    assert data["argv"][:5] == ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--host", "0.0.0.0"]
