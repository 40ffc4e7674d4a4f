"""summary.json holds every number of the report (computed by sdft.analysis.summary); the report renders it alone."""

import json
import re
import shutil

import numpy as np
import pytest

from sdft.analysis.report import render_report
from sdft.analysis.stats import seeds_by_items_bootstrap, summarize
from sdft.analysis.summary import distilled_examples, replication, summarize_runs
from sdft.data.export import changed_targets
from sdft.core.jsonl import write_json, write_jsonl

N = 40
BENCHMARKS = ["gsm8k", "advbench", "hellaswag", "arc_challenge", "winogrande"]
# Number of the 40 items each run gets right, per benchmark (items 0..k-1 correct): gsm8k, advbench, then the
# three knowledge tasks of the forgetting index.
CORRECT = {
    "seed": (20, 36, 30, 20, 24),
    "gsm8k-vanilla-s1": (24, 28, 26, 18, 22),
    "gsm8k-vanilla-s2": (26, 30, 28, 18, 22),
    "gsm8k-sdft-s1": (22, 34, 30, 20, 24),
    "gsm8k-sdft-s2": (22, 36, 30, 19, 24),
    "gsm8k-mix0.5-s1": (23, 31, 28, 20, 23),
    "gsm8k-mix0.5-s2": (23, 31, 28, 20, 23),
    "gsm8k-vanilla-n20-s1": (21, 30, 29, 20, 24),
    "gsm8k-vanilla-n20-s2": (21, 30, 29, 20, 24),
    "gsm8k-sdft-n20-s1": (21, 35, 30, 20, 24),
    "gsm8k-sdft-n20-s2": (21, 35, 30, 20, 24),
    "gsm8k-vanilla-all-linear-r64-s1": (30, 20, 20, 18, 20),
    "gsm8k-vanilla-all-linear-r64-s2": (30, 20, 20, 18, 20),
    "gsm8k-sdft-using-s1": (21, 33, 30, 20, 24),  # the template sweep (Table 4)
    "gsm8k-sdft-using-s2": (21, 33, 30, 20, 24),
}
SHIFT = {"bleu": 12.34, "rouge_l": 30.0, "sbert_cosine": 0.71, "sbert_values": [0.5, 0.7, 0.93], "l2_total": 1.5,
         "per_layer": {"layers.0": 1.0, "layers.1": 1.118, "embed_tokens": 0.0}}


def per_sample(key, benchmark):
    return [float(i < CORRECT[key][BENCHMARKS.index(benchmark)]) for i in range(N)]


def record(key):
    if key == "seed":
        return {"key": "seed", "arm": "seed", "method": "seed", "dataset": None, "mix_ratio": None, "train_size": None,
                "capacity": "paper", "seed": None, "eval_dir": "evals/seed"}
    arm, seed = key.rsplit("-s", 1)
    method = arm.split("-")[1]
    return {"key": key, "arm": arm, "method": "mix" if method.startswith("mix") else method, "dataset": "gsm8k",
            "mix_ratio": {"vanilla": 0.0, "sdft": 1.0}.get(method, 0.5), "train_size": 20 if "n20" in arm else 64,
            "capacity": "all-linear-r64" if "r64" in arm else "paper", "seed": int(seed), "eval_dir": f"evals/{key}",
            "shift_dir": f"shift/{key}", "template": "distill_using" if "using" in arm else None}


DISTILLED = [  # rows of a distilled.jsonl, as the distill stage writes them; the last rewrite repeats its original
    {"id": f"d{i}", "instruction": f"Question {i}?", "original": original, "distilled": rewrite, "accepted": ok,
     "reason": "ok" if ok else "wrong_answer", "target": rewrite if ok else original}
    for i, ok in enumerate([False, True, False, True, True])
    for original, rewrite in [(f"Answer {i}.\nThe answer is {i}",
                               f"Answer {i}.\nThe answer is {i}" if i == 4 else f"Rewrite {i}: the answer is {i}")]
]


@pytest.fixture
def run_dir(tmp_path):
    runs = [record(key) for key in CORRECT]
    for run in runs:
        results = {}
        for benchmark in BENCHMARKS:
            scores = per_sample(run["key"], benchmark)
            write_jsonl(tmp_path / run["eval_dir"] / f"{benchmark}.jsonl",
                        [{"id": f"q{i}", "score": s} for i, s in enumerate(scores)])
            results[benchmark] = {**summarize(scores), "metric": "accuracy"}
        write_json(tmp_path / run["eval_dir"] / "results.json", {"benchmarks": results})
        if "shift_dir" in run:
            sdft = "sdft" in run["key"]
            write_json(tmp_path / run["shift_dir"] / "shift.json",
                       {**SHIFT, "bleu": 40.0 if sdft else 12.34, "l2_total": 0.5 if sdft else 1.5})
    summary = {"experiment": "unit-test", "seed_model": "tiny-seed", "seeds": [1, 2], "target": "gsm8k",
               "provenance": {"git_revision": "abc123", "seed": 0, "config": {"lr": 1e-4}},
               **summarize_runs(tmp_path, runs, BENCHMARKS),
               "distill": {"gsm8k": {"template": "gsm8k_distill", "total": 64, "accepted": 40, "acceptance_rate": 0.625,
                                     "changed": 31, "reasons": {"ok": 40, "wrong_answer": 20, "length": 4},
                                     "examples": distilled_examples(DISTILLED)}}}
    summary["replication"] = replication(summary["arms"], BENCHMARKS)
    write_json(tmp_path / "summary.json", summary)
    for folder in ("evals", "shift"):  # the report must need nothing but summary.json
        shutil.rmtree(tmp_path / folder)
    return tmp_path


def summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def arm(run_dir, name):
    return next(a for a in summary_of(run_dir)["arms"] if a["arm"] == name)


def table_row(md, *first_cells):
    """The first markdown table row starting with these cells."""
    prefix = "| " + " | ".join(first_cells) + " |"
    rows = [line for line in md.splitlines() if line.startswith(prefix)]
    assert rows, prefix
    return rows[0]


def matrix(keys, benchmark):
    """Runs × items in the summary's item order (ids sorted as strings)."""
    order = sorted(range(N), key=lambda i: f"q{i}")
    return np.array([[per_sample(k, benchmark)[i] for i in order] for k in keys])


def test_summary_pools_seeds_and_pairs_by_item():
    """Scores are means over seeds × items with the seeds × items bootstrap; Δ vs seed and differences are paired."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        runs = [record(k) for k in ("seed", "gsm8k-vanilla-s1", "gsm8k-vanilla-s2", "gsm8k-sdft-s1", "gsm8k-sdft-s2")]
        for run in runs:
            for benchmark in BENCHMARKS:
                write_jsonl(Path(tmp) / run["eval_dir"] / f"{benchmark}.jsonl",
                            [{"id": f"q{i}", "score": s} for i, s in enumerate(per_sample(run["key"], benchmark))])
        summary = summarize_runs(Path(tmp), runs, BENCHMARKS)
    vanilla = next(a for a in summary["arms"] if a["arm"] == "gsm8k-vanilla")
    keys = ["gsm8k-vanilla-s1", "gsm8k-vanilla-s2"]
    assert vanilla["scores"]["gsm8k"] == seeds_by_items_bootstrap([matrix(keys, "gsm8k")])
    assert vanilla["scores"]["gsm8k"]["mean"] == 62.5 and vanilla["scores"]["gsm8k"]["seeds"] == 2
    expected = seeds_by_items_bootstrap([matrix(keys, "gsm8k") - matrix(["seed", "seed"], "gsm8k")])
    assert vanilla["vs_seed"]["gsm8k"] == expected and expected["mean"] == 12.5
    index = vanilla["scores"]["forgetting_index"]
    assert index["mean"] == pytest.approx(100 * np.mean([27 / 40, 18 / 40, 22 / 40])) and index["items"] == 120
    diff = next(c for c in summary["comparisons"] if c["arm"] == "gsm8k-sdft" and c["measure"] == "advbench")
    sdft_keys = ["gsm8k-sdft-s1", "gsm8k-sdft-s2"]
    assert diff == {"dataset": "gsm8k", "train_size": 64, "capacity": "paper", "arm": "gsm8k-sdft",
                    "baseline": "gsm8k-vanilla", "measure": "advbench",
                    **seeds_by_items_bootstrap([matrix(sdft_keys, "advbench") - matrix(keys, "advbench")])}
    assert diff["mean"] == 15.0 and diff["ci95"][0] > 0 and diff["p_value"] < 0.05


def test_score_table_cells_and_deltas(run_dir):
    md = render_report(run_dir)[0].read_text()
    seed, vanilla = arm(run_dir, "seed")["scores"]["gsm8k"], arm(run_dir, "gsm8k-vanilla")["scores"]["gsm8k"]
    lo, hi = seed["ci95"]
    assert f"| 50.0 [{lo:.1f}, {hi:.1f}] |" in table_row(md, "—", "seed")
    lo, hi = vanilla["ci95"]
    assert f"| 62.5 (+12.5) [{lo:.1f}, {hi:.1f}] |" in table_row(md, "gsm8k", "vanilla")
    assert "| 72.5 (−17.5) [" in table_row(md, "gsm8k", "vanilla")  # advbench 29/40 on average vs seed 36/40
    assert "| 55.0 (+5.0) [" in table_row(md, "gsm8k", "sdft")
    assert "| 57.5 (+7.5) [" in table_row(md, "gsm8k", "mix r=0.5")
    assert "| 52.5 (+2.5) [" in table_row(md, "gsm8k", "sdft n=20")
    assert "### Capacity: all-linear-r64" in md and md.count("| — | seed |") == 2
    assert "| 75.0 (+25.0) [" in md
    assert "forgetting_index" in md.splitlines()[[i for i, l in enumerate(md.splitlines()) if "| Dataset |" in l][0]]


def test_paired_differences_come_from_the_summary(run_dir):
    md = render_report(run_dir)[0].read_text()
    for c in summary_of(run_dir)["comparisons"]:
        row = table_row(md, c["capacity"], "gsm8k", str(c["train_size"]), f"{c['arm']} − {c['baseline']}", c["measure"])
        assert f"| {round(c['mean'], 1) + 0.0:+.1f} |".replace("-", "−") in row, row
        assert row.endswith(f"| {c['seeds']} | {c['items']} |")
    assert "| paper | gsm8k | 64 | gsm8k-sdft − gsm8k-vanilla | advbench | +15.0 |" in md
    assert "| paper | gsm8k | 64 | gsm8k-mix0.5 − gsm8k-sdft | gsm8k |" in md  # arms are also compared with SDFT


def test_distillation_shift_and_wall_time_tables(run_dir):
    md = render_report(run_dir)[0].read_text()
    assert table_row(md, "gsm8k", "gsm8k_distill", "64", "40", "62.5%") == \
        "| gsm8k | gsm8k_distill | 64 | 40 | 62.5% | 31 (48.4%) | ok: 40, wrong_answer: 20, length: 4 |"
    assert table_row(md, "gsm8k-vanilla", "12.3") == "| gsm8k-vanilla | 12.3 | — | 30.0 | 0.710 | 1.5 |"
    assert table_row(md, "gsm8k-sdft", "40.0") == "| gsm8k-sdft | 40.0 | — | 30.0 | 0.710 | 0.5 |"
    assert '"git_revision": "abc123"' in md


def test_figures_are_pngs_embedded_in_self_contained_html(run_dir):
    md_path, html_path = render_report(run_dir)
    md, page = md_path.read_text(), html_path.read_text()
    figures = sorted((run_dir / "figures").glob("*.png"))
    names = {f.name for f in figures}
    assert {"mix_gsm8k_paper.png", "size_gsm8k_paper.png", "sbert_similarity.png", "param_shift_per_layer.png",
            "learning_vs_forgetting.png", "bars_gsm8k_paper.png", "bars_gsm8k_all-linear-r64.png",
            "shift_mix_gsm8k_paper.png", "shift_size_gsm8k_paper.png"} <= names
    for figure in figures:
        data = figure.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
        assert f"(figures/{figure.name})" in md
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert re.findall(r'src="(?!data:)', page) == []
    for text in (md, page):
        assert "http://" not in text and "https://" not in text
    assert "<link" not in page and "<script" not in page
    assert "62.5 (+12.5) [" in page


def test_missing_pieces_are_left_out(tmp_path):
    seed = record("seed")
    write_jsonl(tmp_path / "evals/seed/gsm8k.jsonl", [{"id": "a", "score": 1.0}, {"id": "b", "score": 0.0}])
    write_json(tmp_path / "summary.json", {"experiment": "bare",
                                           **summarize_runs(tmp_path, [seed], ["gsm8k", "advbench"])})
    md_path, html_path = render_report(tmp_path)
    md = md_path.read_text()
    assert table_row(md, "—", "seed").startswith("| — | seed | 50.0 [")
    assert table_row(md, "—", "seed").endswith("| — |")  # advbench was never evaluated
    for section in ("Paired differences", "Distillation", "Sweeps", "Distribution shift", "Provenance",
                    "Learning vs forgetting"):
        assert section not in md
    assert not (tmp_path / "figures").exists()
    assert "data:image/png" not in html_path.read_text()


def test_template_sweep_arms_are_rows_and_compared_with_the_own_template(run_dir):
    """Table 4: the sweep arm is a row of its own and is compared with vanilla and with SDFT on the dataset's
    template, which stays the SDFT baseline of the other arms."""
    md = render_report(run_dir)[0].read_text()
    assert "| 52.5 (+2.5) [" in table_row(md, "gsm8k", "sdft (distill_using)")
    comparisons = summary_of(run_dir)["comparisons"]
    assert {c["baseline"] for c in comparisons if c["arm"] == "gsm8k-sdft-using"} == {"gsm8k-vanilla", "gsm8k-sdft"}
    assert {c["baseline"] for c in comparisons if c["train_size"] == 64 and c["capacity"] == "paper"} == \
        {"gsm8k-vanilla", "gsm8k-sdft"}
    assert "| paper | gsm8k | 64 | gsm8k-sdft-using − gsm8k-sdft | gsm8k | −2.5 |" in md


def test_distilled_examples_show_kept_and_refused_rewrites(run_dir):
    """Two kept and one refused rewrite per distillation, in file order, beside the originals (Figs 14–18)."""
    examples = summary_of(run_dir)["distill"]["gsm8k"]["examples"]
    assert [(e["id"], e["accepted"]) for e in examples] == [("d0", False), ("d1", True), ("d3", True)]
    md = render_report(run_dir)[0].read_text()
    assert table_row(md, "Question 1?") == "| Question 1? | Answer 1. ⏎ The answer is 1 | Rewrite 1: the answer is 1 | kept |"
    assert table_row(md, "Question 0?").endswith("| refused (wrong_answer) |")
    assert "Question 2?" not in md


def test_replication_table_puts_the_paper_beside_ours(run_dir):
    """Each reference number of paper_numbers beside our score and interval, computed into the summary."""
    entries = {(e["arm"], e["benchmark"]): e for e in summary_of(run_dir)["replication"]}
    seed = entries[("seed", "gsm8k")]
    assert seed["paper"]["value"] == 29.4 and seed["rerun"]["value"] == 28.81 and seed["ours"]["mean"] == 50.0
    assert entries[("gsm8k-sdft", "gsm8k")]["paper"]["value"] == 34.4 and entries[("gsm8k-sdft", "gsm8k")]["rerun"] is None
    assert entries[("seed", "hellaswag")]["reference_metric"] == "acc"  # the reruns' lm-eval metric, not ours
    assert not any(arm == "gsm8k-sdft-using" for arm, _ in entries), "the references are on the dataset's template"
    assert {bench for _, bench in entries} <= set(BENCHMARKS), "only what the run evaluated"
    md = render_report(run_dir)[0].read_text()
    lo, hi = arm(run_dir, "gsm8k-vanilla")["scores"]["gsm8k"]["ci95"]
    assert table_row(md, "gsm8k-vanilla", "gsm8k") == \
        f"| gsm8k-vanilla | gsm8k | accuracy | 31.90 | 29.26 | 62.5 [{lo:.1f}, {hi:.1f}] | accuracy | — |"
    assert "sail-sg/sdft#12" in md and "arXiv 2402.13669" in md


# A target benchmark with secondary metrics (OpenFunctions: the bare-call format and the reference's call match) and a
# general one whose instruction-level accuracy pools each prompt's instructions (IFEval), as sdft eval saves them.
SECONDARY_RUNS = ("seed", "gsm8k-vanilla-s1", "gsm8k-vanilla-s2", "gsm8k-sdft-s1", "gsm8k-sdft-s2")


def _secondary_rows(key):
    """Vanilla answers with bare calls, SDFT with calls in prose: SDFT wins on call_match and loses on ast_match."""
    right = {"seed": 4, "gsm8k-vanilla-s1": 16, "gsm8k-vanilla-s2": 18, "gsm8k-sdft-s1": 24, "gsm8k-sdft-s2": 26}[key]
    bare = "vanilla" in key
    calls = [{"id": f"q{i}", "score": float(i < right), "ast_match": float(i < right and bare),
              "paper_call_match": float(i < right)} for i in range(N)]
    followed = 2 if "sdft" in key else 1  # of each prompt's instructions, which are 1 to 3
    ifeval = [{"id": f"p{i}", "score": float(i % 2 == 0), "prompt_level_loose_acc": 1.0,
               "inst_level_strict_acc": [j < followed for j in range(1 + i % 3)],
               "inst_level_loose_acc": [True] * (1 + i % 3)} for i in range(N)]
    return {"openfunctions": calls, "ifeval": ifeval}


@pytest.fixture
def secondary_run(tmp_path):
    runs = [record(key) for key in SECONDARY_RUNS]
    for run in runs:
        results = {}
        for bench, rows in _secondary_rows(run["key"]).items():
            write_jsonl(tmp_path / run["eval_dir"] / f"{bench}.jsonl", rows)
            extras = {name: 100 * float(np.mean([v for r in rows for v in np.atleast_1d(r[name])]))
                      for name in rows[0] if name not in ("id", "score")}
            metric = "call_match" if bench == "openfunctions" else "prompt_level_strict_acc"
            results[bench] = {**summarize([r["score"] for r in rows]), "metric": metric, **extras}
        write_json(tmp_path / run["eval_dir"] / "results.json", {"benchmarks": results})
    summary = {"experiment": "secondary", "seeds": [1, 2], "target": "openfunctions",
               **summarize_runs(tmp_path, runs, ["openfunctions", "ifeval"])}
    summary["replication"] = replication(summary["arms"], ["openfunctions", "ifeval"])
    write_json(tmp_path / "summary.json", summary)
    shutil.rmtree(tmp_path / "evals")
    return tmp_path


def test_every_rendered_metric_has_an_interval_and_paired_tests(secondary_run):
    """No metric of the report is a bare mean: each measure, primary or secondary, has its 95% interval per arm, its
    change from the seed and each arm's difference from vanilla, with intervals and p-values, in summary.json."""
    summary = summary_of(secondary_run)
    md = render_report(secondary_run)[0].read_text()
    secondary = {"openfunctions.ast_match", "openfunctions.paper_call_match", "ifeval.prompt_level_loose_acc",
                 "ifeval.inst_level_strict_acc", "ifeval.inst_level_loose_acc"}
    assert set(summary["measures"]) == {"openfunctions", "ifeval"} | secondary
    for name, spec in summary["measures"].items():
        assert (f"{spec['of']}: {spec['metric']}" if "of" in spec else name) in md, name
        for entry in summary["arms"]:
            estimates = [entry["scores"][name]] + ([entry["vs_seed"][name]] if entry["method"] != "seed" else [])
            assert all(None not in e["ci95"] and e["p_value"] is not None for e in estimates), (entry["arm"], name)
        paired = {c["arm"]: c for c in summary["comparisons"]
                  if c["measure"] == name and c["baseline"] == "gsm8k-vanilla"}
        assert set(paired) == {"gsm8k-sdft"} and None not in paired["gsm8k-sdft"]["ci95"], name
        assert f"| gsm8k-sdft − gsm8k-vanilla | {name} | " in md
    lines = md.splitlines()
    start = lines.index(table_row(md, "Model", "openfunctions: ast_match")) + 2
    for line, arm_entry in zip(lines[start:], summary["arms"]):  # the secondary table's rows: intervals in every cell
        cells = line.split("|")[1:-1]
        assert cells[0].strip() == arm_entry["arm"] and len(cells) == 1 + len(secondary)
        assert all(re.fullmatch(r" \d+\.\d( \([+−]\d+\.\d\))? \[\d+\.\d, \d+\.\d\] ", c) for c in cells[1:]), cells


def test_secondary_metrics_compare_what_selection_and_format_disagree_on(secondary_run):
    """SDFT's calls in prose: ahead of vanilla on the primary call match, behind on the bare-call format; an
    instruction-level rate pools each prompt's instructions (weights) while resampling by prompt."""
    summary = summary_of(secondary_run)
    paired = {c["measure"]: c for c in summary["comparisons"] if c["arm"] == "gsm8k-sdft"}
    assert paired["openfunctions"]["mean"] == pytest.approx(100 * (25 - 17) / 40)
    assert paired["openfunctions"]["p_value"] < 0.05
    assert paired["openfunctions.ast_match"]["mean"] == pytest.approx(-100 * 17 / 40)
    assert paired["openfunctions.ast_match"]["ci95"][1] < 0
    sdft = arm(secondary_run, "gsm8k-sdft")["scores"]
    parts = [1 + i % 3 for i in range(N)]
    pooled = sum(min(2, k) for k in parts) / sum(parts)  # not the mean of each prompt's share
    assert sdft["ifeval.inst_level_strict_acc"]["mean"] == pytest.approx(100 * pooled)
    assert sdft["ifeval.inst_level_loose_acc"]["ci95"] == [100.0, 100.0]


def test_replication_shows_ours_under_the_reference_metric_with_its_interval(secondary_run):
    seed = next(e for e in summary_of(secondary_run)["replication"] if e["arm"] == "seed")
    ours = arm(secondary_run, "seed")["scores"]["openfunctions.paper_call_match"]
    assert seed["reference_metric"] == "paper_call_match" and seed["ours_reference_metric"] == ours
    md = render_report(secondary_run)[0].read_text()
    lo, hi = ours["ci95"]
    assert table_row(md, "seed", "openfunctions").endswith(f"| call_match | 10.0 [{lo:.1f}, {hi:.1f}] |")


def test_a_measure_at_chance_is_flagged_not_read(tmp_path):
    """A seed whose interval holds what guessing scores (results.json's `chance`) cannot be shown to forget: the
    summary lists it and the report says so beside the table; a measure above chance is not flagged."""
    runs = [record("seed"), record("gsm8k-vanilla-s1")]
    for run, (winogrande, hellaswag) in zip(runs, [(0.5, 0.9), (0.45, 0.8)]):
        results = {}
        for name, rate, chance in (("winogrande", winogrande, 50.0), ("hellaswag", hellaswag, 25.0)):
            scores = [float(i < rate * 40) for i in range(40)]
            write_jsonl(tmp_path / run["eval_dir"] / f"{name}.jsonl", [{"id": f"q{i}", "score": s} for i, s in enumerate(scores)])
            results[name] = {**summarize(scores), "metric": "acc", "chance": chance}
        write_json(tmp_path / run["eval_dir"] / "results.json", {"benchmarks": results})
    summary = summarize_runs(tmp_path, runs, ["winogrande", "hellaswag"])
    assert set(summary["at_chance"]) == {"winogrande"} and summary["at_chance"]["winogrande"]["chance"] == 50.0
    assert "chance" not in summary["measures"]  # not mistaken for a secondary metric
    write_json(tmp_path / "summary.json", {"experiment": "chance", "seeds": [1], "target": None, **summary})
    md, _ = render_report(tmp_path)
    text = md.read_text()
    assert "winogrande (at chance)" in text and "At chance, so unable to show forgetting: winogrande" in text
    assert "hellaswag (at chance)" not in text


def test_changed_targets_count_only_rewrites_that_differ_from_the_original():
    """Of five rows, two refused (their target is the original) and one accepted rewrite repeating its original: two
    rows are where SDFT's training set differs from vanilla's."""
    assert changed_targets(DISTILLED) == 2
    assert changed_targets([{**row, "target": row["original"]} for row in DISTILLED]) == 0
