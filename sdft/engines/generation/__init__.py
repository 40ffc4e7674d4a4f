"""Batched generation behind one interface (`Engine`): the HF engine, a continuous-batching scheduler over a stepper
(the lean Llama/Qwen2 forward, else the model's own HF forward in fixed batches), and the vLLM engine; plus resumable
JSONL output. Both HF paths compute what `model.generate` computes (greedy fp32 outputs agree).

interfaces.py  Engine and Stepper protocols, Completion      scheduler.py  HFEngine: slots, refills, sampling, stops
lean_llama.py  LeanLlamaStepper, PackedLinear                hf_stepper.py HFStepper (any HF causal LM)
vllm_engine.py VLLMEngine                                    output.py     generate_rows: resumable JSONL output
"""

from __future__ import annotations

from sdft.engines.generation.hf_stepper import HFStepper
from sdft.engines.generation.interfaces import Completion, Engine, Stepper
from sdft.engines.generation.lean_llama import LeanLlamaStepper, PackedLinear
from sdft.engines.generation.output import generate_rows, prompt_hash
from sdft.engines.generation.scheduler import TOKEN_BUDGET, HFEngine, plan_batches, shared_prefixes
from sdft.engines.generation.vllm_engine import VLLMEngine, vllm_available
from sdft.engines.options import EngineOptions

__all__ = ["Completion", "Engine", "HFEngine", "HFStepper", "LeanLlamaStepper", "PackedLinear", "Stepper", "TOKEN_BUDGET",
           "VLLMEngine", "generate_rows", "make_engine", "plan_batches", "prompt_hash", "shared_prefixes", "vllm_available"]


def make_engine(model_spec: str, dtype: str, options: EngineOptions, adapter: str | None = None) -> Engine:
    """The vLLM engine when asked for (or on 'auto' with vLLM + CUDA present), else the HF engine."""
    from sdft.engines.models import load_model, merged_model_path

    if not options.lean_cpu_only and (options.backend == "vllm" or (options.backend == "auto" and vllm_available())):
        return VLLMEngine(merged_model_path(model_spec, adapter), dtype)
    # int8 linears and the fp16 cache run on CPU beside fp32 weights (fbgemm, the ragged kernel), whatever `auto` picks
    model, tokenizer = load_model(model_spec, dtype="fp32" if options.lean_cpu_only else dtype, adapter=adapter)
    return HFEngine(model, tokenizer, options.decode_rows, quantize=options.quantize, kv_cache=options.kv_cache)
