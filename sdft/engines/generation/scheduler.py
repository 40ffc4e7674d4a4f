"""The continuous-batching scheduler (`HFEngine`): rows are taken longest-first into a stepper's slots, each finished
row's slot refilled at once with the next waiting prompt; sampling and stop/length bookkeeping per row.

Greedy decoding speculates once few rows are left (the drain at the end of a call, or a small call): each row's next
tokens are drafted by prompt lookup and checked in one forward; what the model would have chosen anyway is kept, so the
output is the same, in fewer forwards. Rewrites copy much of the reference answer they are shown, so drafts are often
right.

Sampling draws each row's noise from a generator seeded by (seed, prompt), so a row's sample does not depend on which
other rows share its batch.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch

from sdft.core.errors import UserError
from sdft.engines.generation import ragged_attention
from sdft.engines.generation.hf_stepper import HFStepper
from sdft.engines.generation.interfaces import Completion, Stepper
from sdft.engines.generation.lean_llama import LeanLlamaStepper, int8_runs
from sdft.engines.models import needs_bos
from sdft.engines.options import DecodingOptions, EngineOptions

TOKEN_BUDGET = 65536  # rows x (longest prompt + max_new_tokens) at most on CPU: bounds the KV cache
GPU_CACHE_SHARE = 0.25  # on a GPU, the share of its free memory the KV cache may take
# Greedy speculation by prompt lookup runs while the rows and their drafts are at most SPECULATION_TOKENS per forward:
# below ~100 rows a forward's Linears run well under their full rate (oneDNN at 24 rows: about half of it), so drafts
# fill the forward nearly free. Measured on 128 GSM8K distillations (the rows that run to the length limit are the
# tail): 128 cut decoding's cost by ~14% against 32; speculating at 96 rows costs more than it saves.
SPECULATION_TOKENS = 128
MAX_DRAFT = 6


def plan_batches(lengths: Sequence[int], rows: int, max_new_tokens: int, token_budget: int = TOKEN_BUDGET) -> list[list[int]]:
    """Indices grouped longest-first so rows in a batch pad little, under the row and token limits."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= rows or (len(current) + 1) * (longest + max_new_tokens) > token_budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def shared_prefixes(token_ids: Sequence[Sequence[int]], key: int = 16) -> set[tuple[int, ...]]:
    """Prefixes worth prefilling once: among prompts opening with the same `key` tokens (one template's), the longest
    prefix they all share."""
    groups: dict[tuple[int, ...], list[Sequence[int]]] = {}
    for ids in token_ids:
        groups.setdefault(tuple(ids[:key]), []).append(ids)
    prefixes = set()
    for opening, rows in groups.items():
        if len(rows) < 2 or len(opening) < key:
            continue
        shared, shortest = key, min(len(ids) for ids in rows)
        while shared < shortest and len({ids[shared] for ids in rows}) == 1:
            shared += 1
        prefixes.add(tuple(rows[0][:shared]))
    return prefixes


def cache_token_budget(model) -> int:
    """Cache columns (rows x tokens) a call may hold: TOKEN_BUDGET on CPU; on a GPU what GPU_CACHE_SHARE of its free
    memory holds, at least TOKEN_BUDGET. On an H200 the CPU's budget held 117 rows of 560 tokens, so 11 of 128 prompts
    decoded alone after the rest: half the rate of a padded `model.generate` (docs/performance.md: On one GPU)."""
    if model.device.type != "cuda":
        return TOKEN_BUDGET
    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * kv_heads * LeanLlamaStepper.head_dim_of(config) * model.dtype.itemsize
    free, _ = torch.cuda.mem_get_info(model.device)
    return max(TOKEN_BUDGET, int(free * GPU_CACHE_SHARE) // per_token)


def _lean_cpu_only(option: str, needs: str, model) -> UserError:
    return UserError(f"{option} runs on the lean CPU engine only (a Llama/Qwen2 model, fp32 weights, {needs}); this is "
                     f"{model.config.model_type} in {model.dtype} on {model.device}")


class HFEngine:
    """Generation with a plain HF causal LM under continuous batching: the model holds a fixed number of row slots,
    each finished row's slot is refilled at once with the next waiting prompt, and rows are taken longest-first so rows
    decoding side by side are of similar length. Models without the lean path fall back to fixed batches."""

    def __init__(self, model, tokenizer, decode_rows: int = EngineOptions.decode_rows, token_budget: int | None = None,
                 quantize: str = EngineOptions.quantize, kv_cache: str = EngineOptions.kv_cache):
        self.model = model
        self.tokenizer = tokenizer
        self.decode_rows = decode_rows  # more keeps CPU matmuls busier; the KV cache grows with it
        self.token_budget = token_budget or cache_token_budget(model)
        self.quantize = quantize
        self.kv_cache = kv_cache
        self.kv_arena: list[torch.Tensor | None] | None = []  # the lean stepper's cache buffers, lent to one call at a time
        lean_cpu = model.device.type == "cpu" and model.dtype == torch.float32 and LeanLlamaStepper.supports(model)
        if quantize != "none" and not (lean_cpu and int8_runs()):
            raise _lean_cpu_only(f"quantize: {quantize}", "PyTorch's fbgemm int8 ops", model)
        if kv_cache != "model" and not (lean_cpu and ragged_attention.serves(LeanLlamaStepper.head_dim_of(model.config))):
            raise _lean_cpu_only(f"kv_cache: {kv_cache}", "the ragged attention kernel built, head_dim a multiple of 8", model)
        self.tokenizer.padding_side = "left"
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in [*eos, tokenizer.eos_token_id] if i is not None}

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        add_special = not prompts or needs_bos(self.tokenizer, prompts[0])
        return self.tokenizer(list(prompts), add_special_tokens=add_special)["input_ids"]

    def torch_model(self):
        """(model, tokenizer): the in-process model, for scorers that need its log-likelihoods."""
        return self.model, self.tokenizer

    def complete(self, prompts: Sequence[str], decoding: DecodingOptions, skip: Iterable[int] = ()
                 ) -> Iterator[list[tuple[int, Completion]]]:
        """Yield (prompt index, completion) pairs as rows finish; prompts in `skip` are not run."""
        token_ids = self.encode(prompts)
        skip = set(skip)
        todo = [i for i in range(len(prompts)) if i not in skip]
        if not todo:
            return
        lengths = [len(token_ids[i]) for i in todo]
        if LeanLlamaStepper.supports(self.model):
            order = [todo[k] for k in sorted(range(len(todo)), key=lambda k: (-lengths[k], k))]
            row_tokens = len(token_ids[order[0]]) + decoding.max_new_tokens  # cache columns a row may need at most
            slots = max(1, min(self.decode_rows, self.token_budget // row_tokens, len(order)))
            # the last call's cache buffers, kept for the next call (a call running beside this one allocates its own)
            arena, self.kv_arena = self.kv_arena, None
            try:
                stepper = LeanLlamaStepper(self.model, slots, shared_prefixes([token_ids[i] for i in todo]),
                                           columns=row_tokens + MAX_DRAFT,  # a verify writes its draft past the row's end
                                           quantize=self.quantize, kv_cache=self.kv_cache, arena=arena)
                yield from self._generate(stepper, order, token_ids, prompts, decoding)
            finally:
                self.kv_arena = arena if arena is not None else self.kv_arena
            return
        for batch in plan_batches(lengths, self.decode_rows, decoding.max_new_tokens, self.token_budget):
            yield from self._generate(HFStepper(self.model, self.tokenizer.pad_token_id, len(batch)),
                                      [todo[k] for k in batch], token_ids, prompts, decoding)

    @torch.inference_mode()
    def _generate(self, stepper: Stepper, order: list[int], token_ids: list[list[int]], prompts: Sequence[str],
                  decoding: DecodingOptions) -> Iterator[list[tuple[int, Completion]]]:
        """Decode `order` through the stepper's slots, admitting waiting rows into free slots (when it refills)."""
        sampled = decoding.temperature > 0
        pending = deque(order)
        held: list[_Row | None] = [None] * stepper.slots  # the row decoding in each slot
        while pending or any(held):
            free = [s for s, row in enumerate(held) if row is None]
            decoding_rows = list(held)  # the rows already decoding, each in its slot
            new: list[int] = []  # the slots taking a waiting row in this forward
            if pending and free and (stepper.refills or len(free) == len(held)):
                new = free[: len(pending)]
                for s in new:
                    i = pending.popleft()
                    held[s] = _Row(i, len(token_ids[i]), _row_generator(decoding.seed, prompts[i]) if sampled else None)
            new_ids = [token_ids[held[s].index] for s in new]
            fed = None
            if new and not (stepper.admits_beside and any(decoding_rows)
                            and sum(map(len, new_ids)) <= stepper.PREFILL_TOKENS):
                logits = stepper.admit(new, new_ids)
                active, rows = new, [held[s] for s in new]
                chosen = [[token] for token in _choose(logits, decoding, _generators(rows, sampled)).tolist()]
            else:
                if stepper.compacts and not pending and not new and len(free) >= max(1, len(held) // 8):
                    # Drop finished slots once they are an eighth of the batch: the cache copy costs about a step.
                    keep = [s for s, row in enumerate(held) if row is not None]
                    stepper.select(keep)
                    held = decoding_rows = [held[s] for s in keep]
                fed = self._drafts(decoding_rows, token_ids) if stepper.speculates and not sampled else None
                if new:  # the new rows prefilled in the decoding rows' forward
                    fed = fed or [[row.tokens[-1]] if row else None for row in decoding_rows]
                    new_logits, logits = stepper.admit_beside(new, new_ids, fed)
                elif fed is None:
                    logits = stepper.step([row.tokens[-1] if row else None for row in decoding_rows])
                else:
                    logits = stepper.verify(fed)
                active = [s for s, row in enumerate(decoding_rows) if row is not None]  # the slots fed, in order
                rows = [held[s] for s in active]
                if fed is None or sampled:  # one fed token a row (sampled rows are never drafted)
                    chosen = [[token] for token in _choose(logits, decoding, _generators(rows, sampled)).tolist()]
                else:
                    greedy = iter(greedy_tokens(logits).tolist())  # fed tokens slot by slot
                    chosen = [_kept(fed[s], [next(greedy) for _ in fed[s]]) for s in active]
                if fed is not None:
                    counts = [0] * len(held)
                    for s, tokens in zip(active, chosen):
                        counts[s] = len(tokens)  # the fed last token and the accepted draft now sit in the cache
                    stepper.advance(counts)
                if new:
                    new_rows = [held[s] for s in new]
                    new_chosen = _choose(new_logits, decoding, _generators(new_rows, sampled)).tolist()
                    active, rows, chosen = active + new, rows + new_rows, chosen + [[token] for token in new_chosen]
            finished = []
            for s, row, tokens in zip(active, rows, chosen):
                for token in tokens:
                    reason = self._advance(row, token, decoding)
                    if reason:
                        finished.append((row.index, self._finish(row.tokens, reason, row.prompt_tokens, decoding.stop)))
                        held[s] = None
                        break
            if finished:
                yield finished

    @staticmethod
    def _drafts(held: list[_Row | None], token_ids: list[list[int]]) -> list[list[int] | None] | None:
        """Each held row's last token and its prompt-lookup draft, when the rows are few enough to speculate and some
        row has a draft; else None (a plain step)."""
        rows = sum(row is not None for row in held)
        size = min(MAX_DRAFT, SPECULATION_TOKENS // max(rows, 1) - 1)
        if size < 1:
            return None
        fed = [[row.tokens[-1], *lookup_draft(token_ids[row.index] + row.tokens, size)] if row else None for row in held]
        return fed if any(tokens and len(tokens) > 1 for tokens in fed) else None

    def _advance(self, row: _Row, token: int, decoding: DecodingOptions) -> str | None:
        """Append the chosen token; the finish reason when the row is done."""
        if token in self.eos_ids:
            return "stop"
        row.tokens.append(token)
        if decoding.stop and self._hit_stop(row.tokens, decoding.stop):
            return "stop"
        return "length" if len(row.tokens) >= decoding.max_new_tokens else None

    def _hit_stop(self, tokens: list[int], stops: list[str]) -> bool:
        tail = self.tokenizer.decode(tokens[-16:], skip_special_tokens=True)
        return any(s in tail for s in stops)

    def _finish(self, tokens: list[int], reason: str, prompt_tokens: int, stops: list[str]) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in stops:
            if stop in text:
                text = text[: text.index(stop)]
                reason = "stop"
        return Completion(text=text, finish_reason=reason, n_tokens=len(tokens), prompt_tokens=prompt_tokens)


def lookup_draft(history: list[int], size: int, longest: int = 3) -> list[int]:
    """Prompt lookup: the `size` tokens that followed the latest earlier occurrence of the history's last n tokens, n
    from `longest` down to 1; [] when none occurs. Searched as bytes, at C speed: a Python scan over 64 rows' histories
    took ~30 ms a forward, several percent of the drain's steps."""
    data = array("i", history).tobytes()
    before_last = 4 * (len(history) - 1)  # an occurrence must end before the last token
    for n in range(min(longest, len(history) - 1), 0, -1):
        tail, end = data[-4 * n :], before_last
        while (start := data.rfind(tail, 0, end)) >= 0 and start % 4:  # a match across token boundaries: look earlier
            end = start + 4 * n - 1
        if start >= 0:
            follows = start // 4 + n
            return history[follows : follows + size]
    return []


def _kept(fed: list[int], greedy: list[int]) -> list[int]:
    """The tokens a verify forward yields for one row: its greedy choice after each fed token, as long as the draft
    agreed with the choice before."""
    kept = []
    for j, token in enumerate(greedy[: len(fed)]):
        kept.append(token)
        if j + 1 == len(fed) or fed[j + 1] != token:
            break
    return kept


def _generators(rows: list[_Row], sampled: bool) -> list[torch.Generator] | None:
    return [row.generator for row in rows] if sampled else None


def _row_generator(seed: int, prompt: str) -> torch.Generator:
    return torch.Generator().manual_seed(int(hashlib.sha256(f"{seed}|{prompt}".encode()).hexdigest()[:15], 16))


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """Each row's argmax (the first of tied maxima, as argmax). bf16 logits on CPU go through the kernel's argmax (both
    threads, 16 lanes; measured 0.32 vs 1.43 ms on 96 x 49152 logits: torch's bf16 max runs on one thread, ~2% of
    a decoding call while the other thread waits); else `max`, not `argmax` (on those logits 1.5 vs 8.8 ms)."""
    if logits.dim() == 2 and logits.dtype == torch.bfloat16 and logits.device.type == "cpu" and ragged_attention.fuses_bf16():
        return ragged_attention.argmax_rows(logits)
    return logits.max(-1).indices


def _choose(logits: torch.Tensor, decoding: DecodingOptions, generators: list[torch.Generator] | None) -> torch.Tensor:
    if generators is None:
        return greedy_tokens(logits)
    logits = logits.float()
    if decoding.top_k and decoding.top_k < logits.shape[-1]:  # before top_p, in transformers' order (as the reference)
        kth = logits.topk(decoding.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / decoding.temperature, dim=-1)
    if decoding.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > decoding.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    # Exponential-race sampling with per-row noise: argmax(p / E) samples from p.
    noise = torch.stack([torch.empty(probs.shape[-1]).exponential_(generator=g) for g in generators]).to(probs.device)
    return (probs / noise).argmax(-1)


@dataclass
class _Row:
    """One prompt while it decodes: its index in the prompt list, prompt length, sampling noise and tokens so far."""

    index: int
    prompt_tokens: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
