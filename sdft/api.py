"""The notebook front door: `distill`, `train` and `evaluate` take a model and data as a notebook holds them (a hub id
or folder, or a loaded transformers model; a `datasets.Dataset` or a list of dicts) and give back a `datasets.Dataset`
or a dict, the way TRL's trainers and lm-eval's `simple_evaluate` do.

Each call builds the typed config the CLI builds from its flags (`sdft.options`), so both share one validation and one
set of defaults, then runs the same stage (`sdft.stages`), which writes its files in `out` as the command does.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Union

from sdft.core.config import Options, build_config
from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl, write_jsonl
from sdft.options import DistillConfig, EvalConfig, TrainConfig
from sdft.stages.distill import distill as distill_stage
from sdft.stages.evaluate import run_eval
from sdft.stages.train import train as train_stage

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Model = Union[str, os.PathLike, "PreTrainedModel"]
Data = Union[str, os.PathLike, "datasets.Dataset", list[dict]]
BaseConfig = Union[Options, Mapping[str, Any], None]


def distill(model: Model, dataset: Data, *, out: str | os.PathLike | None = None, format: str = "messages",
            tokenizer: PreTrainedTokenizerBase | None = None, config: BaseConfig = None,
            **options) -> datasets.Dataset:
    """Rewrite each response with the seed model and keep the rewrites that pass the task's check (`sdft distill`);
    returns the training set in `format` (`sdft.data.export.FORMATS`: messages, prompt-completion, alpaca, sharegpt).

    model: a hub id, a local folder, "smollm2-135m-instruct", or a loaded transformers model with its `tokenizer=`
    (saved once, to a temporary folder under `out` that is removed when the call returns, since the engines load a
    model from disk). dataset: a registry name, a file, a hub id, or a `datasets.Dataset` / list of dicts (written to
    `out`/dataset.jsonl and distilled from there). options: any `DistillConfig` field (`limit=`, `max_new_tokens=`,
    `task=`, `selection=`, ...); `config`: a `DistillConfig` or mapping whose fields the call's values override. A bad
    option raises `sdft.UserError` naming it, before any model loads.

    `out` keeps distilled.jsonl, distill_stats.json and train.<format>.jsonl (default: a fresh temporary folder); the
    returned dataset's `info.description` ends with that folder. Rerunning into the same `out` resumes the generations.
    """
    import datasets

    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="sdft-distill-"))
    settings = _prepared(DistillConfig, config, options, "dataset", dataset, out_dir,
                         model=_model_name(model, tokenizer), format=format)
    stats = _run(distill_stage, settings, model, tokenizer)
    summary = (f"sdft distill of {stats['dataset']}: {stats['accepted']} of {stats['total']} rewrites kept; "
               f"distilled.jsonl and distill_stats.json in {out_dir}")
    rows = read_jsonl(stats["export"]["path"])
    return datasets.Dataset.from_list(rows, info=datasets.DatasetInfo(description=summary))


def train(model: Model, data: Data, *, out: str | os.PathLike, tokenizer: PreTrainedTokenizerBase | None = None,
          config: BaseConfig = None, **options) -> dict:
    """Fine-tune `model` (LoRA by default) and save the adapter in `out` (`sdft train`); returns the training metrics,
    what `out`/train_metrics.json holds (`rows`: how many rows were trained, cut or dropped).

    data: distilled.jsonl (SDFT: each row's selected target), a registry name, a file or a hub id (vanilla), or a
    `datasets.Dataset` / list of dicts (written to `out`/data.jsonl): what `distill` returned in its default `messages`
    format, or rows with instruction/output, prompt/completion or question/answer. model, tokenizer, config and
    options (`TrainConfig` fields: `max_steps=`, `batch_size=`, `learning_rate=`, ...) as in `distill`.
    """
    settings = _prepared(TrainConfig, config, options, "data", data, Path(out), model=_model_name(model, tokenizer))
    return _run(train_stage, settings, model, tokenizer)


def evaluate(model: Model, benchmarks: str | list[str] | None = None, *, adapter: str | os.PathLike | None = None,
             out: str | os.PathLike | None = None, tokenizer: PreTrainedTokenizerBase | None = None,
             config: BaseConfig = None, **options) -> dict:
    """Run the benchmarks (default: sdft's suite) on `model`, with the `adapter` folder `train` wrote (`sdft eval`);
    returns results.json's content: {"model", "adapter", "benchmarks": {name: {"score", "n", "ci95", ...}}}.

    `out` keeps results.json and each benchmark's scored rows (default: a fresh temporary folder); it holds one model's
    results, so a rerun into it resumes and merges. model, tokenizer, config and options (`EvalConfig` fields:
    `limit=`, `max_new_tokens=`, ...) as in `distill`.
    """
    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="sdft-eval-"))
    settings = _config(EvalConfig, config, options, model=_model_name(model, tokenizer), out=str(out_dir),
                       benchmarks=[benchmarks] if isinstance(benchmarks, str) else benchmarks,
                       adapter=None if adapter is None else str(adapter))
    return _run(run_eval, settings, model, tokenizer)


def _config(cls: type, base: BaseConfig, options: dict, **values):
    """The config the CLI would build: `base`'s fields, then the call's values (those given), then its options. An
    unknown option or a bad value raises UserError naming it."""
    defaults = vars(base) if isinstance(base, Options) else dict(base or {})
    given = {name: value for name, value in values.items() if value is not None}
    return build_config(cls, values={**defaults, **given, **options})


def _prepared(cls: type, base: BaseConfig, options: dict, data_field: str, data: Data, out: Path, **values):
    """The stage's config, its data field naming `data`; rows held in memory are written to `out`/<data_field>.jsonl
    once the config is known to be valid, so a bad option writes nothing."""
    rows = _in_memory_rows(data)
    source = out / f"{data_field}.jsonl" if rows is not None else data
    settings = _config(cls, base, options, **{data_field: str(source)}, out=str(out), **values)
    if rows is not None:
        write_jsonl(source, rows)
    return settings


def _in_memory_rows(data: Data) -> list[dict] | None:
    """The rows of a `datasets.Dataset` or a list of dicts; None for a name or path, which the stage resolves."""
    if isinstance(data, (str, os.PathLike)):
        return None
    import datasets

    rows = data.to_list() if isinstance(data, datasets.Dataset) else data
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise UserError("data: expected a registry name, a file, a hub id, a datasets.Dataset or a list of dicts, "
                        f"got {type(data).__name__}")
    return rows


def _model_name(model: Model, tokenizer) -> str:
    """What the config is checked with: the name or folder given, or a loaded model's own name (`_run` swaps in the
    folder it saves the model to)."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    if not hasattr(model, "save_pretrained"):
        raise UserError("model: expected a hub id, a local folder or a loaded transformers model, "
                        f"got {type(model).__name__}")
    if tokenizer is None:
        raise UserError("model: a loaded model needs its tokenizer (tokenizer=...)")
    return str(getattr(model, "name_or_path", "") or type(model).__name__)


def _run(stage: Callable, settings, model: Model, tokenizer):
    """The stage on `settings`; a loaded model is saved first, once, where the engines load it from: a temporary
    folder under settings.out, removed when the stage returns."""
    if isinstance(model, (str, os.PathLike)):
        return stage(settings)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="model-", dir=out) as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return stage(dataclasses.replace(settings, model=folder))
