"""Experiments: seed model + training sets + methods × seeds + eval suite -> cached stages -> summary -> report.

Every stage (distill, train, eval, retention, shift) lives in `RUN/stages/<kind>/<key>-<hash>`, where the hash covers
the stage's config and the hashes of the stages it reads. A stage is done when its `done.json` exists, so a rerun after
a kill, or after adding a method or a seed, runs only what is missing; a killed training resumes from its last
checkpoint. A stage's action receives its own directory and its inputs' directories by name, nothing else.

Seeds: each seed in `seeds` is one training run per method (its own stages); the training rows, the distilled targets
and the evaluation items are the same for every seed (all drawn with the experiment's `seed`), so models compare
paired by item and seed. When a training set is distilled, vanilla trains on the distilled file's original targets
(mix ratio 0), i.e. on exactly the rows SDFT trains on; so does `onpolicy` (on-policy self-distillation, TRL), whose
teacher is shown those targets in the distillation template.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl, write_json
from sdft.core.locking import RunLock
from sdft.data.datasets import DATASETS
from sdft.engines.runtime import configure_threads, describe
from sdft.engines.training import snapshot_dir
from sdft.evaluation.user_benchmarks import file_digests
from sdft.experiment import DemoConfig, ExperimentConfig, ReportConfig, RunConfig, load_experiment, section_values
from sdft.options import DistillConfig, EvalConfig, TrainConfig
from sdft.provenance import provenance, write_run_json
from sdft.stages.distill import distill
from sdft.stages.evaluate import run_eval
from sdft.stages.train import train

# Training overrides per capacity: the paper's LoRA (the train section as given) and sdft#15's matched capacity.
CAPACITIES = {"paper": {}, "all-linear-r64": {"target_modules": ["all-linear"], "lora_r": 64, "lora_alpha": 128}}
# An action gets its stage directory and {input name: that input stage's directory}.
Action = Callable[[Path, dict[str, Path]], dict]


@dataclass
class Stage:
    kind: str
    key: str
    config: dict
    inputs: dict[str, "Stage"]
    action: Action

    @property
    def hash(self) -> str:
        payload = json.dumps({"kind": self.kind, "config": self.config,
                              "inputs": {name: stage.hash for name, stage in self.inputs.items()}},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    def directory(self, run_dir: Path) -> Path:
        return run_dir / "stages" / self.kind / f"{self.key}-{self.hash}"

    def done(self, run_dir: Path) -> bool:
        return (self.directory(run_dir) / "done.json").is_file()


@dataclass
class ModelRun:
    """One evaluated model: the seed, or one training run of an arm (method × mix ratio × size × capacity) at a seed."""

    key: str
    arm: str
    method: str  # seed | vanilla | mix | sdft
    dataset: str | None
    mix_ratio: float | None
    train_size: int | None
    capacity: str
    seed: int | None
    eval: Stage
    train: Stage | None = None
    retention: Stage | None = None
    reference: Stage | None = None  # third-party likelihood
    shift: Stage | None = None
    template: str | None = None  # the distillation template of a template-sweep arm (None: the dataset's own)
    curve: dict[int, dict[str, Stage]] = field(default_factory=dict)  # step -> its eval (and reference) stages


    def record(self, run_dir: Path) -> dict:
        """What summary.json says of this model: its identity and where its outputs are (the distillation it trained
        on included, so the summary can show its rewrites and time it)."""
        fields = {k: getattr(self, k) for k in ("key", "arm", "method", "dataset", "mix_ratio", "train_size",
                                                "capacity", "seed", "template")}
        stages = {"eval": self.eval, "train": self.train, "retention": self.retention, "reference": self.reference,
                  "shift": self.shift, "distill": self.train.inputs.get("distilled") if self.train else None}
        dirs = {f"{name}_dir": _relative(stage, run_dir) for name, stage in stages.items() if stage is not None}
        curve = {"curve": {str(step): {f"{name}_dir": _relative(stage, run_dir) for name, stage in point.items()}
                           for step, point in self.curve.items()}} if self.curve else {}
        return fields | dirs | curve


def _relative(stage: Stage, run_dir: Path) -> str:
    return str(stage.directory(run_dir).relative_to(run_dir))


@dataclass
class Plan:
    stages: list[Stage]  # in dependency order
    models: list[ModelRun]


def plan(exp: ExperimentConfig) -> Plan:
    """Every stage of the experiment and the models it evaluates."""
    base_eval = section_values(exp.eval)
    stages: list[Stage] = []
    answers = _answers_stage(exp) if exp.retention.prompts else None
    if answers:
        stages.append(answers)
    seed_model = _model_run(exp, stages, answers, "seed", "seed", "seed", None, None, None, "paper", None, base_eval, None)
    models = [seed_model]
    capacities = {name: CAPACITIES[name] for name in exp.capacities}
    several_seeds = len(exp.seeds) > 1
    for dataset in exp.datasets:
        name = Path(dataset).stem
        for size in [exp.train_size, *[s for s in exp.train_sizes if s != exp.train_size]]:
            # (method, mix ratio, distillation template: None = the dataset's own)
            variants = [(m, 1.0 if m == "sdft" else 0.0, None) for m in exp.methods]
            if size == exp.train_size:
                variants += [("mix", float(r), None) for r in exp.mix_ratios if 0.0 < float(r) < 1.0]
                variants += [("sdft", 1.0, t) for t in _sweep_templates(exp, dataset)]
            distilled: dict[str | None, Stage] = {}  # one distillation per template, shared by its arms and seeds
            for _, ratio, template in variants:
                if ratio > 0 and template not in distilled:
                    distilled[template] = _distill_stage(exp, dataset, "-".join(filter(None, [
                        name if size == exp.train_size else f"{name}-n{size}", _short(template)])), size, template)
                    stages.append(distilled[template])
            for seed in exp.seeds:  # seed by seed, so a run stopped early has every arm at its first seeds
                for method, ratio, template in variants:
                    for capacity, overrides in capacities.items():
                        if capacity != exp.capacities[0] and (method == "mix" or size != exp.train_size or template):
                            continue
                        arm = "-".join(filter(None, [name, method if method != "mix" else f"mix{ratio:g}",
                                                     f"n{size}" if size != exp.train_size else "", _short(template),
                                                     capacity if capacity != "paper" else ""]))
                        key = f"{arm}-s{seed}" if several_seeds else arm
                        train_stage = _train_stage(exp, key, dataset, size, ratio, overrides, distilled.get(template), seed, method)
                        stages.append(train_stage)
                        model = _model_run(exp, stages, answers, key, arm, method, name, ratio, size, capacity, seed,
                                           base_eval, train_stage, seed_model)
                        model.template = template
                        models.append(model)
    return Plan(stages, models)


def _sweep_templates(exp: ExperimentConfig, dataset: str) -> list[str]:
    """The template sweep's templates for `dataset`, less the one its default distillation already uses."""
    spec = DATASETS.get(dataset)
    own = exp.distill.template if isinstance(exp.distill.template, str) else spec.distill_template if spec else None
    return [t for t in dict.fromkeys(exp.distill_templates) if t != own]


def _short(template: str | None) -> str:
    """A sweep template's part of stage and arm keys: distill_using -> using ('' for the dataset's own)."""
    return (template or "").removeprefix("distill_")


def _model_run(exp, stages, answers, key, arm, method, dataset, ratio, size, capacity, seed, base_eval, train_stage,
               seed_model: ModelRun | None = None) -> ModelRun:
    """The eval stage of one model, with its retention and shift stages when the experiment asks for them."""
    ratio = None if method == "onpolicy" else ratio  # no distilled targets: not a point of the mix-ratio sweep
    model = ModelRun(key, arm, method, dataset, ratio, size, capacity, seed, _eval_stage(key, base_eval, train_stage),
                     train_stage)
    stages.append(model.eval)
    if answers:
        model.retention = _retention_stage(exp, key, answers, train_stage)
        stages.append(model.retention)
    if exp.reference_likelihood.prompts:
        model.reference = _reference_stage(exp, key, train_stage)
        stages.append(model.reference)
    for step in (exp.train.eval_at_steps if train_stage else ()):  # the learning curve's points before the last
        point = {"eval": _eval_stage(f"{key}@{step}", base_eval, train_stage, step)}
        if exp.reference_likelihood.prompts:
            point["reference"] = _reference_stage(exp, f"{key}@{step}", train_stage, step)
        model.curve[step] = point
        stages.extend(point.values())
    if seed_model and exp.shift.benchmark:
        model.shift = _shift_stage(exp, key, seed_model.eval, model.eval, train_stage)
        stages.append(model.shift)
    return model


def _distill_stage(exp: ExperimentConfig, dataset: str, key: str, size: int | None, template: str | None) -> Stage:
    config = {**section_values(exp.distill), "dataset": dataset, "limit": size}
    if template:  # a sweep template; the default distillation's config (and hash) stays as it was
        config["template"] = template
    return Stage("distill", key, config, {}, lambda directory, inputs: distill(DistillConfig(**config, out=str(directory))))


def _train_stage(exp, key, dataset, size, ratio, overrides, distill_stage, seed, method) -> Stage:
    """Training at `seed` on the distilled file (its rows, any mix ratio incl. 0 = vanilla) or, when nothing was
    distilled, on the dataset itself. `onpolicy` adds its options, its teacher prompt the distillation's template."""
    config = {**section_values(exp.train), **overrides, "seed": seed}
    if method == "onpolicy":
        config.update(section_values(exp.onpolicy), method="onpolicy")
        config["teacher_template"] = config["teacher_template"] or exp.distill.template
    if distill_stage is not None:
        config.update(limit=None, mix_ratio=ratio)  # the distilled file is already the training subset
        inputs = {"distilled": distill_stage}
    else:
        config.update(limit=size, mix_ratio=None, data=dataset)
        inputs = {}

    def action(directory: Path, paths: dict[str, Path]) -> dict:
        data = str(paths["distilled"] / "distilled.jsonl") if "distilled" in paths else dataset
        return train(TrainConfig(**{**config, "data": data}, out=str(directory)))

    return Stage("train", key, config, inputs, action)


def _trained_model(trained: Path | None, step: int | None = None) -> dict:
    """The model options that evaluate a training stage's output (at `step`: its snapshot of that step): an adapter
    on the seed, or a full fine-tune."""
    if trained is None:
        return {}
    if step is not None:
        trained = snapshot_dir(trained, step)
        if not trained.is_dir():
            raise UserError(f"training stopped before step {step} (train.eval_at_steps names a step it never reached)",
                            str(trained.parent.parent))
    if (trained / "adapter_config.json").is_file():
        return {"adapter": str(trained)}
    return {"model": str(trained)}


def _eval_stage(key: str, base_eval: dict, train_stage: Stage | None, step: int | None = None) -> Stage:
    def action(directory: Path, paths: dict[str, Path]) -> dict:
        return run_eval(EvalConfig(**{**base_eval, **_trained_model(paths.get("trained"), step)}, out=str(directory)))

    config = base_eval if step is None else {**base_eval, "step": step}
    if base_eval.get("tasks"):  # the declarations are in base_eval; an edited held-out file is another evaluation too
        config = {**config, "task_files": file_digests(base_eval["tasks"])}
    return Stage("eval", key, config, {"trained": train_stage} if train_stage else {}, action)


def _answers_stage(exp: ExperimentConfig) -> Stage:
    config = {"model": exp.model, "dtype": exp.dtype, "data_dir": exp.data_dir, "seed": exp.seed,
              "prompts": exp.retention.prompts, "max_new_tokens": exp.retention.max_new_tokens}
    if exp.retention.temperature:  # greedy answers keep the hash they always had
        config["temperature"] = exp.retention.temperature

    def action(directory: Path, paths: dict[str, Path]) -> dict:
        from sdft.stages.evaluate import resolve_data_dir
        from sdft.stages.likelihood import PROMPTS_FILE, answer_prompts

        data_dir = resolve_data_dir(exp.data_dir, [PROMPTS_FILE])
        return answer_prompts(exp.model, exp.dtype, data_dir, exp.retention.prompts, exp.seed,
                              exp.retention.max_new_tokens, directory, exp.retention.temperature)

    return Stage("answers", "seed", config, {}, action)


def _retention_stage(exp: ExperimentConfig, key: str, answers: Stage, train_stage: Stage | None) -> Stage:
    config = {"model": exp.model, "dtype": exp.dtype}

    def action(directory: Path, paths: dict[str, Path]) -> dict:
        from sdft.stages.likelihood import ANSWERS_FILE, score_retention

        model = {"model": exp.model, "adapter": None} | _trained_model(paths.get("trained"))
        return score_retention(model["model"], exp.dtype, model["adapter"], paths["answers"] / ANSWERS_FILE, directory)

    inputs = {"answers": answers} | ({"trained": train_stage} if train_stage else {})
    return Stage("retention", key, config, inputs, action)


def _reference_stage(exp: ExperimentConfig, key: str, train_stage: Stage | None, step: int | None = None) -> Stage:
    options = exp.reference_likelihood
    config = {"model": exp.model, "dtype": exp.dtype, "seed": exp.seed, "prompts": options.prompts,
              "max_tokens": options.max_tokens, **({"step": step} if step is not None else {})}

    def action(directory: Path, paths: dict[str, Path]) -> dict:
        from sdft.stages.evaluate import resolve_data_dir
        from sdft.stages.likelihood import PROMPTS_FILE, score_references

        model = {"model": exp.model, "adapter": None} | _trained_model(paths.get("trained"), step)
        data_dir = resolve_data_dir(exp.data_dir, [PROMPTS_FILE])
        return score_references(model["model"], exp.dtype, model["adapter"], data_dir, options.prompts, exp.seed,
                                options.max_tokens, directory)

    return Stage("reference", key, config, {"trained": train_stage} if train_stage else {}, action)


def _shift_stage(exp: ExperimentConfig, key: str, seed_eval: Stage, tuned_eval: Stage, train_stage: Stage) -> Stage:
    benchmark = exp.shift.benchmark

    def action(directory: Path, paths: dict[str, Path]) -> dict:
        from sdft.analysis.shift import parameter_shift_of_adapter, text_shift

        seed_rows = {r["id"]: r["prediction"] for r in read_jsonl(paths["seed_eval"] / f"{benchmark}.jsonl")}
        tuned_rows = {r["id"]: r["prediction"] for r in read_jsonl(paths["tuned_eval"] / f"{benchmark}.jsonl")}
        ids = [i for i in seed_rows if i in tuned_rows]
        result = text_shift([seed_rows[i] for i in ids], [tuned_rows[i] for i in ids])
        result.update(parameter_shift_of_adapter(exp.model, str(paths["trained"])))
        write_json(directory / "shift.json", result)
        return result

    inputs = {"seed_eval": seed_eval, "tuned_eval": tuned_eval, "trained": train_stage}
    return Stage("shift", key, {"benchmark": benchmark}, inputs, action)


def _check_data(exp: ExperimentConfig) -> None:
    """Every data file the evaluation stages read is here (or downloaded) before anything is written: on a machine
    without it, one line naming the files and `sdft data download`, not a run directory that stops at its first stage."""
    from sdft.evaluation.benchmarks import get_benchmark
    from sdft.stages.evaluate import files_read, resolve_data_dir
    from sdft.stages.likelihood import PROMPTS_FILE

    declared = exp.eval.declared_tasks()
    files = files_read([get_benchmark(name, declared) for name in exp.eval.benchmarks])
    if exp.retention.prompts or exp.reference_likelihood.prompts:
        files.append(PROMPTS_FILE)
    resolve_data_dir(exp.data_dir, files)


def release_memory() -> None:
    """Give a finished stage's models and caches back before the next stage loads its own: without this, a long run
    in one process grew to 13 GB by its 20th stage and was killed for memory (cpu-frontier, 24 GB machine)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed arenas mapped unless asked
    except (OSError, AttributeError):
        pass


def execute(exp: ExperimentConfig, the_plan: Plan, progress: Callable[[str], None] = print) -> Path:
    """Run every stage not yet done (recording its wall time), then write summary.json."""
    from sdft.analysis.summary import write_summary
    from sdft.engines.dtype_probe import decisions

    _check_data(exp)
    run_dir = Path(exp.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)  # a second `sdft run` on this directory refuses here; released when this returns or dies
    progress(describe(configure_threads()))
    record = write_run_json(run_dir, "run", exp)  # at the start, so even a run that dies has its provenance
    stages = the_plan.stages
    for number, stage in enumerate(stages, 1):
        directory = stage.directory(run_dir)
        if stage.done(run_dir):
            progress(f"[{number}/{len(stages)}] {stage.kind} {stage.key}: cached")
            continue
        progress(f"[{number}/{len(stages)}] {stage.kind} {stage.key} ...")
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        result = stage.action(directory, {name: dep.directory(run_dir) for name, dep in stage.inputs.items()})
        write_json(directory / "done.json", {"stage": stage.kind, "key": stage.key, "hash": stage.hash,
                                             "config": stage.config, "seconds": time.perf_counter() - started,
                                             "result": result})
        release_memory()
    write_summary(exp, the_plan, run_dir, provenance("run", exp))
    # `--dtype auto` decides when a stage first loads a model: run.json written before the stages had none of it
    write_json(run_dir / "run.json", {**record, "dtype_auto": decisions()})
    lock.release()
    return run_dir


def run(config: RunConfig) -> dict:
    from sdft.analysis.report import render_report

    exp = load_experiment(config.experiment, config.set, out=config.out, model=config.model)
    the_plan = plan(exp)
    if config.dry_run:
        run_dir = Path(exp.out)
        for stage in the_plan.stages:
            state = "cached" if stage.done(run_dir) else "to run"
            deps = ", ".join(f"{d.kind}:{d.key}" for d in stage.inputs.values()) or "-"
            print(f"{stage.kind:8} {stage.key:40} {stage.hash}  {state:7} <- {deps}")
        return {"stages": len(the_plan.stages)}
    run_dir = execute(exp, the_plan)
    md, html = render_report(run_dir)
    print(f"report: {md}\n        {html}")
    return {"run_dir": str(run_dir), "report": str(md)}


def report(config: ReportConfig) -> dict:
    from sdft.analysis.report import render_report

    if not (Path(config.run_dir) / "summary.json").is_file():
        raise UserError("no summary.json: not a finished `sdft run` directory", config.run_dir)
    md, html = render_report(config.run_dir)
    print(f"report: {md}\n        {html}")
    return {"report": str(md)}


def demo(config: DemoConfig) -> dict:
    """The `demo` preset: an OpenFunctions subset distilled, vanilla vs SDFT along their learning curves, compared at
    matched task gain on third-party likelihood and IFEval; prints the verdict and the score tables."""
    if config.fresh:
        shutil.rmtree(config.out, ignore_errors=True)
    exp = load_experiment("demo", config.set, out=config.out, model=config.model, dtype=config.dtype)
    run_dir = execute(exp, plan(exp))
    from sdft.analysis.report import render_headline, render_report

    md, _ = render_report(run_dir)
    print(render_headline(run_dir))
    print(f"full report: {md}")
    return {"run_dir": str(run_dir)}
