"""Retention, a judge-free forgetting measure: how much log-likelihood a tuned model still assigns to the seed model's
own answers on general prompts, per answer token, next to what the seed itself assigns.

The seed answers general instructions (AlpacaEval's, through the model's chat template with no system prompt of ours,
greedy) once (`sdft.stages.retention`); every model then scores those answers (`answer_logprobs`): the mean log-probability
per answer token (end-of-turn included, as training counts it). A model that kept the seed's behaviour keeps that
number; the change from the seed's own value (≤ 0 for a model that drifted) is the retention shift. It needs no judge
and no reference answers, and unlike BLEU/ROUGE on greedy outputs it sees the whole distribution, not one sample.
"""

from __future__ import annotations

# Answers are scored in batches of about this many tokens, so memory stays flat whatever the answer lengths.
_TOKENS_PER_BATCH = 8192


def answer_logprobs(model, tokenizer, answers: list[dict]) -> list[tuple[float, int]]:
    """(mean log-probability per answer token, answer tokens) of each answer given its prompt."""
    import torch

    from sdft.engines.training import IGNORE_INDEX, tokenize_example

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
