import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from sdft.analysis.shift import parameter_shift, text_shift

SEED_TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "To bake bread, mix flour, water, salt and yeast, then let the dough rise for two hours.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
]
UNRELATED_TEXTS = [
    "Quarterly revenue grew because the company expanded into three new markets.",
    "I cannot help with that request.",
    "Set the router's DNS server in the advanced network settings tab.",
]

# LoRA on q_proj (32x32) and v_proj (16x32: 2 kv heads of size 8) with r=2, alpha=4 → scaling 2.
RANK, ALPHA = 2, 4


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def lora(model, **extra):
    return get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"], **extra))


def test_identical_outputs_have_no_text_shift():
    out = text_shift(SEED_TEXTS, list(SEED_TEXTS))
    assert out["bleu"] == pytest.approx(100.0)
    assert out["bleu_sentence"] == pytest.approx(100.0)
    assert out["rouge_l"] == pytest.approx(100.0)
    assert out["sbert_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert out["sbert_values"] == pytest.approx([1.0] * 3, abs=1e-4) and out["n"] == 3


def test_unrelated_outputs_have_large_text_shift():
    out = text_shift(SEED_TEXTS, UNRELATED_TEXTS)
    assert out["bleu"] < 5 and out["bleu_sentence"] < 5
    assert out["rouge_l"] < 25
    assert out["sbert_cosine"] < 0.3


def test_text_shift_rejects_unpaired_outputs():
    with pytest.raises(ValueError):
        text_shift(SEED_TEXTS, SEED_TEXTS[:2])


def test_untouched_lora_has_zero_parameter_shift():
    model = tiny_llama()
    seed_state = {k: v.clone() for k, v in model.state_dict().items()}
    out = parameter_shift(seed_state, lora(model))  # lora_B starts at zero
    assert out["l2_total"] == 0.0
    assert set(out["per_layer"]) == {"layers.0", "layers.1", "embed_tokens", "norm", "lm_head"}


def test_lora_parameter_shift_matches_hand_computed_norm():
    model = tiny_llama()
    seed_state = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = lora(model)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_A" in name:
                param.fill_(1.0)
            elif "lora_B" in name:
                param.fill_(0.1)
    # ΔW = scaling · B @ A has every entry 2 · (RANK · 1.0 · 0.1) = 0.4.
    entry = (ALPHA / RANK) * RANK * 1.0 * 0.1
    per_layer = entry * math.sqrt(32 * 32 + 16 * 32)
    out = parameter_shift(seed_state, tuned)
    assert out["per_layer"]["layers.0"] == pytest.approx(per_layer)
    assert out["per_layer"]["layers.1"] == pytest.approx(per_layer)
    assert out["per_layer"]["embed_tokens"] == 0.0
    assert out["l2_total"] == pytest.approx(per_layer * math.sqrt(2))
    # get_peft_model wraps in place, so the wrapped seed model itself still holds the seed weights.
    assert parameter_shift(model, tuned)["l2_total"] == pytest.approx(out["l2_total"])


def test_full_finetune_parameter_shift():
    seed = tiny_llama()
    tuned = tiny_llama()
    with torch.no_grad():
        tuned.model.embed_tokens.weight += 0.01
        tuned.model.layers[1].mlp.up_proj.weight -= 0.02
    out = parameter_shift(seed, tuned)
    assert out["per_layer"]["embed_tokens"] == pytest.approx(0.01 * math.sqrt(64 * 32))
    assert out["per_layer"]["layers.1"] == pytest.approx(0.02 * math.sqrt(64 * 32))
    assert out["per_layer"]["layers.0"] == 0.0
    assert out["l2_total"] == pytest.approx(math.hypot(0.01, 0.02) * math.sqrt(64 * 32))


def test_modules_to_save_counts_the_trained_copy():
    model = tiny_llama()
    seed_state = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = lora(model, modules_to_save=["lm_head"])
    with torch.no_grad():
        tuned.base_model.model.lm_head.modules_to_save["default"].weight += 0.5
    out = parameter_shift(seed_state, tuned)
    assert out["per_layer"]["lm_head"] == pytest.approx(0.5 * math.sqrt(64 * 32))
    assert out["l2_total"] == pytest.approx(out["per_layer"]["lm_head"])


def test_parameter_shift_rejects_mismatched_models():
    seed = {k: v for k, v in tiny_llama().state_dict().items() if "lm_head" not in k}
    with pytest.raises(ValueError, match="lm_head"):
        parameter_shift(seed, tiny_llama())
