"""Where a run record (`ModelRun.record`) keeps its per-item scores, and reading them: shared by the summary's
arms and the learning curves of `analysis.frontier`, so both read the same values the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# likelihood measure -> (the run record's folder key, its per-item file, what it measures)
LIKELIHOODS = {"retention": ("retention_dir", "retention.jsonl", "closeness"),
               "reference_likelihood": ("reference_dir", "reference_likelihood.jsonl", "forgetting")}


def scores_file(run_dir: Path, record: dict, component: str) -> Path:
    """A likelihood measure's file in its own folder; a benchmark's `<name>.jsonl` in the eval folder."""
    if component in LIKELIHOODS:
        folder, file, _ = LIKELIHOODS[component]
        return run_dir / record[folder] / file
    return run_dir / record["eval_dir"] / f"{component}.jsonl"


def item_values(rows: list[dict], field: str) -> tuple[dict[str, float], dict[str, int]]:
    """id -> the row's `field` as a number, and, for a field holding one verdict per part of the item (IFEval's
    instructions), id -> its number of parts (the value is then the parts' mean)."""
    values, weights = {}, {}
    for row in rows:
        value = row.get(field) if "id" in row else None
        if isinstance(value, list) and value:
            values[str(row["id"])], weights[str(row["id"])] = float(np.mean(value)), len(value)
        elif isinstance(value, (int, float)):
            values[str(row["id"])] = float(value)
    return values, weights
