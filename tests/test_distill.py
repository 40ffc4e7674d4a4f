"""Distillation (Eq. 3-4): selection rules and outputs (its kill drill: test_kill_drills.py)."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

from sdft.options import DistillConfig
from sdft.stages.distill import distill, select

# A conversation with a system turn and two user turns: the last assistant turn is the target.
CONVERSATION = [{"role": "system", "content": "You are a terse pirate."}, {"role": "user", "content": "Name a sea."},
                {"role": "assistant", "content": "The Caribbean."}, {"role": "user", "content": "And an ocean?"},
                {"role": "assistant", "content": "The Atlantic, arr."}]


def test_selection_keeps_only_correct_complete_rewrites():
    example = {"instruction": "q", "response": "... The answer is 72."}
    assert select("So 48 + 24 = 72. The answer is 72.", "stop", example, "math") == (True, "ok")
    assert select("The answer is 70.", "stop", example, "math") == (False, "wrong_answer")
    assert select("The answer is 72.", "length", example, "math") == (False, "truncated")
    assert select("Using the reference answer, the answer is 72.", "stop", example, "math") == (False, "meta_phrase")
    call = {"instruction": "q", "response": "f(a=1, b='x')"}
    assert select('f(b="x", a=1)', "stop", call, "function_call")[0]
    assert select("Here it is: f(a=1, b='x')", "stop", call, "function_call")[0]  # default: a right call anywhere
    assert not select("Here it is: f(a=1, b='x')", "stop", call, "function_call", "ast_exact")[0]
    assert select("Any answer", "stop", {"instruction": "q", "response": "r"}, "generic") == (True, "ok")


def test_distill_writes_rows_and_stats(tmp_path, tiny_model_dir, gsm8k_file):
    stats = distill(DistillConfig(dataset=str(gsm8k_file), out=str(tmp_path / "d"), model=tiny_model_dir, task="math",
                                  template="gsm8k_distill", max_new_tokens=8))
    rows = [json.loads(line) for line in (tmp_path / "d/distilled.jsonl").open()]
    assert stats["total"] == len(rows) == 6 and sum(stats["reasons"].values()) == 6
    assert json.loads((tmp_path / "d/distill_stats.json").read_text())["accepted"] == stats["accepted"]
    for row in rows:
        assert {"id", "instruction", "original", "distilled", "accepted", "reason", "target"} <= row.keys()
        assert row["target"] == (row["distilled"] if row["accepted"] else row["original"])
    # a random tiny model cannot reproduce the answers: everything falls back to the original
    assert stats["accepted"] == 0 and all(r["target"] == r["original"] for r in rows)


def test_distill_format_writes_a_training_set_keeping_the_users_columns(tmp_path, tiny_model_dir, capsys):
    from sdft.cli import main

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}]
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": chat, "topic": "greeting"}) + "\n")
    out = tmp_path / "d"
    assert main(["distill", "--dataset", str(data), "--out", str(out), "--model", tiny_model_dir,
                 "--max-new-tokens", "4", "--format", "messages"]) == 0
    assert json.loads(capsys.readouterr().out)["export"]["path"] == str(out / "train.messages.jsonl")
    (distilled,) = [json.loads(line) for line in (out / "distilled.jsonl").open()]
    (row,) = [json.loads(line) for line in (out / "train.messages.jsonl").open()]
    assert distilled["extra_columns"] == {"topic": "greeting"} and row["topic"] == "greeting"
    assert row["messages"] == [*chat[:2], {"role": "assistant", "content": distilled["target"]}]
    assert "dataset_info.json" in {p.name for p in out.iterdir()}


def test_a_conversation_is_distilled_in_its_chat_template_from_the_hub_split_asked(tmp_path, monkeypatch,
                                                                                   embedded_tokenizer):
    """System turn and earlier turns stay conversation; the distillation template wraps only the last user turn and
    the reference answer; the rows train in the `chat` template, not the Alpaca scaffold."""
    from sdft.stages import distill as stage

    hub_calls, prompts = [], []
    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(
        load_dataset=lambda *args, **kwargs: hub_calls.append((args, kwargs)) or [{"messages": CONVERSATION}]))
    monkeypatch.setattr(stage, "make_engine", lambda *a, **k: SimpleNamespace(tokenizer=embedded_tokenizer))
    monkeypatch.setattr(stage, "generate_rows", lambda engine, items, *a, **k: prompts.extend(items) or [
        {"id": i, "prediction": "The Pacific.", "finish_reason": "stop"} for i, _ in items])
    distill(DistillConfig(dataset="someone/pirate-chat", split="validation", subset="en", out=str(tmp_path / "d")))

    assert hub_calls == [(("someone/pirate-chat", "en"), {"split": "validation"})]
    ((_, prompt),) = prompts
    assert prompt.startswith("<|im_start|>system\nYou are a terse pirate.<|im_end|>\n<|im_start|>user\nName a sea."
                             "<|im_end|>\n<|im_start|>assistant\nThe Caribbean.<|im_end|>\n<|im_start|>user\n")
    assert "Using the reference answer as a guide" in prompt  # the rewrite instruction survives the row's system
    assert "### Instruction:\nAnd an ocean?\n\n### Reference Answer:\nThe Atlantic, arr.\n\n### Response:\n" in prompt
    (row,) = [json.loads(line) for line in (tmp_path / "d/distilled.jsonl").open()]
    assert row["train_template"] == "chat" and row["system"] == "You are a terse pirate."
