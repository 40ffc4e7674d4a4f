"""Experiments: seed model + training sets + methods + eval suite -> cached stages -> report.

Every stage (distill, train, eval, shift) lives in `RUN/stages/<kind>/<key>-<hash>`, where the hash covers the stage's
config and the hashes of the stages it reads. A stage is done when its `done.json` exists, so a rerun after a kill, or
after adding a method, runs only what is missing; a killed training resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UserError
from .experiment import DemoConfig, ExperimentConfig, ReportConfig, RunConfig, load_experiment, section_values
from .jsonl import read_jsonl, write_json
from .locking import RunLock
from .options import DistillConfig, EvalConfig, TrainConfig
from .provenance import provenance, write_run_json
from .stages.distill import distill
from .stages.evaluate import run_eval
from .stages.train import train
from .threads import configure_threads, describe

MATCHED_CAPACITY = {"target_modules": ["all-linear"], "lora_r": 64, "lora_alpha": 128}


@dataclass
class Stage:
    kind: str
    key: str
    config: dict
    deps: list["Stage"]
    action: Callable[[Path], dict]
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def hash(self) -> str:
        payload = json.dumps({"kind": self.kind, "config": self.config, "deps": [d.hash for d in self.deps]},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    def directory(self, run_dir: Path) -> Path:
        return run_dir / "stages" / self.kind / f"{self.key}-{self.hash}"

    def done(self, run_dir: Path) -> bool:
        return (self.directory(run_dir) / "done.json").is_file()


def plan(exp: ExperimentConfig) -> list[Stage]:
    """Stages in dependency order."""
    base_eval = section_values(exp.eval)
    stages: list[Stage] = []
    seed_eval = _eval_stage("seed", base_eval, None)
    stages.append(seed_eval)
    models = [{"key": "seed", "method": "seed", "dataset": None, "mix_ratio": None, "train_size": None,
               "capacity": "paper", "stage": seed_eval}]
    capacities = {"paper": {}} | ({"all-linear-r64": MATCHED_CAPACITY} if exp.matched_capacity else {})
    for dataset in exp.datasets:
        name = Path(dataset).stem
        for size in [exp.train_size, *[s for s in exp.train_sizes if s != exp.train_size]]:
            distill_stage = None
            variants = [(m, 1.0 if m == "sdft" else 0.0) for m in exp.methods]
            if size == exp.train_size:
                variants += [("mix", float(r)) for r in exp.mix_ratios if 0.0 < float(r) < 1.0]
            for method, ratio in variants:
                if ratio > 0 and distill_stage is None:
                    distill_stage = _distill_stage(exp, dataset, name if size == exp.train_size else f"{name}-n{size}", size)
                    stages.append(distill_stage)
                for capacity, overrides in capacities.items():
                    if capacity != "paper" and (method == "mix" or size != exp.train_size):
                        continue
                    key = "-".join(filter(None, [name, method if method != "mix" else f"mix{ratio:g}",
                                                 f"n{size}" if size != exp.train_size else "",
                                                 capacity if capacity != "paper" else ""]))
                    train_stage = _train_stage(exp, key, dataset, size, ratio, overrides, distill_stage if ratio > 0 else None)
                    eval_stage = _eval_stage(key, base_eval, train_stage)
                    stages += [train_stage, eval_stage]
                    models.append({"key": key, "method": method, "dataset": name, "mix_ratio": ratio, "train_size": size,
                                   "capacity": capacity, "stage": eval_stage})
                    if exp.shift.benchmark:
                        stages.append(_shift_stage(exp, key, seed_eval, eval_stage, train_stage))
    stages[0].meta["models"] = models
    return stages


def _distill_stage(exp: ExperimentConfig, dataset: str, key: str, size: int | None) -> Stage:
    config = {**section_values(exp.distill), "dataset": dataset, "limit": size}
    return Stage("distill", key, config, [], lambda d: distill(DistillConfig(**config, out=str(d))))


def _train_stage(exp, key, dataset, size, ratio, overrides, distill_stage) -> Stage:
    config = {**section_values(exp.train), **overrides, "limit": size, "mix_ratio": ratio if distill_stage else None}
    deps = [distill_stage] if distill_stage else []
    config["data"] = dataset if distill_stage is None else "<distilled>"

    def action(directory: Path) -> dict:
        data = str(distill_stage.directory(directory.parents[2]) / "distilled.jsonl") if distill_stage else dataset
        return train(TrainConfig(**{**config, "data": data}, out=str(directory)))

    return Stage("train", key, config, deps, action)


def _eval_stage(key: str, base_eval: dict, train_stage: Stage | None) -> Stage:
    deps = [train_stage] if train_stage else []

    def action(directory: Path) -> dict:
        if train_stage is None:
            return run_eval(EvalConfig(**base_eval, out=str(directory)))
        trained = train_stage.directory(directory.parents[2])
        if (trained / "adapter_config.json").is_file():
            return run_eval(EvalConfig(**base_eval, adapter=str(trained), out=str(directory)))
        return run_eval(EvalConfig(**{**base_eval, "model": str(trained)}, out=str(directory)))  # full fine-tune

    return Stage("eval", key, base_eval, deps, action)


def _shift_stage(exp: ExperimentConfig, key: str, seed_eval: Stage, tuned_eval: Stage, train_stage: Stage) -> Stage:
    benchmark = exp.shift.benchmark

    def action(directory: Path) -> dict:
        from .stages.shift import parameter_shift_of_adapter, text_shift

        run_dir = directory.parents[2]
        seed_rows = {r["id"]: r["prediction"] for r in read_jsonl(seed_eval.directory(run_dir) / f"{benchmark}.jsonl")}
        tuned_rows = {r["id"]: r["prediction"] for r in read_jsonl(tuned_eval.directory(run_dir) / f"{benchmark}.jsonl")}
        ids = [i for i in seed_rows if i in tuned_rows]
        result = text_shift([seed_rows[i] for i in ids], [tuned_rows[i] for i in ids])
        result.update(parameter_shift_of_adapter(exp.model, str(train_stage.directory(run_dir))))
        write_json(directory / "shift.json", result)
        return result

    return Stage("shift", key, {"benchmark": benchmark}, [seed_eval, tuned_eval, train_stage], action)


def execute(exp: ExperimentConfig, stages: list[Stage], progress: Callable[[str], None] = print) -> Path:
    run_dir = Path(exp.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)  # a second `sdft run` on this directory refuses here; released when this returns or dies
    progress(describe(configure_threads()))
    write_run_json(run_dir, "run", exp)
    for number, stage in enumerate(stages, 1):
        directory = stage.directory(run_dir)
        if stage.done(run_dir):
            progress(f"[{number}/{len(stages)}] {stage.kind} {stage.key}: cached")
            continue
        progress(f"[{number}/{len(stages)}] {stage.kind} {stage.key} ...")
        directory.mkdir(parents=True, exist_ok=True)
        result = stage.action(directory)
        write_json(directory / "done.json", {"stage": stage.kind, "key": stage.key, "hash": stage.hash,
                                             "config": stage.config, "result": result})
    write_summary(exp, stages, run_dir)
    lock.release()
    return run_dir


def write_summary(exp: ExperimentConfig, stages: list[Stage], run_dir: Path) -> dict:
    """summary.json: what the report reads (models, their eval dirs, distillation stats, shift)."""
    models = [{k: v for k, v in m.items() if k != "stage"} | {"eval_dir": str(m["stage"].directory(run_dir).relative_to(run_dir))}
              for m in stages[0].meta["models"]]
    distill_stats = {s.key: json.loads((s.directory(run_dir) / "distill_stats.json").read_text())
                     for s in stages if s.kind == "distill"}
    shift = {s.key: json.loads((s.directory(run_dir) / "shift.json").read_text()) for s in stages if s.kind == "shift"}
    summary = {"experiment": exp.name, "seed_model": exp.model, "provenance": provenance("run", exp),
               "benchmarks": list(exp.eval.benchmarks), "default_train_size": exp.train_size,
               "models": models, "distill": distill_stats, "shift": shift}
    write_json(run_dir / "summary.json", summary)
    return summary


def run(config: RunConfig) -> dict:
    from .stages.report import render_report

    exp = load_experiment(config.experiment, out=config.out)
    stages = plan(exp)
    if config.dry_run:
        run_dir = Path(exp.out)
        for stage in stages:
            state = "cached" if stage.done(run_dir) else "to run"
            deps = ", ".join(f"{d.kind}:{d.key}" for d in stage.deps) or "-"
            print(f"{stage.kind:8} {stage.key:40} {stage.hash}  {state:7} <- {deps}")
        return {"stages": len(stages)}
    run_dir = execute(exp, stages)
    md, html = render_report(run_dir)
    print(f"report: {md}\n        {html}")
    return {"run_dir": str(run_dir), "report": str(md)}


def report(config: ReportConfig) -> dict:
    from .stages.report import render_report

    if not (Path(config.run_dir) / "summary.json").is_file():
        raise UserError("no summary.json: not a finished `sdft run` directory", config.run_dir)
    md, html = render_report(config.run_dir)
    print(f"report: {md}\n        {html}")
    return {"report": str(md)}


def demo(config: DemoConfig) -> dict:
    """The `demo` preset: GSM8K subset distilled, vanilla vs SDFT, both against the seed on held-out GSM8K."""
    if config.fresh:
        shutil.rmtree(config.out, ignore_errors=True)
    exp = load_experiment("demo", out=config.out, model=config.model, dtype=config.dtype)
    run_dir = execute(exp, plan(exp))
    from .stages.report import render_report

    md, _ = render_report(run_dir)
    text = Path(md).read_text(encoding="utf-8")
    print(text.split("\n## Sweeps")[0].split("\n## Provenance")[0])  # scores, SDFT - vanilla, distillation
    print(f"full report: {md}")
    return {"run_dir": str(run_dir)}
