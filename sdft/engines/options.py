"""The engines' option groups: which model and dtype (`ModelOptions`), what one generation call decodes
(`DecodingOptions`, handed to the engine as is) and how the engine runs (`EngineOptions`). The command configs in
`sdft.options` compose them; engines read them. Light on purpose: no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sdft.core.config import Options, at_least, field, within

EMBEDDED_MODEL = "smollm2-135m-instruct"
DTYPE_NAMES = ("auto", "fp32", "bf16", "fp16")
QUANTIZATIONS = ("none", "int8")
KV_CACHES = ("model", "fp16")
DEFAULT_MAX_NEW_TOKENS = 512


@dataclass(kw_only=True)
class SeedOption(Options):
    seed: int = field(42, help="seed for subsets, sampling, mixing and initialisation")


@dataclass(kw_only=True)
class ModelOptions(Options):
    model: str = field(EMBEDDED_MODEL, help="HF hub id, local HF folder, .gguf file, or smollm2-135m-instruct")
    dtype: str = field("auto", choices=DTYPE_NAMES,
                       help="weights dtype; auto: bf16 on CUDA; on CPU fp32 or bf16, whichever a timed matmul of the "
                            "model's shapes runs faster here (measured once, cached; training keeps fp32 weights and "
                            "autocasts to bf16 where that is faster)")


@dataclass(kw_only=True)
class AdaptedModelOptions(ModelOptions):
    adapter: str | None = field(None, help="PEFT adapter folder from `sdft train`")


@dataclass(kw_only=True)
class DecodingOptions(SeedOption):
    """What one generation call decodes; engines take it per call, so one engine serves several settings."""

    max_new_tokens: int | None = field(None, check=at_least(1),
                                       help=f"length cap in new tokens (default: {DEFAULT_MAX_NEW_TOKENS}; in eval each "
                                            "benchmark's own); distillation rejects rewrites cut at the cap")
    temperature: float = field(0.0, check=at_least(0), help="0 = greedy; the paper distilled at 0.95 with top_p 0.7")
    top_p: float = field(1.0, check=within(0, 1, low_open=True), help="nucleus sampling mass")
    top_k: int = field(0, check=at_least(0), help="sample among the k likeliest tokens only (0: all); the reference "
                                                  "sampled with LLaMA-Factory's top_k 50")
    stop: list[str] = field([], help="stop strings")

    def decoding(self, cap: int = DEFAULT_MAX_NEW_TOKENS) -> DecodingOptions:
        """These settings alone, as an engine call takes them, the length cap set to `cap` unless given."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(DecodingOptions)}
        return DecodingOptions(**{**values, "max_new_tokens": self.max_new_tokens or cap})


@dataclass(kw_only=True)
class EngineOptions(Options):
    backend: str = field("auto", choices=("auto", "hf", "vllm"), help="generation engine (auto: vLLM on CUDA when installed)")
    decode_rows: int = field(96, check=at_least(1), help="rows decoding at once at most")
    quantize: str = field("none", choices=QUANTIZATIONS, omit_default=True,
                          help="int8: generate with int8 weights (per channel) and int8 activations (per row), PyTorch's "
                               "fbgemm kernels, on the lean CPU engine (Llama/Qwen2, fp32 weights); faster, not exact "
                               "(docs/performance.md)")
    kv_cache: str = field("model", choices=KV_CACHES, omit_default=True,
                          help="fp16: keep the decoding K/V cache in fp16 on the lean CPU engine (fp32 weights): decoding "
                               "attention reads half the bytes; faster, not exact (docs/performance.md). model: the "
                               "model's dtype")

    @property
    def lean_cpu_only(self) -> bool:
        """Whether these options ask for what only the lean CPU engine does (quantized linears, an fp16 cache)."""
        return self.quantize != "none" or self.kv_cache != "model"
