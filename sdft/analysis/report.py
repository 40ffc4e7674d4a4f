"""Render an experiment's report from `RUN_DIR/summary.json` alone: `report.md`, a self-contained `report.html` and
PNG figures. Every number shown is in the summary (`sdft.analysis.summary`); this module only lays it out.

The layout follows the paper: score tables per capacity with every arm next to the seed (Tables 1–4, template-sweep
arms included; means over seeds with seeds × items 95% intervals), the replication table (paper, maintainers' rerun,
ours), per-benchmark bars (Fig. 4), the benchmarks' secondary metrics (intervals too), paired differences against
vanilla and SDFT with p-values for every measure, primary and secondary, the learning-vs-forgetting plot (Biderman et
al. 2024), distillation acceptance and examples (Figs 14–18), score and shift against mix ratio and train size (Figs
5–8), distribution shift (§5, Fig 9), wall time per method, and the run's provenance.
Whatever the run lacks is left out rather than failing.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure as MplFigure

from sdft.core.errors import UserError

# Rows of a dataset block: vanilla first, then mixes by ratio, then SDFT (as in the paper's tables), then on-policy.
_METHOD_ORDER = {"vanilla": 0, "mix": 1, "sdft": 2, "onpolicy": 3}
_DASH = "—"


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Code:
    text: str


Block = Heading | Para | Table | Image | Code


def _signed(x: float, digits: int = 1) -> str:
    """'+1.2' / '−2.1' (true minus sign); a difference that rounds to zero shows as '+0.0'."""
    return f"{round(x, digits) + 0.0:+.{digits}f}".replace("-", "−")


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts))


class _Run:
    """A run directory's summary, with the lookups the sections share."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        path = self.dir / "summary.json"
        if not path.is_file():
            raise UserError("no summary.json in the run directory", str(self.dir))
        self.summary = json.loads(path.read_text(encoding="utf-8"))
        self.measures: dict[str, dict] = self.summary["measures"]
        self.arms: list[dict] = self.summary["arms"]
        self.seed = next((a for a in self.arms if a["method"] == "seed"), None)
        self.figures = self.dir / "figures"

    def digits(self, measure: str) -> int:
        return 1 if self.measures[measure]["scale"] == 100.0 else 3

    def primary(self) -> list[str]:
        """The measures of the score tables: benchmarks' scores and composites; secondary metrics have `of`."""
        return [name for name, spec in self.measures.items() if "of" not in spec]

    def secondary(self) -> list[str]:
        return [name for name, spec in self.measures.items() if "of" in spec]

    def groups(self) -> dict[tuple[str, str], list[dict]]:
        """Fine-tuned arms by (capacity, dataset), in order of first appearance, each sorted as a table block."""
        groups: dict[tuple[str, str], list[dict]] = {}
        for arm in self.arms:
            if arm["method"] != "seed":
                groups.setdefault((arm.get("capacity") or "default", arm.get("dataset") or _DASH), []).append(arm)
        for arms in groups.values():
            default = _default_size(arms)
            arms.sort(key=lambda a: (
                a.get("train_size") != default, -(a.get("train_size") or 0),
                _METHOD_ORDER.get(a["method"], len(_METHOD_ORDER)), a.get("mix_ratio") or 0.0,
            ))
        return groups

    def save(self, fig: MplFigure, name: str) -> Path:
        self.figures.mkdir(parents=True, exist_ok=True)
        path = self.figures / f"{_slug(name)}.png"
        fig.savefig(path, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
        return path


def _default_size(arms: list[dict]) -> int | None:
    """The train size most arms of a group share (ties → the largest); sweeps vary around it."""
    counts = Counter(a.get("train_size") for a in arms)
    return max(counts, key=lambda size: (counts[size], size or 0))


def _method_label(arm: dict) -> str:
    """vanilla, sdft, 'mix r=0.5'; a template-sweep arm adds its template: 'sdft (distill_using)'."""
    label = f"mix r={arm['mix_ratio']:g}" if arm["method"] == "mix" else arm["method"]
    return label + (f" ({arm['template']})" if arm.get("template") else "")


def _label(arm: dict, default_size: int | None) -> str:
    """The method, plus the train size when it is not the group's usual one."""
    size = arm.get("train_size")
    return _method_label(arm) + (f" n={size}" if size != default_size else "")


def _interval(entry: dict, digits: int, signed: bool = False) -> str:
    lo, hi = entry.get("ci95") or (None, None)
    if lo is None or hi is None:
        return ""
    show = (lambda x: _signed(x, digits)) if signed else (lambda x: f"{x:.{digits}f}")
    return f"[{show(lo)}, {show(hi)}]"


def _cell(run: _Run, arm: dict, measure: str) -> str:
    """'mean (Δ vs seed) [lo, hi]'; the seed's own row has no Δ."""
    entry = arm["scores"].get(measure)
    if not entry or entry.get("mean") is None:
        return _DASH
    digits = run.digits(measure)
    text = f"{entry['mean']:.{digits}f}"
    delta = arm["vs_seed"].get(measure)
    if delta and delta.get("mean") is not None:
        text += f" ({_signed(delta['mean'], digits)})"
    return f"{text} {_interval(entry, digits)}".strip()


def _measure_header(run: _Run, measure: str) -> str:
    unit = run.measures[measure]["unit"]
    name = f"{measure} (at chance)" if measure in (run.summary.get("at_chance") or {}) else measure
    return name if unit == "points" else f"{name} ({unit})"


def _score_tables(run: _Run) -> list[Block]:
    seeds = run.summary.get("seeds") or []
    blocks: list[Block] = [
        Heading(2, "Scores"),
        Para("Each cell: mean (Δ vs seed) [95% CI], on 0–100 unless a unit is given. "
             + (f"Means over {len(seeds)} training seeds ({', '.join(map(str, seeds))}) and the items; the interval "
                "resamples both seeds and items. " if len(seeds) > 1 else "The interval resamples the items. ")
             + "Methods: vanilla FT, SDFT, mixes with a fraction r of distilled targets, and onpolicy (on-policy "
               "self-distillation, Shenfeld et al. 2026); n= marks a train size "
               "other than the group's usual one. forgetting_index = mean of HellaSwag, ARC-Challenge, WinoGrande; "
               "reference_likelihood = log-probability per token of reference answers no model here wrote (a "
               "forgetting measure); retention = log-probability per token of the seed's own "
             + ("sampled answers (its drop from the seed estimates KL(seed ‖ model)): "
                if run.summary.get("retention_temperature") else "greedy answers: ")
             + "closeness to the seed, not retained ability — SDFT trains on the seed's own text."),
    ]
    measures = run.primary()
    headers = ["Dataset", "Method"] + [_measure_header(run, m) for m in measures]
    groups = run.groups()
    seed_capacity = [(run.seed.get("capacity") or "default")] if run.seed else []
    for capacity in dict.fromkeys(c for c, _ in groups) or seed_capacity:
        rows = []
        if run.seed:
            rows.append([_DASH, "seed"] + [_cell(run, run.seed, m) for m in measures])
        for (cap, dataset), arms in groups.items():
            if cap == capacity:
                default = _default_size(arms)
                rows += [[dataset, _label(a, default)] + [_cell(run, a, m) for m in measures] for a in arms]
        blocks += [Heading(3, f"Capacity: {capacity}"), Table(headers, rows)]
    at_chance = run.summary.get("at_chance") or {}
    if at_chance:
        blocks.append(Para("At chance, so unable to show forgetting: " + "; ".join(
            f"{name} (the seed's {_interval({'ci95': e['seed_ci95']}, run.digits(name))} holds chance, {e['chance']:.1f})"
            for name, e in at_chance.items()) + "."))
    return blocks


def _secondary(run: _Run) -> list[Block]:
    """Secondary metrics of a benchmark (OpenFunctions' bare-call format and the reference's call match, IFEval's loose
    and instruction-level accuracy), each cell as in the score tables."""
    measures = run.secondary()
    if not measures:
        return []
    headers = ["Model"] + [f"{run.measures[m]['of']}: {run.measures[m]['metric']}" for m in measures]
    rows = [[arm["arm"]] + [_cell(run, arm, m) for m in measures] for arm in run.arms]
    return [Heading(2, "Secondary metrics"),
            Para("Each cell: mean (Δ vs seed) [95% CI], as in the score tables; their paired differences are below."),
            Table(headers, rows)]


def _comparisons(run: _Run) -> list[Block]:
    rows = []
    for c in run.summary.get("comparisons") or []:
        if c.get("mean") is None:
            continue
        digits = run.digits(c["measure"])
        rows.append([c["capacity"], c["dataset"], str(c["train_size"]), f"{c['arm']} − {c['baseline']}", c["measure"],
                     _signed(c["mean"], digits), _interval(c, digits, signed=True), _p(c["p_value"]),
                     str(c["seeds"]), str(c["items"])])
    if not rows:
        return []
    return [
        Heading(2, "Paired differences"),
        Para("Each arm minus vanilla (and minus SDFT), paired by training seed and item; 95% interval and two-sided p "
             "from a bootstrap over seeds and items."),
        Table(["Capacity", "Dataset", "Train size", "Difference", "Measure", "Mean", "95% CI", "p", "Seeds", "Items"],
              rows),
    ]


def _change_axes(ax, xlabel: str, measure: str, unit: str, title: str) -> None:
    """A panel of a general measure's change from the seed against the task's: the zero line, labels, legend."""
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(xlabel=xlabel, ylabel=f"{measure}: change from seed ({unit})", title=title)
    ax.legend(fontsize="x-small")


def _learning_vs_forgetting(run: _Run) -> list[Block]:
    """x = target-task change from the seed, y = change of a general-ability measure; one point per arm, CI bars."""
    target, general = run.summary.get("target"), run.summary.get("general") or []
    arms = [a for a in run.arms if a["method"] != "seed" and target in a["vs_seed"]]
    general = [g for g in general if any(g in a["vs_seed"] for a in arms)]
    if not arms or not general:
        return []
    fig = MplFigure(figsize=(5 * len(general), 4), layout="constrained")
    for i, measure in enumerate(general, 1):
        ax = fig.add_subplot(1, len(general), i)
        for arm in arms:
            x, y = arm["vs_seed"][target], arm["vs_seed"].get(measure)
            if not y or y.get("mean") is None:
                continue
            xerr = [[x["mean"] - x["ci95"][0]], [x["ci95"][1] - x["mean"]]]
            yerr = [[y["mean"] - y["ci95"][0]], [y["ci95"][1] - y["mean"]]]
            ax.errorbar(x["mean"], y["mean"], xerr=xerr, yerr=yerr, marker="o", capsize=3, label=arm["arm"])
        ax.axvline(0, color="grey", linewidth=0.8)
        _change_axes(ax, f"{target}: change from seed", measure, run.measures[measure]["unit"],
                     f"learning vs forgetting: {measure}")
    caption = ("Learning vs forgetting: x = change of the target task from the seed, y = change of general ability "
               "(up and right is better); bars are 95% intervals over seeds and items.")
    return [Heading(2, "Learning vs forgetting"), Image(run.save(fig, "learning_vs_forgetting"), caption)]


def _frontier(run: _Run) -> list[Block]:
    """SDFT against vanilla at matched task gain: the pre-registered rule, the verdict, the comparison at each gain and
    the learning-vs-forgetting curves of every seed."""
    frontier = run.summary.get("frontier")
    if not frontier:
        return []
    first = frontier["at_gain"][0]
    blocks: list[Block] = [Heading(2, "SDFT vs vanilla at matched task gain"), Para(frontier["verdict"]["line"]),
                           Para(f"Rule, stated in the experiment before the run: {first['rule']}. Each run was "
                                f"evaluated at steps {', '.join(map(str, frontier['curves']['sdft'][0]['steps']))} "
                                "(0: the seed); forgetting is read where the run's gain on "
                                f"{frontier['target']} first reaches the target gain, linearly between checkpoints, "
                                "and averaged over the seeds that reach it. Intervals: 95%, bootstrap over seeds "
                                f"and items, paired.{_difference_in_data(run)}")]
    rows = []
    for result in frontier["at_gain"]:
        for measure, entry in result["measures"].items():
            digits = run.digits(measure)
            diff = entry["sdft_minus_vanilla"]
            cells = [f"{_signed(e['change'], digits)} {_interval({'ci95': e['ci95']}, digits, signed=True)}"
                     if e["change"] is not None else _DASH for e in (entry["vanilla"], entry["sdft"])]
            rows.append([f"{result['gain']:g}", measure, *cells,
                         _DASH if diff["diff"] is None else _signed(diff["diff"], digits),
                         _interval({"ci95": diff["ci95"]}, digits, signed=True),
                         _DASH if diff["p_value"] is None else _p(diff["p_value"]),
                         f"{result['seeds_reaching']['vanilla']} / {result['seeds_reaching']['sdft']} of "
                         f"{result['seeds']}", result["verdict"]["label"]])
    blocks.append(Table(["Gain", "Measure", "vanilla Δ [CI]", "SDFT Δ [CI]", "SDFT − vanilla", "95% CI", "p",
                         "Seeds reaching (vanilla / SDFT)", "Verdict"], rows))
    measures = frontier["measures"]
    fig = MplFigure(figsize=(5 * len(measures), 4), layout="constrained")
    for i, measure in enumerate(measures, 1):
        ax = fig.add_subplot(1, len(measures), i)
        for color, method in (("tab:blue", "vanilla"), ("tab:orange", "sdft")):
            for k, curve in enumerate(frontier["curves"][method]):
                ax.plot(curve["gain"], curve[measure], marker="o", color=color, alpha=0.6,
                        label=method if k == 0 else None)
        for result in frontier["at_gain"]:
            ax.axvline(result["gain"], color="grey", linestyle=":", linewidth=0.8)
        _change_axes(ax, f"{frontier['target']}: gain over the seed", measure, frontier["units"][measure],
                     f"{measure} along training")
    caption = ("Learning curves: each line is one training run (a seed), each point a checkpoint from the seed (0, 0) "
               "to the final model; dotted lines mark the pre-registered gains. Up and right is better.")
    return blocks + [Image(run.save(fig, "frontier"), caption)]


def _difference_in_data(run: _Run) -> str:
    """How much SDFT's training data differs from vanilla's, which bounds how different the two methods can be."""
    counted = [(name, stats) for name, stats in (run.summary.get("distill") or {}).items()
               if stats.get("changed") is not None]
    return "".join(f" SDFT's training targets differ from vanilla's in {stats['changed']} of {stats['total']} rows "
                   f"({name}); the other rows are the same for both methods." for name, stats in counted)


def _distillation(run: _Run) -> list[Block]:
    distill = run.summary.get("distill") or {}
    if not distill:
        return []
    rows = []
    for dataset, stats in distill.items():
        reasons = sorted((stats.get("reasons") or {}).items(), key=lambda kv: -kv[1])
        rows.append([dataset, stats.get("template") or _DASH, str(stats["total"]), str(stats["accepted"]),
                     f"{100 * stats['acceptance_rate']:.1f}%", _changed(stats),
                     ", ".join(f"{reason}: {count}" for reason, count in reasons)])
    return [Heading(2, "Distillation"),
            Table(["Distillation", "Template", "Rewrites", "Accepted", "Acceptance", "Changed", "Outcomes"], rows),
            Para("Changed: the training targets that differ from the original answer, i.e. the rows in which SDFT's "
                 "training set differs from vanilla's (an accepted rewrite can repeat the original word for word).")]


def _changed(stats: dict) -> str:
    """'6 (9.4%)': a distillation's targets that differ from the originals (a dash for summaries written before they
    were counted; a distillation always has rows)."""
    if stats.get("changed") is None:
        return _DASH
    return f"{stats['changed']} ({100 * stats['changed'] / stats['total']:.1f}%)"


def _excerpt(text: str, limit: int = 400) -> str:
    """One line of at most `limit` characters (line breaks shown as ⏎), for a table cell."""
    flat = " ⏎ ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def _distilled_examples(run: _Run) -> list[Block]:
    """A few rewrites of each distillation beside their originals, kept or not (paper Figs 14–18)."""
    blocks: list[Block] = []
    for dataset, stats in (run.summary.get("distill") or {}).items():
        rows = [[_excerpt(e["instruction"]), _excerpt(e["original"]), _excerpt(e["distilled"]),
                 "kept" if e["accepted"] else f"refused ({e.get('reason') or _DASH})"] for e in stats.get("examples") or []]
        if rows:
            blocks += [Heading(3, dataset), Table(["Instruction", "Original", "Rewrite", "Selection"], rows)]
    if not blocks:
        return []
    return [Heading(2, "Distilled examples"),
            Para("The seed's rewrite of a training response beside the original: the first kept and refused rows of "
                 "each distillation; a refused rewrite is replaced by the original in the training file.")] + blocks


def _replication(run: _Run) -> list[Block]:
    """The paper's number, the maintainers' rerun and ours [95% CI] per arm and benchmark."""
    entries = run.summary.get("replication") or []
    if not entries:
        return []

    def reference(entry):
        return _DASH if entry is None else f"{entry['value']:.2f}"

    def ours(estimate):
        if not estimate or estimate.get("mean") is None:
            return _DASH
        return f"{estimate['mean']:.1f} {_interval(estimate, 1)}".strip()

    rows = [[e["arm"], e["benchmark"], e["reference_metric"] or _DASH, reference(e.get("paper")),
             reference(e.get("rerun")), ours(e.get("ours")), e.get("metric") or _DASH,
             ours(e.get("ours_reference_metric"))] for e in entries]
    sources = sorted({ref["source"] for e in entries for ref in (e.get("paper"), e.get("rerun")) if ref})
    return [Heading(2, "Replication"),
            Para("Our numbers beside the paper's and the maintainers' reruns (Llama-2-7b-chat, points). Ours: mean "
                 "[95% CI] under our metric; where the reference's metric differs, ours under it too. "
                 "Sources: " + "; ".join(sources) + "."),
            Table(["Model", "Benchmark", "Reference metric", "Paper", "Rerun", "Ours [95% CI]", "Our metric",
                   "Ours, reference metric"], rows)]


def _score_of(arm: dict, measure: str) -> float | None:
    return (arm["scores"].get(measure) or {}).get("mean")


def _ratio_arms(arms: list[dict]) -> dict[float, dict]:
    """A group's arms at its usual train size on the dataset's own template, by mix ratio (0 = vanilla, 1 = SDFT)."""
    default, by_ratio = _default_size(arms), {}
    for a in arms:
        if a.get("train_size") == default and a.get("mix_ratio") is not None and not a.get("template"):
            by_ratio.setdefault(a["mix_ratio"], a)
    return dict(sorted(by_ratio.items()))


def _size_series(arms: list[dict]) -> dict[str, dict[int, dict]]:
    """A group's arms by method label and train size, for the labels with two sizes or more."""
    series: dict[str, dict[int, dict]] = {}
    for a in arms:
        if a.get("train_size") is not None:
            series.setdefault(_method_label(a), {}).setdefault(a["train_size"], a)
    return {label: dict(sorted(sizes.items())) for label, sizes in series.items() if len(sizes) >= 2}


def _panels(run: _Run, name: str, title: str, xlabel: str, panels: dict[str, dict[str, list[tuple]]],
            caption: str) -> list[Block]:
    """One subplot per panel (a benchmark, a shift measure), one line per label; nothing when no panel has a point."""
    panels = {panel: {label: points for label, points in lines.items() if points} for panel, lines in panels.items()}
    panels = {panel: lines for panel, lines in panels.items() if lines}
    if not panels:
        return []
    fig = MplFigure(figsize=(4 * len(panels), 3.5), layout="constrained")
    fig.suptitle(title)
    for i, (panel, lines) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), i)
        for label, points in lines.items():
            ax.plot(*zip(*points), marker="o", label=label)
        ax.set(xlabel=xlabel, title=panel)
        if any(lines):  # a single unnamed line needs no legend
            ax.legend(fontsize="small")
    return [Image(run.save(fig, name), caption)]


def _mix_sweeps(run: _Run) -> list[Block]:
    """Score against mix ratio at the usual train size, one line per benchmark (paper Fig. 7)."""
    blocks: list[Block] = []
    for (capacity, dataset), arms in run.groups().items():
        by_ratio = _ratio_arms(arms)
        if len(by_ratio) < 2:
            continue
        fig = MplFigure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        for measure in run.summary["benchmarks"]:
            points = [(r, s) for r, arm in by_ratio.items() if (s := _score_of(arm, measure)) is not None]
            if not points:
                continue
            (line,) = ax.plot(*zip(*points), marker="o", label=measure)
            seed_score = _score_of(run.seed, measure) if run.seed else None
            if seed_score is not None:
                ax.axhline(seed_score, color=line.get_color(), linestyle=":", linewidth=1)
        ax.set(xlabel="mix ratio r (0 = vanilla, 1 = SDFT)", ylabel="score", title=f"{dataset} ({capacity})")
        ax.legend(fontsize="small")
        caption = f"Mix-ratio sweep, {dataset}, capacity {capacity}, n={_default_size(arms)} (dotted: seed)."
        blocks.append(Image(run.save(fig, f"mix_{dataset}_{capacity}"), caption))
    return blocks


def _size_sweeps(run: _Run) -> list[Block]:
    """Score against train size, one panel per benchmark and one line per method (paper Fig. 5)."""
    blocks: list[Block] = []
    for (capacity, dataset), arms in run.groups().items():
        series = _size_series(arms)
        panels = {measure: {label: [(n, s) for n, arm in sizes.items() if (s := _score_of(arm, measure)) is not None]
                            for label, sizes in series.items()} for measure in run.summary["benchmarks"]}
        blocks += _panels(run, f"size_{dataset}_{capacity}", f"{dataset} ({capacity})", "train size", panels,
                          f"Train-size sweep, {dataset}, capacity {capacity}.")
    return blocks


# Shift measures plotted against mix ratio and train size (paper Figs 6 and 8), with their axis titles.
_SHIFT_AXES = {"bleu": "BLEU-4 to the seed", "rouge_l": "ROUGE-L to the seed", "sbert_cosine": "SBERT cosine to the seed",
               "l2_total": "‖Δθ‖₂"}


def _shift_sweeps(run: _Run) -> list[Block]:
    """Distribution shift from the seed against mix ratio (Fig. 8) and train size (Fig. 6), one panel per measure."""
    blocks: list[Block] = []
    for (capacity, dataset), arms in run.groups().items():
        by_ratio, series = _ratio_arms(arms), _size_series(arms)
        if len(by_ratio) >= 2:
            panels = {title: {"": [(r, a["shift"][m]) for r, a in by_ratio.items() if m in (a.get("shift") or {})]}
                      for m, title in _SHIFT_AXES.items()}
            blocks += _panels(run, f"shift_mix_{dataset}_{capacity}", f"{dataset} ({capacity})",
                              "mix ratio r (0 = vanilla, 1 = SDFT)", panels,
                              f"Shift from the seed against mix ratio, {dataset}, capacity {capacity} (means over seeds).")
        panels = {title: {label: [(n, a["shift"][m]) for n, a in sizes.items() if m in (a.get("shift") or {})]
                          for label, sizes in series.items()} for m, title in _SHIFT_AXES.items()}
        blocks += _panels(run, f"shift_size_{dataset}_{capacity}", f"{dataset} ({capacity})", "train size", panels,
                          f"Shift from the seed against train size, {dataset}, capacity {capacity} (means over seeds).")
    return blocks


def _benchmark_bars(run: _Run) -> list[Block]:
    """Seed, vanilla and SDFT (every template; any other method but mixes) side by side per benchmark with 95%
    interval bars (paper Fig. 4)."""
    blocks: list[Block] = []
    for (capacity, dataset), arms in run.groups().items():
        default = _default_size(arms)
        shown = ([("seed", run.seed)] if run.seed else []) + [
            (_method_label(a), a) for a in arms if a["method"] != "mix" and a.get("train_size") == default]
        benchmarks = [b for b in run.summary["benchmarks"] if any(_score_of(a, b) is not None for _, a in shown)]
        if len(shown) < 2 or not benchmarks:
            continue
        fig = MplFigure(figsize=(max(6.0, 1.2 * len(benchmarks) * len(shown) / 2), 4), layout="constrained")
        ax = fig.add_subplot()
        width = 0.8 / len(shown)
        for i, (label, arm) in enumerate(shown):
            xs, means, errors = [], [], [[], []]
            for j, bench in enumerate(benchmarks):
                score = arm["scores"].get(bench) or {}
                if score.get("mean") is None:
                    continue
                lo, hi = score.get("ci95") or (score["mean"], score["mean"])
                xs.append(j + (i - (len(shown) - 1) / 2) * width)
                means.append(score["mean"])
                errors[0].append(score["mean"] - lo)
                errors[1].append(hi - score["mean"])
            ax.bar(xs, means, width, yerr=errors, capsize=2, label=label)
        ax.set_xticks(range(len(benchmarks)), benchmarks, rotation=30, ha="right")
        ax.set(ylabel="score", title=f"{dataset} ({capacity}), n={default}")
        ax.legend(fontsize="small")
        caption = f"Scores per benchmark, {dataset}, capacity {capacity}; bars are 95% intervals over seeds and items."
        blocks.append(Image(run.save(fig, f"bars_{dataset}_{capacity}"), caption))
    return [Heading(2, "Scores per benchmark")] + blocks if blocks else []


def _shift(run: _Run) -> list[Block]:
    arms = [a for a in run.arms if a.get("shift")]
    if not arms:
        return []

    def fmt(value, spec):
        return _DASH if value is None else format(value, spec)

    rows = [[a["arm"], fmt(a["shift"].get("bleu"), ".1f"), fmt(a["shift"].get("bleu_paper"), ".1f"),
             fmt(a["shift"].get("rouge_l"), ".1f"), fmt(a["shift"].get("sbert_cosine"), ".3f"),
             fmt(a["shift"].get("l2_total"), ".4g")] for a in arms]
    blocks: list[Block] = [
        Heading(2, "Distribution shift from the seed"),
        Para("Similarity of each model's outputs to the seed's on the same prompts (higher = less shift) and the L2 "
             "norm of its weight change; means over seeds. BLEU-4: sacrebleu corpus BLEU; BLEU (paper): the reference "
             "code's character-level sentence BLEU."),
        Table(["Model", "BLEU-4", "BLEU (paper)", "ROUGE-L", "SBERT cosine", "‖Δθ‖₂"], rows),
    ]
    sbert = {a["arm"]: a["sbert_values"] for a in arms if a.get("sbert_values")}
    if sbert:
        fig = MplFigure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        low = min(0.0, *(min(v) for v in sbert.values()))
        for key, values in sbert.items():
            ax.hist(values, bins=30, range=(low, 1.0), histtype="step", linewidth=1.5, label=key)
        ax.set(xlabel="SBERT cosine to the seed's output", ylabel="outputs")
        ax.legend(fontsize="small")
        blocks.append(Image(run.save(fig, "sbert_similarity"), "Sentence-BERT similarity to the seed's outputs."))
    layers = {a["arm"]: _layer_norms(a.get("per_layer") or {}) for a in arms}
    layers = {key: norms for key, norms in layers.items() if norms}
    if layers:
        fig = MplFigure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        for key, norms in layers.items():
            ax.plot(*zip(*norms), marker="o", label=key)
        ax.set(xlabel="transformer layer", ylabel="‖Δθ‖₂")
        ax.legend(fontsize="small")
        blocks.append(Image(run.save(fig, "param_shift_per_layer"), "Weight change per transformer layer."))
    return blocks


def _layer_norms(per_layer: dict[str, float]) -> list[tuple[int, float]]:
    """(index, norm) of the 'layers.N' groups, by index; embeddings, norms and heads are left out."""
    found = ((re.fullmatch(r"layers\.(\d+)", name), norm) for name, norm in per_layer.items())
    return sorted((int(m.group(1)), norm) for m, norm in found if m)


def _wall_time(run: _Run) -> list[Block]:
    def minutes(seconds):
        return _DASH if seconds is None else f"{seconds / 60:.1f}"

    rows = [[a["arm"], minutes(a["wall_time_s"].get("distill")), minutes(a["wall_time_s"].get("train")),
             minutes(a["wall_time_s"].get("eval"))] for a in run.arms if a.get("wall_time_s")]
    if not rows:
        return []
    return [Heading(2, "Wall time"),
            Para("Minutes per training run (mean over seeds); distillation is shared by the arms of one training set."),
            Table(["Model", "Distill (shared)", "Train", "Eval"], rows)]


def _title(run: _Run) -> str:
    return f"SDFT report: {run.summary.get('experiment', run.dir.name)}"


def headline_blocks(run: _Run) -> list[Block]:
    """What the demo prints: the verdict at matched gain, the score tables, the paired differences and the
    distillation."""
    verdict = (run.summary.get("frontier") or {}).get("verdict")
    return ([Para(verdict["line"])] if verdict else []) + _score_tables(run) + _comparisons(run) + _distillation(run)


def _blocks(run: _Run) -> list[Block]:
    summary = run.summary
    blocks: list[Block] = [Heading(1, _title(run))]
    if summary.get("seed_model"):
        blocks.append(Para(f"Seed model: {summary['seed_model']}"))
    blocks += _frontier(run) + _score_tables(run) + _replication(run) + _benchmark_bars(run) + _secondary(run)
    blocks += _comparisons(run) + _learning_vs_forgetting(run) + _distillation(run) + _distilled_examples(run)
    sweeps = _mix_sweeps(run) + _size_sweeps(run) + _shift_sweeps(run)
    if sweeps:
        blocks += [Heading(2, "Sweeps")] + sweeps
    blocks += _shift(run) + _wall_time(run)
    if summary.get("provenance"):
        blocks += [Heading(2, "Provenance"),
                   Code(json.dumps(summary["provenance"], indent=2, sort_keys=True, ensure_ascii=False))]
    return blocks


def _markdown(blocks: list[Block], run_dir: Path) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Para):
            out.append(block.text)
        elif isinstance(block, Table):
            lines = [block.headers, ["---"] * len(block.headers)] + block.rows
            out.append("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines))
        elif isinstance(block, Image):
            out.append(f"![{block.caption}]({block.path.relative_to(run_dir).as_posix()})")
        else:
            out.append(f"```json\n{block.text}\n```")
    return "\n\n".join(out) + "\n"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:80rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.3rem .6rem}
th{background:#f2f2f2}td{text-align:right;white-space:nowrap}td:nth-child(-n+2){text-align:left}
figure{margin:1rem 0}img{max-width:100%}figcaption{font-size:.9rem;color:#555}
pre{background:#f6f6f6;padding:1rem;overflow:auto}"""


def _html(blocks: list[Block], title: str) -> str:
    esc = html.escape
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.caption)}">'
                       f"<figcaption>{esc(block.caption)}</figcaption></figure>")
        else:
            out.append(f"<pre><code>{esc(block.text)}</code></pre>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n" + "\n".join(out) + "\n</body></html>\n")


def render_headline(run_dir: str | os.PathLike) -> str:
    """The demo's printout (Markdown) of a run's headline tables."""
    run = _Run(run_dir)
    return _markdown(headline_blocks(run), run.dir)


def render_report(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write RUN_DIR/report.md, RUN_DIR/report.html (figures embedded) and RUN_DIR/figures/*.png; return both paths."""
    run = _Run(run_dir)
    blocks = _blocks(run)
    md_path, html_path = run.dir / "report.md", run.dir / "report.html"
    md_path.write_text(_markdown(blocks, run.dir), encoding="utf-8")
    html_path.write_text(_html(blocks, _title(run)), encoding="utf-8")
    return md_path, html_path
