"""The fallback stepper: any HF causal LM through its own forward."""

from __future__ import annotations

import inspect

import torch


class HFStepper:
    """Any HF causal LM through its own forward and a DynamicCache (the general fallback). It takes one left-padded
    batch at a time: rows are admitted only into an empty stepper."""

    refills = False
    speculates = False
    admits_beside = False
    compacts = True

    def __init__(self, model, pad_id: int, slots: int):
        self.model = model
        self.pad_id = pad_id
        self.slots = slots
        self.cache_keyword = cache_keyword(model)

    def admit(self, slots: list[int], batch_ids: list[list[int]]) -> torch.Tensor:
        from transformers import DynamicCache

        device = self.model.device
        width = max(len(ids) for ids in batch_ids)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in batch_ids], device=device)
        self.attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch_ids], device=device)
        self.positions = (self.attention.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids)
        self.positions = self.positions[:, -1:]
        return logits

    def _forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=self.attention, position_ids=self.positions,
                          **{self.cache_keyword: self.cache}, use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def step(self, tokens: list[int | None]) -> torch.Tensor:
        """Next-token logits of the rows fed a token; finished rows (None) run on a dummy token until the next select."""
        self.attention = torch.cat([self.attention, self.attention.new_ones((len(tokens), 1))], dim=1)
        self.positions = self.positions + 1
        logits = self._forward(torch.tensor([t or 0 for t in tokens], device=self.attention.device)[:, None])
        return logits[[s for s, t in enumerate(tokens) if t is not None]]

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.attention.device)
        self.cache.batch_select_indices(index)
        self.attention, self.positions = self.attention[index], self.positions[index]
        self.slots = len(keep)


def cache_keyword(model) -> str:
    """The name the model's forward takes its KV cache by: `cache` from transformers 5.24, `past_key_values` before.
    An older forward swallows an unknown `cache=` in its **kwargs and silently decodes without the cache."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
