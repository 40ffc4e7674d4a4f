"""The reference numbers a paper preset's report puts beside ours (its replication table), in points (0-100), all
for Llama-2-7b-chat: the paper's (Yang et al. 2024, arXiv 2402.13669) and the maintainers' reruns of the `reproduce`
branch (sail-sg/sdft#12: the seed and GSM8K vanilla FT, after adding the 0.5 credit for positional arguments to the
OpenFunctions metric; sail-sg/sdft#15: GSM8K vanilla FT and SDFT at LoRA all-linear r64).

Keyed by (training set, method, capacity) — the seed under (None, "seed", "paper") — then by our benchmark name.
`metric` names the reference's metric where our benchmark's score is another one (OpenFunctions: the reference's call
match, which we report as the `paper_call_match` secondary metric; HellaSwag: lm-eval `acc`, ours `acc_norm`).
Left out, having no counterpart here: the reruns' TruthfulQA (lm-eval's `truthfulqa` group) and ARC (`ai2_arc`,
Easy + Challenge together: 64.06 at the seed).
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_MODEL = "Llama-2-7b-chat"
PAPER = "Yang et al. 2024 (arXiv 2402.13669)"
RERUN_12 = "sail-sg/sdft#12 (reproduce branch rerun, 2024-09-19)"
RERUN_15 = "sail-sg/sdft#15 (reproduce branch rerun at LoRA all r64, 2024-11-02)"


@dataclass(frozen=True)
class Reference:
    value: float
    source: str
    metric: str | None = None  # the reference's metric, where our benchmark's score is another


def _refs(source: str, values: dict[str, float], metrics: dict[str, str] | None = None) -> dict[str, Reference]:
    return {bench: Reference(value, source, (metrics or {}).get(bench)) for bench, value in values.items()}


_METRICS = {"openfunctions": "paper_call_match", "hellaswag": "acc"}

# (dataset, method, capacity) -> {"paper" | "rerun": {benchmark: Reference}}
REFERENCES: dict[tuple[str | None, str, str], dict[str, dict[str, Reference]]] = {
    (None, "seed", "paper"): {
        # the paper's seed row (docs/design.md §4); its OpenFunctions metric predates the 0.5 positional credit
        "paper": _refs(PAPER, {"gsm8k": 29.4, "openfunctions": 19.6, "humaneval_octocoder": 13.4, "advbench": 99.81,
                               "advbench_jailbreak": 88.85, "alpaca_eval": 66.04}, _METRICS),
        "rerun": _refs(RERUN_12, {"gsm8k": 28.81, "multiarith": 72.22, "openfunctions": 20.98,
                                  "humaneval_octocoder": 14.63, "advbench": 99.42, "advbench_jailbreak": 94.81,
                                  "mmlu": 46.42, "hellaswag": 57.80, "winogrande": 66.38}, _METRICS),
    },
    ("gsm8k", "vanilla", "paper"): {
        "paper": _refs(PAPER, {"gsm8k": 31.9}),  # as sdft#15 quotes the paper
        "rerun": _refs(RERUN_12, {"gsm8k": 29.26, "multiarith": 77.78, "openfunctions": 20.09}, _METRICS),
    },
    ("gsm8k", "sdft", "paper"): {
        "paper": _refs(PAPER, {"gsm8k": 34.4}),
    },
    ("gsm8k", "vanilla", "all-linear-r64"): {
        "rerun": _refs(RERUN_15, {"gsm8k": 40.41, "multiarith": 87.78, "openfunctions": 8.04,
                                  "humaneval_octocoder": 10.98, "advbench": 98.27, "advbench_jailbreak": 67.31},
                       _METRICS),
    },
    ("gsm8k", "sdft", "all-linear-r64"): {
        "rerun": _refs(RERUN_15, {"gsm8k": 37.45, "multiarith": 87.78, "openfunctions": 17.86,
                                  "humaneval_octocoder": 15.24, "advbench": 98.65, "advbench_jailbreak": 70.77},
                       _METRICS),
    },
}


def references(dataset: str | None, method: str, capacity: str) -> dict[str, dict[str, Reference]]:
    """{"paper" | "rerun": {benchmark: Reference}} of one arm (empty when neither reports it)."""
    return REFERENCES.get((dataset, method, capacity), {})


def is_paper_model(model: str) -> bool:
    """Whether a seed model is the paper's (a hub id or a local folder named after it): the numbers are for it only."""
    return PAPER_MODEL.lower() in model.lower()
