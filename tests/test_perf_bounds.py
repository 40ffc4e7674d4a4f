"""The generation measurement's memory bound and its median over rounds (perf/peer_throughput.py): the figures a
report's roofline share is computed from."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import peer_throughput  # noqa: E402  (perf/ is a folder of scripts, not a package)


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def test_memory_bound_counts_each_decoded_tokens_context_and_the_weights_of_each_forward(model):
    # K/V per cache column: 2 (K and V) x 2 layers x 2 KV heads x head_dim 8 x 4 bytes = 256 bytes.
    # A 3-token prompt, 4 tokens: the 3 decoded after the first read 4, 5 and 6 columns; a 2-token prompt, 1 token: none.
    kv = 256 * (4 + 5 + 6)
    # Linears per layer: q 32x32, k and v 32x16, o 32x32, gate and up 64x32, down 32x64; the LM head 100x32 (its weight
    # tied to the embeddings, read again as the head). Read once by each of the longest row's 3 decoding forwards.
    weights = (2 * (1024 + 512 + 512 + 1024 + 3 * 2048) + 3200) * 4 * 3
    bound = peer_throughput.memory_bound(model, [3, 2], [4, 1], [1.0, 2.0])
    assert bound["read_gb_s"] == 2.0  # the best sample
    assert bound["kv_gb"] == round(kv / 1e9, 2) and bound["weights_gb"] == round(weights / 1e9, 2)
    assert bound["tok_s"] == pytest.approx(5 / ((kv + weights) / 2e9), rel=1e-3)


def test_memory_bound_of_a_bf16_model_reads_half_the_bytes(model):
    fp32 = peer_throughput.memory_bound(model, [3], [4], [2.0])
    bf16 = peer_throughput.memory_bound(model.to(torch.bfloat16), [3], [4], [2.0])
    model.float()
    assert bf16["tok_s"] == pytest.approx(2 * fp32["tok_s"], rel=1e-3)


def test_median_bound_takes_the_median_share_of_the_compute_bound_and_of_the_roofline():
    rounds = [{"tok_s": 100.0, "sdft_share": 0.5, "sdft_share_of_roofline": 0.9},
              {"tok_s": 120.0, "sdft_share": 0.4, "sdft_share_of_roofline": 0.7},
              {"tok_s": 90.0, "sdft_share": 0.6, "sdft_share_of_roofline": 0.8}]
    median = peer_throughput.median_bound(rounds)
    assert median["tok_s"] == 100.0  # the round of median share
    assert median["sdft_share"] == 0.5 and median["rounds_share"] == [0.5, 0.4, 0.6]
    assert median["sdft_share_of_roofline"] == 0.8 and median["rounds_share_of_roofline"] == [0.9, 0.7, 0.8]
    assert "sdft_share_of_roofline" not in peer_throughput.median_bound([{"tok_s": 1.0, "sdft_share": 0.5}])
