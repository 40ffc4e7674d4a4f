"""Generation throughput against the peers a user who generates a whole dataset would pick, on the same prompts: llama.cpp's
own `llama-server` (continuous batching, at its best slot count), CTranslate2's `generate_batch` (sorted by length and
split into batches, at its best batch size, worker split and compute type), transformers' own continuous batching
(`generate_batch`), plus the machine's compute bound for the workload, its memory bound (weights and K/V read at the
measured read rate) and sdft's share of each and of the lower of the two (the roofline). Each peer runs at the settings
its own documentation advises for batch throughput; where it offers several, the fastest on a short trial, every tried
setting's rate recorded. The published ratio is sdft's to the best peer of the same run (`sdft_over_best_peer`).

128 GSM8K distillation prompts (chat template), 256 new tokens, greedy, the model already loaded; sdft, llama-server and
CTranslate2 alternate for three rounds and each ratio to them is the median of the rounds' own; transformers'
`generate_batch`, far slower, runs once; useful tokens are generated tokens up to (not including) EOS. sdft runs with
`--dtype auto` (and, where auto is not fp32, with fp32 too) and with its opt-ins for speed (FAST_VARIANTS: an fp16 K/V
cache; int8 linears beside it) in each round. Peers are optional (`pip install -r perf/requirements.txt`,
`perf/build_llama_server.sh`); a missing one is reported as null.

    python perf/peer_throughput.py [--prompts 128] [--new-tokens 256] [--rounds 3] [--hf-prompts 32]
                                   [--ct2-batch-prompts 16 32 64] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from sdft.analysis.stats import paired_bootstrap
from sdft.core.jsonl import read_jsonl
from sdft.core.paths import cache_dir, data_dir
from sdft.data.templates import render
from sdft.engines.dtype_probe import best_seconds, matmul_seconds
from sdft.engines.generation import HFEngine, shared_prefixes
from sdft.engines.generation.lean_llama import Int8Linear, LeanLlamaStepper, PackedLinear
from sdft.engines.models import embedded_gguf_path, load_model, resolve_model
from sdft.engines.options import DecodingOptions
from sdft.evaluation.checks import math_check

MODEL = "smollm2-135m-instruct"
SLOT_COUNTS = (16, 32, 64)
CT2_BATCH_PROMPTS = (16, 32, 64)  # CTranslate2's max_batch_size to try, as that many prompts' worth of tokens
# every llama-server request: greedy, and its default prompt cache (a slot reuses the K/V of the prefix its next prompt
# shares, as sdft prefills a shared prefix once; each round starts a fresh server, so no round reuses another's)
LLAMA_SERVER_REQUEST = {"temperature": 0.0, "top_k": 1, "cache_prompt": True}
# sdft's opt-ins for speed (not exact), each run beside the exact engine in every round: engine options by name
FAST_VARIANTS = {"kv16": {"kv_cache": "fp16"}, "int8_kv16": {"quantize": "int8", "kv_cache": "fp16"}}


def gsm8k_rows(n: int) -> list[dict]:
    return read_jsonl(data_dir() / "gsm8k" / "sdft_gsm8k_train.jsonl")[:n]


def gsm8k_prompts(tokenizer, n: int) -> list[str]:
    return [render("gsm8k_distill", {"instruction": r["question"], "response": r["answer"]}, tokenizer) for r in gsm8k_rows(n)]


def timed(fn, *args) -> dict:
    start = time.perf_counter()
    tokens = fn(*args)
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": round(seconds, 2), "tok_s": round(tokens / seconds, 1)}


def sdft_tokens(engine: HFEngine, prompts: list[str], new_tokens: int, outputs: list | None = None) -> int:
    """Useful tokens of one engine call; `outputs` receives each prompt's completion."""
    out = {i: c for batch in engine.complete(prompts, DecodingOptions(max_new_tokens=new_tokens)) for i, c in batch}
    if outputs is not None:
        outputs[:] = [out[i] for i in range(len(prompts))]
    return sum(c.n_tokens for c in out.values())


def transformers_tokens(model, tokenizer, prompts: list[str], new_tokens: int) -> int:
    """transformers' own continuous batching (paged attention over SDPA)."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    inputs = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    outputs = model.generate_batch(inputs=inputs, generation_config=config)
    eos = tokenizer.eos_token_id
    return sum(len([t for t in out.generated_tokens if t != eos]) for out in outputs.values())


def ctranslate2_model() -> Path:
    """The embedded model's HF folder converted for CTranslate2, once, with `ct2-transformers-converter`."""
    source = Path(resolve_model(MODEL))
    target = cache_dir() / "ct2" / source.name
    if not (target / "model.bin").is_file():
        converter = shutil.which("ct2-transformers-converter", path=str(Path(sys.executable).parent))
        subprocess.run([converter, "--model", str(source), "--output_dir", str(target), "--force"], check=True)
    return target


class CTranslate2:
    """CTranslate2's `generate_batch` at one configuration: its `compute_type`, `inter_threads` workers sharing
    `threads` (each runs a batch of its own), and its batching: with `max_batch_size` 0 every prompt in one padded
    batch, else the prompts sorted by length and split into batches of that many `batch_type` ("examples" or
    "tokens")."""

    def __init__(self, threads: int, compute_type: str, inter_threads: int = 1, max_batch_size: int = 0,
                 batch_type: str = "examples"):
        import ctranslate2

        self.generator = ctranslate2.Generator(str(ctranslate2_model()), device="cpu", compute_type=compute_type,
                                               inter_threads=inter_threads,
                                               intra_threads=max(1, threads // inter_threads))
        self.batching = {"max_batch_size": max_batch_size, "batch_type": batch_type}

    def tokens(self, tokenizer, prompts: list[str], new_tokens: int, texts: list | None = None) -> int:
        """Useful tokens of every prompt given in one call, as a dataset job gives them; `texts` gets the outputs."""
        starts = [tokenizer.convert_ids_to_tokens(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        results = self.generator.generate_batch(starts, max_length=new_tokens, sampling_topk=1,
                                                include_prompt_in_result=False, end_token=tokenizer.eos_token,
                                                **self.batching)
        generated = [[t for t in r.sequences_ids[0] if t != tokenizer.eos_token_id] for r in results]
        if texts is not None:
            texts[:] = tokenizer.batch_decode(generated, skip_special_tokens=True)
        return sum(map(len, generated))


def fastest(settings, rate) -> tuple:
    """(the setting `rate` measured fastest, every setting's rate): a peer is measured at its best configuration,
    picked on a short trial."""
    trial = {setting: rate(setting) for setting in settings}
    return max(trial, key=trial.get), trial


def ctranslate2_batchings(mean_prompt_tokens: int, threads: int, batch_prompts) -> dict[str, dict]:
    """CTranslate2's batchings to try, by label, as its docs advise for throughput: a `max_batch_size` (the prompts are
    then sorted by length and split, so a batch's prompts are forwarded at once with little padding), counted in
    "tokens" ("to make the total number of elements in a batch more constant"), here `batch_prompts` prompts of the mean
    length; on one worker, or, for "a large volume of data", `inter_threads` over `intra_threads` (a worker a thread,
    their batches in parallel)."""
    return {f"max_batch_size {n * mean_prompt_tokens} tokens (~{n} prompts), inter_threads {workers}":
            {"max_batch_size": n * mean_prompt_tokens, "batch_type": "tokens", "inter_threads": workers}
            for n in batch_prompts for workers in sorted({1, threads})}


def ctranslate2_configuration(compute_types, batchings: dict[str, dict], rate) -> tuple[dict, dict]:
    """(CTranslate2's fastest configuration, every tried setting's trial rate): its batching first, in the first compute
    type (int8: its docs' first advice for CPUs), then in that batching its compute type. `rate(configuration)` is the
    tokens/s of a short trial."""
    batching, batching_trial = fastest(batchings,
                                       lambda label: rate({"compute_type": compute_types[0], **batchings[label]}))
    compute_type, type_trial = fastest(compute_types, lambda c: rate({**batchings[batching], "compute_type": c}))
    return ({"compute_type": compute_type, **batchings[batching]},
            {"batching_trial_tok_s": batching_trial, "compute_type_trial_tok_s": type_trial})


def bench_ctranslate2_configuration(tokenizer, prompts: list[str], new_tokens: int, threads: int, compute_types,
                                    batch_prompts, mean_prompt_tokens: int) -> tuple[dict, dict] | None:
    """CTranslate2's fastest configuration and its trials (None where it is not installed). Each trial runs every
    prompt (how they sort and split into batches depends on how many there are) at a quarter of the length."""
    if importlib.util.find_spec("ctranslate2") is None:
        return None

    def rate(configuration: dict) -> float:
        generator = CTranslate2(threads, **configuration)
        return timed(generator.tokens, tokenizer, prompts, max(16, new_tokens // 4))["tok_s"]

    return ctranslate2_configuration(compute_types, ctranslate2_batchings(mean_prompt_tokens, threads, batch_prompts),
                                     rate)


def llama_server_args(slots: int, threads: int, slot_context: int = 1024) -> list[str]:
    """llama-server's options for batch throughput, as its README names them: `slots` parallel sequences with
    continuous batching (on by default), every thread for decoding and for prompt batches, its default logical and
    physical batch sizes, and `slot_context` tokens of context a slot (a prompt and its completion fit). Left at its
    defaults: `--kv-unified` (off with an explicit `--parallel`; libllama advises it off where the sequences share no
    large prefix: here 40 of ~300 tokens) and `--flash-attn auto`."""
    return ["--parallel", str(slots), "--cont-batching", "--threads", str(threads), "--threads-batch", str(threads),
            "--batch-size", "2048", "--ubatch-size", "512", "--ctx-size", str(slots * slot_context)]


class LlamaServer:
    """llama.cpp's `llama-server` on the embedded GGUF with `slots` parallel sequences (continuous batching)."""

    def __init__(self, binary: Path, slots: int, threads: int, port: int = 18089):
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(binary), "-m", str(embedded_gguf_path()), *llama_server_args(slots, threads), "--port", str(port),
             "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        self.close()
        raise RuntimeError("llama-server did not come up")

    def complete(self, prompt: str, new_tokens: int) -> tuple[int, str]:
        """(tokens predicted, text) of one greedy completion."""
        body = json.dumps({"prompt": prompt, "n_predict": new_tokens, **LLAMA_SERVER_REQUEST}).encode()
        request = urllib.request.Request(self.url + "/completion", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=3600) as r:
            reply = json.loads(r.read())
        return int(reply["tokens_predicted"]), reply["content"]

    def tokens(self, prompts: list[str], new_tokens: int, texts: list | None = None) -> int:
        """Useful tokens of every prompt sent at once, as a dataset job sends them; `texts` receives the outputs."""
        with ThreadPoolExecutor(len(prompts)) as pool:
            replies = list(pool.map(lambda p: self.complete(p, new_tokens), prompts))
        if texts is not None:
            texts[:] = [text for _, text in replies]
        return sum(n for n, _ in replies)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def llama_server_binary() -> Path | None:
    path = cache_dir() / "bin" / "llama-server"
    return path if path.is_file() else None


def llama_server_slots(prompts: list[str], new_tokens: int, threads: int, slot_counts) -> tuple[int, dict] | None:
    """(the fastest slot count, each count's rate), on a quarter of the prompts at a quarter of the length."""
    if llama_server_binary() is None:
        return None
    return fastest(slot_counts, lambda n: run_llama_server(n, threads, prompts[: max(n, len(prompts) // 4)],
                                                           max(16, new_tokens // 4))["tok_s"])


def run_llama_server(slots: int, threads: int, prompts: list[str], new_tokens: int, texts: list | None = None) -> dict:
    server = LlamaServer(llama_server_binary(), slots, threads)
    try:
        return timed(server.tokens, prompts, new_tokens, texts)
    finally:
        server.close()


def linear_flops_per_token(model, head: bool = True) -> int:
    """2 × the weights a token passes through: every Linear, the LM head only with `head` (a position whose logits are
    used), embeddings excluded."""
    lm_head = model.get_output_embeddings()
    return 2 * sum(m.weight.numel() for m in model.modules()
                   if isinstance(m, torch.nn.Linear) and (head or m is not lm_head))


def attention_flops(model, prompt_lens: list[int], new_tokens: list[int]) -> int:
    """QKᵀ and AV over the causal context: 4 × layers × hidden per (query, key) pair."""
    config = model.config
    per_pair = 4 * config.num_hidden_layers * config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    pairs = sum((p + n) * (p + n + 1) // 2 for p, n in zip(prompt_lens, new_tokens))
    return per_pair * pairs


def peak_matmul_gflops(dtype: torch.dtype, hidden: int, intermediate: int) -> float:
    """The best rate of the model's MLP matmul at prefill-sized row counts, through `F.linear` or through the engine's
    own oneDNN linear with pre-packed weights, whichever is faster: what the arithmetic could run at. On a Zen 5 EPYC
    fp32 `F.linear` (MKL) ran at 140-180 GFLOP/s and oneDNN's packed fp32 at 370-450, so a bound from `F.linear` alone
    was beaten by the fp32 engine (104% of it)."""
    generator = torch.Generator().manual_seed(0)
    packed = PackedLinear(torch.randn(intermediate, hidden, generator=generator).to(dtype))
    rates = []
    for rows in (512, 2048):
        x = torch.randn(rows, hidden, generator=generator).to(dtype)
        seconds = min(matmul_seconds(dtype, rows, hidden, intermediate, budget=1.0), best_seconds(lambda: packed(x), budget=1.0))
        rates.append(2 * rows * hidden * intermediate / seconds / 1e9)
    return max(rates)


def peak_int8_gflops(hidden: int, intermediate: int) -> float:
    """The best rate of the model's MLP matmul in fbgemm's int8 kernels (per-channel int8 weights, activations quantized
    on the fly) at prefill-sized row counts: what `quantize: int8`'s arithmetic could run at. The fbgemm call alone,
    without sdft's per-row scaling around it, so the bound is the kernel's, not sdft's."""
    generator = torch.Generator().manual_seed(0)
    packed = Int8Linear(torch.randn(intermediate, hidden, generator=generator)).packed  # the engine's int8 weights
    rates = []
    for rows in (512, 2048):
        x = torch.randn(rows, hidden, generator=generator)
        seconds = best_seconds(lambda: torch.ops.quantized.linear_dynamic(x, packed, True), budget=1.0)
        rates.append(2 * rows * hidden * intermediate / seconds / 1e9)
    return max(rates)


@functools.cache
def _far_past_caches() -> torch.Tensor:
    return torch.ones(1 << 28)  # 1 GiB of fp32, allocated once: past any cache of these machines (L3 up to 480 MB)


def read_bandwidth_gb_s() -> float:
    """The best rate at which torch's threads read memory far past the caches (an fp32 sum over 1 GiB): what reading the
    weights and the KV cache could run at."""
    buffer = _far_past_caches()
    return buffer.numel() * buffer.element_size() / best_seconds(buffer.sum, budget=0.5) / 1e9


def sampled_around(work, sample, samples: list[float]):
    """work(), with `sample()` (a peak matmul rate) taken right before and right after it into `samples`. This
    machine's speed drifts by up to 2x within minutes, so a bound is taken at the moments the work it bounds ran, not
    at a sample minutes away."""
    samples.append(sample())
    result = work()
    samples.append(sample())
    return result


def compute_bound(model, tokenizer, prompts: list[str], generated: list[int], peak_samples: list[float],
                  arithmetic: str | None = None) -> dict:
    """Tokens/s the workload would reach if every FLOP it needs ran at the peak matmul rate (the best of the samples
    taken around sdft's run). Needed: each prompt token through the layers (a prefix every prompt shares, the
    template's opening, once), the LM head at a prompt's last position and at each generated token, and attention over
    the causal context."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    prompt_lens = [len(i) for i in ids]
    shared = sum(len(prefix) * (sum(1 for i in ids if tuple(i[: len(prefix)]) == prefix) - 1)
                 for prefix in shared_prefixes(ids))
    body, full = linear_flops_per_token(model, head=False), linear_flops_per_token(model)
    flops = (body * (sum(prompt_lens) - shared - len(ids)) + full * (len(ids) + sum(generated))
             + attention_flops(model, prompt_lens, generated))
    rate = max(peak_samples)
    return {"dtype": arithmetic or str(model.dtype).removeprefix("torch."), "peak_matmul_gflops": round(rate, 1),
            "peak_samples_gflops": [round(sample, 1) for sample in peak_samples],
            "gflop_per_useful_token": round(flops / sum(generated) / 1e9, 3),
            "tok_s": round(sum(generated) / (flops / (rate * 1e9)), 1)}


def memory_bound(model, prompt_lens: list[int], generated: list[int], bandwidth_samples: list[float]) -> dict:
    """Tokens/s the workload would reach if decoding only had to read memory, at the best read rate sampled around
    sdft's run: each decoding forward reads every Linear's weights once (all rows in one batch, so as many forwards as
    the longest row has tokens to decode) and each decoded token reads its context's K/V once in every layer. A decoder
    without drafts reads at least this (drafts share one read of a row's K/V among several tokens). On a CPU whose bf16
    matmuls run on AMX this bound, not the compute bound, is the lower one."""
    config = model.config
    size = model.dtype.itemsize
    per_column = 2 * config.num_hidden_layers * config.num_key_value_heads * LeanLlamaStepper.head_dim_of(config) * size
    # the token decoded t-th (t = 1 .. n-1; the first comes from the prompt's forward) reads p + t columns
    kv = per_column * sum((n - 1) * p + (n - 1) * n // 2 for p, n in zip(prompt_lens, generated) if n > 1)
    weights = linear_flops_per_token(model) // 2 * size * max(max(generated) - 1, 0)
    rate = max(bandwidth_samples)
    return {"read_gb_s": round(rate, 1), "read_samples_gb_s": [round(sample, 1) for sample in bandwidth_samples],
            "kv_gb": round(kv / 1e9, 2), "weights_gb": round(weights / 1e9, 2),
            "tok_s": round(sum(generated) / ((kv + weights) / (rate * 1e9)), 1)}


def run(args: argparse.Namespace) -> dict:
    """sdft (as `--dtype auto` picks, and with each of FAST_VARIANTS), llama-server and CTranslate2 alternate for
    `args.rounds` rounds: this machine's speed drifts by up to 2x within minutes, so each round's ratio compares runs
    minutes apart and the headline is their median. transformers' `generate_batch`, far slower, runs once. The first
    round's outputs are scored by the math check distillation applies, so a faster engine's cost in quality shows."""
    threads = torch.get_num_threads()
    model, tokenizer = load_model(MODEL, dtype="auto", device="cpu")
    prompts = gsm8k_prompts(tokenizer, args.prompts)
    prompt_lens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    variants = {v: FAST_VARIANTS[v] for v in args.variants}
    slots = ((args.slots, {}) if args.slots and llama_server_binary() else
             llama_server_slots(prompts, args.new_tokens, threads, SLOT_COUNTS[:1] if args.quick else SLOT_COUNTS))
    ct2 = None if "ctranslate2" in args.skip else bench_ctranslate2_configuration(
        tokenizer, prompts, args.new_tokens, threads, args.ct2_compute_types, args.ct2_batch_prompts,
        round(statistics.mean(prompt_lens)))
    # the peers alternating with sdft: each takes the outputs' list and returns its timed run
    peers_in_rounds = {}
    if slots:
        peers_in_rounds["llama_server"] = lambda out: run_llama_server(slots[0], threads, prompts, args.new_tokens, out)
    if ct2:
        generator = CTranslate2(threads, **ct2[0])  # built once, as sdft's engines
        peers_in_rounds["ctranslate2"] = lambda out: timed(generator.tokens, tokenizer, prompts, args.new_tokens, out)
    model_fp32 = model if model.dtype == torch.float32 else load_model(MODEL, dtype="fp32", device="cpu")[0]  # the variants' too

    shape = (model.config.hidden_size, model.config.intermediate_size)

    def peak(quantize: str = "none", dtype: torch.dtype = model.dtype) -> float:
        return peak_int8_gflops(*shape) if quantize == "int8" else peak_matmul_gflops(dtype, *shape)

    # Each engine is built once and called every round, as a dataset job keeps its engine across calls and as
    # llama-server's cache is allocated at its start-up (untimed): an engine's first call also pays its cache's first
    # touch (on a VM seconds per GB), its later calls reuse those pages.
    engines = {"sdft": HFEngine(model, tokenizer),
               **{f"sdft_{v}": HFEngine(model_fp32, tokenizer, **options) for v, options in variants.items()}}
    rounds, texts = [], {}
    for r in range(args.rounds):
        outputs = {name: [] for name in ("sdft", *(f"sdft_{v}" for v in variants), *peers_in_rounds)}
        samples: list[float] = []
        bandwidths: list[float] = []
        ours = sampled_around(lambda: sampled_around(
            lambda: timed(sdft_tokens, engines["sdft"], prompts, args.new_tokens, outputs["sdft"]), peak, samples),
            read_bandwidth_gb_s, bandwidths)
        generated = [c.n_tokens for c in outputs["sdft"]]
        bound = compute_bound(model, tokenizer, prompts, generated, samples)
        memory = memory_bound(model, prompt_lens, generated, bandwidths)
        roofline = min(bound["tok_s"], memory["tok_s"])  # the slower of computing and reading
        fast, fast_bounds = {}, {}
        for v, options in variants.items():  # each bounded by its own arithmetic's rate (fp32 or int8 linears)
            name, quantize, variant_samples = f"sdft_{v}", options.get("quantize", "none"), []
            fast[name] = sampled_around(lambda: timed(sdft_tokens, engines[name], prompts, args.new_tokens, outputs[name]),
                                        lambda: peak(quantize, torch.float32), variant_samples)
            variant_bound = compute_bound(model_fp32, tokenizer, prompts, [c.n_tokens for c in outputs[name]],
                                          variant_samples, "int8 linears" if quantize == "int8" else None)
            fast_bounds[v] = {**variant_bound, "sdft_share": round(fast[name]["tok_s"] / variant_bound["tok_s"], 3)}
        rounds.append({"sdft": ours, **fast, **{name: peer(outputs[name]) for name, peer in peers_in_rounds.items()},
                       "fast_bounds": fast_bounds,
                       "bound": {**bound, "sdft_share": round(ours["tok_s"] / bound["tok_s"], 3), "memory": memory,
                                 "roofline_tok_s": roofline, "sdft_share_of_roofline": round(ours["tok_s"] / roofline, 3)}})
        if r == 0:
            texts = {name: [getattr(o, "text", o) for o in out] for name, out in outputs.items() if out}
    ours = median_round([r["sdft"] for r in rounds])
    sdft = {"auto": {**ours, "dtype": str(model.dtype).removeprefix("torch.")},
            **{v: {**median_round([r[f"sdft_{v}"] for r in rounds]), **options} for v, options in variants.items()}}
    if model.dtype != torch.float32:
        sdft["fp32"] = timed(sdft_tokens, HFEngine(model_fp32, tokenizer), prompts, args.new_tokens)
    else:
        sdft["fp32"] = {**sdft["auto"], "note": "auto chose fp32 on this machine: the same runs"}
    peers: dict[str, dict | None] = {"llama_server": None, "ctranslate2": None}
    if slots:
        peers["llama_server"] = {**median_round([r["llama_server"] for r in rounds]), "slots": slots[0],
                                 "slot_trial_tok_s": slots[1], "server_args": llama_server_args(slots[0], threads),
                                 "request": LLAMA_SERVER_REQUEST,
                                 "weights": "Q4_1 GGUF (llama.cpp's own format; sdft runs it dequantised)"}
    if ct2:
        peers["ctranslate2"] = {**median_round([r["ctranslate2"] for r in rounds]), **ct2[0], **ct2[1]}
    hf_prompts = prompts[:: max(1, len(prompts) // args.hf_prompts)][: args.hf_prompts]
    peers["transformers_generate_batch"] = None if "transformers_generate_batch" in args.skip else {**timed(transformers_tokens, model_fp32, tokenizer, hf_prompts, args.new_tokens),
                                            "prompts": len(hf_prompts), "dtype": "float32"}
    results = {
        "peers_setup": {"prompts": len(prompts), "new_tokens": args.new_tokens, "threads": threads, "rounds": args.rounds,
                        "workload": "GSM8K distillation prompts, chat template, greedy; sdft (auto, "
                                    f"{', '.join(variants)}), {', '.join(peers_in_rounds) or 'no peer'} in alternating "
                                    "rounds, transformers' generate_batch one run"},
        "sdft_gen": sdft,
        "peers": peers,
        "gen_compute_bound": median_bound([r["bound"] for r in rounds]),
        "gen_fast_compute_bound": {v: median_bound([r["fast_bounds"][v] for r in rounds]) for v in variants},
        "gen_quality": quality(gsm8k_rows(args.prompts), texts),
        "auto_vs_fp32": round(ours["tok_s"] / sdft["fp32"]["tok_s"], 3),
    }
    for engine, key in (("sdft", "gen_speedup"), *((f"sdft_{v}", f"gen_{v}_speedup") for v in variants)):
        results |= speedups(engine, key, rounds, peers)
    # the published ratio: sdft (auto) against the fastest peer of this run
    return results | {"best_peer": best_peer(peers), "sdft_over_best_peer": results["gen_speedup_vs_best_peer"]}


def best_peer(peers: dict) -> dict | None:
    """The fastest peer of the run, by name and rate; a peer not measured (null) is skipped."""
    rates = {name: p["tok_s"] for name, p in peers.items() if p}
    if not rates:
        return None
    name = max(rates, key=rates.get)
    return {"name": name, "tok_s": rates[name]}


def speedups(engine: str, key: str, rounds: list[dict], peers: dict) -> dict:
    """An sdft engine's ratio to each peer measured and to the best of them: to a peer run in the rounds the median of
    the rounds' own ratios (the two ran minutes apart, each round's shown too), to a peer run once its median rate over
    the peer's."""
    ours = statistics.median(r[engine]["tok_s"] for r in rounds)
    measured = {name: p for name, p in peers.items() if p}
    paired = {name: [round(r[engine]["tok_s"] / r[name]["tok_s"], 2) for r in rounds]
              for name in measured if name in rounds[0]}
    ratios = {name: round(statistics.median(paired[name]) if name in paired else ours / p["tok_s"], 2)
              for name, p in measured.items()}
    best = best_peer(peers)
    return {f"{key}_vs_peers": ratios, **{f"{key}_rounds_vs_{name}": each for name, each in paired.items()},
            f"{key}_vs_best_peer": ratios[best["name"]] if best else None}


def quality(rows: list[dict], texts: dict[str, list[str]]) -> dict:
    """Each engine's share of rewrites the math check accepts (the model sees the reference answer, so it is well off
    the floor), the difference to sdft fp32 with a paired bootstrap, and the share of outputs identical to sdft's."""
    accepted = {name: {str(i): float(math_check(text, row["answer"]).ok) for i, (text, row) in enumerate(zip(out, rows))}
                for name, out in texts.items()}
    return {"scorer": "GSM8K distillation rewrites accepted by the math check (first round's outputs)",
            "accepted_pct": {name: round(100 * sum(a.values()) / len(a), 1) for name, a in accepted.items()},
            "minus_sdft": {name: paired_bootstrap(accepted["sdft"], a) for name, a in accepted.items() if name != "sdft"},
            "identical_to_sdft": {name: sum(x.strip() == y.strip() for x, y in zip(texts["sdft"], out)) / len(out)
                                  for name, out in texts.items() if name != "sdft"}}


def median_bound(bounds: list[dict]) -> dict:
    """One engine's bound over rounds: the round of median share, with the median share and every round's (of the
    roofline too, where measured)."""
    shares = [b["sdft_share"] for b in bounds]
    middle = min(bounds, key=lambda b: abs(b["sdft_share"] - statistics.median(shares)))
    medians = {"sdft_share": round(statistics.median(shares), 3), "rounds_share": shares}
    if "sdft_share_of_roofline" in middle:
        roofline = [b["sdft_share_of_roofline"] for b in bounds]
        medians |= {"sdft_share_of_roofline": round(statistics.median(roofline), 3), "rounds_share_of_roofline": roofline}
    return {**middle, **medians}


def median_round(runs: list[dict]) -> dict:
    """One engine's rounds as one figure: the median rate, each round's rate beside it."""
    return {"tok_s": round(statistics.median(run["tok_s"] for run in runs), 1),
            "rounds_tok_s": [run["tok_s"] for run in runs], "tokens": runs[0]["tokens"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of sdft, llama-server and CTranslate2")
    parser.add_argument("--hf-prompts", type=int, default=32, help="prompts for transformers' generate_batch (slow)")
    parser.add_argument("--ct2-compute-types", nargs="+", default=["int8", "int8_float32", "float32"],
                        help="CTranslate2 compute types to try (the first while its batchings are tried); the fastest "
                             "on a short trial runs the measurement")
    parser.add_argument("--ct2-batch-prompts", nargs="+", type=int, default=list(CT2_BATCH_PROMPTS),
                        help="CTranslate2 max_batch_size to try, in prompts of the mean length (as tokens), each on "
                             "one worker and on one worker a thread; the fastest on a short trial runs the measurement")
    parser.add_argument("--variants", nargs="*", choices=list(FAST_VARIANTS), default=list(FAST_VARIANTS),
                        help="sdft's opt-ins for speed run beside the exact engine in each round")
    parser.add_argument("--slots", type=int, help="llama-server's slot count (default: the fastest of a short trial)")
    parser.add_argument("--skip", nargs="*", choices=["ctranslate2", "transformers_generate_batch"], default=[],
                        help="peers besides llama-server not to run (reported as null), for a focused re-measure")
    parser.add_argument("--quick", action="store_true",
                        help="16 prompts, 32 new tokens, one llama-server slot count, one CTranslate2 compute type and "
                             "batch size")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.hf_prompts, args.rounds = 16, 32, 4, 1
        args.ct2_compute_types, args.ct2_batch_prompts = args.ct2_compute_types[:1], args.ct2_batch_prompts[:1]
    return args


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(json.dumps(run(parse_args(sys.argv[1:])), indent=2))
