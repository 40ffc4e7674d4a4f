"""Run the generation and training throughput measurements in one go, print sdft's ratio to every baseline and peer (and
to the best peer of the run, the published one), and write perf/results/latest.json.

    python perf/run_all.py [--quick] [--quality] [--parts generation peers training]

Each part runs in a fresh Python process, as each trainer does in training_throughput: a part's leftover heap and threads
(llama.cpp in-process, TRL) must not slow the next one.

Peers (llama.cpp's llama-server, CTranslate2) are optional: `pip install -r perf/requirements.txt` and
`perf/build_llama_server.sh`; a missing one is reported as null.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import generation_throughput
import peer_throughput
import training_throughput

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


PARTS = {"generation": lambda argv: generation_throughput.run(generation_throughput.parse_args(argv)),
         "peers": lambda argv: peer_throughput.run(peer_throughput.parse_args(argv)),
         "training": lambda argv: training_throughput.run(training_throughput.parser().parse_args(argv))}


def in_fresh_process(part: str, argv: list[str]) -> dict:
    """One part's results, measured in a new Python process (this script with --part)."""
    return generation_throughput.fresh_process_json([sys.executable, __file__, "--part", part, *argv])


def main(argv: list[str] | None = None) -> dict:
    """The run's results (those of one part in run_all's own child process: `--part NAME` then the part's arguments)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--part"]:
        results = PARTS[argv[1]](argv[2:])
        print(json.dumps(results))
        return results
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller generation and training runs")
    parser.add_argument("--quality", action="store_true", help="also GSM8K distillation acceptance, greedy bf16 vs fp32")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS),
                        help="parts to measure (generation: HF generate and in-process llama.cpp baselines; peers: "
                             "llama-server, CTranslate2, generate_batch; training: TRL); the others keep their figures")
    args = parser.parse_args(argv)
    part_argv = {"generation": ["--quick"] * args.quick + ["--quality"] * args.quality, "peers": ["--quick"] * args.quick,
                 "training": ["--steps", "3", "--rounds", "1"] if args.quick else []}
    planned = [(part, part_argv[part]) for part in PARTS if part in args.parts]
    earlier = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results = {"machine": generation_throughput.machine_info()}  # this run's, whichever parts it measures
    for part, part_argv in planned:
        results |= in_fresh_process(part, part_argv)
        write(results, earlier)  # a run stopped in a later part keeps this one's figures
    print(json.dumps(ratios(results), indent=2))
    print(f"written: {RESULTS}")
    return results


def write(results: dict, earlier: dict) -> None:
    """latest.json: this run's figures so far, and the earlier run's for every key not measured yet (listed in
    `kept_from_earlier_run`), so the file always holds one complete, labelled set."""
    kept = sorted(k for k in earlier if k not in results and k != "kept_from_earlier_run")
    merged = {**{k: earlier[k] for k in kept}, **results} | ({"kept_from_earlier_run": kept} if kept else {})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    temporary = RESULTS.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(merged, indent=2) + "\n")
    temporary.replace(RESULTS)  # never a half-written file


def ratios(results: dict) -> dict:
    """sdft ÷ each baseline and peer and ÷ the best peer, its share of the compute bound, and each engine's share of
    accepted rewrites."""
    shown = {k: v for k, v in results.items()
             if "speedup" in k or k in ("auto_vs_fp32", "best_peer", "sdft_over_best_peer")}
    if "gen_quality" in results:
        shown["gen_accepted_pct"] = results["gen_quality"]["accepted_pct"]
    if "gen_compute_bound" in results:
        shown["gen_share_of_compute_bound"] = results["gen_compute_bound"]["sdft_share"]
        if "sdft_share_of_roofline" in results["gen_compute_bound"]:
            shown["gen_share_of_roofline"] = results["gen_compute_bound"]["sdft_share_of_roofline"]
    for variant, bound in results.get("gen_fast_compute_bound", {}).items():
        shown[f"gen_{variant}_share_of_own_compute_bound"] = bound["sdft_share"]
    if "train_compute_bound" in results:
        shown["train_share_of_compute_bound"] = results["train_compute_bound"]["sdft_share"]
    return shown


if __name__ == "__main__":
    main()
