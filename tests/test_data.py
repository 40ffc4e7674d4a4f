"""Dataset loading: file formats, record formats, line-numbered errors, the registry, hub splits and subsampling."""

import csv
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sdft.core import paths
from sdft.core.errors import UserError
from sdft.data.datasets import DATASETS, SUBSAMPLE_TO, load_dataset, normalise, normalise_prompt_rows, subsample

ALPACA_ROWS = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def expected_alpaca(stem):
    return [
        {"id": f"{stem}-00000", "instruction": "Add the numbers.\n2 and 3", "response": "5"},
        {"id": f"{stem}-00001", "instruction": "Say hi.", "response": "Hi!"},
    ]


# --- file formats ---------------------------------------------------------------------------------------------------


def test_jsonl(tmp_path):
    data = load_dataset(str(write_jsonl(tmp_path / "train.jsonl", ALPACA_ROWS)))
    assert data.examples == expected_alpaca("train")
    assert data.name == "train" and data.spec is None and data.source.endswith("train.jsonl")


def test_jsonl_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text("\n" + json.dumps(ALPACA_ROWS[0]) + "\n\n" + json.dumps(ALPACA_ROWS[1]) + "\n")
    assert load_dataset(str(path)).examples == expected_alpaca("gaps")


def test_json_array(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ALPACA_ROWS, indent=2))
    assert load_dataset(str(path)).examples == expected_alpaca("train")


def test_json_data_wrapper(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": ALPACA_ROWS}))
    assert load_dataset(str(path)).examples == expected_alpaca("wrapped")


def test_json_not_an_array(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"instruction": "x"}))
    with pytest.raises(UserError, match="obj.json"):
        load_dataset(str(path))


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {oops}\n]\n')
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    assert f"{path}:3:" in str(e.value)


def test_csv(tmp_path):
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ALPACA_ROWS)
    assert load_dataset(str(path)).examples == expected_alpaca("train")


def test_csv_missing_column_names_line(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("question,output\nwhat?,this\n")
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    assert f"{path}:2:" in str(e.value) and "instruction" in str(e.value)


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ALPACA_ROWS), path)
    assert load_dataset(str(path)).examples == expected_alpaca("train")


def test_parquet_non_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "nums.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": None}]), path)
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    assert f"{path}:2:" in str(e.value) and "not text" in str(e.value)


def test_unreadable_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="junk.parquet"):
        load_dataset(str(path))


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("hello\n")
    with pytest.raises(UserError, match="unsupported file type"):
        load_dataset(str(path))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    assert str(e.value) == f"{path}: file not found"


# --- record formats -------------------------------------------------------------------------------------------------


def test_prompt_completion(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "P1", "completion": "C1", "id": "x1"}])
    assert load_dataset(str(path)).examples == [{"id": "x1", "instruction": "P1", "response": "C1"}]


def test_chat_messages_multi_turn(tmp_path):
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
        {"role": "assistant", "content": "A2"},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    (example,) = load_dataset(str(path)).examples
    assert example["instruction"] == "U2"
    assert example["response"] == "A2"  # the LAST assistant turn is the target
    assert example["history"] == [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}]
    assert example["system"] == "Be kind."


def test_a_conversation_dataset_trains_in_the_chat_template_unless_registered(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "U"},
                                                               {"role": "assistant", "content": "A"}]}])
    assert load_dataset(str(chat)).train_template == "chat"
    assert load_dataset(str(write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS))).train_template == "alpaca"


def test_chat_single_turn_has_no_history(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}])
    (example,) = load_dataset(str(path)).examples
    assert example == {"id": "chat-00000", "instruction": "U", "response": "A"}


def test_sharegpt_from_value(tmp_path):
    conv = [
        {"from": "human", "value": "U1"},
        {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "U2"},
        {"from": "gpt", "value": "A2"},
    ]
    path = write_jsonl(tmp_path / "sg.jsonl", [{"conversations": conv}])
    (example,) = load_dataset(str(path)).examples
    assert (example["instruction"], example["response"]) == ("U2", "A2")
    assert example["history"] == [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}]


def test_chat_without_assistant_turn_is_error(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "U"}]}])
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    assert f"{path}:1:" in str(e.value)


def test_chat_messages_not_a_list(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": "hello"}])
    with pytest.raises(UserError, match="messages"):
        load_dataset(str(path))


def test_column_mapping(tmp_path):
    rows = [{"qid": 7, "question": "Q1", "context": "ctx", "answer": "A1"}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    data = load_dataset(str(path), columns={"id": "qid", "instruction": "question", "input": "context", "response": "answer"})
    assert data.examples == [{"id": "7", "instruction": "Q1\nctx", "response": "A1"}]


def test_tests_and_entry_point_are_kept():
    row = {"instruction": "write f", "output": "def f(): pass", "tests": "assert f() is None", "entry_point": "f"}
    example = normalise(row, {}, "src", 1, "d-0")
    assert example["tests"] == "assert f() is None" and example["entry_point"] == "f"


# --- errors ---------------------------------------------------------------------------------------------------------


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ALPACA_ROWS[0]) + "\n" + json.dumps(ALPACA_ROWS[1]) + "\n{not json\n")
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    assert str(e.value).startswith(f"{path}:3:")


def test_jsonl_line_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(ALPACA_ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    assert str(e.value).startswith(f"{path}:2:")


def test_missing_column_names_file_and_line(tmp_path):
    path = tmp_path / "nocol.jsonl"
    path.write_text("\n" + json.dumps(ALPACA_ROWS[0]) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    message = str(e.value)
    assert message.startswith(f"{path}:3:")  # the physical line, blank lines counted
    assert "missing column 'output'" in message


def test_non_text_column(tmp_path):
    path = write_jsonl(tmp_path / "num.jsonl", [{"instruction": "x", "output": 5}])
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    assert str(e.value).startswith(f"{path}:1:") and "'output' is not text" in str(e.value)


def test_unknown_dataset_name():
    with pytest.raises(UserError, match="unknown dataset 'no_such_dataset'"):
        load_dataset("no_such_dataset")


# --- registry -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_data_dir():
    base = paths.data_dir()
    if base is None or not (base / DATASETS["gsm8k"].local_file).is_file():
        pytest.skip("no local data dir with gsm8k")
    return base


def test_registry_gsm8k_local(shared_data_dir):
    data = load_dataset("gsm8k")
    assert data.spec is DATASETS["gsm8k"] and data.name == "gsm8k"
    assert Path(data.source) == shared_data_dir / DATASETS["gsm8k"].local_file
    assert len(data.examples) > 1000
    first = data.examples[0]
    assert first["id"] == "gsm8k-00000" and first["instruction"] and "The answer is" in first["response"]
    assert [e["id"] for e in load_dataset("gsm8k").examples] == [e["id"] for e in data.examples]


def test_registry_limit_is_seeded_subsample(shared_data_dir):
    a = [e["id"] for e in load_dataset("gsm8k", limit=50, seed=1).examples]
    b = [e["id"] for e in load_dataset("gsm8k", limit=50, seed=1).examples]
    c = [e["id"] for e in load_dataset("gsm8k", limit=50, seed=2).examples]
    assert len(a) == 50 and a == b and a != c
    assert a == sorted(a)  # file order kept ("gsm8k-00042" ids sort like positions)


def test_sdft_data_dir_env(tmp_path, monkeypatch):
    local = tmp_path / "gsm8k" / "sdft_gsm8k_train.jsonl"
    local.parent.mkdir()
    write_jsonl(local, [{"question": "1+1?", "answer": "The answer is 2."}])
    monkeypatch.setenv("SDFT_DATA_DIR", str(tmp_path))
    assert paths.data_dir() == tmp_path
    data = load_dataset("gsm8k")
    assert data.source == str(local)
    assert data.examples == [{"id": "gsm8k-00000", "instruction": "1+1?", "response": "The answer is 2."}]


def test_explicit_data_dir_beats_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SDFT_DATA_DIR", str(tmp_path / "elsewhere"))
    assert paths.data_dir(str(tmp_path)) == tmp_path


# --- hub datasets ---------------------------------------------------------------------------------------------------


@pytest.fixture
def hub_calls(monkeypatch):
    """`datasets.load_dataset` stood in for: each call's (id, config, split), answered with one GSM8K-style row."""
    calls = []

    def load(hub_id, config, split):
        calls.append((hub_id, config, split))
        return [{"question": "1+1?", "answer": "The answer is 2."}]

    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(load_dataset=load))
    return calls


def test_split_and_subset_reach_the_hub(hub_calls):
    load_dataset("someone/maths", split="test", subset="hard")
    load_dataset("someone/maths")
    assert hub_calls == [("someone/maths", "hard", "test"), ("someone/maths", None, "train")]


def test_a_registry_dataset_keeps_its_own_split_and_config(hub_calls, tmp_path):
    data = load_dataset("gsm8k", str(tmp_path))  # no local copy here: the hub
    assert hub_calls == [("openai/gsm8k", "main", "train")] and data.examples[0]["instruction"] == "1+1?"
    with pytest.raises(UserError, match="'gsm8k' is a registry dataset"):
        load_dataset("gsm8k", str(tmp_path), split="test")
    with pytest.raises(UserError, match="is a file"):
        load_dataset(str(write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)), subset="main")


# --- subsampling ----------------------------------------------------------------------------------------------------


def _examples(n):
    return [{"id": f"e{i:06d}"} for i in range(n)]


def test_subsample_paper_rule_over_10k_when_asked(capsys):
    examples = _examples(10_001)
    chosen = subsample(examples, 0, None, paper_subsample=True)
    assert len(chosen) == SUBSAMPLE_TO == 2000
    assert chosen == sorted(chosen, key=lambda e: e["id"])
    assert subsample(examples, 0, None, paper_subsample=True) == chosen
    assert subsample(examples, 1, None, paper_subsample=True) != chosen
    assert "using 2000 of 10001 rows, a random subset by seed 0 (paper_subsample: over 10000 rows -> 2000)" in \
        capsys.readouterr().err


def test_subsample_at_10k_keeps_all():
    examples = _examples(10_000)
    assert subsample(examples, 0, None, paper_subsample=True) == examples


def test_a_dataset_over_the_threshold_is_not_cut_unless_asked(tmp_path, capsys):
    path = write_jsonl(tmp_path / "big.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10_001)])
    assert len(load_dataset(str(path)).examples) == 10_001
    assert capsys.readouterr().err == "", "nothing dropped, nothing said"
    assert len(load_dataset(str(path), paper_subsample=True).examples) == 2000
    assert capsys.readouterr().err == (f"sdft: {path}: using 2000 of 10001 rows, a random subset by seed 0 "
                                       "(paper_subsample: over 10000 rows -> 2000)\n")


def test_subsample_limit(capsys):
    examples = _examples(100)
    assert subsample(examples, 0, 200) == examples
    assert capsys.readouterr().err == ""
    assert len(subsample(examples, 3, 10, source="small.jsonl")) == 10
    assert capsys.readouterr().err == "sdft: small.jsonl: using 10 of 100 rows, a random subset by seed 3 (limit 10)\n"
    assert len(subsample(_examples(20_000), 0, 5000)) == 5000
    assert len(subsample(_examples(20_000), 0, 5000, paper_subsample=True)) == 2000  # the tighter cap wins
    assert "(paper_subsample: over 10000 rows -> 2000)" in capsys.readouterr().err


# --- prompt rows ----------------------------------------------------------------------------------------------------


def test_normalise_prompt_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "I1", "input": "x"}, {"id": "k", "instruction": "I2"}])
    rows = normalise_prompt_rows(str(path))
    assert [(r["id"], r["instruction"]) for r in rows] == [("p-00000", "I1\nx"), ("k", "I2")]
    assert rows[0]["input"] == "x"  # other columns are kept


def test_normalise_prompt_rows_prompt_column_and_mapping(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "P1", "question": "Q1"}])
    assert normalise_prompt_rows(str(path))[0]["instruction"] == "P1"
    assert normalise_prompt_rows(str(path), {"instruction": "question"})[0]["instruction"] == "Q1"


def test_normalise_prompt_rows_missing_column(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "P1"}, {"question": "Q"}])
    with pytest.raises(UserError) as e:
        normalise_prompt_rows(str(path))
    assert str(e.value).startswith(f"{path}:2:")


# --- every registry dataset from ../shared/data ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registry_dataset_loads_from_shared_data(name, shared_data):
    spec = DATASETS[name]
    if not (shared_data / spec.local_file).is_file():
        pytest.skip(f"{spec.local_file} is not in the shared data (hub only: {spec.hub_id})")
    data = load_dataset(name, str(shared_data))
    assert data.source == str(shared_data / spec.local_file)
    assert data.examples and all(ex["instruction"].strip() and ex["response"].strip() for ex in data.examples)


def test_dolly_joins_context_to_instruction(shared_data):
    rows = [json.loads(line) for line in (shared_data / "dolly/sdft_dolly_train.jsonl").open()]
    index = next(i for i, row in enumerate(rows) if row["input"])
    example = load_dataset("dolly", str(shared_data)).examples[index]
    assert example["instruction"] == f"{rows[index]['instruction']}\n{rows[index]['input']}"
    assert example["response"] == rows[index]["output"]


def test_lima_keeps_earlier_turns(shared_data):
    rows = [json.loads(line) for line in (shared_data / "lima/sdft_lima_train.jsonl").open()]
    examples = load_dataset("lima", str(shared_data)).examples
    multi = [i for i, row in enumerate(rows) if row["history"]]
    assert len(multi) == 29
    first = rows[multi[0]]
    assert examples[multi[0]]["history"] == [{"role": role, "content": text} for pair in first["history"]
                                             for role, text in zip(("user", "assistant"), pair)]
    assert "history" not in examples[next(i for i, row in enumerate(rows) if not row["history"])]


def test_malformed_history_is_user_error(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [{"instruction": "q", "output": "a", "history": [["only one"]]}])
    with pytest.raises(UserError, match="history"):
        load_dataset(str(path))
