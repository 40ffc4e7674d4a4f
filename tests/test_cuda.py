"""The engines on a CUDA device, skipped without one (CI has none; a lent H200 ran them, docs/performance.md: On one
GPU): the lean stepper (matmul attention, no CPU kernel) and the HF fallback in fp32 against `model.generate` on the
same GPU, `--dtype auto` loading bf16 there, the CPU-only opt-ins refused with one line, LoRA training under bf16
autocast."""

from __future__ import annotations

import json

import pytest
import torch
from test_generation import PROMPTS, complete, reference, tiny_model

from sdft.core.errors import UserError
from sdft.engines.generation import TOKEN_BUDGET, LeanLlamaStepper, make_engine
from sdft.options import EngineOptions, TrainConfig
from sdft.stages.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("path", ["lean", "hf-fallback"])
def test_greedy_fp32_on_cuda_matches_generate(embedded_tokenizer, monkeypatch, path):
    from transformers import LlamaConfig, LlamaForCausalLM

    if path == "hf-fallback":
        monkeypatch.setattr(LeanLlamaStepper, "supports", classmethod(lambda cls, m: False))
    assert torch.get_float32_matmul_precision() == "highest"  # no TF32: the exact comparison needs true fp32
    model = tiny_model(LlamaConfig, LlamaForCausalLM, embedded_tokenizer).to("cuda")
    out = complete(model, embedded_tokenizer, PROMPTS, max_new_tokens=24, decode_rows=3)
    for i, prompt in enumerate(PROMPTS):
        expected = reference(model, embedded_tokenizer, prompt, 24)
        assert out[i].text == embedded_tokenizer.decode(expected, skip_special_tokens=True), prompt
        assert out[i].n_tokens == len(expected)


def test_auto_loads_bf16_on_cuda_and_the_cpu_only_options_are_refused(tiny_model_dir):
    engine = make_engine(tiny_model_dir, "auto", EngineOptions(backend="hf"))
    model, tokenizer = engine.torch_model()
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    assert engine.token_budget > TOKEN_BUDGET  # a share of the GPU's memory, not the CPU's constant
    out = complete(model, tokenizer, PROMPTS, max_new_tokens=16)
    assert sorted(out) == list(range(len(PROMPTS)))
    assert all(0 <= c.n_tokens <= 16 and c.finish_reason in ("stop", "length") for c in out.values())
    for options in (EngineOptions(backend="hf", quantize="int8"), EngineOptions(backend="hf", kv_cache="fp16")):
        with pytest.raises(UserError, match="lean CPU engine only"):
            make_engine(tiny_model_dir, "auto", options)


def test_lora_training_on_cuda_uses_bf16_autocast_and_saves_an_adapter(tmp_path, tiny_model_dir, monkeypatch):
    import sdft.stages.train as stage

    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"question {i}", "output": f"answer {i} " * (1 + i % 3)}) + "\n"
                            for i in range(8)))
    seen = {}
    original = stage.train_model

    def recording(model, tokenizer, examples, out_dir, settings, before_train=None):
        trainer, result = original(model, tokenizer, examples, out_dir, settings, before_train)
        seen.update(bf16=trainer.args.bf16, device=trainer.args.device.type,
                    weights={p.device.type for p in trainer.model.parameters()})
        return trainer, result

    monkeypatch.setattr(stage, "train_model", recording)
    metrics = train(TrainConfig(data=str(data), out=str(tmp_path / "out"), model=tiny_model_dir, max_steps=4,
                                batch_size=4, micro_batch_size=2, learning_rate=1e-2))
    assert seen == {"bf16": True, "device": "cuda", "weights": {"cuda"}}
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert (tmp_path / "out/adapter_model.safetensors").is_file()
