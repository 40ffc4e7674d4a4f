"""Retention: the log-likelihood per token a model assigns to the seed's own answers, computed in length-sorted
batches, must equal scoring each answer alone; a model trained away from those answers assigns them less."""

import pytest
import torch

from sdft.core.jsonl import read_jsonl, write_jsonl
from sdft.evaluation.likelihood import answer_logprobs
from sdft.stages.retention import score_retention


def _alone(model, tokenizer, prompt, answer):
    from sdft.engines.training import IGNORE_INDEX, tokenize_example

    example = tokenize_example(tokenizer, prompt, answer, max_length=1 << 30)
    ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    target = labels[0, 1:]
    scored = target != IGNORE_INDEX
    return float(logp[scored].gather(-1, target[scored][:, None]).sum()) / int(scored.sum()), int(scored.sum())


@pytest.fixture
def answers(embedded_tokenizer):
    texts = ["Paris is the capital of France.", "1, 2, 3", "A much longer answer " * 12, "ok"]
    return [{"id": f"a{i}", "prompt": embedded_tokenizer.apply_chat_template(
        [{"role": "user", "content": f"question {i}"}], tokenize=False, add_generation_prompt=True), "prediction": t}
        for i, t in enumerate(texts)]


def test_batched_scores_equal_scoring_each_answer_alone(tiny_model_dir, answers):
    from sdft.engines.models import load_model

    model, tokenizer = load_model(tiny_model_dir, dtype="fp32")
    batched = answer_logprobs(model, tokenizer, answers)
    for answer, (score, tokens) in zip(answers, batched):
        expected, count = _alone(model, tokenizer, answer["prompt"], answer["prediction"])
        assert tokens == count and score == pytest.approx(expected, abs=1e-4)


def test_retention_follows_how_likely_the_answers_are(tiny_model_dir, answers, tmp_path):
    """A model trained a few steps on the seed's answers assigns them more log-likelihood; the score sees it."""
    from sdft.engines.models import load_model
    from sdft.engines.training import tokenize_example

    write_jsonl(tmp_path / "answers.jsonl", answers)
    before = score_retention(tiny_model_dir, "fp32", None, tmp_path / "answers.jsonl", tmp_path / "before")
    model, tokenizer = load_model(tiny_model_dir, dtype="fp32")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(10):
        for answer in answers:
            example = tokenize_example(tokenizer, answer["prompt"], answer["prediction"], max_length=1 << 30)
            loss = model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(tmp_path / "tuned")
    tokenizer.save_pretrained(tmp_path / "tuned")
    after = score_retention(str(tmp_path / "tuned"), "fp32", None, tmp_path / "answers.jsonl", tmp_path / "after")
    assert after["mean_logprob_per_token"] > before["mean_logprob_per_token"] + 0.5
    rows = read_jsonl(tmp_path / "after" / "retention.jsonl")
    assert [r["id"] for r in rows] == ["a0", "a1", "a2", "a3"] and all(r["tokens"] > 0 for r in rows)
