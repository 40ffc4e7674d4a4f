"""Retention, a judge-free forgetting measure: how much log-likelihood a tuned model still assigns to the seed model's
own answers on general prompts, per answer token, next to what the seed itself assigns.

The seed answers general instructions (AlpacaEval's, through the model's chat template with no system prompt of ours,
greedy) once (`answer_prompts`); every model then scores those answers (`score_retention`): the mean log-probability
per answer token (end-of-turn included, as training counts it). A model that kept the seed's behaviour keeps that
number; the change from the seed's own value (≤ 0 for a model that drifted) is the retention shift. It needs no judge
and no reference answers, and unlike BLEU/ROUGE on greedy outputs it sees the whole distribution, not one sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import seeded_indices
from ..jsonl import read_jsonl, write_json, write_jsonl
from ..options import DecodingOptions, EngineOptions
from ..templates import render

PROMPTS_FILE = "alpaca_eval/alpaca_eval.jsonl"
ANSWERS_FILE = "answers.jsonl"
SCORES_FILE = "retention.jsonl"
# Answers are scored in batches of about this many tokens, so memory stays flat whatever the answer lengths.
_TOKENS_PER_BATCH = 8192


def answer_prompts(model: str, dtype: str, data_dir: Path, limit: int | None, seed: int, max_new_tokens: int,
                   out: Path) -> dict:
    """The seed's greedy answers to a seeded subset of the general prompts → `out/answers.jsonl` (id, prompt,
    prediction, finish_reason), resumable."""
    from ..engines.generation import generate_rows, make_engine

    rows = read_jsonl(data_dir / PROMPTS_FILE)
    chosen = seeded_indices(len(rows), limit, seed)
    engine = make_engine(model, dtype, EngineOptions())
    items = [(f"alpaca_eval-{i}", render("plain", {"instruction": rows[i]["instruction"]}, engine.tokenizer)) for i in chosen]
    generated = generate_rows(engine, items, DecodingOptions(max_new_tokens=max_new_tokens, seed=seed),
                              out / "answers.generations.jsonl", progress="retention answers")
    answers = [{**row, "prompt": prompt} for row, (_, prompt) in zip(generated, items)]
    write_jsonl(out / ANSWERS_FILE, answers)
    return {"answers": len(answers), "truncated": sum(a.get("finish_reason") == "length" for a in answers)}


def answer_logprobs(model, tokenizer, answers: list[dict]) -> list[tuple[float, int]]:
    """(mean log-probability per answer token, answer tokens) of each answer given its prompt."""
    import torch

    from ..engines.training import IGNORE_INDEX, tokenize_example

    examples = [tokenize_example(tokenizer, a["prompt"], a["prediction"], max_length=1 << 30) for a in answers]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # similar lengths pad little
    results: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = 0
    model.eval()
    while start < len(order):
        width = len(examples[order[start]].input_ids)
        stop = start + 1
        while stop < len(order) and len(examples[order[stop]].input_ids) * (stop + 1 - start) <= _TOKENS_PER_BATCH:
            width = len(examples[order[stop]].input_ids)
            stop += 1
        batch = [examples[i] for i in order[start:stop]]
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in batch], device=model.device)
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in batch], device=model.device)
        mask = (torch.arange(width, device=model.device)[None] < torch.tensor([len(e.input_ids) for e in batch],
                                                                                device=model.device)[:, None]).long()
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        scored = target != IGNORE_INDEX
        logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0)[..., None])[..., 0] * scored
        for row, index in enumerate(order[start:stop]):
            count = int(scored[row].sum())
            results[index] = (float(logp[row].sum()) / max(count, 1), count)
        start = stop
    return results


def score_retention(model: str, dtype: str, adapter: str | None, answers_path: Path, out: Path) -> dict:
    """Each answer's mean log-probability per token under the model (+ adapter) → `out/retention.jsonl` (id, score,
    tokens); returns the mean over answers (nats per token)."""
    from ..engines.models import load_model

    answers = read_jsonl(answers_path)
    loaded, tokenizer = load_model(model, dtype=dtype, adapter=adapter)
    scores = answer_logprobs(loaded, tokenizer, answers)
    write_jsonl(out / SCORES_FILE, [{"id": a["id"], "score": s, "tokens": n} for a, (s, n) in zip(answers, scores)])
    result = {"mean_logprob_per_token": float(np.mean([s for s, _ in scores])), "n": len(scores)}
    write_json(out / "retention.json", result)
    return result
