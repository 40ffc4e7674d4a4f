"""summary.json: every number an experiment's report shows, computed here once; the report and the demo only render it.

Models are grouped into arms (method × mix ratio × train size × capacity), one training run per seed. For each arm and
measure (a benchmark's score, each of its secondary metrics, the forgetting index, retention) the summary holds the mean
over seeds and items with a 95% interval from a seeds × items bootstrap (`stats.seeds_by_items_bootstrap`), the change
from the seed model paired by item, and for each arm against vanilla (and against SDFT) the difference paired by seed
and item, with p-values: no number of the report is a bare mean.

- secondary metrics: what a benchmark's results.json entry holds beside its score (OpenFunctions' bare-call `ast_match`
  and the reference's `paper_call_match`, IFEval's loose and instruction-level accuracies), named `<benchmark>.<metric>`
  with `of` naming the benchmark; their per-item values are the fields of that name in `<benchmark>.jsonl` (a list, one
  verdict per instruction, is pooled over the item's parts: `stats.seeds_by_items_bootstrap`'s weights);
- forgetting index: the mean of HellaSwag, ARC-Challenge and WinoGrande accuracy (Biderman et al. 2024, "LoRA Learns
  Less and Forgets Less"), when all three were evaluated;
- retention: the mean log-probability per token a model assigns to the seed's own answers (`stages.likelihood`), in
  nats per token (scale 1), when the experiment asks for it: closeness to the seed, not retained ability (SDFT trains on
  the seed's own text); with answers sampled at temperature 1 its change from the seed estimates −KL(seed ‖ model);
- reference_likelihood: the same on reference answers no model here wrote (third-party likelihood), a forgetting
  measure no method wins by construction;
- at_chance: the measures whose seed score is within its interval of chance, which cannot show forgetting;
- frontier (`analysis.frontier`): with learning curves and a pre-registered decision, SDFT against vanilla at matched
  task gain and the verdict.

Arms of a template sweep (`template` set) are compared with vanilla and with SDFT on the dataset's own template. Each
distillation's entry carries a few kept and refused rewrites beside their originals; for the paper's seed model, the
replication entries put `paper_numbers`' references beside our scores.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from sdft.analysis.frontier import frontier_summary
from sdft.analysis.paper_numbers import is_paper_model, references
from sdft.analysis.scores import LIKELIHOODS, item_values, scores_file
from sdft.analysis.stats import seeds_by_items_bootstrap
from sdft.core.jsonl import read_jsonl, write_json
from sdft.data.export import changed_targets

FORGETTING_INDEX = ("hellaswag", "arc_challenge", "winogrande")
# the y axes of the learning-vs-forgetting plot
GENERAL_MEASURES = ("forgetting_index", "ifeval", "reference_likelihood", "retention")
SHIFT_METRICS = ("bleu", "bleu_paper", "rouge_l", "sbert_cosine", "l2_total")


def secondary_measure(benchmark: str, metric: str) -> str:
    return f"{benchmark}.{metric}"


def _measures(benchmarks: list[str], likelihoods: list[str], secondary: dict[str, list[str]]) -> dict[str, dict]:
    """name -> {components, scale, unit}: each benchmark, the forgetting index, the likelihood measures the runs have
    (with `role`: closeness to the seed or forgetting), then each benchmark's secondary metrics (with `of` and
    `metric`: the benchmark and the metric's own name)."""
    measures = {b: {"components": [b], "scale": 100.0, "unit": "points"} for b in benchmarks}
    if all(b in benchmarks for b in FORGETTING_INDEX):
        measures["forgetting_index"] = {"components": list(FORGETTING_INDEX), "scale": 100.0, "unit": "points"}
    for name in likelihoods:
        measures[name] = {"components": [name], "scale": 1.0, "unit": "nats/token", "role": LIKELIHOODS[name][2]}
    for bench, metrics in secondary.items():
        for metric in metrics:
            name = secondary_measure(bench, metric)
            measures[name] = {"components": [name], "scale": 100.0, "unit": "points", "of": bench, "metric": metric}
    return measures


def _secondary_metrics(results: list[dict], benchmarks: list[str]) -> dict[str, list[str]]:
    """benchmark -> the metrics its results.json entries hold beside the score, in the order evaluation wrote them."""
    found: dict[str, dict[str, None]] = {}
    for bench in benchmarks:
        for result in results:
            entry = result.get(bench) or {}
            names = [k for k, v in entry.items() if isinstance(v, (int, float)) and k not in ("score", "n", "chance")]
            found.setdefault(bench, {}).update(dict.fromkeys(names))
    return {bench: list(names) for bench, names in found.items() if names}


class _ItemScores:
    """Per-item values of every (run, component), read once from the run's output files; `weights` holds, for a
    component pooled over an item's parts, each item's number of parts."""

    def __init__(self, run_dir: Path, runs: list[dict], secondary: dict[str, list[str]]):
        self.values: dict[tuple[str, str], dict[str, float]] = {}
        self.weights: dict[tuple[str, str], dict[str, int]] = {}
        for run in runs:
            for path in (run_dir / run["eval_dir"]).glob("*.jsonl"):
                if not path.name.endswith((".generations.jsonl", ".verdicts.jsonl")):
                    rows = read_jsonl(path)
                    self._add(run["key"], path.stem, rows, "score")
                    for metric in secondary.get(path.stem, []):
                        self._add(run["key"], secondary_measure(path.stem, metric), rows, metric)
            for name, (folder, _, _) in LIKELIHOODS.items():
                if folder in run:
                    self._add(run["key"], name, read_jsonl(scores_file(run_dir, run, name)), "score")

    def _add(self, key: str, component: str, rows: list[dict], field: str) -> None:
        values, weights = item_values(rows, field)
        if values:
            self.values[(key, component)] = values
        if weights:
            self.weights[(key, component)] = weights

    def matrix(self, keys: list[str], component: str, ids: list[str]) -> np.ndarray:
        return np.array([[self.values[(k, component)][i] for i in ids] for k in keys])

    def item_weights(self, key: str, component: str, ids: list[str]) -> np.ndarray | None:
        """The parts per item of a pooled component (the same for every model: they come from the benchmark)."""
        weights = self.weights.get((key, component))
        return None if weights is None else np.array([weights[i] for i in ids])

    def common_ids(self, keys: list[str], component: str) -> list[str] | None:
        """The items every one of `keys` was scored on (None when one of them lacks the component)."""
        found = [self.values.get((k, component)) for k in keys]
        if any(f is None for f in found):
            return None
        return sorted(set.intersection(*(set(f) for f in found)))


def _arms(runs: list[dict]) -> dict[str, list[dict]]:
    arms: dict[str, list[dict]] = {}
    for run in runs:
        arms.setdefault(run["arm"], []).append(run)
    return arms


def _estimate(items: _ItemScores, measure: dict, keys: list[str], minus: list[str] | None = None) -> dict | None:
    """The measure over runs `keys` (seeds × items); with `minus`, the paired difference keys − minus, matched
    position by position (same seed, or the one seed model repeated)."""
    components, weights = [], []
    for component in measure["components"]:
        ids = items.common_ids(keys + (minus or []), component)
        if not ids:
            return None
        values = items.matrix(keys, component, ids)
        if minus is not None:
            values = values - items.matrix(minus, component, ids)
        components.append(values)
        weights.append(items.item_weights(keys[0], component, ids))
    return seeds_by_items_bootstrap(components, scale=measure["scale"], weights=weights)


def _comparisons(arms: dict[str, list[dict]], measures: dict, items: _ItemScores) -> list[dict]:
    """Each arm against vanilla, and against SDFT, of the same dataset, train size and capacity, paired by seed."""
    out = []
    by_group = defaultdict(dict)
    for arm, runs in arms.items():
        first = runs[0]
        if first["method"] != "seed":
            by_group[(first["dataset"], first["train_size"], first["capacity"])][arm] = runs
    for (dataset, size, capacity), group in by_group.items():
        # the baselines are vanilla and SDFT on the dataset's own template; template-sweep arms are compared with them
        references = {runs[0]["method"]: arm for arm, runs in group.items()
                      if runs[0]["method"] in ("vanilla", "sdft") and not runs[0].get("template")}
        for baseline_method, baseline in references.items():
            base_seeds = {r["seed"]: r["key"] for r in group[baseline]}
            for arm, runs in group.items():
                if arm == baseline or (baseline_method == "sdft" and runs[0]["method"] == "vanilla"):
                    continue
                seeds = [r["seed"] for r in runs if r["seed"] in base_seeds]
                keys = [r["key"] for r in runs if r["seed"] in base_seeds]
                for name, measure in measures.items():
                    result = _estimate(items, measure, keys, [base_seeds[s] for s in seeds])
                    if result is not None:
                        out.append({"dataset": dataset, "train_size": size, "capacity": capacity, "arm": arm,
                                    "baseline": baseline, "measure": name, **result})
    return out


def _stage_seconds(run_dir: Path, directory: str | None) -> float | None:
    done = run_dir / directory / "done.json" if directory else None
    return json.loads(done.read_text()).get("seconds") if done and done.is_file() else None


def _results(run_dir: Path, run: dict) -> dict:
    path = run_dir / run["eval_dir"] / "results.json"
    return json.loads(path.read_text(encoding="utf-8"))["benchmarks"] if path.is_file() else {}


def _arm_entry(run_dir: Path, arm: str, runs: list[dict], seed_keys: list[str], measures: dict,
               items: _ItemScores) -> dict:
    keys = [r["key"] for r in runs]
    first = runs[0]
    entry = {k: first[k] for k in ("arm", "method", "dataset", "mix_ratio", "train_size", "capacity")}
    entry["template"] = first.get("template")
    entry.update(runs=keys, seeds=[r["seed"] for r in runs], scores={}, vs_seed={}, metrics={})
    for name, measure in measures.items():
        score = _estimate(items, measure, keys)
        if score is not None:
            entry["scores"][name] = score
        if first["method"] != "seed" and (delta := _estimate(items, measure, keys, seed_keys * len(keys))):
            entry["vs_seed"][name] = delta
    for result in [_results(run_dir, r) for r in runs]:
        for bench, found in result.items():
            entry["metrics"].setdefault(bench, found.get("metric"))
    shifts = [json.loads((run_dir / r["shift_dir"] / "shift.json").read_text()) for r in runs if "shift_dir" in r
              and (run_dir / r["shift_dir"] / "shift.json").is_file()]
    if shifts:
        entry["shift"] = {m: float(np.mean([s[m] for s in shifts])) for m in SHIFT_METRICS if all(m in s for s in shifts)}
        entry["shift_runs"] = len(shifts)
        entry["sbert_values"] = [v for s in shifts for v in s.get("sbert_values") or []]
        layers = [s.get("per_layer") or {} for s in shifts]
        entry["per_layer"] = {name: float(np.mean([l[name] for l in layers])) for name in layers[0]
                              if all(name in l for l in layers)}
    train = [s for r in runs if (s := _stage_seconds(run_dir, r.get("train_dir"))) is not None]
    evals = [s for r in runs if (s := _stage_seconds(run_dir, r.get("eval_dir"))) is not None]
    entry["wall_time_s"] = {"train": float(np.mean(train)) if train else None,
                            "eval": float(np.mean(evals)) if evals else None,
                            "distill": _stage_seconds(run_dir, first.get("distill_dir"))
                            if first["method"] in ("sdft", "mix") else None}
    return entry


def summarize_runs(run_dir: Path, runs: list[dict], benchmarks: list[str]) -> dict:
    """measures, arms and comparisons of evaluated runs (records as `ModelRun.record` writes them)."""
    secondary = _secondary_metrics([_results(run_dir, r) for r in runs], benchmarks)
    likelihoods = [name for name, (folder, _, _) in LIKELIHOODS.items() if any(folder in r for r in runs)]
    measures = _measures(benchmarks, likelihoods, secondary)
    items = _ItemScores(run_dir, runs, secondary)
    arms = _arms(runs)
    seed_keys = [r["key"] for r in runs if r["method"] == "seed"]
    arm_entries = [_arm_entry(run_dir, arm, arm_runs, seed_keys, measures, items) for arm, arm_runs in arms.items()]
    seed_results = [_results(run_dir, r) for r in runs if r["method"] == "seed"]
    return {
        "benchmarks": benchmarks, "measures": measures, "general": [m for m in GENERAL_MEASURES if m in measures],
        "models": runs, "arms": arm_entries, "comparisons": _comparisons(arms, measures, items),
        "at_chance": _at_chance(measures, seed_results[0] if seed_results else {},
                                next((a for a in arm_entries if a["method"] == "seed"), None)),
    }


def _at_chance(measures: dict, seed_results: dict, seed_arm: dict | None) -> dict[str, dict]:
    """The measures whose seed score is within its 95% interval of what guessing scores (`chance` in results.json,
    a composite's the mean of its components'): a model cannot be shown to forget what the seed never had."""
    flagged = {}
    for name, measure in measures.items():
        chances = [(seed_results.get(c) or {}).get("chance") for c in measure["components"]]
        score = (seed_arm or {}).get("scores", {}).get(name)
        if "of" in measure or None in chances or not score or score.get("ci95", [None])[0] is None:
            continue
        chance = float(np.mean(chances))
        low, high = score["ci95"]
        if low <= chance <= high:
            flagged[name] = {"chance": chance, "seed_ci95": [low, high]}
    return flagged


def distilled_examples(rows: list[dict], accepted: int = 2, rejected: int = 1) -> list[dict]:
    """The first `accepted` kept and `rejected` refused rewrites of a distilled.jsonl's rows, beside their originals
    (the paper's Figs 14–18)."""
    picked, wanted = [], {True: accepted, False: rejected}
    for row in rows:
        if wanted[bool(row["accepted"])] > 0:
            wanted[bool(row["accepted"])] -= 1
            picked.append({"id": row.get("id"), "instruction": "\n\n".join(filter(None, [row.get("instruction"),
                                                                                      row.get("input")])),
                           "original": row["original"], "distilled": row["distilled"],
                           "accepted": bool(row["accepted"]), "reason": row.get("reason")})
    return picked


def replication(arms: list[dict], benchmarks: list[str]) -> list[dict]:
    """Per arm and evaluated benchmark the paper's number, the maintainers' rerun and ours with its 95% interval (and
    ours under the reference's metric where that differs and we measure it, with its interval too), for every arm
    `paper_numbers` has numbers of (template-sweep arms left out: the references are on the dataset's own template)."""
    out = []
    for arm in arms:
        refs = {} if arm.get("template") else references(arm.get("dataset"), arm["method"], arm.get("capacity") or "paper")
        for bench in [b for b in benchmarks if any(b in column for column in refs.values())]:
            found = {column: refs.get(column, {}).get(bench) for column in ("paper", "rerun")}
            metric = next(r.metric for r in found.values() if r)
            ours_reference = arm["scores"].get(secondary_measure(bench, metric)) if metric else None
            out.append({"arm": arm["arm"], "benchmark": bench, "metric": arm["metrics"].get(bench),
                        "reference_metric": metric or arm["metrics"].get(bench),
                        **{column: r and {"value": r.value, "source": r.source} for column, r in found.items()},
                        "ours": arm["scores"].get(bench),
                        "ours_reference_metric": ours_reference})
    return out


def build_summary(exp, the_plan, run_dir: Path, provenance: dict) -> dict:
    """The summary of a finished experiment (see the module docstring); `provenance` is the run's record (run.json)."""
    distill_stats = {}
    for stage in the_plan.stages:
        if stage.kind == "distill":
            directory = stage.directory(run_dir)
            rows = read_jsonl(directory / "distilled.jsonl")
            distill_stats[stage.key] = {**json.loads((directory / "distill_stats.json").read_text()),
                                        "changed": changed_targets(rows), "examples": distilled_examples(rows)}
    benchmarks = list(exp.eval.benchmarks)
    target = exp.target_benchmark or next((Path(d).stem for d in exp.datasets if Path(d).stem in benchmarks), None)
    runs = [m.record(run_dir) for m in the_plan.models]
    summary = {"experiment": exp.name, "seed_model": exp.model, "provenance": provenance,
               "default_train_size": exp.train_size, "seeds": list(exp.seeds), "target": target,
               "retention_temperature": exp.retention.temperature,
               **summarize_runs(run_dir, runs, benchmarks), "distill": distill_stats}
    if exp.decision.gains and target:
        summary["frontier"] = frontier_summary(run_dir, runs, target, exp.decision.gains,
                                               {m: summary["measures"][m] for m in [target, *exp.decision.measures]},
                                               exp.decision.min_seeds)
    if is_paper_model(exp.model):  # the reference numbers are Llama-2-7b-chat's
        summary["replication"] = replication([a for a in summary["arms"] if a.get("train_size") in (None, exp.train_size)],
                                             benchmarks)
    return summary


def write_summary(exp, the_plan, run_dir: Path, provenance: dict) -> dict:
    summary = build_summary(exp, the_plan, run_dir, provenance)
    write_json(run_dir / "summary.json", summary)
    return summary
