"""Generation throughput on one CUDA GPU without vLLM: sdft's HF engine (the lean stepper, continuous batching) and
its fixed-batch fallback (the model's own forward) against transformers' own continuous batching (`generate_batch`)
and a padded `model.generate`, on the same GSM8K distillation prompts, greedy, bf16 (`--dtype auto` on CUDA).

Each engine runs once to warm up (CUDA kernels load, caches fill), then `--rounds` timed rounds in alternation; the
figure is the median round. Useful tokens are generated tokens up to (not including) EOS.

`--random-weights` builds the model's architecture with random weights: for a GPU machine the weights cannot reach.
The work per token is the same, but outputs mean nothing and rows mostly run to the token cap, so the rates measure
the engines, not the model; `identical_to_generate` shows how far the engines' greedy outputs agree in bf16.

    python perf/gpu_throughput.py [--model smollm2-135m-instruct] [--prompts 128] [--new-tokens 256] [--random-weights]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from sdft.engines.generation import HFEngine, LeanLlamaStepper
from sdft.engines.generation.scheduler import cache_token_budget
from sdft.engines.models import load_model, load_tokenizer, resolve_dtype, resolve_model
from sdft.engines.options import DecodingOptions

from generation_throughput import hf_generate_rows
from peer_throughput import gsm8k_prompts, transformers_tokens


def load(spec: str, random_weights: bool):
    if not random_weights:
        return load_model(spec, dtype="auto", device="cuda")
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    path = resolve_model(spec)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=resolve_dtype("auto", "cuda"))
    return model.to("cuda").eval(), load_tokenizer(spec)


def sdft_run(model, tokenizer, prompts: list[str], new_tokens: int, decode_rows: int, lean: bool = True):
    """(useful tokens, texts in prompt order) of one engine call; `lean=False` forces the fixed-batch fallback."""
    supports = LeanLlamaStepper.supports
    if not lean:
        LeanLlamaStepper.supports = classmethod(lambda cls, m: False)
    try:
        engine = HFEngine(model, tokenizer, decode_rows)
        out = {i: c for batch in engine.complete(prompts, DecodingOptions(max_new_tokens=new_tokens)) for i, c in batch}
    finally:
        LeanLlamaStepper.supports = supports
    return sum(c.n_tokens for c in out.values()), [out[i].text for i in range(len(prompts))]


def generate_run(model, tokenizer, prompts: list[str], new_tokens: int):
    """`model.generate` over the whole left-padded batch at once, as a GPU user without an engine would run it."""
    rows = hf_generate_rows(model, tokenizer, prompts, new_tokens, batch_size=len(prompts))
    return sum(map(len, rows)), [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def run(args: argparse.Namespace) -> dict:
    model, tokenizer = load(args.model, args.random_weights)
    prompts = gsm8k_prompts(tokenizer, args.prompts)
    engines = {
        "sdft": lambda: sdft_run(model, tokenizer, prompts, args.new_tokens, args.decode_rows),
        "sdft_fixed_batches": lambda: sdft_run(model, tokenizer, prompts, args.new_tokens, args.decode_rows, lean=False),
        "transformers_generate_batch": lambda: (transformers_tokens(model, tokenizer, prompts, args.new_tokens), None),
        "model_generate_padded": lambda: generate_run(model, tokenizer, prompts, args.new_tokens),
    }
    rates: dict[str, list[float]] = {name: [] for name in engines}
    texts: dict[str, list[str]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, call in engines.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            tokens, out = call()
            torch.cuda.synchronize()
            if r:
                rates[name].append(round(tokens / (time.perf_counter() - start), 1))
            elif out is not None:
                texts[name] = [t.strip() for t in out]
    median = {name: statistics.median(r) for name, r in rates.items()}
    reference = texts["model_generate_padded"]
    return {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
        "random_weights": args.random_weights, "dtype": str(model.dtype).removeprefix("torch."),
        "prompts": len(prompts), "new_tokens": args.new_tokens, "decode_rows": args.decode_rows,
        "cache_token_budget": cache_token_budget(model),
        "tok_s": median, "rounds_tok_s": rates,
        "sdft_vs": {name: round(median["sdft"] / rate, 2) for name, rate in median.items() if name != "sdft"},
        "identical_to_generate": {name: sum(a == b for a, b in zip(t, reference)) / len(prompts)
                                  for name, t in texts.items() if t is not reference},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--random-weights", action="store_true", help="the model's architecture, random weights")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--decode-rows", type=int, default=128, help="sdft's rows decoding at once")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the results here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(sys.argv[1:])
    if not torch.cuda.is_available():
        sys.exit("gpu_throughput: no CUDA device")
    results = run(args)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
