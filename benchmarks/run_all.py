"""Run the generation and training throughput benchmarks in one go and write benchmarks/results/latest.json.

    python benchmarks/run_all.py [--quick] [--quality]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bench_generation
import bench_training

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller generation and training runs")
    parser.add_argument("--quality", action="store_true", help="also GSM8K distillation acceptance, greedy bf16 vs fp32")
    args = parser.parse_args(argv)
    generation = bench_generation.run(bench_generation.parse_args(["--quick"] * args.quick + ["--quality"] * args.quality))
    training = bench_training.run(bench_training.parser().parse_args(["--steps", "3"] if args.quick else []))
    results = {**generation, **training}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if "speedup" in k}, indent=2))
    print(f"written: {RESULTS}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
