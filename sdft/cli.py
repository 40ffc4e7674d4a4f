"""`sdft` command line: CLI -> pipeline -> stages -> engines. User errors exit 2 with one line on stderr."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from sdft.core.config import add_config_args, build_config
from sdft.core.errors import UserError
from sdft.engines.runtime import configure_threads


def _commands():
    """name -> (help, config class, "module:function" of its stage, positional fields); stages are imported only to run,
    so `--help` stays torch-free and fast."""
    from sdft.experiment import DemoConfig, ReportConfig, RunConfig
    from sdft.options import DataConfig, DistillConfig, EvalConfig, ExportConfig, GenerateConfig, ScoreConfig, TrainConfig

    return {
        "distill": ("rewrite a dataset's responses with the seed model and select (SDFT Eq. 3-4)", DistillConfig, "stages.distill:distill", ()),
        "export": ("write a distillation as a training set for your own trainer (TRL, LLaMA-Factory)", ExportConfig, "stages.export:export", ("distilled",)),
        "train": ("fine-tune with LoRA (or fully): vanilla, SDFT, or any mix ratio", TrainConfig, "stages.train:train", ()),
        "generate": ("generate completions for a file of prompts", GenerateConfig, "stages.generate:generate", ()),
        "eval": ("run the forgetting benchmarks on a model (+ adapter)", EvalConfig, "stages.evaluate:run_eval", ()),
        "score": ("re-score saved predictions for one benchmark", ScoreConfig, "stages.evaluate:score", ()),
        "data": ("list the data files and where they come from, or download them (converted, checksummed) into the cache", DataConfig, "stages.data:data", ("action", "names")),
        "run": ("run an experiment config end to end (cached stages) and write the report", RunConfig, "pipeline:run", ("experiment",)),
        "report": ("re-render report.md / report.html from a run directory", ReportConfig, "pipeline:report", ("run_dir",)),
        "demo": ("the main job on the embedded model: distil OpenFunctions rows, train vanilla + SDFT with learning curves, and compare their forgetting at matched task gain (third-party likelihood, IFEval) by a rule stated before the run", DemoConfig, "pipeline:demo", ()),
    }


def _stage(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad flags get the same one-line, exit-2 treatment as every other user error (usage stays in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(commands) -> argparse.ArgumentParser:
    from sdft import __version__

    parser = OneLineErrorParser(prog="sdft", description="Self-Distillation Fine-Tuning (arXiv 2402.13669) for chat LLMs.",
                                epilog="`sdft COMMAND --help` lists a command's options.")
    parser.add_argument("--version", action="version", version=f"sdft {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND", parser_class=OneLineErrorParser)
    for name, (help_text, config_cls, _, positional) in commands.items():
        add_config_args(sub.add_parser(name, help=help_text, description=help_text), config_cls, positional)
    return parser


def _record_provenance(command: str, config) -> None:
    """run.json beside a stage's outputs (the pipeline commands write their own)."""
    from pathlib import Path

    from sdft.core.distributed import is_main_process
    from sdft.provenance import write_run_json

    out = getattr(config, "out", None)
    if command in ("run", "report", "demo", "score") or not out or not is_main_process():
        return
    path = Path(out)
    if path.suffix:  # a file output: <name>.run.json beside it
        write_run_json(path.parent, command, config, name=f"{path.stem}.run.json")
    else:
        write_run_json(path, command, config)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    commands = _commands()
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:  # bare `sdft`: what it can do, not an error line
        parser.print_help()
        return 0
    _, config_cls, stage, _ = commands[args.command]
    try:
        config = build_config(config_cls, args)
        configure_threads()  # before any torch work: sized to this process's cores, recorded in run.json
        result = _stage(stage)(config)
        _record_provenance(args.command, config)
    except UserError as e:
        print(f"sdft {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdft {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if isinstance(result, dict) and args.command in ("score", "distill", "export", "eval"):
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
