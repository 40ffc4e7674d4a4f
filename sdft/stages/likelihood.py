"""The log-likelihood stages (what each measure means: `sdft.evaluation.likelihood`). Retention: the seed answers
general prompts once (`answer_prompts`), then every model scores those answers (`score_retention`). Third-party
likelihood: every model scores AlpacaEval's reference answers (`score_references`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdft.core.jsonl import read_jsonl, write_json, write_jsonl
from sdft.data.datasets import subsample_indices
from sdft.data.templates import render
from sdft.engines.options import DecodingOptions, EngineOptions
from sdft.evaluation.likelihood import answer_logprobs, reference_logprobs

PROMPTS_FILE = "alpaca_eval/alpaca_eval.jsonl"
ANSWERS_FILE = "answers.jsonl"
SCORES_FILE = "retention.jsonl"
REFERENCE_SCORES_FILE = "reference_likelihood.jsonl"


def answer_prompts(model: str, dtype: str, data_dir: Path, limit: int | None, seed: int, max_new_tokens: int,
                   out: Path, temperature: float = 0.0) -> dict:
    """The seed's answers (greedy, or sampled at `temperature`, seeded per prompt) to a seeded subset of the general
    prompts → `out/answers.jsonl` (id, prompt, prediction, finish_reason), resumable."""
    from sdft.engines.generation import generate_rows, make_engine

    rows = read_jsonl(data_dir / PROMPTS_FILE)
    chosen = subsample_indices(len(rows), seed, limit, source="retention prompts")
    engine = make_engine(model, dtype, EngineOptions())
    items = [(f"alpaca_eval-{i}", render("plain", {"instruction": rows[i]["instruction"]}, engine.tokenizer)) for i in chosen]
    decoding = DecodingOptions(max_new_tokens=max_new_tokens, seed=seed, temperature=temperature)
    generated = generate_rows(engine, items, decoding, out / "answers.generations.jsonl", progress="retention answers")
    answers = [{**row, "prompt": prompt} for row, (_, prompt) in zip(generated, items)]
    write_jsonl(out / ANSWERS_FILE, answers)
    return {"answers": len(answers), "truncated": sum(a.get("finish_reason") == "length" for a in answers)}


def score_retention(model: str, dtype: str, adapter: str | None, answers_path: Path, out: Path) -> dict:
    """Each answer's mean log-probability per token under the model (+ adapter) → `out/retention.jsonl` (id, score,
    tokens); returns the mean over answers (nats per token)."""
    from sdft.engines.models import load_model

    answers = read_jsonl(answers_path)
    loaded, tokenizer = load_model(model, dtype=dtype, adapter=adapter)
    return _write_scores(answers, answer_logprobs(loaded, tokenizer, answers), out / SCORES_FILE)


def score_references(model: str, dtype: str, adapter: str | None, data_dir: Path, limit: int | None, seed: int,
                     max_tokens: int, out: Path) -> dict:
    """Each of a seeded subset of AlpacaEval's reference answers, its first `max_tokens` tokens, scored under the
    model (+ adapter) → `out/reference_likelihood.jsonl` (id, score, tokens); returns the mean (nats per token)."""
    from sdft.engines.models import load_model

    rows = read_jsonl(data_dir / PROMPTS_FILE)
    indices = subsample_indices(len(rows), seed, limit, source="reference_likelihood")
    chosen = [{**rows[i], "id": f"alpaca_eval-{i}"} for i in indices]
    loaded, tokenizer = load_model(model, dtype=dtype, adapter=adapter)
    return _write_scores(chosen, reference_logprobs(loaded, tokenizer, chosen, max_tokens), out / REFERENCE_SCORES_FILE)


def _write_scores(rows: list[dict], scores: list[tuple[float, int]], path: Path) -> dict:
    """Per-row scores as JSONL beside their mean, `<name>.json`."""
    write_jsonl(path, [{"id": r["id"], "score": s, "tokens": n} for r, (s, n) in zip(rows, scores)])
    result = {"mean_logprob_per_token": float(np.mean([s for s, _ in scores])), "n": len(scores)}
    write_json(path.with_suffix(".json"), result)
    return result
