"""The bad-input contract: every input the CLI reads, broken every way we could think of, gives exit 2, one stderr line
naming the file (and line or key), no traceback, and leaves no file behind; hypothesis then tries inputs nobody listed.

The CLI runs in-process (`sdft.cli.main`), from an empty working directory, so any stray output is seen.
"""

from __future__ import annotations

import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdft.cli import main
from sdft.core.config import load_yaml
from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl
from sdft.data.datasets import load_dataset

GOOD = [{"instruction": "What is 2 + 2?", "output": "4"}, {"instruction": "Say hi", "output": "hi"},
        {"instruction": "Name a colour", "output": "red"}]
HUGE_NESTING = "[" * 200_000


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def csv_text(header: str, *lines: str) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


GOOD_PARQUET = parquet(pa.Table.from_pylist(GOOD))
# Where a model is needed only to reach the code under test: a bad input that slipped through fails fast on it instead
# of loading a real model, and the message then names the wrong file.
NO_MODEL = "/nonexistent/sdft-test-model"

# (case id, file suffix, content, where the message must point: ":LINE:" or "" for the file alone)
DATASET_CASES = [
    ("jsonl-empty", ".jsonl", b"", ""),
    ("jsonl-blank-lines", ".jsonl", b"\n \n\n", ""),
    ("jsonl-truncated", ".jsonl", jsonl(GOOD)[:-12], ":3:"),
    ("jsonl-latin1", ".jsonl", jsonl(GOOD[:1]) + b'{"instruction": "caf\xe9", "output": "x"}\n', ":2:"),
    ("jsonl-utf16", ".jsonl", jsonl(GOOD).decode().encode("utf-16"), ":1:"),
    ("jsonl-number-field", ".jsonl", jsonl([GOOD[0], {"instruction": 5, "output": "4"}]), ":2:"),
    ("jsonl-null-field", ".jsonl", jsonl([GOOD[0], {"instruction": None, "output": "4"}]), ":2:"),
    ("jsonl-scalar-row", ".jsonl", jsonl([GOOD[0], [1, 2]]), ":2:"),
    ("jsonl-missing-field", ".jsonl", jsonl([*GOOD[:2], {"instruction": "x"}]), ":3:"),
    ("jsonl-huge-nesting", ".jsonl", jsonl([GOOD[0], HUGE_NESTING]), ":2:"),
    ("jsonl-chat-no-assistant", ".jsonl", jsonl([{"messages": [{"role": "user", "content": "hi"}]}]), ":1:"),
    ("jsonl-chat-content-not-text", ".jsonl",
     jsonl([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": {"x": 1}}]}]), ":1:"),
    ("json-empty", ".json", b"", ":1:"),
    ("json-truncated", ".json", json.dumps(GOOD, indent=1).encode()[:-20], ":"),
    ("json-latin1", ".json", b'[{"instruction": "caf\xe9", "output": "x"}]', ":1:"),
    ("json-object-not-array", ".json", b'{"instruction": "x", "output": "y"}', ""),
    ("json-bad-row", ".json", json.dumps([GOOD[0], 5]).encode(), ""),
    ("json-empty-array", ".json", b"[]", ""),
    ("json-missing-field", ".json", json.dumps([GOOD[0], {"instruction": "x"}]).encode(), ":2:"),
    ("json-huge-nesting", ".json", HUGE_NESTING.encode(), ""),
    ("csv-empty", ".csv", b"", ""),
    ("csv-header-only", ".csv", b"instruction,output\n", ""),
    ("csv-latin1", ".csv", csv_text("instruction,output", "a,b", "caf\xe9,x").decode().encode("latin-1"), ":3:"),
    ("csv-short-row", ".csv", csv_text("instruction,output", "a,b", "only one cell"), ":3:"),
    ("csv-extra-cells", ".csv", csv_text("instruction,output", "a,b,c,d"), ":2:"),
    ("csv-missing-column", ".csv", csv_text("instruction,answer_text", "a,b"), ":2:"),
    ("csv-huge-cell", ".csv", csv_text("instruction,output", "a," + "x" * 200_000), ":2:"),
    ("parquet-empty", ".parquet", b"", ""),
    ("parquet-truncated", ".parquet", GOOD_PARQUET[: len(GOOD_PARQUET) // 2], ""),
    ("parquet-is-jsonl", ".parquet", jsonl(GOOD), ""),
    ("parquet-number-column", ".parquet", parquet(pa.Table.from_pylist([{"instruction": 1, "output": "x"}])), ":1:"),
    ("parquet-missing-column", ".parquet", parquet(pa.Table.from_pylist([{"instruction": "x"}])), ":1:"),
    ("parquet-no-rows", ".parquet", parquet(pa.Table.from_pylist(GOOD).slice(0, 0)), ""),
]


def run_cli(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """(exit code, stderr lines, stdout) of one in-process CLI call."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own exit for bad flags
        code = e.code
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


def assert_user_error(argv: list[str], capsys, workdir, names: str, where: str = "") -> str:
    """Exit 2, a single stderr line naming `names` (followed by `where`), no traceback, `workdir` unchanged."""
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    code, err, _ = run_cli(argv, capsys)
    assert code == 2, err
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    assert names in err[0], err[0]
    if where:
        assert re.search(re.escape(names) + re.escape(where), err[0]), err[0]
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before, "output left behind"
    return err[0]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory: relative default outputs would land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case, suffix, content, where", DATASET_CASES, ids=[c[0] for c in DATASET_CASES])
def test_broken_dataset_file(case, suffix, content, where, workdir, capsys):
    path = workdir / f"data{suffix}"
    path.write_bytes(content)
    assert_user_error(["distill", "--model", NO_MODEL, "--dataset", str(path),
                       "--out", str(workdir / "out")], capsys, workdir, str(path), where)


@pytest.mark.parametrize("case, suffix, content, where", DATASET_CASES[:12], ids=[c[0] for c in DATASET_CASES[:12]])
def test_broken_training_file(case, suffix, content, where, workdir, capsys):
    path = workdir / f"data{suffix}"
    path.write_bytes(content)
    assert_user_error(["train", "--model", NO_MODEL, "--data", str(path), "--out",
                       str(workdir / "adapter")], capsys, workdir, str(path), where)


# ---- model paths ---------------------------------------------------------------------------------------------------


def _embedded_gguf_head(size: int) -> bytes:
    from sdft.engines.models import embedded_gguf_path

    try:
        path = embedded_gguf_path()
    except UserError:
        pytest.skip("embedded model not installed")
    with path.open("rb") as f:
        return f.read(size)


MODEL_CASES = {
    "gguf-empty": lambda d: _write(d / "m.gguf", b""),
    "gguf-random-bytes": lambda d: _write(d / "m.gguf", bytes(range(256)) * 64),
    "gguf-magic-then-garbage": lambda d: _write(d / "m.gguf", b"GGUF" + b"\xff" * 4096),
    "gguf-truncated-real-file": lambda d: _write(d / "m.gguf", _embedded_gguf_head(64 << 10)),
    "gguf-missing": lambda d: d / "missing.gguf",
    "folder-without-config": lambda d: _mkdir(d / "model"),
    "folder-config-malformed": lambda d: _write(_mkdir(d / "model") / "config.json", b'{"model_type": "llama",').parent,
    "folder-config-latin1": lambda d: _write(_mkdir(d / "model") / "config.json", b'{"model_type": "\xe9"}').parent,
    "folder-config-wrong-type": lambda d: _write(_mkdir(d / "model") / "config.json", b"[1, 2]").parent,
    "folder-config-no-model-type": lambda d: _write(_mkdir(d / "model") / "config.json", b"{}").parent,
}


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def _mkdir(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_broken_model_path(case, workdir, capsys, monkeypatch, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SDFT_CACHE_DIR", str(cache))
    model = MODEL_CASES[case](workdir)
    prompts = _write(workdir / "prompts.jsonl", jsonl([{"instruction": "hi"}]))
    assert_user_error(["generate", "--model", str(model), "--input", str(prompts), "--out", str(workdir / "gen.jsonl")],
                      capsys, workdir, str(model))
    assert not [p for p in cache.rglob("*") if p.is_file()], "a half-converted model was left in the cache"


@pytest.mark.parametrize("benchmarks", ["gsm8k", "mmlu"])
@pytest.mark.parametrize("flag", ["--model", "--adapter"])
def test_eval_with_a_model_that_does_not_load_leaves_no_results(benchmarks, flag, workdir, capsys, shared_data):
    """results.json claims an output directory for one model: it must not appear before that model has loaded."""
    model = ["--model", NO_MODEL] if flag == "--model" else ["--model", "smollm2-135m-instruct", "--adapter", NO_MODEL]
    if flag == "--adapter":
        _embedded_gguf_head(4)  # skips where the embedded model is not installed
    assert_user_error(["eval", *model, "--benchmarks", benchmarks, "--limit", "1", "--data-dir", str(shared_data),
                       "--out", str(workdir / "out")], capsys, workdir, NO_MODEL)


# ---- experiment YAML -----------------------------------------------------------------------------------------------

BASE_EXPERIMENT = {"name": "x", "datasets": ["gsm8k"], "methods": ["vanilla", "sdft"], "train_size": 8}

EXPERIMENT_CASES = [
    pytest.param("malformed", b"datasets: [gsm8k\nmethods: [sdft]\n", ":", id="malformed"),
    pytest.param("latin1", b"name: caf\xe9\n", ":1:", id="latin1"),
    pytest.param("top-level-list", b"- gsm8k\n- sdft\n", "", id="top-level-list"),
    pytest.param("misspelled-top-key", {**BASE_EXPERIMENT, "dataset": ["gsm8k"]}, "", id="misspelled-top-key"),
    pytest.param("wrong-type", {**BASE_EXPERIMENT, "train_size": "many"}, "", id="wrong-type"),
    pytest.param("unknown-method", {**BASE_EXPERIMENT, "methods": ["vanila"]}, "", id="unknown-method"),
    pytest.param("misspelled-nested-key", {**BASE_EXPERIMENT, "distill": {"max_new_token": 256}}, "",
                 id="misspelled-nested-key"),
    pytest.param("nested-wrong-type", {**BASE_EXPERIMENT, "train": {"epochs": "two"}}, "", id="nested-wrong-type"),
    pytest.param("out-of-range-size", {**BASE_EXPERIMENT, "train_size": -5}, "", id="out-of-range-size"),
    pytest.param("out-of-range-mix", {**BASE_EXPERIMENT, "mix_ratios": [1.5]}, "", id="out-of-range-mix"),
]


@pytest.mark.parametrize("case, content, where", EXPERIMENT_CASES)
def test_broken_experiment_yaml(case, content, where, workdir, capsys):
    path = workdir / "exp.yaml"
    if isinstance(content, dict):
        content = yaml.safe_dump({**content, "out": str(workdir / "run")}).encode()
    path.write_bytes(content)
    message = assert_user_error(["run", str(path), "--dry-run"], capsys, workdir, str(path), where)
    if case.startswith("misspelled"):
        assert ("max_new_token" if "nested" in case else "dataset") in message


# ---- predictions for `sdft score` ----------------------------------------------------------------------------------

PREDICTION_CASES = [
    ("empty", b"", ""),
    ("truncated", jsonl([{"id": "gsm8k-0", "prediction": "The answer is 1"}])[:-5], ":1:"),
    ("latin1", b'{"id": "gsm8k-0", "prediction": "caf\xe9"}\n', ":1:"),
    ("prediction-not-text", jsonl([{"id": "gsm8k-0", "prediction": 18}]), ":1:"),
    ("missing-id", jsonl([{"id": "gsm8k-0", "prediction": "1"}, {"prediction": "1"}]), ":2:"),
    ("unknown-id", jsonl([{"id": "no-such-item", "prediction": "1"}]), ":1:"),
    ("duplicate-id", jsonl([{"id": "gsm8k-0", "prediction": "1"}, {"id": "gsm8k-0", "prediction": "2"}]), ":2:"),
    ("huge-nesting", jsonl([HUGE_NESTING]), ":1:"),
]


@pytest.mark.parametrize("case, content, where", PREDICTION_CASES, ids=[c[0] for c in PREDICTION_CASES])
def test_broken_predictions_file(case, content, where, workdir, capsys, shared_data):
    path = _write(workdir / "predictions.jsonl", content)
    assert_user_error(["score", "--benchmark", "gsm8k", "--predictions", str(path), "--data-dir", str(shared_data)],
                      capsys, workdir, str(path), where)


# ---- flags out of range --------------------------------------------------------------------------------------------

FLAG_CASES = [
    ("distill", "--limit", "-3"), ("distill", "--limit", "abc"), ("distill", "--max-new-tokens", "0"),
    ("distill", "--temperature", "-1"), ("distill", "--top-p", "1.5"), ("distill", "--decode-rows", "0"),
    ("train", "--mix-ratio", "1.5"), ("train", "--epochs", "-1"), ("train", "--lora-r", "0"),
    ("train", "--learning-rate", "-0.1"), ("train", "--limit", "-3"), ("train", "--batch-size", "0"),
    ("eval", "--limit", "-3"), ("eval", "--decode-rows", "0"), ("eval", "--max-new-tokens", "-5"),
]


def _flag_argv(command: str, workdir) -> list[str]:
    data = _write(workdir / "data.jsonl", jsonl(GOOD))
    return {"distill": ["distill", "--dataset", str(data)],
            "train": ["train", "--data", str(data)],
            "eval": ["eval", "--benchmarks", "gsm8k"]}[command] + ["--model", NO_MODEL, "--out", str(workdir / "out")]


@pytest.mark.parametrize("command, flag, value", FLAG_CASES, ids=[f"{c}{f}={v}" for c, f, v in FLAG_CASES])
def test_flag_out_of_range(command, flag, value, workdir, capsys):
    argv = _flag_argv(command, workdir) + [flag, value]
    assert_user_error(argv, capsys, workdir, flag if value == "abc" else flag.lstrip("-").replace("-", "_"))


# ---- property-based: loaders either load or raise UserError, nothing else -------------------------------------------

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
row_like = st.dictionaries(st.sampled_from(["instruction", "input", "output", "prompt", "completion", "question",
                                            "answer", "messages", "id", "tests"]), json_values, max_size=5)


def _loads_or_user_error(path) -> None:
    try:
        loaded = load_dataset(str(path))
    except UserError as e:
        assert str(path) in str(e)
        return
    assert loaded.examples
    assert all(isinstance(ex["instruction"], str) and isinstance(ex["response"], str) for ex in loaded.examples)


@FUZZ
@given(content=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_fuzz_arbitrary_bytes(tmp_path, content, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    _loads_or_user_error(path)


@FUZZ
@given(rows=st.lists(row_like | json_values, min_size=0, max_size=4), as_json=st.booleans())
def test_fuzz_json_rows(tmp_path, rows, as_json):
    path = tmp_path / ("fuzz.json" if as_json else "fuzz.jsonl")
    path.write_text(json.dumps(rows) if as_json else "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _loads_or_user_error(path)


@FUZZ
@given(header=st.lists(st.text(max_size=8), max_size=4), cells=st.lists(st.lists(st.text(max_size=12), max_size=5), max_size=4))
def test_fuzz_csv(tmp_path, header, cells):
    import csv

    path = tmp_path / "fuzz.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, *cells])
    _loads_or_user_error(path)


@FUZZ
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_fuzz_predictions_and_yaml(tmp_path, content):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(content)
    for reader in (read_jsonl, load_yaml):
        try:
            reader(str(path))
        except UserError as e:
            assert str(path) in str(e)
