"""The vLLM engine (CUDA, optional extra `sdft[vllm]`)."""

from __future__ import annotations

import importlib.util
from typing import Iterable, Iterator, Sequence

import torch

from sdft.engines.generation.interfaces import Completion
from sdft.engines.generation.output import prompt_hash
from sdft.engines.options import DecodingOptions


class VLLMEngine:
    """vLLM on CUDA: the same interface, with vLLM's continuous batching doing the scheduling."""

    def __init__(self, model_path: str, dtype: str = "auto"):
        from vllm import LLM  # optional extra: pip install 'sdft[vllm]'

        from sdft.engines.models import load_tokenizer

        self.tokenizer = load_tokenizer(model_path)  # the HF tokenizer renders prompts, as with HFEngine
        self.llm = LLM(model=model_path, dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, "auto"))

    def torch_model(self) -> None:
        """None: the weights live in vLLM's workers, out of reach of log-likelihood scorers."""
        return None

    def complete(self, prompts: Sequence[str], decoding: DecodingOptions, skip: Iterable[int] = ()
                 ) -> Iterator[list[tuple[int, Completion]]]:
        from vllm import SamplingParams

        todo = [i for i in range(len(prompts)) if i not in set(skip)]
        # each request seeded by (seed, prompt), as the HF engine's rows
        sampled = decoding.temperature > 0
        params = [SamplingParams(temperature=decoding.temperature, top_p=decoding.top_p if sampled else 1.0,
                                 top_k=decoding.top_k if sampled and decoding.top_k else -1,  # -1: vLLM's "all"
                                 max_tokens=decoding.max_new_tokens, stop=list(decoding.stop) or None,
                                 seed=int(prompt_hash(f"{decoding.seed}|{prompts[i]}"), 16) % (2**31)) for i in todo]
        for start in range(0, len(todo), 1024):  # chunks so a kill loses at most one chunk
            chunk = todo[start : start + 1024]
            outputs = self.llm.generate([prompts[i] for i in chunk], params[start : start + 1024], use_tqdm=False)
            yield [(i, _vllm_completion(out)) for i, out in zip(chunk, outputs)]


def _vllm_completion(request_output) -> Completion:
    out = request_output.outputs[0]
    return Completion(text=out.text, finish_reason="length" if out.finish_reason == "length" else "stop",
                      n_tokens=len(out.token_ids), prompt_tokens=len(request_output.prompt_token_ids or []))


def vllm_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None
