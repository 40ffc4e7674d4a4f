"""Training throughput: `sdft train`'s engine vs TRL's SFTTrainer at its defaults and tuned, same data/LoRA/batch/length.

Both train the embedded SmolLM2-135M-Instruct with LoRA r8/alpha16 on q_proj,v_proj, batch 8, max length 256, on the
same GSM8K rows, prompt masked out of the loss. TRL keeps every other setting at its default (bf16, gradient
checkpointing, entropy/accuracy metrics...), which is what a user who picked TRL would get; the tuned run changes
what an expert would (`trl_tuned_options`), in the faster of fp32 and bf16 autocast on a short trial of each here.
The compute bound is the FLOPs per token at the measured peak matmul rate. Useful tokens/s counts the non-padding
tokens fed per second over the timed steps (the first step is warm-up and not timed).

Each trainer runs in a fresh process (one trainer's leftover heap must not slow the next), sdft and tuned TRL in
alternating rounds; each rate is the median of its rounds, so a slow spell of this shared machine hits both alike.

    python perf/training_throughput.py [--steps 6] [--rounds 5] [--trl-defaults-steps 1] [--dtype-trial-steps 2]
                                       [--examples 256]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from generation_throughput import (  # same folder: shared measurement helpers
    fresh_process_json,
    machine_info,
    peak_rss_mb,
)
from peer_throughput import fastest, sampled_around

TUNED_DTYPES = {"fp32": False, "bf16": True}  # tuned TRL's candidates: the value of its `bf16` (autocast) option
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
BATCH, MAX_LENGTH = 8, 256


class TokenCounter:
    """Wraps a data collator to count the real (non-padding) tokens of each batch."""

    def __init__(self, collator):
        self.collator = collator
        self.tokens: list[int] = []

    def __call__(self, features):
        batch = self.collator(features)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


def _step_clock():
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return StepClock()


def _throughput(clock, counter) -> dict:
    timed = clock.ends[1:]
    seconds = timed[-1] - clock.ends[0]
    tokens = sum(counter.tokens[1 : len(clock.ends)])
    return {"tokens_per_s": tokens / seconds, "s_per_step": seconds / len(timed), "steps_timed": len(timed),
            "peak_rss_mb": peak_rss_mb()}


def _rows(n: int) -> list[dict]:
    from sdft.data.datasets import load_dataset

    return load_dataset("gsm8k", limit=n, seed=0).examples


def _examples(rows) -> list:
    """The rows as sdft trains on them: GSM8K prompt template, response labels, cut at MAX_LENGTH."""
    from sdft.data.templates import render
    from sdft.engines.models import load_tokenizer
    from sdft.engines.training import tokenize_example

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    return [tokenize_example(tokenizer, render("gsm8k", r, tokenizer), r["response"], MAX_LENGTH) for r in rows]


def bench_sdft(examples, steps: int, out: Path) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sdft.engines.models import load_tokenizer, resolve_model
    from sdft.engines.training import TrainerSettings, train_model

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct")), LoraConfig(**LORA))
    clock, counters = _step_clock(), []

    def instrument(trainer):
        counters.append(TokenCounter(trainer.data_collator))
        trainer.data_collator = counters[0]
        trainer.add_callback(clock)

    settings = TrainerSettings(epochs=1, max_steps=steps + 1, learning_rate=1e-4, batch_size=BATCH, micro_batch_size=BATCH,
                               seed=0, save_steps=10_000, logging_steps=10_000, bf16=None)
    train_model(model, tokenizer, examples, out, settings, before_train=instrument)
    return _throughput(clock, counters[0])


def trl_tuned_options(dtype: str) -> dict:
    """What an expert changes in TRL's defaults on this machine: `dtype` (`tuned_dtype`: the faster here), no gradient
    checkpointing, length-grouped batches. Padding-free needs FlashAttention (not on CPU), and TRL 1.16's
    entropy/token-accuracy metrics come from its fused LM head with no switch to turn them off."""
    return {"bf16": TUNED_DTYPES[dtype], "gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"}


def tuned_dtype(steps: int, examples: int) -> tuple[str, dict]:
    """(the faster of fp32 and bf16 autocast for tuned TRL on this machine, each one's tokens/s), on a short trial of
    the trainer itself, each in a fresh process. sdft's dtype probe times a bare matmul; autocast also casts every
    weight at each forward and runs the backward, so the trainer's own steps decide."""
    return fastest(TUNED_DTYPES,
                   lambda dtype: round(in_fresh_process(f"trl_tuned_{dtype}", steps, examples)["tokens_per_s"], 1))


def bench_trl(rows, steps: int, out: Path, **options) -> dict:
    """TRL's SFTTrainer at its defaults, with `options` (SFTConfig fields) changed."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sdft.data.templates import GSM8K_SYSTEM
    from sdft.engines.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    data = Dataset.from_list([{"prompt": [{"role": "system", "content": GSM8K_SYSTEM}, {"role": "user", "content": r["instruction"]}],
                               "completion": [{"role": "assistant", "content": r["response"]}]} for r in rows])
    config = SFTConfig(output_dir=str(out), per_device_train_batch_size=BATCH, max_length=MAX_LENGTH, max_steps=steps + 1,
                       report_to="none", save_strategy="no", use_cpu=not torch.cuda.is_available(), **options)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"))
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=LoraConfig(**LORA))
    counter, clock = TokenCounter(trainer.data_collator), _step_clock()
    trainer.data_collator = counter
    trainer.add_callback(clock)
    trainer.train()
    return _throughput(clock, counter)


def bound_model():
    """The embedded model as training loads it, for the bound's FLOPs and dtype."""
    from transformers import AutoModelForCausalLM

    from sdft.engines.models import resolve_model

    return AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"))


def training_dtype(model) -> torch.dtype:
    from sdft.engines.training import use_bf16

    return torch.bfloat16 if use_bf16(None, model) else torch.float32


def peak_sample(model) -> float:
    """One sample of the peak matmul rate in training's dtype at the model's MLP shape."""
    from peer_throughput import peak_matmul_gflops

    return peak_matmul_gflops(training_dtype(model), model.config.hidden_size, model.config.intermediate_size)


def compute_bound(examples, model, peak_samples: list[float]) -> dict:
    """Tokens/s if LoRA training's FLOPs ran at the peak matmul rate (the best of the samples taken around sdft's
    rounds): per token a forward through the layers' Linear weights and the backward to their inputs (as much again;
    frozen weights get no gradient, LoRA's own are negligible), and the same for the LM head at the positions that
    carry a loss (the response). Attention is left out (short sequences), so the bound is slightly generous."""
    from sdft.engines.training import IGNORE_INDEX

    from peer_throughput import linear_flops_per_token

    tokens = sum(len(e.input_ids) for e in examples)
    trained = sum(sum(label != IGNORE_INDEX for label in e.labels) for e in examples)
    body = linear_flops_per_token(model, head=False)
    flops = 2 * (body * tokens + (linear_flops_per_token(model) - body) * trained) / tokens
    rate = max(peak_samples)
    return {"dtype": str(training_dtype(model)).removeprefix("torch."), "peak_matmul_gflops": round(rate, 1),
            "peak_samples_gflops": [round(sample, 1) for sample in peak_samples],
            "gflop_per_token": round(flops / 1e9, 3), "tokens_per_s": round(rate * 1e9 / flops, 1)}


def bench_trl_tuned(dtype: str):
    """Tuned TRL in `dtype` as a TRAINERS entry (a function of its own, so each entry keeps its dtype)."""
    return lambda rows, steps, out: bench_trl(rows, steps, out, **trl_tuned_options(dtype))


TRAINERS = {"sdft": lambda rows, steps, out: bench_sdft(_examples(rows), steps, out),
            "trl_defaults": lambda rows, steps, out: bench_trl(rows, steps, out),
            **{f"trl_tuned_{dtype}": bench_trl_tuned(dtype) for dtype in TUNED_DTYPES}}


def in_fresh_process(trainer: str, steps: int, examples: int) -> dict:
    """One trainer's throughput, measured in a new Python process (this script with --trainer)."""
    return fresh_process_json([sys.executable, __file__, "--trainer", trainer, "--steps", str(steps),
                               "--examples", str(examples)])


def median_round(rounds: list[dict]) -> dict:
    """The median of the rounds' rates with every round's rate; the other figures (seconds a step, peak RSS) are the
    round's nearest the median."""
    median = statistics.median(r["tokens_per_s"] for r in rounds)
    nearest = min(rounds, key=lambda r: abs(r["tokens_per_s"] - median))
    return {**nearest, "tokens_per_s": median, "rounds_tokens_per_s": [round(r["tokens_per_s"], 1) for r in rounds]}


def run(args) -> dict:
    trl = in_fresh_process("trl_defaults", min(args.steps, args.trl_defaults_steps), args.examples)
    dtype, dtype_trial = tuned_dtype(min(args.steps, args.dtype_trial_steps), args.examples)
    tuned_trainer = f"trl_tuned_{dtype}"
    rounds: dict[str, list[dict]] = {"sdft": [], tuned_trainer: []}
    model, samples = bound_model(), []
    for _ in range(args.rounds):
        for trainer, results in rounds.items():
            work = functools.partial(in_fresh_process, trainer, args.steps, args.examples)
            results.append(sampled_around(work, lambda: peak_sample(model), samples) if trainer == "sdft" else work())
    ours, tuned = median_round(rounds["sdft"]), median_round(rounds[tuned_trainer])
    rate = ours["tokens_per_s"]
    bound = compute_bound(_examples(_rows(args.examples)), model, samples)
    # sdft and tuned TRL run back to back within a round, so a round's ratio is the one least moved by this machine's
    # slow spells; shown beside the ratio of the medians (the headline)
    paired = [round(a["tokens_per_s"] / b["tokens_per_s"], 2) for a, b in zip(rounds["sdft"], rounds[tuned_trainer])]
    return {"train_speedup_vs_trl": rate / trl["tokens_per_s"],
            "train_compute_bound": {**bound, "sdft_share": round(rate / bound["tokens_per_s"], 3)},
            "train_speedup_vs_trl_tuned": rate / tuned["tokens_per_s"],
            "train_speedup_vs_trl_tuned_per_round": paired,
            "train_sdft": ours, "train_trl_defaults": trl,
            "train_trl_tuned": {**tuned, "options": trl_tuned_options(dtype), "dtype": dtype,
                                "dtype_trial_tokens_per_s": dtype_trial},
            "train_setup": {"examples": args.examples, "batch": BATCH, "max_length": MAX_LENGTH, "lora": LORA,
                            "rounds": args.rounds, "process": "each trainer in a fresh process; sdft and tuned TRL alternate"},
            "train_peak_rss_mb": ours["peak_rss_mb"], "machine": machine_info()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per trainer (after one warm-up step)")
    p.add_argument("--trl-defaults-steps", type=int, default=1,
                   help="timed steps for TRL at its defaults: 30x slower where bf16 is slow, and steady from step to step")
    p.add_argument("--dtype-trial-steps", type=int, default=2,
                   help="timed steps of tuned TRL in fp32 and in bf16 autocast; the faster runs the rounds")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="alternating sdft / tuned TRL runs; the median is reported")
    p.add_argument("--trainer", choices=sorted(TRAINERS), help="time this one trainer here and print its JSON line")
    return p


if __name__ == "__main__":
    arguments = parser().parse_args()
    if arguments.trainer:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(TRAINERS[arguments.trainer](_rows(arguments.examples), arguments.steps, Path(tmp))))
    else:
        print(json.dumps(run(arguments), indent=2))
