"""`sdft export`: an existing distillation as a training set for the user's own trainer (`sdft.data.export`), the same
file `sdft distill --format` writes."""

from __future__ import annotations

from pathlib import Path

from sdft.core.errors import UserError
from sdft.data.export import load_distilled, training_file_name, write_training_set
from sdft.options import ExportConfig


def find_distilled(given: str) -> Path:
    """distilled.jsonl itself, or the one file of that name under the folder given (a `sdft distill` output, or a run
    directory that distilled once)."""
    path = Path(given)
    if path.is_file():
        return path
    found = sorted(path.rglob("distilled.jsonl")) if path.is_dir() else []
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"{len(found)} distillations here, name one: "
                        + ", ".join(str(p.relative_to(path)) for p in found), given)
    raise UserError("no distilled.jsonl (give the file, a `sdft distill` output or a run directory)", given)


def export(config: ExportConfig) -> dict:
    """Write the distilled rows in config.format (default: train.<format>.jsonl beside them); what was written."""
    distilled = find_distilled(config.distilled)
    out = Path(config.out) if config.out else distilled.with_name(training_file_name(config.format))
    return write_training_set(load_distilled(distilled), config.format, out, str(distilled), config.push_to_hub)
