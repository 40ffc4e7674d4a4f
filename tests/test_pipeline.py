"""Experiments: the stage plan, content-hash caching, resume after a kill mid-training, and the rendered report."""

from __future__ import annotations

import json

import pytest
import yaml

import sdft.pipeline as pipeline
from sdft.experiment import RunConfig, load_experiment
from sdft.pipeline import plan, run


@pytest.fixture
def experiment(tmp_path, tiny_model_dir, gsm8k_file):
    config = {
        "name": "tiny", "out": str(tmp_path / "run"), "model": tiny_model_dir, "datasets": [str(gsm8k_file)],
        "methods": ["vanilla", "sdft"], "mix_ratios": [0.5],
        "distill": {"max_new_tokens": 4, "task": "math", "template": "gsm8k_distill"},
        "train": {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2},
        "eval": {"benchmarks": ["gsm8k", "advbench"], "limit": 3, "max_new_tokens": 4},
        "shift": {"benchmark": "advbench"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_plan_lists_each_stage_once_with_dependencies(experiment):
    stages = plan(load_experiment(str(experiment)))
    kinds = [s.kind for s in stages]
    assert kinds.count("distill") == 1 and kinds.count("train") == 3 and kinds.count("eval") == 4 and kinds.count("shift") == 3
    vanilla = next(s for s in stages if s.kind == "train" and s.key.endswith("vanilla"))
    assert vanilla.deps == [], "vanilla does not wait for distillation"
    sdft_train = next(s for s in stages if s.kind == "train" and s.key.endswith("sdft"))
    assert [d.kind for d in sdft_train.deps] == ["distill"]
    assert len({s.hash for s in stages}) == len(stages)


def test_matched_capacity_adds_all_linear_r64_runs(experiment):
    exp = load_experiment(str(experiment))
    exp.matched_capacity = True
    wide = [s for s in plan(exp) if s.kind == "train" and s.key.endswith("all-linear-r64")]
    assert len(wide) == 2 and all(s.config["lora_r"] == 64 and s.config["target_modules"] == ["all-linear"] for s in wide)


def test_killed_run_resumes_without_redoing_finished_stages(experiment, monkeypatch, capsys):
    calls = {"train": [], "distill": 0}
    real_train, real_distill = pipeline.train, pipeline.distill

    def train_killed_on_second(config):
        calls["train"].append(config.out)
        if len(calls["train"]) == 2:
            raise KeyboardInterrupt
        return real_train(config)

    def counting_distill(config):
        calls["distill"] += 1
        return real_distill(config)

    monkeypatch.setattr(pipeline, "train", train_killed_on_second)
    monkeypatch.setattr(pipeline, "distill", counting_distill)
    with pytest.raises(KeyboardInterrupt):
        run(RunConfig(experiment=str(experiment)))
    first_trained = calls["train"][0]

    calls["train"].clear()
    monkeypatch.setattr(pipeline, "train", lambda config: calls["train"].append(config.out) or real_train(config))
    run(RunConfig(experiment=str(experiment)))
    assert first_trained not in calls["train"], "a finished training stage was redone"
    assert len(calls["train"]) == 2 and calls["distill"] == 1

    run_dir = load_experiment(str(experiment)).out
    summary = json.loads(open(f"{run_dir}/summary.json").read())
    assert {m["method"] for m in summary["models"]} == {"seed", "vanilla", "sdft", "mix"}
    assert set(summary["shift"]) == {m["key"] for m in summary["models"] if m["method"] != "seed"}
    report = open(f"{run_dir}/report.md").read()
    assert "gsm8k" in report and "advbench" in report
    assert json.loads(open(f"{run_dir}/run.json").read())["config"]["name"] == "tiny"

    calls["train"].clear()
    run(RunConfig(experiment=str(experiment), dry_run=True))
    assert "to run" not in capsys.readouterr().out and not calls["train"]


@pytest.mark.parametrize("change, key", [
    ({"train": {"epochz": 2}}, "train.epochz"),
    ({"distill": {"temperature": -1}}, "distill.temperature"),
    ({"distill": {"top_p": 0}}, "distill.top_p"),
    ({"eval": {"benchmarks": ["gsm9k"]}}, "eval.benchmarks"),
    ({"eval": {"limit": "ten"}}, "eval.limit"),
    ({"shift": {"benchmark": 3}}, "shift.benchmark"),
    ({"seeds": [1, "two"]}, "seeds[1]"),
    ({"methodz": ["sdft"]}, "methodz"),
    ({"train": {"prompt_mode": "raw"}}, "train.prompt_mode"),
    ({"distill": {"limit": 5}}, "distill.limit"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_dry_run_rejects_bad_keys_at_any_depth(experiment, capsys, change, key):
    from sdft.cli import main

    config = yaml.safe_load(experiment.read_text())
    for name, value in change.items():
        config[name] = {**config[name], **value} if isinstance(value, dict) else value
    experiment.write_text(yaml.safe_dump(config))
    assert main(["run", str(experiment), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(experiment) in err and key in err, err


def test_sections_inherit_the_top_level_options(experiment):
    config = yaml.safe_load(experiment.read_text())
    experiment.write_text(yaml.safe_dump({**config, "prompt_mode": "raw", "seed": 7, "dtype": "fp32"}))
    exp = load_experiment(str(experiment))
    for section in (exp.distill, exp.train, exp.eval):
        assert (section.prompt_mode, section.seed, section.dtype, section.model) == ("raw", 7, "fp32", exp.model)
    assert exp.seeds == [7]
