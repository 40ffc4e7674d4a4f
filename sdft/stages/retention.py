"""The retention stages: the seed answers general prompts once (`answer_prompts`), then every model scores those
answers (`score_retention`) with `sdft.evaluation.likelihood` (what the measure means is said there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdft.core.jsonl import read_jsonl, write_json, write_jsonl
from sdft.data.datasets import seeded_indices
from sdft.data.templates import render
from sdft.engines.options import DecodingOptions, EngineOptions
from sdft.evaluation.likelihood import answer_logprobs

PROMPTS_FILE = "alpaca_eval/alpaca_eval.jsonl"
ANSWERS_FILE = "answers.jsonl"
SCORES_FILE = "retention.jsonl"


def answer_prompts(model: str, dtype: str, data_dir: Path, limit: int | None, seed: int, max_new_tokens: int,
                   out: Path) -> dict:
    """The seed's greedy answers to a seeded subset of the general prompts → `out/answers.jsonl` (id, prompt,
    prediction, finish_reason), resumable."""
    from sdft.engines.generation import generate_rows, make_engine

    rows = read_jsonl(data_dir / PROMPTS_FILE)
    chosen = seeded_indices(len(rows), limit, seed)
    engine = make_engine(model, dtype, EngineOptions())
    items = [(f"alpaca_eval-{i}", render("plain", {"instruction": rows[i]["instruction"]}, engine.tokenizer)) for i in chosen]
    generated = generate_rows(engine, items, DecodingOptions(max_new_tokens=max_new_tokens, seed=seed),
                              out / "answers.generations.jsonl", progress="retention answers")
    answers = [{**row, "prompt": prompt} for row, (_, prompt) in zip(generated, items)]
    write_jsonl(out / ANSWERS_FILE, answers)
    return {"answers": len(answers), "truncated": sum(a.get("finish_reason") == "length" for a in answers)}


def score_retention(model: str, dtype: str, adapter: str | None, answers_path: Path, out: Path) -> dict:
    """Each answer's mean log-probability per token under the model (+ adapter) → `out/retention.jsonl` (id, score,
    tokens); returns the mean over answers (nats per token)."""
    from sdft.engines.models import load_model

    answers = read_jsonl(answers_path)
    loaded, tokenizer = load_model(model, dtype=dtype, adapter=adapter)
    scores = answer_logprobs(loaded, tokenizer, answers)
    write_jsonl(out / SCORES_FILE, [{"id": a["id"], "score": s, "tokens": n} for a, (s, n) in zip(answers, scores)])
    result = {"mean_logprob_per_token": float(np.mean([s for s, _ in scores])), "n": len(scores)}
    write_json(out / "retention.json", result)
    return result
