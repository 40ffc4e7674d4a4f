"""Generation throughput against the peers a user who generates a whole dataset would pick, on the same prompts: llama.cpp's
own `llama-server` (continuous batching, at its best slot count), CTranslate2's `generate_batch`, transformers' own
continuous batching (`generate_batch`), plus the machine's compute bound for the workload and sdft's share of it.

128 GSM8K distillation prompts (chat template), 256 new tokens, greedy, one run per engine, the model already loaded;
useful tokens are generated tokens up to (not including) EOS. sdft runs with `--dtype auto` and, where auto is not fp32,
with fp32 too. Peers are optional (`pip install -r benchmarks/requirements.txt`, `benchmarks/build_llama_server.sh`);
a missing one is reported as null.

    python benchmarks/bench_peers.py [--prompts 128] [--new-tokens 256] [--hf-prompts 32] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from sdft.engines.dtype_probe import matmul_seconds
from sdft.engines.generation import HFEngine, shared_prefixes
from sdft.engines.models import embedded_gguf_path, load_model, resolve_model
from sdft.jsonl import read_jsonl
from sdft.options import DecodingOptions
from sdft.paths import cache_dir, data_dir
from sdft.templates import render

MODEL = "smollm2-135m-instruct"
SLOT_COUNTS = (16, 32, 64)


def gsm8k_prompts(tokenizer, n: int) -> list[str]:
    rows = read_jsonl(data_dir() / "gsm8k" / "sdft_gsm8k_train.jsonl")[:n]
    return [render("gsm8k_distill", {"instruction": r["question"], "response": r["answer"]}, tokenizer) for r in rows]


def timed(fn, *args) -> dict:
    start = time.perf_counter()
    tokens = fn(*args)
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": round(seconds, 2), "tok_s": round(tokens / seconds, 1)}


def sdft_tokens(engine: HFEngine, prompts: list[str], new_tokens: int, lengths: list[int] | None = None) -> int:
    """Useful tokens of one engine call; `lengths` receives each prompt's count."""
    out = {i: c.n_tokens for batch in engine.complete(prompts, DecodingOptions(max_new_tokens=new_tokens)) for i, c in batch}
    if lengths is not None:
        lengths[:] = [out[i] for i in range(len(prompts))]
    return sum(out.values())


def transformers_tokens(model, tokenizer, prompts: list[str], new_tokens: int) -> int:
    """transformers' own continuous batching (paged attention over SDPA)."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    inputs = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    outputs = model.generate_batch(inputs=inputs, generation_config=config)
    eos = tokenizer.eos_token_id
    return sum(len([t for t in out.generated_tokens if t != eos]) for out in outputs.values())


def ctranslate2_generator(compute_type: str, threads: int):
    """CTranslate2 on the embedded model's HF folder, converted once with `ct2-transformers-converter`."""
    try:
        import ctranslate2
    except ImportError:
        return None
    source = Path(resolve_model(MODEL))
    target = cache_dir() / "ct2" / source.name
    if not (target / "model.bin").is_file():
        converter = shutil.which("ct2-transformers-converter", path=str(Path(sys.executable).parent))
        subprocess.run([converter, "--model", str(source), "--output_dir", str(target), "--force"], check=True)
    return ctranslate2.Generator(str(target), device="cpu", compute_type=compute_type, intra_threads=threads)


def ctranslate2_tokens(generator, tokenizer, prompts: list[str], new_tokens: int) -> int:
    tokens = [tokenizer.convert_ids_to_tokens(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    results = generator.generate_batch(tokens, max_length=new_tokens, sampling_topk=1, include_prompt_in_result=False,
                                       end_token=tokenizer.eos_token)
    eos = tokenizer.eos_token_id
    return sum(len([t for t in r.sequences_ids[0] if t != eos]) for r in results)


def fastest(settings, rate) -> tuple:
    """(the setting `rate` measured fastest, every setting's rate): a peer is benchmarked at its best configuration,
    picked on a short trial."""
    trial = {setting: rate(setting) for setting in settings}
    return max(trial, key=trial.get), trial


def bench_ctranslate2(tokenizer, prompts: list[str], new_tokens: int, threads: int, compute_types) -> dict | None:
    """CTranslate2 at its fastest compute type, picked on a quarter of the prompts at a quarter of the length."""
    if importlib.util.find_spec("ctranslate2") is None:
        return None

    def run(compute_type, some_prompts, tokens):
        return timed(ctranslate2_tokens, ctranslate2_generator(compute_type, threads), tokenizer, some_prompts, tokens)

    best, trial = fastest(compute_types,
                          lambda c: run(c, prompts[: max(8, len(prompts) // 4)], max(16, new_tokens // 4))["tok_s"])
    return {**run(best, prompts, new_tokens), "compute_type": best, "compute_type_trial_tok_s": trial}


class LlamaServer:
    """llama.cpp's `llama-server` on the embedded GGUF with `slots` parallel sequences (continuous batching)."""

    def __init__(self, binary: Path, slots: int, threads: int, port: int = 18089, slot_context: int = 1024):
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(binary), "-m", str(embedded_gguf_path()), "--parallel", str(slots), "--cont-batching",
             "-c", str(slots * slot_context), "-t", str(threads), "-tb", str(threads), "--port", str(port),
             "--host", "127.0.0.1", "-b", "2048", "-ub", "512"],
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

    def complete(self, prompt: str, new_tokens: int) -> int:
        body = json.dumps({"prompt": prompt, "n_predict": new_tokens, "temperature": 0.0, "top_k": 1,
                           "cache_prompt": False}).encode()
        request = urllib.request.Request(self.url + "/completion", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=3600) as r:
            return int(json.loads(r.read())["tokens_predicted"])

    def tokens(self, prompts: list[str], new_tokens: int) -> int:
        with ThreadPoolExecutor(len(prompts)) as pool:  # every request in flight at once, as a dataset job sends them
            return sum(pool.map(lambda p: self.complete(p, new_tokens), prompts))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def llama_server_binary() -> Path | None:
    path = cache_dir() / "bin" / "llama-server"
    return path if path.is_file() else None


def bench_llama_server(prompts: list[str], new_tokens: int, threads: int, slot_counts) -> dict | None:
    """The best slot count, picked on a quarter of the prompts at a quarter of the length, then the full run with it."""
    binary = llama_server_binary()
    if binary is None:
        return None

    def run(slots, some_prompts, tokens):
        server = LlamaServer(binary, slots, threads)
        try:
            return timed(server.tokens, some_prompts, tokens)
        finally:
            server.close()

    best, trial = fastest(slot_counts,
                          lambda n: run(n, prompts[: max(n, len(prompts) // 4)], max(16, new_tokens // 4))["tok_s"])
    return {**run(best, prompts, new_tokens), "slots": best, "slot_trial_tok_s": trial,
            "weights": "Q4_1 GGUF (llama.cpp's own format; sdft runs it dequantised)"}


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
    """The best rate of the model's MLP matmul at prefill-sized row counts: what the arithmetic could run at."""
    return max(2 * rows * hidden * intermediate / matmul_seconds(dtype, rows, hidden, intermediate, budget=1.0) / 1e9
               for rows in (512, 2048))


def sampled_around(work, sample, samples: list[float]):
    """work(), with `sample()` (a peak matmul rate) taken right before and right after it into `samples`. This
    machine's speed drifts by up to 2x within minutes, so a bound is taken at the moments the work it bounds ran, not
    at a sample minutes away."""
    samples.append(sample())
    result = work()
    samples.append(sample())
    return result


def compute_bound(model, tokenizer, prompts: list[str], generated: list[int], peak_samples: list[float]) -> dict:
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
    return {"dtype": str(model.dtype).removeprefix("torch."), "peak_matmul_gflops": round(rate, 1),
            "peak_samples_gflops": [round(sample, 1) for sample in peak_samples],
            "gflop_per_useful_token": round(flops / sum(generated) / 1e9, 3),
            "tok_s": round(sum(generated) / (flops / (rate * 1e9)), 1)}


def run(args: argparse.Namespace) -> dict:
    threads = torch.get_num_threads()
    model, tokenizer = load_model(MODEL, dtype="auto", device="cpu")
    prompts = gsm8k_prompts(tokenizer, args.prompts)
    generated: list[int] = []
    samples: list[float] = []
    sdft = {"auto": {**sampled_around(lambda: timed(sdft_tokens, HFEngine(model, tokenizer), prompts, args.new_tokens, generated),
                                      lambda: peak_matmul_gflops(model.dtype, model.config.hidden_size,
                                                                 model.config.intermediate_size), samples),
                     "dtype": str(model.dtype).removeprefix("torch.")}}
    model_fp32 = model
    if model.dtype != torch.float32:
        model_fp32 = load_model(MODEL, dtype="fp32", device="cpu")[0]
        sdft["fp32"] = timed(sdft_tokens, HFEngine(model_fp32, tokenizer), prompts, args.new_tokens)
    else:
        sdft["fp32"] = {**sdft["auto"], "note": "auto chose fp32 on this machine: the same run"}
    bound = compute_bound(model, tokenizer, prompts, generated, samples)
    peers: dict[str, dict | None] = {}
    peers["llama_server"] = bench_llama_server(prompts, args.new_tokens, threads,
                                               SLOT_COUNTS[:1] if args.quick else SLOT_COUNTS)
    peers["ctranslate2"] = bench_ctranslate2(tokenizer, prompts, args.new_tokens, threads, args.ct2_compute_types)
    hf_prompts = prompts[:: max(1, len(prompts) // args.hf_prompts)][: args.hf_prompts]
    peers["transformers_generate_batch"] = {**timed(transformers_tokens, model_fp32, tokenizer, hf_prompts, args.new_tokens),
                                            "prompts": len(hf_prompts), "dtype": "float32"}
    ours = sdft["auto"]["tok_s"]
    rated = {name: p["tok_s"] for name, p in peers.items() if p}
    return {
        "peers_setup": {"prompts": len(prompts), "new_tokens": args.new_tokens, "threads": threads,
                        "workload": "GSM8K distillation prompts, chat template, greedy, one run each"},
        "sdft_gen": sdft,
        "peers": peers,
        "gen_compute_bound": {**bound, "sdft_share": round(ours / bound["tok_s"], 3)},
        "gen_speedup_vs_peers": {name: round(ours / rate, 2) for name, rate in rated.items()},
        "gen_speedup_vs_best_peer": round(ours / max(rated.values()), 2) if rated else None,
        "auto_vs_fp32": round(ours / sdft["fp32"]["tok_s"], 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--hf-prompts", type=int, default=32, help="prompts for transformers' generate_batch (slow)")
    parser.add_argument("--ct2-compute-types", nargs="+", default=["int8", "int8_float32", "float32"],
                        help="CTranslate2 compute types to try; the fastest on a short trial runs the benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="16 prompts, 32 new tokens, one llama-server slot count, one CTranslate2 compute type")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.hf_prompts = 16, 32, 4
        args.ct2_compute_types = args.ct2_compute_types[:1]
    return args


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(json.dumps(run(parse_args(sys.argv[1:])), indent=2))
