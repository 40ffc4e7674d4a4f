"""Experiments: the stage plan, content-hash caching, resume after a kill mid-training, and the rendered report."""

from __future__ import annotations

import json

import pytest
import yaml

import sdft.pipeline as pipeline
from sdft.core.errors import UserError
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


def test_plan_lists_each_stage_once_with_its_inputs(experiment):
    the_plan = plan(load_experiment(str(experiment)))
    kinds = [s.kind for s in the_plan.stages]
    assert kinds.count("distill") == 1 and kinds.count("train") == 3 and kinds.count("eval") == 4 and kinds.count("shift") == 3
    distill = next(s for s in the_plan.stages if s.kind == "distill")
    for method, ratio in (("vanilla", 0.0), ("sdft", 1.0), ("mix0.5", 0.5)):
        stage = next(s for s in the_plan.stages if s.kind == "train" and s.key.endswith(method))
        # vanilla trains on the distilled file's originals: exactly SDFT's rows
        assert stage.inputs == {"distilled": distill} and stage.config["mix_ratio"] == ratio
    assert len({s.hash for s in the_plan.stages}) == len(the_plan.stages)
    assert [m.key for m in the_plan.models] == ["seed", "gsm8k_small-vanilla", "gsm8k_small-sdft", "gsm8k_small-mix0.5"]
    ordered = the_plan.stages
    for stage in ordered:  # dependency order: every input comes earlier
        assert all(ordered.index(dep) < ordered.index(stage) for dep in stage.inputs.values())


def test_a_stage_hash_follows_its_inputs(experiment):
    exp = load_experiment(str(experiment))
    before = {s.key: s.hash for s in plan(exp).stages if s.kind in ("train", "eval")}
    exp.distill.max_new_tokens = 5
    after = {s.key: s.hash for s in plan(exp).stages if s.kind in ("train", "eval")}
    assert all(before[k] != after[k] for k in before if k != "seed") and before["seed"] == after["seed"]


def test_seeds_repeat_each_training_run_on_the_same_data(experiment):
    exp = load_experiment(str(experiment))
    exp.seeds = [1, 2, 3]
    the_plan = plan(exp)
    trains = [s for s in the_plan.stages if s.kind == "train"]
    assert len(trains) == 9 and {s.config["seed"] for s in trains} == {1, 2, 3}
    assert len([s for s in the_plan.stages if s.kind == "distill"]) == 1, "one distilled set for every seed"
    evals = [s for s in the_plan.stages if s.kind == "eval"]
    assert len(evals) == 10 and len({json.dumps(s.config, sort_keys=True) for s in evals}) == 1, "same items for all"
    assert {m.arm for m in the_plan.models if m.seed == 2} == {"gsm8k_small-vanilla", "gsm8k_small-sdft", "gsm8k_small-mix0.5"}


def test_matched_capacity_adds_all_linear_r64_runs(experiment):
    exp = load_experiment(str(experiment))
    exp.capacities = ["paper", "all-linear-r64"]
    wide = [s for s in plan(exp).stages if s.kind == "train" and s.key.endswith("all-linear-r64")]
    assert len(wide) == 2 and all(s.config["lora_r"] == 64 and s.config["target_modules"] == ["all-linear"] for s in wide)


def test_template_sweep_distils_again_and_adds_sdft_arms(experiment):
    """Table 4: each extra template is one more distillation of the same rows and SDFT arms trained on it; the
    default distillation keeps its hash, so an existing run's stages stay cached."""
    exp = load_experiment(str(experiment))
    before = {s.key: s.hash for s in plan(exp).stages}
    exp.distill_templates = ["distill_using", "gsm8k_distill"]  # the dataset's own template adds nothing
    exp.seeds, exp.capacities = [1, 2], ["paper", "all-linear-r64"]
    the_plan = plan(exp)
    distills = {s.key: s for s in the_plan.stages if s.kind == "distill"}
    assert set(distills) == {"gsm8k_small", "gsm8k_small-using"}
    assert distills["gsm8k_small-using"].config["template"] == "distill_using"
    assert {k: v for k, v in distills["gsm8k_small-using"].config.items() if k != "template"} == \
        {k: v for k, v in distills["gsm8k_small"].config.items() if k != "template"}, "same rows, same decoding"
    assert distills["gsm8k_small"].hash == before["gsm8k_small"]
    sweep = [m for m in the_plan.models if m.template]
    assert [m.key for m in sweep] == ["gsm8k_small-sdft-using-s1", "gsm8k_small-sdft-using-s2"]
    assert all(m.method == "sdft" and m.train.inputs == {"distilled": distills["gsm8k_small-using"]}
               and m.train.config["mix_ratio"] == 1.0 for m in sweep)
    vanilla = next(m for m in the_plan.models if m.arm == "gsm8k_small-vanilla")
    assert vanilla.train.inputs == {"distilled": distills["gsm8k_small"]} and vanilla.template is None
    record = sweep[0].record(experiment.parent)
    assert record["template"] == "distill_using" and record["arm"] == "gsm8k_small-sdft-using"
    assert record["distill_dir"].startswith("stages/distill/gsm8k_small-using-")


def test_a_configured_judge_adds_the_alpaca_eval_column(experiment):
    config = yaml.safe_load(experiment.read_text())
    config["eval"]["judge_url"] = "http://127.0.0.1:9/v1"
    experiment.write_text(yaml.safe_dump(config))
    assert load_experiment(str(experiment)).eval.benchmarks == ["gsm8k", "advbench", "alpaca_eval"]


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
    assert all("shift" in a for a in summary["arms"] if a["method"] != "seed")
    assert {c["arm"] for c in summary["comparisons"]} == {"gsm8k_small-sdft", "gsm8k_small-mix0.5"}
    report = open(f"{run_dir}/report.md").read()
    assert "gsm8k" in report and "advbench" in report
    record = json.loads(open(f"{run_dir}/run.json").read())
    assert record["config"]["name"] == "tiny" and record["dtype_auto"]  # what `auto` chose, once stages loaded models

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


@pytest.mark.parametrize("option, value", [("quantize", "int8"), ("kv_cache", "fp16")])
def test_an_option_left_at_its_default_since_it_was_added_keeps_cached_stages(experiment, option, value):
    """`quantize` and `kv_cache` came after runs were cached: at their defaults they are in no stage's config (hashes
    as before); set, the option is, and the stages it feeds run again."""
    exp = load_experiment(str(experiment))
    before = {s.key: s.hash for s in plan(exp).stages}
    assert all(option not in s.config for s in plan(exp).stages)
    setattr(exp.distill, option, value)
    after = {s.key: s for s in plan(exp).stages}
    assert after["gsm8k_small"].config[option] == value and after["gsm8k_small"].hash != before["gsm8k_small"]
    assert after["seed"].hash == before["seed"]


def test_settings_override_a_preset_by_dotted_key():
    """`sdft run PRESET --set key=value`: a section's option, a top-level list, YAML-typed values; a bad key or form
    is one user error naming it."""
    exp = load_experiment("demo", ["train.learning_rate=2e-3", "seeds=[1, 2]", "eval.limit=5"], model="some/model")
    assert exp.train.learning_rate == 0.002 and exp.seeds == [1, 2] and exp.eval.limit == 5
    assert exp.model == "some/model"
    with pytest.raises(UserError, match="train.nope"):
        load_experiment("demo", ["train.nope=1"])
    with pytest.raises(UserError, match="expected key=value"):
        load_experiment("demo", ["oops"])


def test_learning_curves_and_the_matched_gain_verdict(experiment):
    """train.eval_at_steps evaluates each run's snapshots (cached stages); summary.json holds each method's curves
    from the seed (step 0) to the final model, the comparison at each pre-registered gain, and the verdict."""
    from sdft.analysis.frontier import VERDICTS

    config = yaml.safe_load(experiment.read_text())
    config.update(seeds=[1, 2], mix_ratios=[], train={**config["train"], "max_steps": 3, "eval_at_steps": [1, 2]},
                  eval={**config["eval"], "benchmarks": ["gsm8k"]}, shift={"benchmark": None},
                  reference_likelihood={"prompts": 3, "max_tokens": 8},
                  decision={"gains": [0.0, 50.0], "measures": ["reference_likelihood"], "min_seeds": 2},
                  target_benchmark="gsm8k")
    experiment.write_text(yaml.safe_dump(config))
    exp = load_experiment(str(experiment))
    kinds = [s.kind for s in plan(exp).stages]
    assert kinds.count("eval") == 1 + 4 * 3 and kinds.count("reference") == 1 + 4 * 3
    run(RunConfig(experiment=str(experiment)))
    summary = json.loads(open(f"{exp.out}/summary.json").read())
    frontier = summary["frontier"]
    for method in ("vanilla", "sdft"):
        assert [c["steps"] for c in frontier["curves"][method]] == [[0, 1, 2, 3]] * 2
        assert all(c["gain"][0] == 0 and c["reference_likelihood"][0] == 0 for c in frontier["curves"][method])
    at_zero, at_fifty = frontier["at_gain"]
    assert at_zero["seeds_reaching"] == {"vanilla": 2, "sdft": 2}  # a gain of 0 is reached at the first step
    assert at_fifty["verdict"]["label"] in VERDICTS
    assert frontier["verdict"] == at_zero["verdict"] and frontier["verdict"]["line"].startswith("Verdict at a task gain of 0")
    report = open(f"{exp.out}/report.md").read()
    assert "Verdict at a task gain of 0" in report
    (name, stats), = summary["distill"].items()  # how much the two methods' data differ, beside the verdict
    assert 0 <= stats["changed"] <= stats["accepted"]
    assert f"SDFT's training targets differ from vanilla's in {stats['changed']} of {stats['total']} rows" in report


def test_options_at_their_default_leave_stage_hashes_alone(experiment):
    """An `omit_default` option (a list or mapping too) stays out of a stage's config while unset, so adding one to
    sdft does not re-run every cached stage of existing runs."""
    from sdft.experiment import section_values

    exp = load_experiment(str(experiment))
    assert "eval_at_steps" not in section_values(exp.train) and "tasks" not in section_values(exp.eval)
    config = yaml.safe_load(experiment.read_text())
    experiment.write_text(yaml.safe_dump({**config, "train": {**config["train"], "eval_at_steps": [1]}}))
    assert section_values(load_experiment(str(experiment)).train)["eval_at_steps"] == [1]
