"""Log-likelihood measures. Retention: the log-likelihood per token a model assigns to the seed's own answers,
computed in length-sorted batches, must equal scoring each answer alone; a model trained on those answers assigns them
more; an answer cut at the cap is scored without an end-of-turn. Third-party likelihood: a model trained to memorise
the references scores them higher, an untouched one exactly as the seed."""

import pytest
import torch

from sdft.core.jsonl import read_jsonl, write_jsonl
from sdft.evaluation.likelihood import answer_logprobs
from sdft.stages.likelihood import score_references, score_retention


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


def _trained_on(model_dir, pairs, out):
    """A copy of the model after a few SGD steps on (prompt, text) pairs, saved to `out`."""
    from sdft.engines.models import load_model
    from sdft.engines.training import tokenize_example

    model, tokenizer = load_model(model_dir, dtype="fp32")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(10):
        for prompt, text in pairs:
            example = tokenize_example(tokenizer, prompt, text, max_length=1 << 30)
            loss = model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_an_answer_cut_at_the_cap_is_scored_without_an_end_of_turn(tiny_model_dir, answers):
    from sdft.engines.models import load_model

    model, tokenizer = load_model(tiny_model_dir, dtype="fp32")
    ended = answer_logprobs(model, tokenizer, [{**a, "finish_reason": "stop"} for a in answers])
    cut = answer_logprobs(model, tokenizer, [{**a, "finish_reason": "length"} for a in answers])
    assert [n for _, n in cut] == [n - 1 for _, n in ended]


def test_retention_follows_how_likely_the_answers_are(tiny_model_dir, answers, tmp_path):
    """A model trained a few steps on the seed's answers assigns them more log-likelihood; the score sees it."""
    write_jsonl(tmp_path / "answers.jsonl", answers)
    before = score_retention(tiny_model_dir, "fp32", None, tmp_path / "answers.jsonl", tmp_path / "before")
    tuned = _trained_on(tiny_model_dir, [(a["prompt"], a["prediction"]) for a in answers], tmp_path / "tuned")
    after = score_retention(tuned, "fp32", None, tmp_path / "answers.jsonl", tmp_path / "after")
    assert after["mean_logprob_per_token"] > before["mean_logprob_per_token"] + 0.5
    rows = read_jsonl(tmp_path / "after" / "retention.jsonl")
    assert [r["id"] for r in rows] == ["a0", "a1", "a2", "a3"] and all(r["tokens"] > 0 for r in rows)


def test_third_party_likelihood_rises_when_memorised_and_stays_for_an_untouched_model(tiny_model_dir, tmp_path,
                                                                                      embedded_tokenizer, capsys):
    """References no model here wrote, their first max_tokens tokens, no end-of-turn: memorising them raises the
    score; a copy of the seed scores exactly as the seed."""
    from sdft.data.templates import render
    from sdft.engines.models import load_model

    rows = [{"instruction": f"Tell me about topic {i}.", "output": f"Topic {i} is a subject with a long history " * 6}
            for i in range(4)]
    write_jsonl(tmp_path / "data" / "alpaca_eval" / "alpaca_eval.jsonl", rows)
    seed = score_references(tiny_model_dir, "fp32", None, tmp_path / "data", None, 0, 16, tmp_path / "seed")
    scored = read_jsonl(tmp_path / "seed" / "reference_likelihood.jsonl")
    assert [r["tokens"] for r in scored] == [16] * 4  # capped, no end-of-turn appended
    score_references(tiny_model_dir, "fp32", None, tmp_path / "data", 2, 0, 16, tmp_path / "two")
    assert len(read_jsonl(tmp_path / "two" / "reference_likelihood.jsonl")) == 2
    assert "sdft: reference_likelihood: using 2 of 4 rows, a random subset by seed 0 (limit 2)" in capsys.readouterr().err
    model, tokenizer = load_model(tiny_model_dir, dtype="fp32")
    model.save_pretrained(tmp_path / "copy")
    tokenizer.save_pretrained(tmp_path / "copy")
    copy = score_references(str(tmp_path / "copy"), "fp32", None, tmp_path / "data", None, 0, 16, tmp_path / "same")
    assert copy["mean_logprob_per_token"] == pytest.approx(seed["mean_logprob_per_token"], abs=1e-6)
    pairs = [(render("plain", {"instruction": r["instruction"]}, embedded_tokenizer), r["output"]) for r in rows]
    tuned = _trained_on(tiny_model_dir, pairs, tmp_path / "memorised")
    after = score_references(tuned, "fp32", None, tmp_path / "data", None, 0, 16, tmp_path / "after")
    assert after["mean_logprob_per_token"] > seed["mean_logprob_per_token"] + 0.5
