"""SDFT against vanilla at matched task gain: the paper's claim is *comparable task score with less forgetting*, and
one training budget per method cannot test it — a method that learns less also moves less, and so "forgets less".

Each (method, seed) is a learning curve: the model evaluated at several training steps (step 0 is the seed model, the
same for every curve). At a target gain g (pre-registered in the experiment), each curve's forgetting is read where
its task gain first reaches g, linearly between the two checkpoints around the crossing. The method's forgetting at g
is the mean over the seeds whose curve reaches it. Intervals bootstrap seeds (one draw shared by both methods: a seed
is one data order and initialisation for both) and items (one draw per benchmark, shared by every model: the same
questions), so they cover training-run and item sampling together, and the SDFT − vanilla difference is paired.

The verdict follows a rule stated before the run (`DecisionRule`, the experiment's `decision:` section):
- supported: SDFT reaches g in at least `min_seeds` seeds, and on at least one forgetting measure it forgets less
  with an interval excluding 0, and on none more;
- learns less: SDFT reaches g in fewer than `min_seeds` seeds;
- refuted: every measure's interval excludes a benefit (its upper bound is below 0);
- inconclusive: anything else (vanilla not reaching g included).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdft.analysis.scores import item_values, scores_file
from sdft.analysis.stats import _interval_and_p
from sdft.core.jsonl import read_jsonl

VERDICTS = ("supported", "learns less", "refuted", "inconclusive")


@dataclass(frozen=True)
class Curve:
    """One training run evaluated at `steps` (the first is 0: the seed model). `target` is (steps, items) of per-item
    task scores; `measures[name]` is (steps, items) of per-item values of a measure where higher is better (so a
    drop from step 0 is forgetting)."""

    steps: tuple[int, ...]
    target: np.ndarray
    measures: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class DecisionRule:
    gain: float  # the matched task gain, in the target metric's units (0-100 scale for rates)
    measures: tuple[str, ...]  # the forgetting measures the verdict reads (not favoured by construction)
    min_seeds: int = 2  # SDFT must reach the gain in at least this many seeds

    def sentence(self) -> str:
        return (f"at a task gain of {self.gain:g}: supported if SDFT reaches it in ≥ {self.min_seeds} seeds and "
                f"forgets less on at least one of {', '.join(self.measures)} (95% interval excluding 0) and more on "
                "none; learns less if it reaches it in fewer seeds; refuted if every interval excludes a benefit; "
                "else inconclusive")


def crossing(gains: np.ndarray, goal: float) -> float | None:
    """Fractional checkpoint index where `gains` (one per step, gains[0] = 0) first reach `goal`; None if never."""
    for k in range(1, len(gains)):
        if gains[k] >= goal:
            before, after = gains[k - 1], gains[k]
            return k - 1 + (0.0 if after == before else (goal - before) / (after - before))
    return None


def at_position(values: np.ndarray, position: float) -> float:
    """`values` (one per step) read at a fractional index, linearly between the two steps around it."""
    low = int(math.floor(position))
    high = min(low + 1, len(values) - 1)
    return float(values[low] + (position - low) * (values[high] - values[low]))


def _crossing_of(curve: Curve, goal: float, target_items: np.ndarray, scale: float) -> float | None:
    gains = scale * (curve.target[:, target_items].mean(axis=1) - curve.target[0, target_items].mean())
    return crossing(gains, goal)


def _forgetting_at_gain(curves: list[Curve], goal: float, measure: str, target_items: np.ndarray,
                        measure_items: np.ndarray, scale: float) -> float | None:
    """Mean change of `measure` from the seed at the crossing, over the curves that reach `goal` (None: none does)."""
    changes = []
    for curve in curves:
        position = _crossing_of(curve, goal, target_items, scale)
        if position is not None:
            values = curve.measures[measure][:, measure_items].mean(axis=1)
            changes.append(at_position(values - values[0], position))
    return float(np.mean(changes)) if changes else None


def compare_at_gain(curves: dict[str, list[Curve]], rule: DecisionRule, scales: dict[str, float] | None = None,
                    n_boot: int = 2000, seed: int = 0) -> dict:
    """SDFT − vanilla forgetting at the rule's gain, per measure, with a seeds × items bootstrap; and the verdict.

    `curves` maps "vanilla" and "sdft" to one curve per seed, in the same seed order. `scales` multiplies a measure's
    values for display (100 for rates; the target's scale is under "target"). Every number a report shows is here.
    """
    scales = {"target": 100.0, **(scales or {})}
    methods = ("vanilla", "sdft")
    n_seeds = len(curves["sdft"])
    if len(curves["vanilla"]) != n_seeds:
        raise ValueError("vanilla and sdft need one curve per seed, in the same order")
    n_target = curves["sdft"][0].target.shape[1]
    all_target = np.arange(n_target)
    rng = np.random.default_rng(seed)
    result = {"rule": rule.sentence(), "gain": rule.gain, "seeds": n_seeds, "measures": {},
              "seeds_reaching": {m: sum(_crossing_of(c, rule.gain, all_target, scales["target"]) is not None
                                        for c in curves[m]) for m in methods}}
    for measure in rule.measures:
        n_items = curves["sdft"][0].measures[measure].shape[1]
        scale = scales.get(measure, 1.0)

        def estimate(seeds, target_items, measure_items):
            return {m: _forgetting_at_gain([curves[m][s] for s in seeds], rule.gain, measure, target_items,
                                           measure_items, scales["target"]) for m in methods}

        point = estimate(range(n_seeds), all_target, np.arange(n_items))
        draws = {m: np.full(n_boot, np.nan) for m in (*methods, "diff")}
        for b in range(n_boot):
            drawn = estimate(rng.integers(0, n_seeds, size=n_seeds), rng.integers(0, n_target, size=n_target),
                             rng.integers(0, n_items, size=n_items))
            for m in methods:
                draws[m][b] = np.nan if drawn[m] is None else drawn[m]
            draws["diff"][b] = draws["sdft"][b] - draws["vanilla"][b]  # nan unless both reach the gain
        entry = {m: {"change": None if point[m] is None else scale * point[m],
                     "ci95": _interval_p(draws[m], scale)[0]} for m in methods}
        diff = None if point["vanilla"] is None or point["sdft"] is None else point["sdft"] - point["vanilla"]
        interval, p_value = _interval_p(draws["diff"], scale)
        entry["sdft_minus_vanilla"] = {"diff": None if diff is None else scale * diff, "ci95": interval,
                                       "p_value": p_value,
                                       "resamples_defined": float(np.mean(~np.isnan(draws["diff"])))}
        result["measures"][measure] = entry
    result["verdict"] = verdict(result, rule)
    return result


def _interval_p(draws: np.ndarray, scale: float) -> tuple[list[float | None], float | None]:
    """95% interval (display scale) and two-sided p of the draws that are defined: a resample in which a method never
    reaches the gain has no value, and `resamples_defined` says how many had one."""
    defined = draws[~np.isnan(draws)]
    if defined.size == 0:
        return [None, None], None
    (lo, hi), p_value = _interval_and_p(defined)
    return [scale * lo, scale * hi], p_value


def verdict(result: dict, rule: DecisionRule) -> dict:
    """The pre-registered rule applied to `compare_at_gain`'s numbers: {"label", "line"}."""
    reached = result["seeds_reaching"]
    if reached["sdft"] < rule.min_seeds:
        label = "learns less"
        why = f"SDFT reaches a gain of {rule.gain:g} in {reached['sdft']} of {result['seeds']} seeds"
    else:
        bounds = {m: result["measures"][m]["sdft_minus_vanilla"]["ci95"] for m in rule.measures}
        known = {m: b for m, b in bounds.items() if b[0] is not None}
        better = [m for m, (lo, _) in known.items() if lo > 0]
        worse = [m for m, (_, hi) in known.items() if hi < 0]
        if reached["vanilla"] < rule.min_seeds:
            label, why = "inconclusive", f"vanilla reaches the gain in {reached['vanilla']} of {result['seeds']} seeds"
        elif better and not worse:
            label, why = "supported", f"SDFT forgets less on {', '.join(better)}, more on none"
        elif known and len(worse) == len(rule.measures):
            label, why = "refuted", "every interval excludes a benefit"
        else:
            label = "inconclusive"
            why = (f"SDFT forgets more on {', '.join(worse)}" if worse else "no interval excludes 0")
    return {"label": label, "line": f"Verdict at a task gain of {rule.gain:g}: {label} ({why})."}


def _points(run_dir: Path, run: dict, seed_run: dict) -> list[tuple[int, dict]]:
    """(step, {eval_dir, reference_dir}) along one training run: the seed at 0, its snapshots, its final model."""
    metrics = run_dir / run["train_dir"] / "train_metrics.json"
    final = json.loads(metrics.read_text())["steps"]
    curve = sorted((int(step), dirs) for step, dirs in run.get("curve", {}).items() if int(step) < final)
    return [(0, seed_run), *curve, (final, run)]


def learning_curves(run_dir: Path, runs: list[dict], target: str, measures: list[str]) -> dict[str, list[Curve]]:
    """Per method (vanilla, sdft), one `Curve` per seed in seed order, from the run records of summary.json; items are
    those every point of every curve was scored on."""
    seed_run = next(r for r in runs if r["method"] == "seed")
    trained = [r for r in runs if r["method"] in ("vanilla", "sdft") and not r.get("template") and r.get("curve")]
    first = trained[0]
    group = [r for r in trained if (r["dataset"], r["train_size"], r["capacity"]) ==
             (first["dataset"], first["train_size"], first["capacity"])]
    seeds = sorted({r["seed"] for r in group if r["method"] == "vanilla"} & {r["seed"] for r in group if r["method"] == "sdft"})
    chosen = {m: [next(r for r in group if r["method"] == m and r["seed"] == s) for s in seeds] for m in ("vanilla", "sdft")}
    points = {r["key"]: _points(run_dir, r, seed_run) for rs in chosen.values() for r in rs}
    scores = {(key, step, name): item_values(read_jsonl(scores_file(run_dir, point, name)), "score")[0]
              for key, along in points.items() for step, point in along for name in [target, *measures]}

    def common(name):
        return sorted(set.intersection(*(set(v) for (_, _, n), v in scores.items() if n == name)))

    ids = {name: common(name) for name in [target, *measures]}

    def matrix(key, name):
        return np.array([[scores[(key, step, name)][i] for i in ids[name]] for step, _ in points[key]])

    return {m: [Curve(steps=tuple(step for step, _ in points[r["key"]]), target=matrix(r["key"], target),
                      measures={name: matrix(r["key"], name) for name in measures}) for r in rs]
            for m, rs in chosen.items()}


def frontier_summary(run_dir: Path, runs: list[dict], target: str, gains: list[float], specs: dict[str, dict],
                     min_seeds: int) -> dict:
    """summary.json's `frontier`: the learning curves (task gain and each measure's change from the seed, per method
    and seed) and, per pre-registered gain, `compare_at_gain`'s comparison; the first gain's verdict is the run's.
    `specs` are summary.json's entries (`scale`, `unit`) of the target and of each forgetting measure, in order."""
    measures = [name for name in specs if name != target]
    curves = learning_curves(run_dir, runs, target, measures)
    scales = {"target": specs[target]["scale"], **{m: specs[m]["scale"] for m in measures}}
    drawn = {method: [{"steps": list(c.steps),
                       "gain": [scales["target"] * float(v) for v in c.target.mean(axis=1) - c.target[0].mean()],
                       **{m: [scales[m] * float(v) for v in c.measures[m].mean(axis=1) - c.measures[m][0].mean()]
                          for m in measures}}
                      for c in per_seed] for method, per_seed in curves.items()}
    results = [compare_at_gain(curves, DecisionRule(gain, tuple(measures), min_seeds), scales) for gain in gains]
    return {"target": target, "measures": measures, "units": {m: specs[m]["unit"] for m in measures},
            "curves": drawn, "at_gain": results, "verdict": results[0]["verdict"] if results else None}
