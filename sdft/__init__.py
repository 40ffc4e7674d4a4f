"""sdft: Self-Distillation Fine-Tuning (Yang et al. 2024, arXiv 2402.13669) for chat LLMs.

The public API: `distill`, `train` and `evaluate` take a model and a dataset (a name, a file, a `datasets.Dataset` or
a list of dicts) and return a Dataset or a dict (`sdft.api`); the other functions take one typed config per command.
Both build the configs the CLI builds from its flags:

    import sdft
    rows = sdft.distill("smollm2-135m-instruct", "gsm8k", out="runs/distill", limit=8)  # a datasets.Dataset
    sdft.export(sdft.ExportConfig(distilled="runs/distill", format="alpaca"))

Every name below is imported on first use, so `import sdft` loads no torch and changes nothing in the host process
(threads and allocator settings are made by the engine when it starts: `sdft.engines.runtime`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# module (relative to sdft) -> the public names it defines
_IMPORT_STRUCTURE = {
    "options": ["DistillConfig", "ExportConfig", "TrainConfig", "GenerateConfig", "EvalConfig", "ScoreConfig"],
    "experiment": ["RunConfig", "DemoConfig", "ReportConfig", "ExperimentConfig", "load_experiment"],
    "api": ["distill", "train", "evaluate"],
    "stages.export": ["export"],
    "stages.generate": ["generate"],
    "stages.evaluate": ["score"],
    "pipeline": ["run", "report", "demo"],
    "core.errors": ["UserError"],
}
_MODULE_OF = {name: module for module, names in _IMPORT_STRUCTURE.items() for name in names}
__all__ = ["__version__", *_MODULE_OF]

if TYPE_CHECKING:
    from sdft.api import distill, evaluate, train
    from sdft.core.errors import UserError
    from sdft.experiment import DemoConfig, ExperimentConfig, ReportConfig, RunConfig, load_experiment
    from sdft.options import DistillConfig, EvalConfig, ExportConfig, GenerateConfig, ScoreConfig, TrainConfig
    from sdft.pipeline import demo, report, run
    from sdft.stages.evaluate import score
    from sdft.stages.export import export
    from sdft.stages.generate import generate


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'sdft' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
