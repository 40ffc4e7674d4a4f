"""Render an experiment's report from its run directory: `report.md`, a self-contained `report.html` and PNG figures.

The layout follows the paper: score tables per capacity setting with every fine-tuned model next to the seed (Tables
1–4), SDFT − vanilla differences with paired-bootstrap p-values, distillation acceptance, distribution shift (§5),
mix-ratio and train-size sweeps (Figs 5–8), SBERT similarity distributions (Fig 9), and the run's provenance.
Whatever the run lacks (no shift analysis, a single mix ratio, a missing evaluation) is left out rather than failing.

Inputs: `RUN_DIR/summary.json` (experiment, seed_model, provenance, benchmarks, models, distill, shift) and, per model,
`RUN_DIR/<eval_dir>/results.json` plus per-sample `RUN_DIR/<eval_dir>/<benchmark>.jsonl` rows with "id" and "score".
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

from ..errors import UserError
from ..jsonl import read_jsonl
from ..stats import paired_bootstrap

# Rows of a dataset block: vanilla first, then mixes by ratio, then SDFT (as in the paper's tables).
_METHOD_ORDER = {"vanilla": 0, "mix": 1, "sdft": 2}
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


def _signed(x: float) -> str:
    """'+1.2' / '−2.1' (true minus sign); a difference that rounds to zero shows as '+0.0'."""
    return f"{round(x, 1) + 0.0:+.1f}".replace("-", "−")


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts))


class _Run:
    """One run directory: the summary, each model's results and (lazily) its per-sample scores."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        path = self.dir / "summary.json"
        if not path.is_file():
            raise UserError("no summary.json in the run directory", str(self.dir))
        self.summary = json.loads(path.read_text(encoding="utf-8"))
        self.benchmarks: list[str] = self.summary["benchmarks"]
        self.models: list[dict] = self.summary["models"]
        self.seed = next((m for m in self.models if m["method"] == "seed"), None)
        self.results = {m["key"]: self._read_results(m) for m in self.models}
        self.figures = self.dir / "figures"

    def _read_results(self, model: dict) -> dict:
        path = self.dir / model["eval_dir"] / "results.json"
        return json.loads(path.read_text(encoding="utf-8"))["benchmarks"] if path.is_file() else {}

    def score(self, model: dict | None, benchmark: str) -> float | None:
        entry = self.results[model["key"]].get(benchmark) if model else None
        return entry.get("score") if entry else None

    def samples(self, model: dict, benchmark: str) -> dict[str, float] | None:
        path = self.dir / model["eval_dir"] / f"{benchmark}.jsonl"
        return {str(r["id"]): float(r["score"]) for r in read_jsonl(path)} if path.is_file() else None

    def groups(self) -> dict[tuple[str, str], list[dict]]:
        """Fine-tuned models by (capacity, dataset), in order of first appearance, each sorted as a table block."""
        groups: dict[tuple[str, str], list[dict]] = {}
        for m in self.models:
            if m["method"] != "seed":
                groups.setdefault((m.get("capacity") or "default", m.get("dataset") or _DASH), []).append(m)
        for models in groups.values():
            default = _default_size(models)
            models.sort(key=lambda m: (
                m.get("train_size") != default, -(m.get("train_size") or 0),
                _METHOD_ORDER.get(m["method"], len(_METHOD_ORDER)), m.get("mix_ratio") or 0.0,
            ))
        return groups

    def save(self, fig: MplFigure, name: str) -> Path:
        self.figures.mkdir(parents=True, exist_ok=True)
        path = self.figures / f"{_slug(name)}.png"
        fig.savefig(path, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
        return path


def _default_size(models: list[dict]) -> int | None:
    """The train size most models of a group share (ties → the largest); sweeps vary around it."""
    counts = Counter(m.get("train_size") for m in models)
    return max(counts, key=lambda size: (counts[size], size or 0))


def _method_label(model: dict) -> str:
    return f"mix r={model['mix_ratio']:g}" if model["method"] == "mix" else model["method"]


def _label(model: dict, default_size: int | None) -> str:
    """The method, plus the train size when it is not the group's usual one."""
    size = model.get("train_size")
    return _method_label(model) + (f" n={size}" if size != default_size else "")


def _cell(run: _Run, model: dict, benchmark: str) -> str:
    """'score (Δ vs seed) [lo, hi]'; the seed's own row has no Δ."""
    entry = run.results[model["key"]].get(benchmark) or {}
    score = entry.get("score")
    if score is None:
        return _DASH
    text = f"{score:.1f}"
    seed_score = run.score(run.seed, benchmark)
    if model is not run.seed and seed_score is not None:
        text += f" ({_signed(score - seed_score)})"
    lo, hi = entry.get("ci95") or (None, None)
    if lo is not None and hi is not None:
        text += f" [{lo:.1f}, {hi:.1f}]"
    return text


def _score_tables(run: _Run) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "Scores"),
        Para("Each cell: score (Δ vs seed) [95% bootstrap CI], on 0–100. Methods: vanilla FT, SDFT, and mixes "
             "with a fraction r of distilled targets; n= marks a train size other than the group's usual one."),
    ]
    headers = ["Dataset", "Method"] + run.benchmarks
    groups = run.groups()
    seed_capacity = [(run.seed.get("capacity") or "default")] if run.seed else []
    for capacity in dict.fromkeys(c for c, _ in groups) or seed_capacity:
        rows = []
        if run.seed:
            rows.append([_DASH, "seed"] + [_cell(run, run.seed, b) for b in run.benchmarks])
        for (cap, dataset), models in groups.items():
            if cap == capacity:
                default = _default_size(models)
                rows += [[dataset, _label(m, default)] + [_cell(run, m, b) for b in run.benchmarks] for m in models]
        blocks += [Heading(3, f"Capacity: {capacity}"), Table(headers, rows)]
    return blocks


def _sdft_vs_vanilla(run: _Run) -> list[Block]:
    """Paired-bootstrap SDFT − vanilla per benchmark for every (capacity, dataset, train size) having both."""
    rows = []
    for (capacity, dataset), models in run.groups().items():
        for size in dict.fromkeys(m.get("train_size") for m in models):
            pair: dict[str, dict] = {}
            for m in models:
                if m.get("train_size") == size:
                    pair.setdefault(m["method"], m)
            if "vanilla" not in pair or "sdft" not in pair:
                continue
            for benchmark in run.benchmarks:
                a, b = run.samples(pair["vanilla"], benchmark), run.samples(pair["sdft"], benchmark)
                if a is None or b is None:
                    continue
                test = paired_bootstrap(a, b)
                if test["n"]:
                    lo, hi = test["ci95"]
                    rows.append([capacity, dataset, str(size), benchmark, _signed(test["diff"]),
                                 f"[{_signed(lo)}, {_signed(hi)}]", _p(test["p_value"]), str(test["n"])])
    if not rows:
        return []
    return [
        Heading(2, "SDFT − vanilla"),
        Para("Paired bootstrap over the items both models were scored on (10,000 resamples); p is two-sided."),
        Table(["Capacity", "Dataset", "Train size", "Benchmark", "SDFT − vanilla", "95% CI", "p", "n"], rows),
    ]


def _distillation(run: _Run) -> list[Block]:
    distill = run.summary.get("distill") or {}
    if not distill:
        return []
    rows = []
    for dataset, stats in distill.items():
        reasons = sorted((stats.get("reasons") or {}).items(), key=lambda kv: -kv[1])
        rows.append([dataset, str(stats["total"]), str(stats["accepted"]), f"{100 * stats['acceptance_rate']:.1f}%",
                     ", ".join(f"{reason}: {count}" for reason, count in reasons)])
    return [Heading(2, "Distillation"), Table(["Dataset", "Rewrites", "Accepted", "Acceptance", "Outcomes"], rows)]


def _mix_sweeps(run: _Run) -> list[Block]:
    """Score against mix ratio at the usual train size, one line per benchmark (paper Figs 7–8)."""
    blocks: list[Block] = []
    for (capacity, dataset), models in run.groups().items():
        default = _default_size(models)
        by_ratio = {}
        for m in models:
            if m.get("train_size") == default and m.get("mix_ratio") is not None:
                by_ratio.setdefault(m["mix_ratio"], m)
        if len(by_ratio) < 2:
            continue
        ratios = sorted(by_ratio)
        fig = MplFigure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        for benchmark in run.benchmarks:
            points = [(r, s) for r in ratios if (s := run.score(by_ratio[r], benchmark)) is not None]
            if not points:
                continue
            (line,) = ax.plot(*zip(*points), marker="o", label=benchmark)
            seed_score = run.score(run.seed, benchmark)
            if seed_score is not None:
                ax.axhline(seed_score, color=line.get_color(), linestyle=":", linewidth=1)
        ax.set(xlabel="mix ratio r (0 = vanilla, 1 = SDFT)", ylabel="score", title=f"{dataset} ({capacity})")
        ax.legend(fontsize="small")
        caption = f"Mix-ratio sweep, {dataset}, capacity {capacity}, n={default} (dotted: seed)."
        blocks.append(Image(run.save(fig, f"mix_{dataset}_{capacity}"), caption))
    return blocks


def _size_sweeps(run: _Run) -> list[Block]:
    """Score against train size, one panel per benchmark and one line per method (paper Figs 5–6)."""
    blocks: list[Block] = []
    for (capacity, dataset), models in run.groups().items():
        series: dict[str, dict[int, dict]] = {}
        for m in models:
            if m.get("train_size") is not None:
                series.setdefault(_method_label(m), {}).setdefault(m["train_size"], m)
        series = {label: sizes for label, sizes in series.items() if len(sizes) >= 2}
        if not series:
            continue
        fig = MplFigure(figsize=(4 * len(run.benchmarks), 3.5), layout="constrained")
        fig.suptitle(f"{dataset} ({capacity})")
        for i, benchmark in enumerate(run.benchmarks, 1):
            ax = fig.add_subplot(1, len(run.benchmarks), i)
            for label, sizes in series.items():
                points = [(n, s) for n in sorted(sizes) if (s := run.score(sizes[n], benchmark)) is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", label=label)
            ax.set(xlabel="train size", ylabel="score", title=benchmark)
            ax.legend(fontsize="small")
        caption = f"Train-size sweep, {dataset}, capacity {capacity}."
        blocks.append(Image(run.save(fig, f"size_{dataset}_{capacity}"), caption))
    return blocks


def _shift(run: _Run) -> list[Block]:
    shift = run.summary.get("shift") or {}
    if not shift:
        return []

    def fmt(value, spec):
        return _DASH if value is None else format(value, spec)

    rows = [[key, fmt(s.get("bleu"), ".1f"), fmt(s.get("rouge_l"), ".1f"), fmt(s.get("sbert_cosine"), ".3f"),
             fmt(s.get("l2_total"), ".4g")] for key, s in shift.items()]
    blocks: list[Block] = [
        Heading(2, "Distribution shift from the seed"),
        Para("Similarity of each model's outputs to the seed's on the same prompts (higher = less shift) and the L2 "
             "norm of its weight change."),
        Table(["Model", "BLEU-4", "ROUGE-L", "SBERT cosine", "‖Δθ‖₂"], rows),
    ]
    sbert = {key: s["sbert_values"] for key, s in shift.items() if s.get("sbert_values")}
    if sbert:
        fig = MplFigure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        low = min(0.0, *(min(v) for v in sbert.values()))
        for key, values in sbert.items():
            ax.hist(values, bins=30, range=(low, 1.0), histtype="step", linewidth=1.5, label=key)
        ax.set(xlabel="SBERT cosine to the seed's output", ylabel="outputs")
        ax.legend(fontsize="small")
        blocks.append(Image(run.save(fig, "sbert_similarity"), "Sentence-BERT similarity to the seed's outputs."))
    layers = {key: _layer_norms(s.get("per_layer") or {}) for key, s in shift.items()}
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


def _title(run: _Run) -> str:
    return f"SDFT report: {run.summary.get('experiment', run.dir.name)}"


def _blocks(run: _Run) -> list[Block]:
    summary = run.summary
    blocks: list[Block] = [Heading(1, _title(run))]
    if summary.get("seed_model"):
        blocks.append(Para(f"Seed model: {summary['seed_model']}"))
    blocks += _score_tables(run) + _sdft_vs_vanilla(run) + _distillation(run)
    sweeps = _mix_sweeps(run) + _size_sweeps(run)
    if sweeps:
        blocks += [Heading(2, "Sweeps")] + sweeps
    blocks += _shift(run)
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


def render_report(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write RUN_DIR/report.md, RUN_DIR/report.html (figures embedded) and RUN_DIR/figures/*.png; return both paths."""
    run = _Run(run_dir)
    blocks = _blocks(run)
    md_path, html_path = run.dir / "report.md", run.dir / "report.html"
    md_path.write_text(_markdown(blocks, run.dir), encoding="utf-8")
    html_path.write_text(_html(blocks, _title(run)), encoding="utf-8")
    return md_path, html_path
