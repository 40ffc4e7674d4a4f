"""Generation throughput of the sdft engine against HF `model.generate` (batch 1, the reference code's way; and batch 32)
and llama.cpp on the same GGUF, on realistic distillation prompts (GSM8K + Alpaca), greedy.

Engines run in interleaved rounds over disjoint slices of the prompts, so load from other processes on a shared machine
falls on all of them alike. Throughput counts useful tokens: generated tokens up to (not including) EOS. sdft gets each
round's whole slice (128 prompts by default), as a distillation hands it a whole dataset — its continuous batching needs
prompts waiting to refill finished rows, and the drain at the end, when none are left, is included; the slow baselines
run on a spread subset of the same slice.

    python perf/generation_throughput.py [--prompts 256] [--new-tokens 256] [--rounds 2] [--quick] [--quality]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from sdft.analysis.stats import paired_bootstrap
from sdft.core.jsonl import read_jsonl
from sdft.core.paths import data_dir
from sdft.data.templates import render
from sdft.engines.dtype_probe import cpu_flags, cpu_identity
from sdft.engines.generation import HFEngine
from sdft.engines.models import embedded_gguf_path, load_model, needs_bos
from sdft.engines.options import DecodingOptions
from sdft.evaluation.checks import math_check

MODEL = "smollm2-135m-instruct"


def distill_prompts(tokenizer, n: int) -> list[str]:
    """GSM8K and Alpaca distillation prompts alternating, so every slice of the list is half of each."""
    data = data_dir()
    gsm8k = [render("gsm8k_distill", {"instruction": r["question"], "response": r["answer"]}, tokenizer)
             for r in read_jsonl(data / "gsm8k" / "sdft_gsm8k_train.jsonl")[:(n + 1) // 2]]
    alpaca = [render("distill_using", {"instruction": "\n".join(filter(None, [r["instruction"], r["input"]])),
                                       "response": r["output"]}, tokenizer)
              for r in read_jsonl(data / "alpaca" / "sdft_alpaca_train.jsonl")[:n // 2]]
    return [p for pair in zip(gsm8k, alpaca) for p in pair] + gsm8k[len(alpaca):]


class Meter:
    """Useful tokens and seconds summed over rounds."""

    def __init__(self):
        self.tokens, self.seconds = 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    @property
    def rate(self) -> float | None:
        return round(self.tokens / self.seconds, 1) if self.seconds else None


def time_sdft(engine: HFEngine, prompts: list[str], new_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = sum(c.n_tokens for batch in engine.complete(prompts, DecodingOptions(max_new_tokens=new_tokens)) for _, c in batch)
    return tokens, time.perf_counter() - start


@torch.inference_mode()
def hf_generate_rows(model, tokenizer, prompts: list[str], new_tokens: int, batch_size: int) -> list[list[int]]:
    """HF `model.generate` over left-padded batches of `batch_size`: each prompt's greedy tokens up to (not including)
    EOS."""
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    rows = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        inputs = tokenizer(batch, return_tensors="pt", padding=True,
                           add_special_tokens=needs_bos(tokenizer, batch[0])).to(model.device)
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        rows += [row[: row.index(eos)] if eos in row else row for row in out[:, inputs.input_ids.shape[1]:].tolist()]
    return rows


def time_hf_generate(model, tokenizer, prompts: list[str], new_tokens: int, batch_size: int) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = sum(map(len, hf_generate_rows(model, tokenizer, prompts, new_tokens, batch_size)))
    return tokens, time.perf_counter() - start


def time_llamacpp(llm, prompts: list[str], new_tokens: int) -> tuple[int, float]:
    tokens, start = 0, time.perf_counter()
    for prompt in prompts:
        out = llm.create_completion(prompt, max_tokens=new_tokens, temperature=0.0)
        tokens += out["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - start


def load_llamacpp():
    """llama.cpp on the embedded GGUF, or None when llama-cpp-python is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    return Llama(model_path=str(embedded_gguf_path()), n_ctx=2048, n_threads=2, verbose=False)


def fresh_process_json(command: list[str]) -> dict:
    """The JSON object a measuring child process prints as its last stdout line: each part and each trainer is
    measured in a new process, so one's leftover heap and threads do not slow the next."""
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> int:
    """This process's peak resident memory. Not ru_maxrss alone: Linux carries it over from the parent across exec,
    so a fresh process started by a large one (a part or a trainer started by run_all) would report the parent's
    peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        return next(int(line.split()[1]) // 1024 for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def machine_info() -> dict:
    """The machine a run measured: the CPU as the dtype probe tells CPUs apart (these VMs give a Zen 4 and a Zen 5, or
    Xeons with and without AMX, the same model name) and the matrix units its bf16 matmuls may use."""
    flags = cpu_flags()
    units = [name for name, flag in (("AMX", "amx_bf16"), ("AVX-512 BF16", "avx512_bf16"), ("AVX-512", "avx512f"))
             if flag in flags]
    return {"cpu": cpu_identity(), "matrix_units": units, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def distill_quality(n: int, new_tokens: int) -> dict:
    """Greedy bf16 vs fp32 on the scorer distillation itself applies: the share of GSM8K rewrites the math check accepts
    (the model sees the reference answer, so it is well off the floor), with a paired bootstrap of the difference, plus
    how close the bf16 rewrites stay to the fp32 ones (identical outputs, ROUGE-L)."""
    from rouge_score import rouge_scorer

    rows = read_jsonl(data_dir() / "gsm8k" / "sdft_gsm8k_train.jsonl")[:n]
    result = {"n": len(rows), "scorer": "GSM8K distillation rewrites accepted by the math check"}
    outputs, accepted = {}, {}
    for dtype in ("fp32", "bf16"):
        model, tokenizer = load_model(MODEL, dtype=dtype, device="cpu")
        engine = HFEngine(model, tokenizer)
        prompts = [render("gsm8k_distill", {"instruction": r["question"], "response": r["answer"]}, tokenizer) for r in rows]
        out = {i: c.text for batch in engine.complete(prompts, DecodingOptions(max_new_tokens=new_tokens)) for i, c in batch}
        outputs[dtype] = [out[i] for i in range(len(rows))]
        accepted[dtype] = {str(i): float(math_check(out[i], r["answer"]).ok) for i, r in enumerate(rows)}
        result[f"accepted_{dtype}"] = 100 * sum(accepted[dtype].values()) / len(rows)
    result["bf16_minus_fp32"] = paired_bootstrap(accepted["fp32"], accepted["bf16"])
    pairs = list(zip(outputs["fp32"], outputs["bf16"]))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    result["identical_outputs"] = sum(a == b for a, b in pairs) / len(pairs)
    result["rouge_l_bf16_vs_fp32"] = 100 * sum(scorer.score(a, b)["rougeL"].fmeasure for a, b in pairs) / len(pairs)
    return result


def run(args: argparse.Namespace) -> dict:
    """Measure every engine on the same prompts; return (and print) the results as a dict."""
    model, tokenizer = load_model(MODEL, dtype="auto", device="cpu")
    model_fp32 = model if model.dtype == torch.float32 else load_model(MODEL, dtype="fp32", device="cpu")[0]
    model_bf16 = model if model.dtype == torch.bfloat16 else load_model(MODEL, dtype="bf16", device="cpu")[0]
    llm = load_llamacpp()
    prompts = distill_prompts(tokenizer, args.prompts)
    engine = HFEngine(model, tokenizer)
    meters = {name: Meter() for name in ("sdft", "hf_bs1_fp32", "hf_bs32_bf16", "llamacpp")}
    per_round_subset = max(1, args.subset // args.rounds)
    for r in range(args.rounds):
        share = prompts[r :: args.rounds]
        subset = share[:: max(1, len(share) // per_round_subset)][:per_round_subset]
        meters["sdft"].add(*time_sdft(engine, share, args.new_tokens))
        meters["hf_bs1_fp32"].add(*time_hf_generate(model_fp32, tokenizer, subset, args.new_tokens, 1))
        if llm is not None:
            meters["llamacpp"].add(*time_llamacpp(llm, subset, args.new_tokens))
        if not args.quick:
            meters["hf_bs32_bf16"].add(*time_hf_generate(model_bf16, tokenizer, share[::2][:32], args.new_tokens, 32))
    rates = {name: meter.rate for name, meter in meters.items()}
    result = {
        "prompts": len(prompts), "new_tokens": args.new_tokens, "rounds": args.rounds, "subset": per_round_subset * args.rounds,
        "sdft_dtype": str(model.dtype).removeprefix("torch."),
        "tok_s": rates,
        "gen_speedup_vs_hf_bs1": round(rates["sdft"] / rates["hf_bs1_fp32"], 2),
        "gen_speedup_vs_llamacpp": round(rates["sdft"] / rates["llamacpp"], 2) if rates["llamacpp"] else None,
        "peak_rss_mib": peak_rss_mb(),
        "machine": machine_info(),
    }
    if args.quality:
        result["quality"] = distill_quality(args.quality_n, args.new_tokens)
    print(json.dumps(result, indent=2))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds, each over its own slice of prompts")
    parser.add_argument("--subset", type=int, default=8, help="prompts for the slow single-stream engines, in all")
    parser.add_argument("--quick", action="store_true", help="32 prompts, 64 new tokens, one round, no HF batch-32 run")
    parser.add_argument("--quality", action="store_true", help="also GSM8K distillation acceptance, greedy bf16 vs fp32")
    parser.add_argument("--quality-n", type=int, default=128)
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.rounds, args.subset = 32, 64, 1, 2
    return args


if __name__ == "__main__":
    run(parse_args(sys.argv[1:]))
