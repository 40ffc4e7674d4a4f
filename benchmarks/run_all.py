"""Run the generation and training throughput benchmarks in one go, print sdft's ratio to every baseline and peer, and
write benchmarks/results/latest.json.

    python benchmarks/run_all.py [--quick] [--quality] [--no-peers]

Each part runs in a fresh Python process, as each trainer does in bench_training: a part's leftover heap and threads
(llama.cpp in-process, TRL) must not slow the next one.

Peers (llama.cpp's llama-server, CTranslate2) are optional: `pip install -r benchmarks/requirements.txt` and
`benchmarks/build_llama_server.sh`; a missing one is reported as null.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bench_generation
import bench_peers
import bench_training

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


PARTS = {"generation": lambda argv: bench_generation.run(bench_generation.parse_args(argv)),
         "peers": lambda argv: bench_peers.run(bench_peers.parse_args(argv)),
         "training": lambda argv: bench_training.run(bench_training.parser().parse_args(argv))}


def in_fresh_process(part: str, argv: list[str]) -> dict:
    """One part's results, measured in a new Python process (this script with --part)."""
    return bench_generation.fresh_process_json([sys.executable, __file__, "--part", part, *argv])


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--part"]:  # run_all's own child process: `--part NAME` then that part's own arguments
        print(json.dumps(PARTS[argv[1]](argv[2:])))
        return {argv[1]: True}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller generation and training runs")
    parser.add_argument("--quality", action="store_true", help="also GSM8K distillation acceptance, greedy bf16 vs fp32")
    parser.add_argument("--no-peers", action="store_true", help="skip llama-server / CTranslate2 / generate_batch")
    parser.add_argument("--no-baselines", action="store_true", help="skip the HF generate / in-process llama.cpp runs")
    args = parser.parse_args(argv)
    results = {}
    if not args.no_baselines:
        results |= in_fresh_process("generation", ["--quick"] * args.quick + ["--quality"] * args.quality)
    if not args.no_peers:
        results |= in_fresh_process("peers", ["--quick"] * args.quick)
    results |= in_fresh_process("training", ["--steps", "3", "--rounds", "1"] if args.quick else [])
    if RESULTS.is_file() and (args.no_baselines or args.no_peers):  # a skipped part keeps its earlier figures, marked
        earlier = json.loads(RESULTS.read_text())
        kept = sorted(k for k in earlier if k not in results and k != "kept_from_earlier_run")
        results = {**{k: earlier[k] for k in kept}, **results, "kept_from_earlier_run": kept}
    results = at_one_peak(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(ratios(results), indent=2))
    print(f"written: {RESULTS}")
    return results


BOUNDS = {"gen_compute_bound": ("tok_s", lambda r: r["sdft_gen"]["auto"]["tok_s"]),
          "train_compute_bound": ("tokens_per_s", lambda r: r["train_sdft"]["tokens_per_s"])}


def at_one_peak(results: dict) -> dict:
    """Both compute bounds at the best matmul rate measured in the run. Each part samples the peak for a second or two,
    and a sample caught in one of this shared machine's slow spells (85 against 186 GFLOP/s within one run) would
    halve its bound; a part's own sample is kept as `own_peak_matmul_gflops`."""
    present = [key for key in BOUNDS if key in results]
    if not present:
        return results
    peak = max(results[key].get("own_peak_matmul_gflops", results[key]["peak_matmul_gflops"]) for key in present)
    for key in present:
        (rate_key, sdft_rate), bound = BOUNDS[key], results[key]
        own = bound.get("own_peak_matmul_gflops", bound["peak_matmul_gflops"])
        tokens_per_s = round(bound[rate_key] * peak / bound["peak_matmul_gflops"], 1)
        results[key] = {**bound, "own_peak_matmul_gflops": own, "peak_matmul_gflops": peak, rate_key: tokens_per_s,
                        "sdft_share": round(sdft_rate(results) / tokens_per_s, 3)}
    return results


def ratios(results: dict) -> dict:
    """sdft ÷ each baseline and peer, and its share of the compute bound."""
    shown = {k: v for k, v in results.items() if "speedup" in k or k == "auto_vs_fp32"}
    if "gen_compute_bound" in results:
        shown["gen_share_of_compute_bound"] = results["gen_compute_bound"]["sdft_share"]
    if "train_compute_bound" in results:
        shown["train_share_of_compute_bound"] = results["train_compute_bound"]["sdft_share"]
    return shown


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
