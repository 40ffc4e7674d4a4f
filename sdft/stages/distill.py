"""SDFT distillation, the way the paper states it (Yang et al. 2024, §3).

Given a seed chat model f_θ and task data {(c_t, x_t, y_t)}:

1. Rewrite (Eq. 3):  ỹ ~ f_θ(y | c_t, x_t, y_t) — the seed model answers the instruction x_t while shown the original
   response y_t as a reference answer (the dataset's distillation template: `gsm8k_distill`, `distill_using`, ...).
   A conversation keeps its system turn and earlier turns before the template, which wraps its last user turn.
2. Select (Eq. 4):   keep ỹ only if it passes the task check — same final answer (math), same call by AST (function
   calling), parsing/passing code (code), no meta phrase (all); a rewrite cut at max_new_tokens is never kept. Otherwise
   the original y_t stays. `selection: paper` applies the reference's rules instead (`checks.SELECTION_RULES`).
3. Fine-tune (Eq. 5) on the selected targets with the same settings as vanilla — `sdft.stages.train`.

Output: `distilled.jsonl` (one row per example: id, prompt fields, the input row's other columns in `extra_columns`,
original, distilled, accepted, reason, target) and `distill_stats.json` (total, accepted, acceptance_rate, changed: the
targets that differ from the original, reasons, and `by_rule`: the acceptance under every selection rule of the task,
sdft's and the reference's). Generations are written incrementally, so a killed run resumes without regenerating or
duplicating a row. With `format`, the rows are also written as a training set for the user's own trainer,
`train.<format>.jsonl` (`sdft.data.export`; `sdft export` does the same for an earlier run).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from sdft.core.errors import UserError
from sdft.core.jsonl import write_json, write_jsonl
from sdft.data.datasets import load_dataset
from sdft.data.export import changed_targets, training_file_name, write_training_set
from sdft.data.templates import Template, get_template, render
from sdft.engines.generation import generate_rows, make_engine
from sdft.evaluation.checks import SELECTION_RULES, default_rule
from sdft.options import DistillConfig, check_selection


def select(rewrite: str, finish_reason: str, example: dict, task: str, rule: str | None = None) -> tuple[bool, str]:
    """Eq. 4: is the rewrite still right under `rule` (one of the task's SELECTION_RULES; default sdft's)? Returns
    (accepted, reason). The reference's `paper` rule has no truncation check, so it keeps rewrites cut at the cap."""
    rule = rule or default_rule(task)
    if finish_reason == "length" and rule != "paper":
        return False, "truncated"
    result = SELECTION_RULES[task][rule](rewrite, {**example, "reference": example["response"]})
    return result.ok, result.reason


def distill_template(template: str | dict | None, spec) -> Template:
    """The rewrite prompt's template: the one given, else the dataset's (`spec`, a registry entry), else distill_using."""
    return get_template(template or (spec.distill_template if spec else "distill_using"))


def distill(config: DistillConfig) -> dict:
    """Rewrite every response with the seed model, select, and write distilled.jsonl + distill_stats.json (and the
    training set in config.format, whose file the returned stats name under `export`)."""
    data = load_dataset(config.dataset, config.data_dir, config.columns or None, config.limit, config.seed,
                        config.split, config.subset, config.paper_subsample)
    spec = data.spec
    task = config.task or (spec.task if spec else "generic")
    rule = config.selection or default_rule(task)
    check_selection(task, rule)
    template = distill_template(config.template, spec)
    if not data.examples:
        raise UserError("dataset has no rows", data.source)

    out = Path(config.out)
    engine = make_engine(config.model, config.dtype, config)
    items = [(ex["id"], render(template, ex, engine.tokenizer, config.prompt_mode)) for ex in data.examples]
    out.mkdir(parents=True, exist_ok=True)
    generations = {row["id"]: row for row in generate_rows(engine, items, config.decoding(), out / "generations.jsonl",
                                                           progress="distill")}

    rows = []
    for example in data.examples:
        generated = generations[example["id"]]
        rewrite = generated["prediction"].strip()
        verdicts = {name: select(rewrite, generated["finish_reason"], example, task, name)
                    for name in SELECTION_RULES[task]}
        accepted, reason = verdicts[rule]
        rows.append({**example, "original": example["response"], "distilled": rewrite, "accepted": accepted,
                     "reason": reason, "target": rewrite if accepted else example["response"],
                     "accepted_by": {name: ok for name, (ok, _) in verdicts.items()},
                     "train_template": data.train_template, "finish_reason": generated["finish_reason"]})
    stats = distill_stats(rows, data.name, task, template.name, rule)
    write_jsonl(out / "distilled.jsonl", rows)
    write_json(out / "distill_stats.json", stats)
    print(f"sdft distill: {stats['accepted']} of {stats['total']} rewrites kept ({rule}); targets that differ from the "
          f"original: {stats['changed']} (where SDFT's training set differs from vanilla's)", file=sys.stderr)
    if config.format:
        stats["export"] = write_training_set(rows, config.format, out / training_file_name(config.format),
                                             str(out / "distilled.jsonl"), config.push_to_hub)
    return stats


def distill_stats(rows: list[dict], dataset: str, task: str, template: str, rule: str) -> dict:
    """Counts under the rule used, and what every other rule of the task would have accepted (`by_rule`), so a run
    under sdft's rule still shows the paper's acceptance and the reverse."""
    accepted = sum(r["accepted"] for r in rows)
    by_rule = {name: sum(r["accepted_by"][name] for r in rows) for name in SELECTION_RULES[task]}
    return {"dataset": dataset, "task": task, "template": template, "selection": rule, "total": len(rows),
            "accepted": accepted, "acceptance_rate": accepted / len(rows) if rows else 0.0,
            "changed": changed_targets(rows),
            "reasons": dict(Counter(r["reason"] for r in rows).most_common()),
            "by_rule": {name: {"accepted": n, "acceptance_rate": n / len(rows) if rows else 0.0}
                        for name, n in by_rule.items()}}
