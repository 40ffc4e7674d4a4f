"""sdft: Self-Distillation Fine-Tuning (Yang et al. 2024, arXiv 2402.13669) for chat LLMs.

The public API, one typed config per command (the CLI builds the same configs from its flags):

    import sdft
    sdft.distill(sdft.DistillConfig(dataset="gsm8k", out="runs/distill", limit=8))

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
    "stages.distill": ["distill"],
    "stages.export": ["export"],
    "stages.train": ["train"],
    "stages.generate": ["generate"],
    "stages.evaluate": ["run_eval", "score"],
    "pipeline": ["run", "report", "demo"],
    "core.errors": ["UserError"],
}
_MODULE_OF = {name: module for module, names in _IMPORT_STRUCTURE.items() for name in names}
__all__ = ["__version__", *_MODULE_OF]

if TYPE_CHECKING:
    from sdft.core.errors import UserError
    from sdft.experiment import DemoConfig, ExperimentConfig, ReportConfig, RunConfig, load_experiment
    from sdft.options import DistillConfig, EvalConfig, ExportConfig, GenerateConfig, ScoreConfig, TrainConfig
    from sdft.pipeline import demo, report, run
    from sdft.stages.distill import distill
    from sdft.stages.evaluate import run_eval, score
    from sdft.stages.export import export
    from sdft.stages.generate import generate
    from sdft.stages.train import train


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'sdft' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
