"""What the generation code promises: an engine completes prompts under per-call decoding settings; a stepper is the
model-specific forward the continuous-batching scheduler (`HFEngine`) drives over a fixed set of row slots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence

if TYPE_CHECKING:
    import torch

    from sdft.engines.options import DecodingOptions


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or stop string) | "length" (cut at max_new_tokens)
    n_tokens: int
    prompt_tokens: int


class Engine(Protocol):
    """Completes prompts; `HFEngine` (in-process torch) and `VLLMEngine` (vLLM on CUDA)."""

    tokenizer: Any  # the HF tokenizer prompts are rendered with

    def complete(self, prompts: Sequence[str], decoding: DecodingOptions, skip: Iterable[int] = ()
                 ) -> Iterator[list[tuple[int, Completion]]]:
        """(prompt index, completion) pairs, yielded in groups as rows finish; prompts in `skip` are not run."""
        ...

    def torch_model(self) -> tuple[Any, Any] | None:
        """(model, tokenizer) in this process, for log-likelihood scorers; None when the weights live elsewhere."""
        ...


class Stepper(Protocol):
    """A forward over `slots` rows, each with its own KV cache length. Logits come back for the slots fed, in order."""

    slots: int  # rows held
    refills: bool  # rows may be admitted into free slots while others decode (else only into an empty stepper)
    speculates: bool  # has `verify` and `advance`: several fed tokens per slot in one forward
    compacts: bool  # finished slots still cost work until dropped by `select`
    admits_beside: bool  # has `admit_beside`: new rows prefilled in the forward that feeds the others

    def admit(self, slots: list[int], batch_ids: list[list[int]]) -> torch.Tensor:
        """Prefill prompts (token ids) into these free slots; their next-token logits, (len(slots), vocab)."""
        ...

    def admit_beside(self, slots: list[int], batch_ids: list[list[int]], fed: list[list[int] | None]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """`admit` into free slots and `verify(fed)` for the others in one forward: (admitted rows' logits, fed tokens')."""
        ...

    def step(self, tokens: list[int | None]) -> torch.Tensor:
        """Feed one token per slot (None: idle slot); next-token logits of the fed slots, (fed slots, vocab)."""
        ...

    def verify(self, fed: list[list[int] | None]) -> torch.Tensor:
        """Feed each slot its last token and a draft (None: idle); logits at every fed token, slot by slot, (fed tokens, vocab)."""
        ...

    def advance(self, counts: list[int]) -> None:
        """Move each slot past the first `counts` tokens it was fed by `verify`."""
        ...

    def select(self, keep: list[int]) -> None:
        """Keep only the `keep` slots, renumbered 0..len(keep)-1."""
        ...
