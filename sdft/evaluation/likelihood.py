"""Log-likelihood measures: the mean log-probability per token a model gives a fixed text after its prompt.

Two texts, two meanings:
- Retention (`answer_logprobs`): the seed model's own greedy answers to general prompts (AlpacaEval's, through the
  model's chat template with no system prompt of ours; answered once by `sdft.stages.likelihood`). A model that kept
  the seed's behaviour keeps the seed's number. This measures *closeness to the seed* — the paper's §5 mechanism —
  not retained ability: SDFT trains on the seed's own greedy rewrites, so it can rise above the seed by construction.
  The end-of-turn token is scored only after an answer that ended by itself; one cut at the length cap never ended,
  and scoring an appended end would reward models that learned to stop early.
- Third-party likelihood (`reference_logprobs`): reference answers no model here wrote (AlpacaEval's
  text-davinci-003 outputs), their first `max_tokens` tokens, no end-of-turn appended. Training on the seed's own
  text cannot raise it by construction, so a drop from the seed's value is forgetting of general language ability.
"""

from __future__ import annotations

from sdft.data.templates import render
from sdft.engines.training import IGNORE_INDEX, TrainingExample, prompt_token_ids

# Texts are scored in batches of about this many tokens, so memory stays flat whatever their lengths.
_TOKENS_PER_BATCH = 8192


def scored_text(prompt_ids: list[int], text_ids: list[int]) -> TrainingExample:
    """A prompt followed by the text scored after it, as training lays an example out (the prompt masked)."""
    return TrainingExample(prompt_ids + text_ids, [IGNORE_INDEX] * len(prompt_ids) + text_ids)


def answer_logprobs(model, tokenizer, answers: list[dict]) -> list[tuple[float, int]]:
    """Retention: (mean log-probability per answer token, answer tokens) of each answer (`prompt`, `prediction`,
    `finish_reason`) given its prompt; the end-of-turn token counted only where the answer ended by itself."""
    texts = [scored_text(prompt_token_ids(tokenizer, a["prompt"]),
                         tokenizer(a["prediction"], add_special_tokens=False)["input_ids"]
                         + ([] if a.get("finish_reason") == "length" else [tokenizer.eos_token_id]))
             for a in answers]
    return mean_logprobs(model, tokenizer, texts)


def reference_logprobs(model, tokenizer, rows: list[dict], max_tokens: int) -> list[tuple[float, int]]:
    """Third-party likelihood: (mean log-probability per token, tokens) of each row's reference `output`, its first
    `max_tokens` tokens, after its `instruction` in the model's chat template (no system prompt of ours)."""
    texts = [scored_text(prompt_token_ids(tokenizer, render("plain", {"instruction": r["instruction"]}, tokenizer)),
                         tokenizer(r["output"], add_special_tokens=False)["input_ids"][:max_tokens])
             for r in rows]
    return mean_logprobs(model, tokenizer, texts)


def mean_logprobs(model, tokenizer, examples: list[TrainingExample]) -> list[tuple[float, int]]:
    """(mean log-probability per scored token, scored tokens) of each example, batched by similar lengths."""
    import torch

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
