"""On-policy self-distillation (`--method onpolicy`, TRL's SDFTTrainer) on a tiny random model: the teacher sees the
distillation template's prompt, training changes the adapter and logs its loss, a killed run resumes."""

from __future__ import annotations

import json

import pytest
import torch

from sdft.data.templates import render
from sdft.options import TrainConfig
from sdft.stages.train import train


def _distilled_gsm8k(tmp_path, n=4):
    """A distilled file as `sdft distill` writes it for GSM8K (train template gsm8k, teacher gsm8k_distill)."""
    rows = [{"id": f"r{i}", "instruction": f"What is {i} + {i}?", "response": f"{i} + {i} = {2 * i}. The answer is {2 * i}",
             "original": f"{i} + {i} = {2 * i}. The answer is {2 * i}", "distilled": f"It is {2 * i}", "target": f"It is {2 * i}",
             "accepted": True, "train_template": "gsm8k"} for i in range(n)]
    path = tmp_path / "distilled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "distill_stats.json").write_text(json.dumps({"dataset": "gsm8k"}))
    return path, rows


def _config(tmp_path, model, **overrides):
    data, _ = _distilled_gsm8k(tmp_path)
    values = dict(data=str(data), out=str(tmp_path / "out"), model=model, method="onpolicy",
                  max_steps=2, batch_size=2, micro_batch_size=2, learning_rate=1e-2, save_steps=1, logging_steps=1,
                  max_completion_length=6, distillation_topk=5)
    return TrainConfig(**{**values, **overrides})


def _spy_teacher_inputs(monkeypatch) -> tuple[list, list]:
    """Record the teacher's (prompt + sampled answer) token ids of every batch TRL distils on, and the bf16 setting."""
    from trl.experimental.sdft.sdft_trainer import SDFTTrainer

    seen, bf16, original = [], [], SDFTTrainer._compute_teacher_student_logits

    def spy(self, model, teacher_model, inputs):
        bf16[:] = [self.args.bf16]
        for ids, mask in zip(inputs["teacher_input_ids"], inputs["teacher_attention_mask"]):
            seen.append(ids[mask.bool()].tolist())
        return original(self, model, teacher_model, inputs)

    monkeypatch.setattr(SDFTTrainer, "_compute_teacher_student_logits", spy)
    return seen, bf16


def test_onpolicy_trains_an_adapter_against_the_distillation_prompt(tmp_path, tiny_model_dir, embedded_tokenizer,
                                                                     monkeypatch):
    from safetensors.torch import load_file

    seen, seen_bf16 = _spy_teacher_inputs(monkeypatch)
    metrics = train(_config(tmp_path, tiny_model_dir, bf16=True))
    _, rows = _distilled_gsm8k(tmp_path)
    # the teacher's prompt is exactly what `sdft distill` gives the seed: gsm8k_distill with the original answer as
    # reference (on-policy's default mix ratio is 0, not SDFT's 1), its assistant prefix included, one BOS at most
    expected = [embedded_tokenizer(render("gsm8k_distill", r, embedded_tokenizer))["input_ids"] for r in rows]
    assert seen and all(any(ids[:len(e)] == e for e in expected) for ids in seen)
    assert "Great! Let's think step by step. " in render("gsm8k_distill", rows[0], embedded_tokenizer)

    out = tmp_path / "out"
    assert metrics["method"] == "onpolicy" and metrics["examples"] == 4 and metrics["distilled_targets"] == 0
    assert metrics["rows"] == {"total": 4, "trained": 4, "prompt_cut": 0, "teacher_prompt_cut": 0}
    # asked for bf16: a CPU run still samples and trains in fp32; on a GPU bf16 is kept (seen on an H200)
    assert seen_bf16 == [torch.cuda.is_available()]
    state = json.loads((out / "checkpoints/checkpoint-2/trainer_state.json").read_text())
    assert state["global_step"] == 2 and any("loss" in log for log in state["log_history"])
    assert any("sdft/distillation_loss" in log for log in state["log_history"]), "TRL's own metrics are logged"
    assert list((out / "logs").glob("events.out.tfevents.*")), "TensorBoard logs in OUT/logs"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b), "LoRA B starts at zero: training moved it"


def test_a_prompt_is_tokenized_as_sdft_train_does_one_bos_at_most(embedded_tokenizer):
    """TRL adds the tokenizer's special tokens to a text prompt; a chat template (or raw mode) that already starts
    with BOS would get two, unlike the supervised training's prompt."""
    import copy
    from types import SimpleNamespace

    from sdft.engines.onpolicy import _trainer_class
    from sdft.engines.training import tokenize_example

    tokenizer = copy.deepcopy(embedded_tokenizer)
    tokenizer.add_bos_token = True  # as Llama's tokenizers do
    bos = tokenizer.bos_token_id
    trainer = SimpleNamespace(_tokenizer=tokenizer, max_prompt_length=None)
    with_bos, without = tokenizer.bos_token + "Question", "Question"
    assert tokenizer(with_bos)["input_ids"][:2] == [bos, bos], "the double BOS this guards against"
    ids = _trainer_class()._tokenize_prompts(trainer, [with_bos, without])
    assert ids[0] == ids[1] == tokenizer(without)["input_ids"] and ids[0].count(bos) == 1
    assert ids[0] == tokenize_example(tokenizer, with_bos, "a", 64).input_ids[:len(ids[0])]


def test_a_long_prompt_loses_its_start_but_not_its_bos_and_is_counted(embedded_tokenizer):
    """TRL cuts a prompt to max_prompt_length at its start, BOS (here the chat template's first token) included; sdft
    keeps that token, as its supervised default does, and counts the rows whose prompt or teacher's prompt is cut."""
    from types import SimpleNamespace

    from sdft.engines.onpolicy import OnPolicyRow, _trainer_class, onpolicy_row_counts

    short, long = (embedded_tokenizer.apply_chat_template([{"role": "user", "content": "word " * n}], tokenize=False,
                                                          add_generation_prompt=True) for n in (2, 100))
    ids = embedded_tokenizer(long, add_special_tokens=False)["input_ids"]
    trainer = SimpleNamespace(_tokenizer=embedded_tokenizer, max_prompt_length=64)
    assert _trainer_class()._tokenize_prompts(trainer, [long, short]) == \
        [ids[:1] + ids[-63:], embedded_tokenizer(short, add_special_tokens=False)["input_ids"]]
    rows = [OnPolicyRow(short, long), OnPolicyRow(long, long), OnPolicyRow(short, short)]
    assert onpolicy_row_counts(embedded_tokenizer, rows, 64) == \
        {"total": 3, "trained": 3, "prompt_cut": 1, "teacher_prompt_cut": 2}


def test_killed_onpolicy_run_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    from trl.experimental.sdft.sdft_trainer import SDFTTrainer

    from sdft.cli import main

    config = _config(tmp_path, tiny_model_dir, max_steps=3)
    original_step, calls = SDFTTrainer.training_step, []

    def killed_after_two_steps(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt  # a kill after the step-2 checkpoint
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(SDFTTrainer, "training_step", killed_after_two_steps)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert (tmp_path / "out/checkpoints/checkpoint-2").is_dir() and not (tmp_path / "out/adapter_config.json").exists()

    calls.clear()
    monkeypatch.setattr(SDFTTrainer, "training_step", lambda self, *a, **k: calls.append(1) or original_step(self, *a, **k))
    flags = [f"--{name.replace('_', '-')}={getattr(config, name)}" for name in (
        "data", "out", "model", "method", "max_steps", "batch_size", "micro_batch_size", "learning_rate", "save_steps",
        "logging_steps", "max_completion_length", "distillation_topk")]
    assert main(["train", *flags]) == 0  # the rerun, as `sdft train --method onpolicy`
    assert len(calls) == 1, "resumed at step 2 of 3"
    state = json.loads((tmp_path / "out/checkpoints/checkpoint-3/trainer_state.json").read_text())
    assert state["global_step"] == 3 and (tmp_path / "out/adapter_config.json").is_file()
    run = json.loads((tmp_path / "out/run.json").read_text())
    assert run["config"]["method"] == "onpolicy" and run["config"]["teacher"] == "base" and "trl" in run["versions"]


def test_num_generations_must_divide_the_batch(tmp_path):
    from sdft.core.errors import UserError

    with pytest.raises(UserError, match="num_generations"):
        TrainConfig(data="x", out=str(tmp_path), method="onpolicy", batch_size=8, num_generations=3)


def test_an_onpolicy_arm_trains_on_vanillas_rows_with_its_options(tmp_path, tiny_model_dir):
    from sdft.core.config import build_config
    from sdft.experiment import ExperimentConfig
    from sdft.pipeline import plan

    exp = build_config(ExperimentConfig, values={
        "name": "t", "out": str(tmp_path), "model": tiny_model_dir, "datasets": ["gsm8k"],
        "methods": ["vanilla", "sdft", "onpolicy"], "distill": {"template": "gsm8k_distill"},
        "onpolicy": {"teacher": "ema", "num_generations": 2}, "train": {"batch_size": 4}})
    the_plan = plan(exp)
    trains = {s.key: s for s in the_plan.stages if s.kind == "train"}
    distill = next(s for s in the_plan.stages if s.kind == "distill")
    onpolicy, vanilla = trains["gsm8k-onpolicy"], trains["gsm8k-vanilla"]
    assert onpolicy.inputs == vanilla.inputs == {"distilled": distill}
    assert onpolicy.config["mix_ratio"] == vanilla.config["mix_ratio"] == 0.0, "the originals are the demonstrations"
    assert onpolicy.config["method"] == "onpolicy" and "method" not in vanilla.config, "vanilla's hash is unchanged"
    assert onpolicy.config["teacher"] == "ema" and onpolicy.config["num_generations"] == 2
    assert onpolicy.config["teacher_template"] == "gsm8k_distill", "the teacher sees what the distillation's seed saw"
    model = next(m for m in the_plan.models if m.method == "onpolicy")
    assert model.mix_ratio is None and model.train is onpolicy and model.arm == "gsm8k-onpolicy"
    # without a distilled arm it trains on the dataset's own seeded subset, as vanilla does
    exp.methods = ["vanilla", "onpolicy"]
    trains = {s.key: s for s in plan(exp).stages if s.kind == "train"}
    assert trains["gsm8k-onpolicy"].inputs == {} and trains["gsm8k-onpolicy"].config["data"] == "gsm8k"


def test_the_cpu_onpolicy_preset_dry_runs(tmp_path, capsys):
    from sdft.cli import main

    assert main(["run", "cpu-onpolicy", "--dry-run", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    plan_lines = capsys.readouterr().out.splitlines()
    assert {line.split()[1] for line in plan_lines if line.startswith("train")} == \
        {f"openfunctions-{method}-all-linear-r64" for method in ("vanilla", "sdft", "onpolicy")}


def test_the_report_compares_onpolicy_with_vanilla_and_sdft(tmp_path):
    """An onpolicy arm flows through summary.json into every table: scores, paired differences against vanilla and
    SDFT, learning vs forgetting, wall time (its generation included in the training time)."""
    from sdft.analysis.report import render_report
    from sdft.analysis.summary import summarize_runs
    from sdft.core.jsonl import write_json, write_jsonl

    benchmarks = ["gsm8k", "hellaswag", "arc_challenge", "winogrande"]
    correct = {"seed": 10, "vanilla": 16, "sdft": 14, "onpolicy": 15}  # of 20 items, per benchmark alike
    runs = []
    for method, right in correct.items():
        key = "seed" if method == "seed" else f"gsm8k-{method}"
        run = {"key": key, "arm": key, "method": method, "dataset": None if method == "seed" else "gsm8k",
               "mix_ratio": {"vanilla": 0.0, "sdft": 1.0}.get(method), "train_size": None, "capacity": "paper",
               "seed": None if method == "seed" else 42, "eval_dir": f"evals/{key}"}
        for bench in benchmarks:
            write_jsonl(tmp_path / run["eval_dir"] / f"{bench}.jsonl",
                        [{"id": f"q{i}", "score": float(i < right)} for i in range(20)])
        if method != "seed":
            run["train_dir"] = f"train/{key}"
            write_json(tmp_path / run["train_dir"] / "done.json", {"seconds": 60.0 * right})
        runs.append(run)
    write_json(tmp_path / "summary.json", {"experiment": "t", "seed_model": "m", "seeds": [42], "target": "gsm8k",
                                           **summarize_runs(tmp_path, runs, benchmarks)})
    md = render_report(tmp_path)[0].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| gsm8k | ")]
    assert [r.split(" | ")[1] for r in rows[:3]] == ["vanilla", "sdft", "onpolicy"]
    assert "| 75.0 (+25.0) [" in rows[2]
    assert "gsm8k-onpolicy − gsm8k-vanilla | gsm8k | −5.0 |" in md and "gsm8k-onpolicy − gsm8k-sdft | gsm8k | +5.0 |" in md
    assert "| gsm8k-onpolicy | — | 15.0 |" in md, "wall time: no distillation, 15 minutes of training"
    assert (tmp_path / "figures/learning_vs_forgetting.png").is_file()
