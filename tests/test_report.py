import json
import re

import pytest

from sdft.jsonl import write_json, write_jsonl
from sdft.stages.report import render_report
from sdft.stats import paired_bootstrap, summarize

N = 40
BENCHMARKS = ["gsm8k", "advbench"]
# Number of the 40 items each model gets right, per benchmark (items 0..k-1 correct).
CORRECT = {
    "seed": {"gsm8k": 20, "advbench": 36},
    "gsm8k-vanilla": {"gsm8k": 24, "advbench": 28},
    "gsm8k-sdft": {"gsm8k": 22, "advbench": 34},
    "gsm8k-mix0.5": {"gsm8k": 23, "advbench": 31},
    "gsm8k-vanilla-n20": {"gsm8k": 21, "advbench": 30},
    "gsm8k-sdft-n20": {"gsm8k": 21, "advbench": 35},
    "gsm8k-vanilla-allr64": {"gsm8k": 30, "advbench": 20},
}
MODELS = [
    {"key": "seed", "method": "seed", "dataset": None, "mix_ratio": None, "train_size": None, "capacity": "paper"},
    {"key": "gsm8k-vanilla", "method": "vanilla", "dataset": "gsm8k", "mix_ratio": 0.0, "train_size": 64,
     "capacity": "paper"},
    {"key": "gsm8k-sdft", "method": "sdft", "dataset": "gsm8k", "mix_ratio": 1.0, "train_size": 64,
     "capacity": "paper"},
    {"key": "gsm8k-mix0.5", "method": "mix", "dataset": "gsm8k", "mix_ratio": 0.5, "train_size": 64,
     "capacity": "paper"},
    {"key": "gsm8k-vanilla-n20", "method": "vanilla", "dataset": "gsm8k", "mix_ratio": 0.0, "train_size": 20,
     "capacity": "paper"},
    {"key": "gsm8k-sdft-n20", "method": "sdft", "dataset": "gsm8k", "mix_ratio": 1.0, "train_size": 20,
     "capacity": "paper"},
    {"key": "gsm8k-vanilla-allr64", "method": "vanilla", "dataset": "gsm8k", "mix_ratio": 0.0, "train_size": 64,
     "capacity": "all-linear-r64"},
]


def per_sample(key, benchmark):
    return [float(i < CORRECT[key][benchmark]) for i in range(N)]


@pytest.fixture
def run_dir(tmp_path):
    for model in MODELS:
        model["eval_dir"] = f"evals/{model['key']}"
        results = {}
        for benchmark in BENCHMARKS:
            scores = per_sample(model["key"], benchmark)
            write_jsonl(tmp_path / model["eval_dir"] / f"{benchmark}.jsonl",
                        [{"id": f"q{i}", "score": s} for i, s in enumerate(scores)])
            results[benchmark] = summarize(scores)
        write_json(tmp_path / model["eval_dir"] / "results.json", {"benchmarks": results})
    write_json(tmp_path / "summary.json", {
        "experiment": "unit-test",
        "seed_model": "tiny-seed",
        "provenance": {"git_revision": "abc123", "seed": 0, "config": {"lr": 1e-4}},
        "benchmarks": BENCHMARKS,
        "models": MODELS,
        "distill": {"gsm8k": {"total": 64, "accepted": 40, "acceptance_rate": 0.625,
                              "reasons": {"ok": 40, "wrong_answer": 20, "length": 4}}},
        "shift": {
            "gsm8k-vanilla": {"bleu": 12.34, "rouge_l": 30.0, "sbert_cosine": 0.71, "sbert_values": [0.5, 0.7, 0.93],
                              "l2_total": 1.5, "per_layer": {"layers.0": 1.0, "layers.1": 1.118, "embed_tokens": 0.0}},
            "gsm8k-sdft": {"bleu": 40.0, "rouge_l": 55.55, "sbert_cosine": 0.9, "sbert_values": [0.85, 0.9, 0.95],
                           "l2_total": 0.5, "per_layer": {"layers.0": 0.3, "layers.1": 0.4}},
        },
    })
    return tmp_path


def read_results(run_dir, key):
    return json.loads((run_dir / "evals" / key / "results.json").read_text())["benchmarks"]


def table_row(md, *first_cells):
    """The first markdown table row starting with these cells."""
    prefix = "| " + " | ".join(first_cells) + " |"
    rows = [line for line in md.splitlines() if line.startswith(prefix)]
    assert rows, prefix
    return rows[0]


def test_score_table_cells_and_deltas(run_dir):
    md_path, _ = render_report(run_dir)
    md = md_path.read_text()
    seed, vanilla = read_results(run_dir, "seed"), read_results(run_dir, "gsm8k-vanilla")
    lo, hi = seed["gsm8k"]["ci95"]
    assert f"| 50.0 [{lo:.1f}, {hi:.1f}] |" in table_row(md, "—", "seed")
    lo, hi = vanilla["gsm8k"]["ci95"]
    assert f"| 60.0 (+10.0) [{lo:.1f}, {hi:.1f}] |" in table_row(md, "gsm8k", "vanilla")
    assert "| 70.0 (−20.0) [" in table_row(md, "gsm8k", "vanilla")  # advbench 28/40 vs seed 36/40
    assert "| 55.0 (+5.0) [" in table_row(md, "gsm8k", "sdft")
    assert "| 57.5 (+7.5) [" in table_row(md, "gsm8k", "mix r=0.5")
    assert "| 52.5 (+2.5) [" in table_row(md, "gsm8k", "sdft n=20")
    # The second capacity gets its own table, which repeats the seed row.
    assert "### Capacity: all-linear-r64" in md
    assert md.count("| — | seed |") == 2
    assert "| 75.0 (+25.0) [" in md


def test_sdft_vs_vanilla_p_values_match_paired_bootstrap(run_dir):
    md = render_report(run_dir)[0].read_text()
    for size, vanilla_key, sdft_key in [("64", "gsm8k-vanilla", "gsm8k-sdft"), ("20", "gsm8k-vanilla-n20",
                                                                                 "gsm8k-sdft-n20")]:
        for benchmark in BENCHMARKS:
            a = {f"q{i}": s for i, s in enumerate(per_sample(vanilla_key, benchmark))}
            b = {f"q{i}": s for i, s in enumerate(per_sample(sdft_key, benchmark))}
            expected = paired_bootstrap(a, b)
            row = table_row(md, "paper", "gsm8k", size, benchmark)
            diff = f"{expected['diff']:+.1f}".replace("-", "−")
            p = expected["p_value"]
            p_text = "<0.001" if p < 0.001 else f"{p:.3f}"
            assert row.endswith(f"| {diff} | " + f"[{expected['ci95'][0]:+.1f}, {expected['ci95'][1]:+.1f}]"
                                .replace("-", "−") + f" | {p_text} | 40 |"), row
    assert "| paper | gsm8k | 64 | gsm8k | −5.0 |" in md
    assert "| paper | gsm8k | 64 | advbench | +15.0 |" in md


def test_distillation_and_shift_tables(run_dir):
    md = render_report(run_dir)[0].read_text()
    assert table_row(md, "gsm8k", "64", "40", "62.5%") == \
        "| gsm8k | 64 | 40 | 62.5% | ok: 40, wrong_answer: 20, length: 4 |"
    assert table_row(md, "gsm8k-vanilla", "12.3") == "| gsm8k-vanilla | 12.3 | 30.0 | 0.710 | 1.5 |"
    assert table_row(md, "gsm8k-sdft", "40.0") == "| gsm8k-sdft | 40.0 | 55.5 | 0.900 | 0.5 |"
    assert '"git_revision": "abc123"' in md


def test_figures_are_pngs_embedded_in_self_contained_html(run_dir):
    md_path, html_path = render_report(run_dir)
    md, page = md_path.read_text(), html_path.read_text()
    figures = sorted((run_dir / "figures").glob("*.png"))
    names = {f.name for f in figures}
    assert {"mix_gsm8k_paper.png", "size_gsm8k_paper.png", "sbert_similarity.png",
            "param_shift_per_layer.png"} <= names
    for figure in figures:
        data = figure.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
        assert f"(figures/{figure.name})" in md
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert re.findall(r'src="(?!data:)', page) == []
    for text in (md, page):
        assert "http://" not in text and "https://" not in text
    assert "<link" not in page and "<script" not in page
    assert "60.0 (+10.0) [" in page


def test_missing_pieces_are_left_out(tmp_path):
    seed = {"key": "seed", "method": "seed", "eval_dir": "evals/seed"}
    write_json(tmp_path / "evals/seed/results.json", {"benchmarks": {"gsm8k": summarize([1.0, 0.0])}})
    write_json(tmp_path / "summary.json", {"experiment": "bare", "benchmarks": ["gsm8k", "advbench"],
                                           "models": [seed]})
    md_path, html_path = render_report(tmp_path)
    md = md_path.read_text()
    assert table_row(md, "—", "seed").startswith("| — | seed | 50.0 [")
    assert table_row(md, "—", "seed").endswith("| — |")  # advbench was never evaluated
    for section in ("SDFT − vanilla", "Distillation", "Sweeps", "Distribution shift", "Provenance"):
        assert section not in md
    assert not (tmp_path / "figures").exists()
    assert "data:image/png" not in html_path.read_text()
