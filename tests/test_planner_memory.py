"""The memory model, with every expected number worked out by hand from the model's config.json."""

from __future__ import annotations

import pytest

from grace_hpc.config.catalog import MLA, Architecture, MoE
from grace_hpc.errors import PlanError
from grace_hpc.planner import memory as mem
from grace_hpc.vllm_version import VllmVersion

GIB = 1024**3

# meta-llama/Llama-3.1-8B-Instruct config.json
LLAMA_8B = Architecture(
    model_type="llama", num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
    tie_word_embeddings=False, torch_dtype="bfloat16",
)
# google/gemma-2-9b-it config.json: 42 layers alternating sliding (4096) and global attention
GEMMA2_9B = Architecture(
    model_type="gemma2", num_hidden_layers=42, hidden_size=3584, intermediate_size=14336, num_attention_heads=16,
    num_key_value_heads=8, head_dim=256, vocab_size=256000, max_position_embeddings=8192, tie_word_embeddings=True,
    torch_dtype="bfloat16", sliding_window=4096, sliding_window_pattern=2,
)
# deepseek-ai/DeepSeek-V2-Lite config.json (MLA without q compression, 64 experts of 1408, 2 shared)
DEEPSEEK_V2_LITE = Architecture(
    model_type="deepseek_v2", num_hidden_layers=27, hidden_size=2048, intermediate_size=10944,
    num_attention_heads=16, num_key_value_heads=16, head_dim=192, vocab_size=102400,
    max_position_embeddings=163840, tie_word_embeddings=False, torch_dtype="bfloat16",
    moe=MoE(num_experts=64, experts_per_token=6, expert_intermediate_size=1408, num_shared_experts=2,
            first_dense_layers=1),
    mla=MLA(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128),
)

# openai/gpt-oss-20b config.json (24 layers, 32 experts of 2880, top-4, window 128 on every other layer)
GPT_OSS_20B = Architecture(
    model_type="gpt_oss", num_hidden_layers=24, hidden_size=2880, intermediate_size=2880, num_attention_heads=64,
    num_key_value_heads=8, head_dim=64, vocab_size=201088, max_position_embeddings=131072,
    tie_word_embeddings=False, torch_dtype="bfloat16", attention_bias=True, sliding_window=128,
    sliding_window_pattern=2, moe=MoE(num_experts=32, experts_per_token=4, expert_intermediate_size=2880),
)


def test_llama_8b_parameter_count_matches_the_published_8030261248() -> None:
    embed = 128256 * 4096  # tokens in, untied lm_head out: twice
    attention = 32 * (4096 * 4096 * 2 + 2 * 4096 * 1024)  # q and o 4096x4096, k and v 4096x(8 heads x 128)
    mlp = 32 * 3 * 4096 * 14336  # gate, up, down
    norms = (2 * 32 + 1) * 4096
    assert 2 * embed + attention + mlp + norms == 8_030_261_248
    assert mem.total_parameters(LLAMA_8B) == 8_030_261_248


def test_llama_8b_bf16_weights_are_what_vllm_reports_loading() -> None:
    # 8,030,261,248 x 2 bytes + rotary cache 131072 x 128 x 2 bytes = 16,093,073,408 bytes = 14.9878 GiB;
    # vLLM logs "Loading model weights took 14.9888 GB" for this model
    weights = mem.weights_bytes_per_gpu(LLAMA_8B, mem.weight_format(None, 2), tp=1, dtype_bytes=2)
    assert weights == 8_030_261_248 * 2 + 131072 * 128 * 2
    assert weights / GIB == pytest.approx(14.9888, abs=0.002)


def test_tensor_parallel_splits_weights_but_replicates_norms_and_rotary_cache() -> None:
    fmt = mem.weight_format(None, 2)
    one = mem.weights_bytes_per_gpu(LLAMA_8B, fmt, 1, 2)
    two = mem.weights_bytes_per_gpu(LLAMA_8B, fmt, 2, 2)
    replicated = ((2 * 32 + 1) * 4096 + 131072 * 128) * 2  # norms, rotary cos/sin cache
    assert two == pytest.approx((one - replicated) / 2 + replicated)


def test_kv_heads_replicate_when_tp_exceeds_them() -> None:
    assert mem.kv_heads_per_gpu(LLAMA_8B, 4) == 2
    assert mem.kv_heads_per_gpu(LLAMA_8B, 8) == 1
    # 8 KV heads over 16 GPUs: each GPU still holds a whole head (vLLM QKVParallelLinear replicates)
    assert mem.kv_heads_per_gpu(LLAMA_8B, 16) == 1


def test_kv_bytes_per_token_is_2_x_layers_x_kv_heads_x_head_dim_x_dtype() -> None:
    assert mem.kv_bytes_per_token(LLAMA_8B, 1, 2) == 2 * 32 * 8 * 128 * 2 == 131072  # 128 KiB per token
    assert mem.kv_bytes_per_token(LLAMA_8B, 2, 2) == 65536  # 4 KV heads per GPU
    assert mem.kv_bytes_per_token(LLAMA_8B, 1, 1) == 65536  # fp8 KV cache halves it


def test_mla_caches_one_latent_per_layer_on_every_rank() -> None:
    # (kv_lora_rank 512 + rope 64) x 2 bytes x 27 layers, not 2 x 16 heads x 192: 31,104 bytes per token
    assert mem.kv_bytes_per_token(DEEPSEEK_V2_LITE, 1, 2) == (512 + 64) * 2 * 27 == 31104
    assert mem.kv_bytes_per_token(DEEPSEEK_V2_LITE, 2, 2) == 31104


def test_moe_weights_count_every_expert_not_only_the_active_ones() -> None:
    total = mem.total_parameters(DEEPSEEK_V2_LITE)
    # published: 15.7 B total (2.4 B active); the formula must land near the total, far above the active count
    assert 15.4e9 < total < 16.0e9


def test_sliding_window_layers_need_only_their_window_per_request() -> None:
    per_layer_token = 2 * 8 * 256 * 2  # bytes
    # 16384 tokens, 2048 batched: 21 global layers x 1024 blocks + 21 sliding layers x (cdiv(4095 + 2048, 16) + 1)
    expected = per_layer_token * 16 * (21 * 1024 + 21 * 385)
    assert mem.kv_bytes_per_request(GEMMA2_9B, 1, 2, 16384, 2048, VllmVersion.V0_19) == expected
    full = mem.kv_bytes_per_token(GEMMA2_9B, 1, 2) * 16384
    assert expected < full


def test_kv_tokens_are_whole_blocks_of_16() -> None:
    per_block = 131072 * 16
    assert mem.kv_tokens(per_block * 10 + per_block - 1, LLAMA_8B, 1, 2) == 160
    assert mem.kv_tokens(-1.0, LLAMA_8B, 1, 2) == 0


def test_awq_4bit_group128_costs_weights_plus_scales_and_zeros() -> None:
    fmt = mem.weight_format("awq", 2, bits=4, group_size=128)
    # 0.5 byte per weight + per 128 inputs one fp16 scale (2 bytes) and one packed 4-bit zero (0.5 byte)
    assert fmt.mlp == pytest.approx(0.5 + 2.5 / 128)
    assert fmt.embed == 2  # embeddings and lm_head stay in fp16


def test_fp8_quantizes_linear_layers_only() -> None:
    fmt = mem.weight_format("fp8", 2)
    assert (fmt.attention, fmt.mlp, fmt.embed, fmt.other) == (1, 1, 2, 2)


def test_mxfp4_experts_are_padded_per_backend_after_the_tp_split() -> None:
    # issue 12 #7 (held-out: gpt-oss on A100s was underestimated by 1-2 GiB per GPU): Marlin pads the hidden size
    # to 256 and each rank's width to 128; Triton (Hopper) each rank's width to 64
    arch = GPT_OSS_20B
    assert mem.mxfp4_expert_padding(arch, 1, "marlin") == pytest.approx(3072 * 2944 / (2880 * 2880))
    assert mem.mxfp4_expert_padding(arch, 2, "marlin") == pytest.approx(3072 * 1536 / (2880 * 1440))
    assert mem.mxfp4_expert_padding(arch, 2, "triton") == pytest.approx(3072 * 1472 / (2880 * 1440))
    assert mem.mxfp4_backend(80, VllmVersion.V0_19) == "marlin" and mem.mxfp4_backend(90, VllmVersion.V0_19) == "triton"
    assert mem.mxfp4_backend(90, VllmVersion.V0_11) == "marlin"  # no triton_kernels in a plain 0.11 install
    fmt = mem.weight_format("mxfp4", 2, expert_padding=1.1)
    assert fmt.experts == pytest.approx((0.5 + 1 / 32) * 1.1) and fmt.attention == 2


def test_gguf_bits_per_weight_follow_the_block_layouts() -> None:
    assert mem.gguf_bits_per_weight("q4_0") == 4.5  # 18 bytes per 32 weights
    assert mem.gguf_bits_per_weight("Q8_0") == 8.5  # 34 bytes per 32 weights
    with pytest.raises(PlanError, match="unknown GGUF type 'Q9_X'.*set the variant's gguf_type"):
        mem.gguf_bits_per_weight("Q9_X")


@pytest.mark.parametrize(("gguf_type", "bpw"), [
    ("Q4_K", 4.5),  # block_q4_K: 2 fp16 + 12 scale bytes + 128 nibble bytes = 144 bytes / 256 weights
    ("IQ3_XXS", 3.0625),  # block_iq3_xxs: fp16 d + 96 bytes = 98 / 256
    ("Q5_K_S", 5.54), ("Q3_K_L", 4.27),  # mixes: llama.cpp's quantize averages
])
def test_gguf_types_the_file_name_pattern_accepts_have_bits(gguf_type: str, bpw: float) -> None:
    # issue 13: these raised a bare ValueError
    assert mem.gguf_bits_per_weight(gguf_type) == bpw


def test_activation_peak_grows_with_batched_tokens() -> None:
    small = mem.activation_bytes(LLAMA_8B, 1, 2, 2048, 1, VllmVersion.V0_19, sms=108)
    large = mem.activation_bytes(LLAMA_8B, 1, 2, 8192, 1, VllmVersion.V0_19, sms=108)
    assert large > small
    # forward at 8192 tokens: 3 hidden-size tensors 3 x 8192 x 4096 x 2 + MLP 3 x 8192 x 14336 x 2 bytes, and nothing
    # else: V1 charges the allocated peak over what is allocated when profiling starts (no allocator slack, no base)
    forward = 3 * 8192 * 4096 * 2 + 3 * 8192 * 14336 * 2
    assert large == pytest.approx(mem.ACTIVATION_SCALE * forward)


# Qwen/Qwen2.5-7B-Instruct config.json (vocabulary 152,064)
QWEN25_7B = Architecture(
    model_type="qwen2", num_hidden_layers=28, hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
    num_key_value_heads=4, head_dim=128, vocab_size=152064, max_position_embeddings=32768,
    tie_word_embeddings=False, torch_dtype="bfloat16", attention_bias=True,
)


def test_a_release_s_default_install_picks_its_sampler() -> None:
    # `pip install vllm==0.11.0` has no FlashInfer (an extra of the wheel): PyTorch sort; 0.19 Triton; 0.33 FlashInfer
    assert [v.default_sampler for v in VllmVersion] == ["pytorch", "triton", "flashinfer"]


def test_the_sampler_a_0_11_log_names_sets_the_profiled_peak() -> None:
    # rows qwen2.5-7b/A10G/len32768 (vLLM 0.11.0, "Using FlashInfer for top-p & top-k sampling.") and
    # qwen2-7b/2xA100-40GB/tp2/u0.50 (0.10.1.1, "FlashInfer is not available. Falling back to the PyTorch-native
    # implementation"): 256 sequences x 152,064 logits at 14 and 39 bytes, above the 2048-token forward
    flashinfer = mem.activation_bytes(QWEN25_7B, 1, 2, 2048, 256, VllmVersion.V0_11, "flashinfer", sms=80)
    pytorch = mem.activation_bytes(QWEN25_7B, 1, 2, 2048, 256, VllmVersion.V0_11, sms=80)
    assert flashinfer == pytest.approx(14 * 256 * 152064)
    assert pytorch == pytest.approx(39 * 256 * 152064)


def test_0_19_s_triton_top_k_keeps_one_vocabulary_row_per_sm_through_the_sampler_peak() -> None:
    # 0.19.1 v1/sample/ops/topk_topp_triton.py: a float32 (programs, vocab) buffer, programs = min(SMs, rows) rounded
    # up to a power of two and capped at the SMs, cached for the process: on an A10G (80 SMs), 80 x 152,064 x 4 bytes
    # on top of the 14 bytes per logit of 256 rows
    triton = mem.activation_bytes(QWEN25_7B, 1, 2, 2048, 256, VllmVersion.V0_19, sms=80)
    assert triton == pytest.approx(14 * 256 * 152064 + 4 * 80 * 152064)
    assert mem.triton_topk_buffer_bytes(152064, rows=12, sms=80) == 4 * 16 * 152064  # 12 programs -> 16 rows
    assert mem.triton_topk_buffer_bytes(152064, rows=256, sms=108) == 4 * 108 * 152064  # 128 capped at 108


def test_0_19_sorts_fewer_than_8_sequences_in_pytorch() -> None:
    # apply_top_k_top_p runs Triton from 8 rows only: --max-num-seqs 4 pays PyTorch's sort (39 bytes per logit)
    four = mem.activation_bytes(QWEN25_7B, 1, 2, 16, 4, VllmVersion.V0_19, sms=80)
    assert four == pytest.approx(39 * 4 * 152064)


def test_nccl_buffers_sit_in_the_headroom_under_tensor_parallelism() -> None:
    # V1 creates the NCCL communicators and custom all-reduce buffers before its baseline snapshot, so they sit in the
    # headroom with the CUDA context: rows qwen2-7b/2xA100-80GB/tp2/u0.50, qwen2-7b/2xA100-40GB/tp2/u0.50 and
    # gpt-oss-120b/4xA100-80GB/tp4/u0.80 (vLLM 0.10.1.1) were 0.4-0.5 GiB short with V0's 0.4 GiB inside the budget
    alone = mem.outside_budget_bytes(VllmVersion.V0_19)
    assert mem.outside_budget_bytes(VllmVersion.V0_19, 2) - alone == pytest.approx(mem.NCCL_GIB * GIB)
    assert mem.outside_budget_bytes(VllmVersion.V0_33, 4) == pytest.approx((mem.CUDA_CONTEXT_GIB + mem.NCCL_GIB) * GIB)


def test_only_0_33_charges_what_it_allocates_after_the_baseline() -> None:
    # 0.33 charges the drop in free memory since its snapshot (utils/mem_utils.py total_consumed), the model runner's
    # persistent buffers included; 0.11/0.19 charge only the load delta, the allocated peak and non-torch memory, so
    # on the 0.10/0.11 A10G and A100 rows no base term is charged (tests/test_planner_calibration.py)
    assert [v.budget_counts_persistent_allocations for v in VllmVersion] == [False, False, True]
