"""Training: target mixing, response-only loss, and LoRA / full fine-tuning on a tiny random model with resume."""

from __future__ import annotations

import json

import pytest

from sdft.core.errors import UserError
from sdft.data.templates import render
from sdft.engines.training import IGNORE_INDEX, last_complete_checkpoint, tokenize_example
from sdft.options import TrainConfig
from sdft.stages.train import load_training_rows, mixed_targets, onpolicy_rows, train


def _rows(n):
    return [{"id": f"r{i}", "instruction": f"q{i}", "original": f"orig{i}", "target": f"dist{i}", "distilled": f"dist{i}",
             "accepted": True} for i in range(n)]


def test_mix_ratio_picks_a_seeded_fraction_nested_across_ratios():
    rows = _rows(40)
    def distilled_ids(ratio, seed=1):
        return {r["id"] for r, t in mixed_targets(rows, ratio, seed) if t == r["target"]}
    assert distilled_ids(0.0) == set()
    assert distilled_ids(1.0) == {r["id"] for r in rows}
    quarter, half = distilled_ids(0.25), distilled_ids(0.5)
    assert len(quarter) == 10 and len(half) == 20 and quarter < half
    assert distilled_ids(0.5, seed=2) != half
    with pytest.raises(UserError):
        mixed_targets(rows, 1.5, 0)


def test_loss_is_on_the_response_and_its_end_of_turn_token(embedded_tokenizer):
    example = tokenize_example(embedded_tokenizer, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "Hello there", 1024)
    prompt_len = len(embedded_tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"])
    assert example.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    trained = [t for t in example.labels if t != IGNORE_INDEX]
    assert trained[-1] == embedded_tokenizer.eos_token_id
    assert embedded_tokenizer.decode(trained[:-1]) == "Hello there"
    cut = tokenize_example(embedded_tokenizer, "a " * 50, "b " * 50, 60)
    assert len(cut.input_ids) == len(cut.labels) == 60


def _chat_prompt(tokenizer, words: int) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": "word " * words}], tokenize=False,
                                         add_generation_prompt=True)


def test_a_prompt_longer_than_max_length_still_trains_its_target_by_default(embedded_tokenizer):
    """The default cuts the prompt's start, keeping its leading special token (the chat template's first) and its end,
    the assistant turn's opening; cut at the end (`total`) the same row keeps no target token."""
    prompt, target, cutoff = _chat_prompt(embedded_tokenizer, 100), "the answer is 42", 40
    prompt_ids = embedded_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = embedded_tokenizer(target, add_special_tokens=False)["input_ids"] + [embedded_tokenizer.eos_token_id]
    assert len(prompt_ids) > cutoff
    example = tokenize_example(embedded_tokenizer, prompt, target, cutoff)
    kept_prompt = cutoff - len(target_ids)
    assert example.input_ids == prompt_ids[:1] + prompt_ids[len(prompt_ids) - kept_prompt + 1:] + target_ids
    assert example.labels == [IGNORE_INDEX] * kept_prompt + target_ids
    assert (example.prompt_cut, example.target_cut, example.has_target) == (True, False, True)
    total = tokenize_example(embedded_tokenizer, prompt, target, cutoff, truncation="total")
    assert total.input_ids == prompt_ids[:cutoff] and total.labels == [IGNORE_INDEX] * cutoff and not total.has_target


def test_a_target_longer_than_max_length_keeps_its_start_beside_the_smallest_prompt(embedded_tokenizer):
    prompt = _chat_prompt(embedded_tokenizer, 10)
    prompt_ids = embedded_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = embedded_tokenizer("b " * 100, add_special_tokens=False)["input_ids"]
    example = tokenize_example(embedded_tokenizer, prompt, "b " * 100, 30)
    assert example.input_ids == [prompt_ids[0], prompt_ids[-1]] + target_ids[:28]
    assert (example.prompt_cut, example.target_cut) == (True, True)


def test_total_truncation_cuts_prompt_and_target_at_the_end_as_before(embedded_tokenizer):
    for prompt, target, cutoff in [("a " * 50, "b " * 50, 60), ("a " * 10, "b " * 10, 60), ("a " * 80, "b", 60)]:
        prompt_ids = embedded_tokenizer(prompt)["input_ids"]
        target_ids = embedded_tokenizer(target, add_special_tokens=False)["input_ids"] + [embedded_tokenizer.eos_token_id]
        example = tokenize_example(embedded_tokenizer, prompt, target, cutoff, truncation="total")
        assert example.input_ids == (prompt_ids + target_ids)[:cutoff]
        assert example.labels == ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:cutoff]


def infer_max_len(source_len, target_len, cutoff_len, reserved_label_len=1):
    """LLaMA-Factory's, verbatim in effect, from sail-sg/sdft `reproduce` src/llmtuner/data/preprocess.py."""
    max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    max_target_len = max(max_target_len, reserved_label_len)
    return cutoff_len - max_target_len, max_target_len


@pytest.mark.parametrize("prompt_words,target_words", [(10, 10), (200, 30), (30, 200), (400, 1)])
def test_split_truncation_budgets_prompt_and_target_as_the_reference(embedded_tokenizer, prompt_words, target_words):
    prompt, target, cutoff = "a " * prompt_words, "b " * target_words, 64
    prompt_ids = embedded_tokenizer(prompt)["input_ids"]
    target_ids = embedded_tokenizer(target, add_special_tokens=False)["input_ids"] + [embedded_tokenizer.eos_token_id]
    prompt_cap, target_cap = infer_max_len(len(prompt_ids), len(target_ids), cutoff)
    expected = prompt_ids[:prompt_cap] + target_ids[:target_cap]
    split = tokenize_example(embedded_tokenizer, prompt, target, cutoff, truncation="split")
    assert split.input_ids == expected
    assert split.labels == [IGNORE_INDEX] * len(prompt_ids[:prompt_cap]) + target_ids[:target_cap]
    assert len(split.input_ids) <= cutoff
    if len(prompt_ids) + len(target_ids) <= cutoff:  # what fits is the same under either rule
        assert split == tokenize_example(embedded_tokenizer, prompt, target, cutoff)
    else:
        assert any(t != IGNORE_INDEX for t in split.labels)  # the target keeps a token, unlike a cut at the end


def _distilled_file(tmp_path, n=6):
    path = tmp_path / "distilled.jsonl"
    rows = [{**r, "response": r["original"], "train_template": "alpaca"} for r in _rows(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lora_training_saves_an_adapter_and_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import Trainer

    data = _distilled_file(tmp_path)
    config = TrainConfig(data=str(data), out=str(tmp_path / "out"), model=tiny_model_dir, max_steps=4, batch_size=2,
                         micro_batch_size=2, save_steps=2, mix_ratio=0.5, learning_rate=1e-2)
    original_step = Trainer.training_step
    calls = {"n": 0}

    def killed_after_two_steps(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # a kill after the step-2 checkpoint
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", killed_after_two_steps)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert (tmp_path / "out/checkpoints/checkpoint-2").is_dir()
    monkeypatch.setattr(Trainer, "training_step", original_step)
    calls["n"] = 0

    steps_run = []
    def counting(self, *args, **kwargs):
        steps_run.append(1)
        return original_step(self, *args, **kwargs)
    monkeypatch.setattr(Trainer, "training_step", counting)
    metrics = train(config)
    assert len(steps_run) == 2, "resumed at step 2 of 4"
    adapter = json.loads((tmp_path / "out/adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert metrics["examples"] == 6 and metrics["distilled_targets"] == 3


def test_full_finetune_and_vanilla_from_a_plain_dataset(tmp_path, tiny_model_dir):
    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(4)))
    train(TrainConfig(data=str(data), out=str(tmp_path / "full"), model=tiny_model_dir, max_steps=1, finetune="full",
                      batch_size=2, micro_batch_size=2))
    assert (tmp_path / "full/config.json").is_file() and not (tmp_path / "full/adapter_config.json").exists()
    with pytest.raises(UserError, match="distilled data"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "x"), model=tiny_model_dir, mix_ratio=1.0))


def test_a_conversation_trains_in_its_chat_template_not_the_alpaca_scaffold(tmp_path, tiny_model_dir, monkeypatch,
                                                                           embedded_tokenizer):
    """The prompt is the conversation up to its last user turn (system turn and earlier turns included) through the
    model's chat template; the Alpaca scaffold only when asked for by name. On-policy's teacher is shown the target in
    the distillation template after the same conversation."""
    from sdft.stages import train as stage
    from sdft.stages.distill import distill_template

    chat = [{"role": "system", "content": "You are a terse pirate."}, {"role": "user", "content": "Name a sea."},
            {"role": "assistant", "content": "The Caribbean."}, {"role": "user", "content": "And an ocean?"},
            {"role": "assistant", "content": "The Atlantic, arr."}]
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": chat}) + "\n")
    prompts = []
    monkeypatch.setattr(stage, "tokenize_example", lambda tokenizer, prompt, *a: prompts.append(prompt) or
                        tokenize_example(tokenizer, prompt, *a))
    metrics = train(TrainConfig(data=str(data), out=str(tmp_path / "out"), model=tiny_model_dir, max_steps=1,
                                batch_size=1, micro_batch_size=1))

    expected = embedded_tokenizer.apply_chat_template(chat[:4], tokenize=False, add_generation_prompt=True)
    assert metrics["template"] == "chat" and prompts == [expected]
    assert "You are a terse pirate." in expected and "Name a sea." in expected and "### Instruction" not in expected
    config = TrainConfig(data=str(data), out=str(tmp_path / "x"), model=tiny_model_dir, template="alpaca")
    (pair,), template, _ = load_training_rows(config)
    assert "### Instruction:\nAnd an ocean?" in render(template, pair[0], embedded_tokenizer)
    (row,) = onpolicy_rows([(pair[0], "The Pacific.")], "chat", distill_template(None, None), embedded_tokenizer, "chat")
    assert row.prompt == expected
    assert row.teacher_prompt.startswith(expected.split("<|im_start|>user\nAnd an ocean?")[0])
    assert "### Instruction:\nAnd an ocean?\n\n### Reference Answer:\nThe Pacific." in row.teacher_prompt


def test_rows_cut_or_left_without_a_target_are_counted_and_named(tmp_path, tiny_model_dir, capfd):
    """A row whose prompt fills max_length trains nothing under `total`: it is dropped, counted in train_metrics.json
    and named on stderr; the default trains its target and counts its prompt as cut."""
    data = tmp_path / "plain.jsonl"
    rows = [{"instruction": "word " * (200 if i < 2 else 1), "output": f"a{i}"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def row_counts(name, **options):
        options = {"max_length": 64, **options}
        train(TrainConfig(data=str(data), out=str(tmp_path / name), model=tiny_model_dir, max_steps=1, batch_size=2,
                          micro_batch_size=2, **options))
        return json.loads((tmp_path / name / "train_metrics.json").read_text())["rows"], capfd.readouterr().err

    counts, err = row_counts("total", truncation="total")
    assert counts == {"total": 4, "trained": 2, "prompt_cut": 0, "target_cut": 0, "dropped_no_target": 2}
    assert "fitting 4 rows to max_length 64 (truncation total): 0 prompt_cut, 0 target_cut, 2 dropped_no_target" in err
    counts, err = row_counts("default")
    assert counts == {"total": 4, "trained": 4, "prompt_cut": 2, "target_cut": 0, "dropped_no_target": 0}
    assert "(truncation prompt_start): 2 prompt_cut, 0 target_cut, 0 dropped_no_target" in err
    counts, err = row_counts("long", max_length=1024)
    assert counts["trained"] == 4 and "sdft train:" not in err, "nothing cut, nothing said"
    with pytest.raises(UserError, match="no row keeps a target token"):
        row_counts("none", truncation="total", max_length=4)


def test_response_only_logits_give_the_same_loss(tiny_model_dir, embedded_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from sdft.engines.training import ResponseCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    examples = [tokenize_example(embedded_tokenizer, "a long prompt " * (3 + i), "the answer " * (2 + i), 1024) for i in range(3)]
    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    batch = ResponseCollator(embedded_tokenizer.pad_token_id)(features)
    assert len(batch["logits_to_keep"]) < batch["input_ids"].shape[1]
    full = {k: v for k, v in batch.items() if k != "logits_to_keep"}
    full["labels"] = torch.nn.utils.rnn.pad_sequence([torch.tensor(f["labels"]) for f in features], batch_first=True,
                                                     padding_value=IGNORE_INDEX)
    with torch.no_grad():
        assert torch.allclose(model(**batch).loss, model(**full).loss, atol=1e-6)


def test_resume_skips_a_checkpoint_killed_while_being_written(tmp_path):
    """A kill during a save leaves checkpoint-N without trainer_state.json (written last); resuming from it fails."""
    assert last_complete_checkpoint(tmp_path / "none") is None
    for step, state in [(2, "{}"), (10, "{}"), (12, None), (13, '{"global_st')]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}/trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # by step number, not by name

