"""The notebook API (`sdft.api`): data in as a Dataset or a list of dicts, a Dataset or a dict back, the CLI's
validation; and README's "Python API" example, run as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sdft
from sdft.core.errors import UserError

README = Path(__file__).resolve().parents[1] / "README.md"
ROWS = [{"instruction": f"What is {i} + {i}?", "output": f"{i} + {i} = {2 * i}.", "topic": "sums"} for i in range(4)]


def _written_to(dataset) -> Path:
    """The folder a distillation's files went to: the end of the returned dataset's description."""
    return Path(dataset.info.description.rpartition(" in ")[2])


@pytest.fixture(scope="module")
def distilled(tiny_model_dir, tmp_path_factory):
    return sdft.distill(tiny_model_dir, ROWS, out=tmp_path_factory.mktemp("distill"), max_new_tokens=4)


def test_distill_from_a_list_of_dicts_returns_chat_rows_and_leaves_its_files(distilled):
    assert distilled.num_rows == 4
    assert {"id", "messages", "topic", "sdft_accepted"} <= set(distilled.column_names)
    assert [turn["role"] for turn in distilled[0]["messages"]] == ["user", "assistant"]
    assert distilled[0]["messages"][0]["content"] == ROWS[0]["instruction"]
    out = _written_to(distilled)
    stats = json.loads((out / "distill_stats.json").read_text())
    assert stats["total"] == 4 and f"{stats['accepted']} of 4 rewrites kept" in distilled.info.description
    assert len((out / "distilled.jsonl").read_text().splitlines()) == 4


def test_distill_from_a_dataset_into_a_fresh_temporary_folder(tiny_model_dir):
    import datasets

    rows = sdft.distill(tiny_model_dir, datasets.Dataset.from_list(ROWS[:2]), format="alpaca", max_new_tokens=4)
    assert rows.num_rows == 2 and rows[0]["instruction"] == ROWS[0]["instruction"]
    assert (_written_to(rows) / "distilled.jsonl").is_file()
    shutil.rmtree(_written_to(rows))


def test_a_loaded_model_is_saved_for_the_engines_and_removed_after(tmp_path, tiny_model_dir, embedded_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = sdft.distill(model, ROWS[:1], out=tmp_path, tokenizer=embedded_tokenizer, max_new_tokens=4)
    assert rows.num_rows == 1
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("model-")]
    with pytest.raises(UserError, match="tokenizer"):
        sdft.distill(model, ROWS, out=tmp_path)


@pytest.mark.parametrize("options, named", [
    ({"limit": 0}, "limit"),
    ({"max_new_token": 4}, "max_new_token"),
    ({"format": "csv"}, "format"),
    ({"selection": "no_such_rule"}, "selection"),
])
def test_a_bad_option_raises_a_user_error_naming_it_before_anything_is_written(tmp_path, options, named):
    with pytest.raises(UserError, match=named):
        sdft.distill("smollm2-135m-instruct", ROWS, out=tmp_path, **options)
    assert not list(tmp_path.iterdir())


def test_train_on_the_distilled_rows(distilled, tiny_model_dir, tmp_path):
    metrics = sdft.train(tiny_model_dir, distilled, out=tmp_path, max_steps=1, batch_size=2, micro_batch_size=2)
    assert metrics["rows"]["trained"] == 4 and metrics["steps"] == 1
    assert json.loads((tmp_path / "train_metrics.json").read_text())["rows"] == metrics["rows"]
    assert (tmp_path / "adapter_config.json").is_file()


def test_evaluate_returns_the_results(tiny_model_dir, tmp_path, shared_data):
    results = sdft.evaluate(tiny_model_dir, "gsm8k", out=tmp_path, limit=2, max_new_tokens=4, data_dir=str(shared_data))
    assert results["benchmarks"]["gsm8k"]["n"] == 2
    assert results == json.loads((tmp_path / "results.json").read_text())


@pytest.mark.integration
def test_the_readme_example_runs_as_written(tmp_path, shared_data):
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    # one torch thread: on a small shared CPU, competing OpenMP threads spin-wait (see test_evaluate.py's one_thread)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs/distill/distilled.jsonl").is_file() and (tmp_path / "runs/sdft/adapter_config.json").is_file()
