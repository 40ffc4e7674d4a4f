"""Exported training sets (`sdft export`, `sdft distill --format`): what TRL and LLaMA-Factory read, unchanged.

Distilled rows are made by hand from `load_dataset`'s examples, as `sdft distill` makes them, so no model runs here
except the one TRL trains for a step."""

from __future__ import annotations

import json

import pytest

from sdft.cli import main
from sdft.core.errors import UserError
from sdft.data.datasets import load_dataset
from sdft.options import ExportConfig
from sdft.stages.export import export

CHAT_ROW = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "U1"},
                         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                         {"role": "assistant", "content": "A2"}], "source": "forum", "score": 3}
ALPACA_ROW = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "category": "math"}


def write_distilled(folder, input_rows):
    """distilled.jsonl as `sdft distill` writes it for `input_rows`: the first rewrite kept, the others refused."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "input.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in input_rows))
    rows = []
    for i, example in enumerate(load_dataset(str(source)).examples):
        accepted = i == 0
        rows.append({**example, "original": example["response"], "distilled": f"rewrite {i}", "accepted": accepted,
                     "reason": "ok" if accepted else "wrong_answer",
                     "target": f"rewrite {i}" if accepted else example["response"], "train_template": "alpaca"})
    path = folder / "distilled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def distilled(tmp_path):
    return write_distilled(tmp_path / "run", [CHAT_ROW, ALPACA_ROW, {**ALPACA_ROW, "input": "", "output": "9"}])


@pytest.mark.parametrize("format", ["messages", "prompt-completion"])
def test_trl_trains_a_step_on_the_file_as_written(distilled, format, tiny_model_dir, tmp_path):
    import datasets
    from trl import SFTConfig, SFTTrainer

    written = export(ExportConfig(distilled=str(distilled), format=format))
    dataset = datasets.load_dataset("json", data_files=written["path"], split="train")
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                     report_to=[], save_strategy="no", logging_steps=1, max_length=128)
    trainer = SFTTrainer(model=tiny_model_dir, args=args, train_dataset=dataset)
    assert trainer.train().global_step == 1


def test_prompt_completion_columns_load_as_trl_conversational(distilled):
    import datasets

    written = export(ExportConfig(distilled=str(distilled), format="prompt-completion"))
    assert written == {"format": "prompt-completion", "path": str(distilled.with_name("train.prompt-completion.jsonl")),
                       "rows": 3}  # no dataset_info.json: LLaMA-Factory has no such layout
    dataset = datasets.load_dataset("json", data_files=written["path"], split="train")
    assert {"id", "prompt", "completion", "sdft_accepted", "sdft_reason", "sdft_original", "source", "score",
            "category"} == set(dataset.column_names)
    alpaca = dataset[1]
    # the task prompt (instruction + input), in no template
    assert alpaca["prompt"] == [{"role": "user", "content": "Add the numbers.\n2 and 3"}]
    assert alpaca["completion"] == [{"role": "assistant", "content": "5"}]  # refused rewrite: the original stays
    assert (alpaca["sdft_accepted"], alpaca["sdft_reason"], alpaca["category"]) == (False, "wrong_answer", "math")


def test_a_conversation_keeps_its_system_and_earlier_turns_and_ends_in_the_target(distilled):
    export(ExportConfig(distilled=str(distilled), format="messages"))
    chat = read_rows(distilled.with_name("train.messages.jsonl"))[0]
    assert chat["messages"] == [*CHAT_ROW["messages"][:-1], {"role": "assistant", "content": "rewrite 0"}]
    assert (chat["source"], chat["score"], chat["sdft_original"], chat["sdft_accepted"]) == ("forum", 3, "A2", True)
    entry = json.loads(distilled.with_name("dataset_info.json").read_text())["train.messages"]
    assert entry["columns"] == {"messages": "messages"} and entry["tags"]["system_tag"] == "system"  # OpenAI layout


def test_alpaca_and_sharegpt_rows_have_what_dataset_info_declares(distilled):
    for format in ("alpaca", "sharegpt"):
        export(ExportConfig(distilled=str(distilled), format=format))
    info = json.loads(distilled.with_name("dataset_info.json").read_text())
    assert set(info) == {"train.alpaca", "train.sharegpt"}  # each export adds its entry, the others stay

    alpaca_entry = info["train.alpaca"]
    assert alpaca_entry["formatting"] == "alpaca"
    alpaca = read_rows(distilled.with_name(alpaca_entry["file_name"]))
    assert all(set(alpaca_entry["columns"].values()) <= row.keys() for row in alpaca)
    assert {k: alpaca[0][k] for k in ("instruction", "output", "system", "history", "source")} == {
        "instruction": "U2", "output": "rewrite 0", "system": "Be brief.", "history": [["U1", "A1"]], "source": "forum"}
    assert [alpaca[1][k] for k in ("instruction", "input", "category")] == ["Add the numbers.\n2 and 3", "", "math"]

    sharegpt_entry = info["train.sharegpt"]
    columns, tags = sharegpt_entry["columns"], sharegpt_entry["tags"]
    sharegpt = read_rows(distilled.with_name(sharegpt_entry["file_name"]))
    conversation = sharegpt[0][columns["messages"]]
    assert [turn[tags["role_tag"]] for turn in conversation] == [tags["user_tag"], tags["assistant_tag"]] * 2
    assert [turn[tags["content_tag"]] for turn in conversation] == ["U1", "A1", "U2", "rewrite 0"]
    assert sharegpt[0][columns["system"]] == "Be brief." and sharegpt[0]["score"] == 3


def test_turns_alpaca_and_sharegpt_cannot_hold_are_an_error_naming_the_row(tmp_path):
    odd = {"messages": [{"role": "user", "content": "U1"}, {"role": "user", "content": "U2"},
                        {"role": "assistant", "content": "A"}]}
    path = write_distilled(tmp_path, [odd])
    with pytest.raises(UserError, match="distilled.jsonl: row 'input-00000': earlier turns are not user/assistant"):
        export(ExportConfig(distilled=str(path), format="sharegpt"))
    assert export(ExportConfig(distilled=str(path), format="messages"))["rows"] == 1


def test_bad_input_is_one_user_error_naming_it(tmp_path, distilled):
    with pytest.raises(UserError, match="format: unknown value 'csv'"):
        ExportConfig(distilled=str(distilled), format="csv")
    with pytest.raises(UserError, match="--format"):
        ExportConfig(distilled=str(distilled))
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(UserError, match=f"{empty}: no distilled.jsonl"):
        export(ExportConfig(distilled=str(empty), format="messages"))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    with pytest.raises(UserError, match=f"{other}:1: not a row of `sdft distill` \\(no id, original, target"):
        export(ExportConfig(distilled=str(other), format="messages"))


def test_a_run_directory_with_one_distillation_exports_it(tmp_path, distilled, capsys):
    run = distilled.parent.parent
    assert main(["export", str(run), "--format", "sharegpt", "--out", str(tmp_path / "lf" / "sdft.json")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 3
    assert json.loads((tmp_path / "lf" / "dataset_info.json").read_text())["sdft"]["file_name"] == "sdft.json"
    write_distilled(run / "second", [ALPACA_ROW])
    assert main(["export", str(run), "--format", "messages"]) == 2
    assert "2 distillations here, name one: run/distilled.jsonl, second/distilled.jsonl" in capsys.readouterr().err


def test_push_to_hub_uploads_the_exported_rows_or_fails_in_one_line(distilled, monkeypatch):
    import datasets

    pushed = {}
    def record(self, repo):
        pushed.update(repo=repo, rows=self.to_list())

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", record)
    written = export(ExportConfig(distilled=str(distilled), format="messages", push_to_hub="me/sdft-set"))
    assert written["pushed_to"] == pushed["repo"] == "me/sdft-set"
    assert pushed["rows"][0]["messages"][-1] == {"role": "assistant", "content": "rewrite 0"}

    def offline(self, repo):
        raise ConnectionError("no route to huggingface.co\nretry later")

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", offline)
    with pytest.raises(UserError) as e:
        export(ExportConfig(distilled=str(distilled), format="messages", push_to_hub="me/sdft-set"))
    assert str(e.value) == "could not push to hub dataset 'me/sdft-set' (ConnectionError: no route to huggingface.co)"
    with pytest.raises(UserError, match="push_to_hub: needs --format"):
        ExportConfig(distilled=str(distilled), push_to_hub="me/sdft-set")
