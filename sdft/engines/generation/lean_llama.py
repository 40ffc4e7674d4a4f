"""The lean stepper for Llama-architecture models (Llama, and Qwen2 with its Q/K/V biases): pre-packed linears, an
in-place KV cache per slot and matmul attention; the same arithmetic as HF's forward with less work per step."""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Iterable

import torch

from sdft.engines.generation import ragged_attention

log = logging.getLogger(__name__)


class PackedLinear:
    """A frozen linear layer. On CPU its weight is reordered once into oneDNN's blocked layout and multiplied by
    oneDNN directly: measured 15-50% faster than `F.linear` at decoding's row counts, bitwise equal in bf16. Where
    torch's oneDNN ops do not run (`onednn_dtypes`), `F.linear`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        weight, self.bias = weight.detach(), None if bias is None else bias.detach()
        self.packed = None
        if weight.device.type == "cpu" and weight.dtype in onednn_dtypes():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 64)
        self.weight = weight if self.packed is None else None  # the packed copy replaces it

    @classmethod
    def of(cls, *linears: torch.nn.Linear) -> "PackedLinear":
        """One linear computing `linears` side by side (their outputs concatenated), e.g. Q, K and V in one matmul."""
        if len(linears) == 1:
            return cls(linears[0].weight, linears[0].bias)
        bias = None if linears[0].bias is None else torch.cat([linear.bias for linear in linears])
        return cls(torch.cat([linear.weight for linear in linears]), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def plus(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + self(x): a residual connection, in fp32 on CPU added inside oneDNN's matmul as it writes its
        output (bitwise the same sum, one pass over the activations fewer; in bf16 it would skip a rounding)."""
        if self.packed is None or x.dtype != torch.float32:
            return self(x).add_(residual)
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.bias, "add")


@functools.cache
def onednn_dtypes() -> frozenset[torch.dtype]:
    """The weight dtypes `PackedLinear` multiplies through oneDNN here: none where torch is built without it, or where
    its private ops (`torch.ops.mkldnn`, not public API, so any torch release may rename or change them) are missing or
    disagree with `F.linear` on a small probe. Then every linear runs `F.linear`, the same result, slower; one warning
    per process says so."""
    if not torch.backends.mkldnn.is_available():
        return frozenset()
    weight = torch.linspace(-1, 1, 8 * 16).view(8, 16)  # fixed values: the probe leaves torch's RNG as it was
    x, residual = weight[:3] * 0.5, weight[:3, :8] * 2
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 64)
        torch.testing.assert_close(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""),
                                   torch.nn.functional.linear(x, weight))
        torch.testing.assert_close(torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed, None, "add"),
                                   torch.nn.functional.linear(x, weight) + residual)
        bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except Exception as error:
        log.warning("oneDNN packed linears unavailable in torch %s (%s); using F.linear", torch.__version__,
                    f"{type(error).__name__}: {error}".splitlines()[0])
        return frozenset()
    return frozenset({torch.float32, torch.bfloat16} if bf16 else {torch.float32})


class Int8Linear(PackedLinear):
    """A frozen linear layer in int8 (`quantize: int8`): weights quantized per output channel, activations per row,
    multiplied by PyTorch's fbgemm kernels (CPU, fp32 in and out). fbgemm quantizes a whole batch with one scale, so each
    row is first divided by its own absolute maximum and a pinned row (+1, -1) fixes that scale at 1/127: a row's result
    does not depend on the rows decoding beside it, as continuous batching needs."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        weight, self.bias = weight.detach().float(), None if bias is None else bias.detach().float()
        scales = (weight.abs().amax(1).clamp_min(1e-12) / 127).double()
        with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao; torch 2.13 has them
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch.quantize_per_channel(weight, scales, torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(quantized, None)
        self.pin = weight.new_zeros((1, weight.shape[1]))
        self.pin[0, :2] = torch.tensor([1.0, -1.0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax(1, keepdim=True).clamp_min(1e-12)
        out = torch.ops.quantized.linear_dynamic(torch.cat([rows / scale, self.pin]), self.packed, True)[:-1].mul_(scale)
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], out.shape[-1])

    def plus(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self(x).add_(residual)


QUANTIZED_LINEARS = {"none": PackedLinear, "int8": Int8Linear}


@functools.cache
def int8_runs() -> bool:
    """Whether `Int8Linear` runs here: torch built with fbgemm, and its quantized tensors and private int8 ops
    (`torch.ops.quantized`, deprecated in favour of torchao, so a torch release may drop them) still there."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        Int8Linear(torch.eye(8))(torch.ones(2, 8))
    except Exception:
        return False
    return True


@dataclass
class _LayerWeights:
    layer: torch.nn.Module  # norms, activation and attention scaling come from the model's own layer
    qkv: PackedLinear
    o: PackedLinear
    gate_up: PackedLinear
    down: PackedLinear


class LeanLlamaStepper:
    """A lean forward for Llama-architecture models over a fixed set of row slots, the same arithmetic as HF's with less
    per-step work: Q/K/V and gate/up each run as one matmul, the KV cache is written in place, and decoding attends with
    two plain matmuls per layer over a contiguous cache, each KV head's query heads folded into the query axis (on CPU,
    SDPA's flash kernel and the copies a sliced cache forces cost several times more for one query per row).
    Each slot keeps its own length, so a new row can be prefilled into any free slot while the others decode.

    The cache is in the model's dtype, or in fp16 (`kv_cache: fp16`, the ragged kernel over an fp32 model only: decoding
    attention reads half the bytes; the prompt attends to its own K/V at full precision, later tokens to the fp16 copy).

    With the ragged kernel (an fp32 or bf16 model on CPU) decoding runs the fed slots only and reads only their own
    columns, so the cache is allocated once at the width a row may need and never copied: a finished row's slot just
    waits for the next prompt. The matmul attention runs every slot over the padded width, so there the scheduler compacts the slots.
    Where the kernel reads a bf16 cache with AVX-512 BF16, prompts are prefilled through it too, packed (no padding),
    each new slot given the shared prefix's K/V first; elsewhere prefill runs SDPA over right-padded rows."""

    MODEL_TYPES = ("llama", "qwen2")
    GROWTH = 32  # cache columns added or dropped at a time
    PREFILL_TOKENS = 2048  # padded prompt tokens per prefill forward
    refills = True
    speculates = True

    @classmethod
    def supports(cls, model) -> bool:
        config = model.config
        full_attention = all(t == "full_attention" for t in (getattr(config, "layer_types", None) or ["full_attention"]))
        return config.model_type in cls.MODEL_TYPES and full_attention and type(model).__name__.endswith("ForCausalLM")

    def __init__(self, model, slots: int, prefixes: Iterable[tuple[int, ...]] = (), columns: int = 0,
                 quantize: str = "none", kv_cache: str = "model", arena: list[torch.Tensor | None] | None = None):
        config = model.config
        self.model = model
        self.slots = slots
        self.prefixes = list(prefixes)  # token prefixes many prompts share (a template's opening): prefilled once
        self.prefix_kv: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = self.head_dim_of(config)
        linear = QUANTIZED_LINEARS[quantize]
        self.layers = [self._fused(layer, linear) for layer in model.model.layers]
        self.lm_head = linear.of(model.lm_head)
        empty = (slots, self.kv_heads, 0, self.head_dim)  # per layer: (slots, kv_heads, cache columns, head_dim)
        cache_dtype = torch.float16 if kv_cache == "fp16" else model.dtype
        self.keys = [torch.zeros(empty, device=model.device, dtype=cache_dtype) for _ in self.layers]
        self.values = [torch.zeros(empty, device=model.device, dtype=cache_dtype) for _ in self.layers]
        self.lengths = torch.zeros(slots, dtype=torch.long, device=model.device)  # cache columns filled, per slot
        if model.device.type == "cpu":
            keep_freed_memory()
        self.ragged = ragged_attention.usable(self.keys[0], model.dtype)
        if cache_dtype != model.dtype and not self.ragged:  # the matmul attention multiplies in the model's dtype
            raise ValueError(f"kv_cache: {kv_cache} needs the ragged attention kernel (fp32 model on CPU)")
        self.compacts = not self.ragged  # whether dropping finished slots (`select`) saves work
        self.reserve = columns if self.ragged else 0  # cache columns a row may need, allocated at once
        # flat buffers an earlier stepper's cache held, their pages already in: reused (and kept) for the cache that is
        # allocated once (the matmul attention's cache grows and shrinks as it goes)
        self.arena = arena if self.ragged else None
        self.ragged_prefill = ragged_attention.prefills(self.keys[0], model.dtype)
        self.admits_beside = self.ragged_prefill  # new rows prefill in a decoding step's forward (`admit_beside`)
        # a bf16 model's RMSNorm and SiLU·up as the kernel's one-pass ops (AVX-512 BF16), where its shapes fit them
        self.fuses = (model.device.type == "cpu" and model.dtype == torch.bfloat16 and config.hidden_act == "silu"
                      and config.hidden_size % 16 == 0 and config.intermediate_size % 16 == 0
                      and ragged_attention.fuses_bf16())

    @staticmethod
    def head_dim_of(config) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    @staticmethod
    def _fused(layer, linear: type[PackedLinear]) -> _LayerWeights:
        """One layer's linears, Q/K/V and gate/up concatenated; rebuilt per stepper (a fraction of a step), never stale."""
        attn, mlp = layer.self_attn, layer.mlp
        return _LayerWeights(layer, linear.of(attn.q_proj, attn.k_proj, attn.v_proj), linear.of(attn.o_proj),
                             linear.of(mlp.gate_proj, mlp.up_proj), linear.of(mlp.down_proj))

    def _fit(self, width: int, keep: torch.Tensor | None = None) -> None:
        """Resize the caches to hold `width` columns (in GROWTH steps, so this copy is rare), keeping only the `keep`
        slots when given. The matmul attention masks columns past a row's length, so they hold zeros (NaN garbage leaks
        through 0 * NaN); the kernel never reads them, so there they are left unwritten."""
        allocated, width = self.keys[0].shape[2], max(width, self.reserve)
        if keep is None and width <= allocated <= width + 2 * self.GROWTH:
            return
        new_width = -(-width // self.GROWTH) * self.GROWTH
        kept = min(allocated, new_width)
        for c, cache in enumerate((self.keys, self.values)):
            for i, old in enumerate(cache):
                old = old if keep is None else old[keep]
                shape = (old.shape[0], self.kv_heads, new_width, self.head_dim)
                # nothing to copy over: the arena's buffer may serve (never while `old` may live in it)
                cache[i] = self._lent(2 * i + c, shape, old) if kept == 0 else fault_in(old.new_empty(shape))
                if not self.ragged:
                    cache[i].zero_()
                cache[i][:, :, :kept] = old[:, :, :kept]

    def _lent(self, index: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An empty cache tensor of `shape`, a view of the arena's buffer `index` where there is an arena (the buffer
        replaced by a larger one when too small). On a VM a cache's pages cost most at their first touch: measured on a
        2-core Zen 5 VM, faulting in a fresh 1.5 GB cache took 4.3 s, the same memory again 0.08 s."""
        if self.arena is None:
            return fault_in(like.new_empty(shape))
        self.arena.extend([None] * (index + 1 - len(self.arena)))
        buffer, size = self.arena[index], math.prod(shape)
        if buffer is None or buffer.numel() < size or buffer.dtype != like.dtype or buffer.device != like.device:
            self.arena[index] = None  # the old buffer freed before its successor is allocated
            buffer = self.arena[index] = fault_in(like.new_empty(size))
        return buffer[:size].view(shape)

    def admit(self, slots: list[int], batch_ids: list[list[int]]) -> torch.Tensor:
        """Prefill new rows into free slots, a few at a time and past their shared prefix; their next-token logits."""
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        for k, ids in enumerate(batch_ids):
            by_prefix.setdefault(self._prefix_of(ids), []).append(k)
        logits: list[torch.Tensor | None] = [None] * len(slots)
        for prefix, rows in by_prefix.items():
            start = 0
            while start < len(rows):
                # Rows come longest-first, so the first sets the chunk's padded width; past ~2k tokens a chunk's
                # activations spill the caches and prefill slows down.
                chunk = rows[start : start + max(1, self.PREFILL_TOKENS // (len(batch_ids[rows[start]]) - len(prefix)))]
                out = self._prefill([slots[k] for k in chunk], [batch_ids[k] for k in chunk], prefix)
                for k, row_logits in zip(chunk, out):
                    logits[k] = row_logits
                start += len(chunk)
        return torch.stack(logits)

    def _prefix_of(self, ids: list[int]) -> tuple[int, ...]:
        """The longest shared prefix this row starts with, leaving it at least one token of its own (for its logits)."""
        matches = [p for p in self.prefixes if len(p) < len(ids) and tuple(ids[: len(p)]) == p]
        return max(matches, key=len, default=())

    def _prefix_kv(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's K/V of a shared prefix, computed once."""
        if prefix not in self.prefix_kv:
            kv = []

            def attend(layer_index: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: float) -> torch.Tensor:
                q, k, v = self._rotated(qkv, cos, sin)
                kv.append((k, v))
                return _prefill_attention(q, k, v, scale)

            positions = torch.arange(len(prefix), device=self.lengths.device)[None]
            self._forward(torch.tensor([prefix], device=self.lengths.device), positions, attend)
            self.prefix_kv[prefix] = kv
        return self.prefix_kv[prefix]

    def _prefill(self, slots: list[int], batch_ids: list[list[int]], prefix: tuple[int, ...]) -> torch.Tensor:
        """One forward over new rows' tokens past `prefix` (whose K/V is reused), right-padded, so each row's cache
        starts at column 0."""
        if self.ragged_prefill:
            return self._prefill_ragged(slots, batch_ids)
        device, shared = self.lengths.device, len(prefix)
        width = max(len(ids) for ids in batch_ids) - shared
        input_ids = torch.tensor([ids[shared:] + [0] * (width + shared - len(ids)) for ids in batch_ids], device=device)
        lengths = torch.tensor([len(ids) for ids in batch_ids], device=device)
        index = torch.tensor(slots, device=device)
        self.lengths[index] = 0
        self._fit(max(shared + width, int(self.lengths.max())))
        past = self._prefix_kv(prefix) if shared else None
        columns = torch.arange(width, device=device)
        # Every new token sees the whole prefix, then its own row causally; causal masking alone also hides the
        # padding, which follows each row's real tokens.
        mask = torch.cat([columns.new_ones((width, shared), dtype=torch.bool), columns[None, :] <= columns[:, None]], 1)

        def attend(layer_index: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: float) -> torch.Tensor:
            q, k, v = self._rotated(qkv, cos, sin)
            if past is not None:
                k = torch.cat([past[layer_index][0].expand(len(slots), -1, -1, -1), k], dim=2)
                v = torch.cat([past[layer_index][1].expand(len(slots), -1, -1, -1), v], dim=2)
            self.keys[layer_index][index, :, : shared + width] = k.to(self.keys[layer_index].dtype)
            self.values[layer_index][index, :, : shared + width] = v.to(self.values[layer_index].dtype)
            return _prefill_attention(q, k, v, scale, mask if shared else None)

        hidden = self._forward(input_ids, (shared + columns).expand(len(slots), width), attend)
        self.lengths[index] = lengths
        return self._logits(hidden[torch.arange(len(slots), device=device), lengths - shared - 1])

    def _prefill_ragged(self, slots: list[int], batch_ids: list[list[int]],
                        beside: list[list[int] | None] | None = None) -> torch.Tensor:
        """Prefill through the decoding kernel: each new slot holds its shared prefix's K/V, then is fed the rest of its
        prompt as one long draft (packed, no padding; each token attends to its slot's columns up to itself). Fed
        `beside` (other slots' tokens, as `verify`), the same forward runs them too: the new rows' logits come first,
        then those of every token fed beside."""
        device = self.lengths.device
        prefixes = [self._prefix_of(ids) for ids in batch_ids]
        self._fit(max(len(ids) for ids in batch_ids))
        for prefix in set(prefixes) - {()}:
            rows = torch.tensor([s for s, p in zip(slots, prefixes) if p == prefix], device=device)
            for layer_index, (k, v) in enumerate(self._prefix_kv(prefix)):
                self.keys[layer_index][rows, :, : len(prefix)] = k.to(self.keys[layer_index].dtype)
                self.values[layer_index][rows, :, : len(prefix)] = v.to(self.values[layer_index].dtype)
        index = torch.tensor(slots, device=device)
        self.lengths[index] = torch.tensor([len(p) for p in prefixes], device=device)
        inputs = list(beside) if beside else [None] * self.slots
        for s, ids, prefix in zip(slots, batch_ids, prefixes):
            inputs[s] = ids[len(prefix) :]
        hidden = self._decode(inputs, frozenset(slots) if beside else frozenset())  # fed tokens in slot order
        ends = list(itertools.accumulate(len(tokens) if tokens else 0 for tokens in inputs))
        wanted = [ends[s] - 1 for s in slots]  # each new row's last prompt token, in the order asked
        new = set(slots)
        wanted += [t for s, tokens in enumerate(beside or ()) if tokens and s not in new
                   for t in range(ends[s] - len(tokens), ends[s])]
        self.lengths[index] = torch.tensor([len(ids) for ids in batch_ids], device=device)
        return self._logits(hidden[torch.tensor(wanted, device=device)])

    def admit_beside(self, slots: list[int], batch_ids: list[list[int]], fed: list[list[int] | None]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill new rows into free slots in the forward that feeds the other slots `fed`, as `verify` does (their
        lengths kept until `advance`): a row's prompt beside a decoding step makes one fuller matmul of the two. The
        new rows' next-token logits, and the fed tokens' as `verify` gives them."""
        if not self.admits_beside:
            raise ValueError("admit_beside needs the ragged prefill (a bf16 cache read with AVX-512 BF16)")
        logits = self._prefill_ragged(slots, batch_ids, fed)
        return logits[: len(slots)], logits[len(slots) :]

    def step(self, tokens: list[int | None]) -> torch.Tensor:
        """Next-token logits of the slots fed a token, each written at its slot's own length; idle slots (None) reset."""
        active = torch.tensor([t is not None for t in tokens], device=self.lengths.device)
        logits = self.verify([None if t is None else [t] for t in tokens])
        self.lengths = torch.where(active, self.lengths + 1, 0)
        return logits

    def verify(self, fed: list[list[int] | None]) -> torch.Tensor:
        """Feed each slot its last token and a draft of the tokens after it, all in one forward (speculative decoding);
        logits at every fed token, slot by slot, (fed tokens, vocab). Lengths stay as they were: `advance` moves each
        slot past what was accepted, and K/V written beyond that is masked out until overwritten."""
        return self._logits(self._decode(fed))

    def _decode(self, inputs: list[list[int] | None], apart: frozenset[int] = frozenset()) -> torch.Tensor:
        """Hidden states of the tokens fed to each slot (None: idle), (fed tokens, hidden): each written to its slot's
        cache from the slot's length on and attending to the cache up to itself. The linears run the fed tokens only,
        packed one after another, so a slot fed one token beside slots fed drafts costs no padding; attention sees them
        padded per slot (a padded query attends nothing). The kernel runs the fed slots only, the slots `apart` (prompts
        beside a step) in a call of their own, so the step's rows are not padded to a prompt's width; the matmul
        attention runs every slot: its cache cannot be read row by row uncopied."""
        device = self.lengths.device
        fed = [s for s, tokens in enumerate(inputs) if tokens]
        rows = fed if self.ragged else list(range(self.slots))
        width, group = max(len(inputs[s]) for s in fed), self.heads // self.kv_heads
        # each fed token's attention row (its slot's place in `rows`), offset among its slot's tokens, slot and column
        row_of = {s: r for r, s in enumerate(rows)}
        row = torch.tensor([row_of[s] for s in fed for _ in inputs[s]], device=device)
        offset = torch.tensor([j for s in fed for j in range(len(inputs[s]))], device=device)
        index = torch.tensor(rows, device=device)
        slot = index[row]
        column = self.lengths[slot] + offset
        ids = torch.tensor([[t for s in fed for t in inputs[s]]], device=device)
        self._fit(int(column.max()) + 1)
        if self.ragged:  # each part's fed tokens (their places in `ids`) and the kernel's arguments for them
            parts = [self._ragged_part(inputs, part) for part in ([s for s in fed if s not in apart],
                                                                  [s for s in fed if s in apart]) if part]
        else:  # fed token j of a slot sees its cache up to its own column: (rows, 1, 1, width, cache columns)
            columns = self.lengths[index][:, None] + torch.arange(width, device=device)  # (rows, width): padded too
            hidden_columns = torch.arange(self.keys[0].shape[2], device=device)[None, None, :] > columns[:, :, None]
            bias = torch.zeros(hidden_columns.shape, device=device).masked_fill_(hidden_columns, float("-inf"))[:, None, None]

        def attend(layer_index: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: float) -> torch.Tensor:
            # qkv (1, tokens, (heads + 2 kv_heads) head_dim), cos and sin (1, tokens, head_dim): the fed tokens one after
            # another
            keys, values = self.keys[layer_index], self.values[layer_index]
            if self.ragged:  # all of the below in one call per part
                if len(parts) == 1:
                    return ragged_attention.decode_layer(qkv[0], cos[0], sin[0], keys, values, *parts[0][1], self.heads,
                                                         scale)[None]
                out = None
                for tokens, arguments in parts:
                    part = ragged_attention.decode_layer(qkv[0, tokens], cos[0, tokens], sin[0, tokens], keys, values,
                                                         *arguments, self.heads, scale)
                    out = part.new_empty((qkv.shape[1], part.shape[1])) if out is None else out
                    out[tokens] = part
                return out[None]
            q, k, v = self._rotated(qkv, cos, sin)  # q (1, heads, tokens, head_dim), k and v (1, kv_heads, tokens, head_dim)
            keys[slot, :, column] = k[0].transpose(0, 1).to(keys.dtype)
            values[slot, :, column] = v[0].transpose(0, 1).to(values.dtype)
            # padded per row, then each KV head's query heads folded into the query axis:
            # (rows, kv_heads, group x width, head_dim); keys/values (slots, kv_heads, cache columns, head_dim)
            padded = q.new_zeros((len(rows), self.heads, width, self.head_dim))
            padded[row, :, offset] = q[0].transpose(0, 1)
            folded = padded.view(len(rows), self.kv_heads, group * width, self.head_dim)
            # eager attention as HF computes it: scores and softmax in fp32, probabilities back in the model dtype
            cache_width = keys.shape[2]
            scores = torch.matmul(folded, keys.transpose(-1, -2)).float().mul_(scale)
            scores = scores.view(len(rows), self.kv_heads, group, width, cache_width).add_(bias).softmax(-1)
            out = torch.matmul(scores.to(values.dtype).view(len(rows), self.kv_heads, group * width, cache_width), values)
            return out.view(len(rows), self.heads, width, self.head_dim)[row, :, offset].flatten(1)[None]

        return self._forward(ids, column[None], attend)[0]

    def _ragged_part(self, inputs: list[list[int] | None], slots: list[int]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The places among all fed tokens of those fed to `slots` (in slot order), and the kernel's arguments for
        them: each token's slot, column, attention row and offset among its slot's tokens, the rows' slots, and the
        rows' query lengths (query g * width + j of a row, query head g of a KV head and fed token j, sees j's columns;
        0 for padding: a query the kernel skips)."""
        device, group = self.lengths.device, self.heads // self.kv_heads
        starts = list(itertools.accumulate((len(tokens) if tokens else 0 for tokens in inputs), initial=0))
        tokens = torch.tensor([t for s in slots for t in range(starts[s], starts[s + 1])], device=device)
        row = torch.tensor([r for r, s in enumerate(slots) for _ in inputs[s]], device=device)
        offset = torch.tensor([j for s in slots for j in range(len(inputs[s]))], device=device)
        index = torch.tensor(slots, device=device)
        slot = index[row]
        column = self.lengths[slot] + offset
        width = max(len(inputs[s]) for s in slots)
        seen = torch.zeros((len(slots), width), dtype=torch.long, device=device).index_put_((row, offset), column + 1)
        return tokens, (slot, column, row, offset, index, seen.repeat(1, group))

    def advance(self, counts: list[int]) -> None:
        """Move each slot past the `counts` fed tokens `verify` kept."""
        self.lengths = self.lengths + torch.tensor(counts, device=self.lengths.device)

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.lengths.device)
        self.lengths, self.slots = self.lengths[index], len(keep)
        self._fit(int(self.lengths.max()) + 1, index)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        """Hidden states of every input position; `attend` takes each layer's fused Q/K/V projection and the RoPE
        tables, writes the layer's K/V to the cache and attends."""
        hidden = self.model.model.embed_tokens(input_ids)  # input_ids, positions: (rows, width) -> (rows, width, hidden)
        cos, sin = self.model.model.rotary_emb(hidden, positions)  # (rows, width, head_dim)
        normed = self._norm(self.layers[0].layer.input_layernorm, hidden)
        for layer_index, weights in enumerate(self.layers):
            layer = weights.layer
            qkv = weights.qkv(normed)  # (rows, width, (heads + 2 kv_heads) head_dim)
            # attend: -> (rows, width, hidden)
            hidden, normed = self._residual(weights.o, attend(layer_index, qkv, cos, sin, layer.self_attn.scaling),
                                            hidden, layer.post_attention_layernorm)
            gate_up = weights.gate_up(normed)  # (rows, width, 2 intermediate)
            following = self.layers[layer_index + 1].layer.input_layernorm if layer_index + 1 < len(self.layers) else None
            hidden, normed = self._residual(weights.down, self._gated(layer, gate_up), hidden, following)
        return hidden  # (rows, width, hidden)

    def _residual(self, linear: PackedLinear, x: torch.Tensor, residual: torch.Tensor, norm: torch.nn.Module | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(residual + linear(x), `norm` of it): a sublayer's residual connection and the norm after it (the next
        sublayer's; None after the last layer, whose norm `_logits` applies to the rows it needs). For a bf16 model
        where the kernel is built, the add and the norm are one pass; else the add is fused into the matmul (fp32)."""
        if self.fuses and norm is not None:
            total = linear(x)
            return total, ragged_attention.add_rms_norm(total, residual, norm.weight, norm.variance_epsilon)
        total = linear.plus(x, residual)
        return total, None if norm is None else self._norm(norm, total)

    def _norm(self, norm: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The model's RMSNorm: the kernel's one pass for a bf16 model where it is built, else torch's op."""
        if self.fuses:
            return ragged_attention.rms_norm(hidden, norm.weight, norm.variance_epsilon)
        return _rms_norm(norm, hidden)

    def _gated(self, layer, gate_up: torch.Tensor) -> torch.Tensor:
        """The MLP's act_fn(gate) * up, from the fused gate/up projection."""
        if self.fuses:
            return ragged_attention.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return layer.mlp.act_fn(gate).mul_(up)

    def _rotated(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Queries (rows, heads, width, head_dim), keys and values (rows, kv_heads, width, head_dim) of a fused Q/K/V
        projection (rows, width, ...), RoPE applied to queries and keys at once."""
        from transformers.models.llama.modeling_llama import rotate_half

        rows, width = qkv.shape[:2]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        qk, v = qkv.split([(heads + kv_heads) * head_dim, kv_heads * head_dim], dim=-1)
        qk = qk.view(rows, width, heads + kv_heads, head_dim).transpose(1, 2)  # (rows, heads + kv_heads, width, head_dim)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        qk = qk * cos + rotate_half(qk) * sin
        return qk[:, :heads], qk[:, heads:], v.view(rows, width, kv_heads, head_dim).transpose(1, 2)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._norm(self.model.model.norm, hidden))


MADV_POPULATE_WRITE = 23  # Linux 5.14+: fault a range in for writing, in one call


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def fault_in(tensor: torch.Tensor) -> torch.Tensor:
    """A freshly allocated CPU tensor with its pages faulted in by one madvise call. A cache's first writes otherwise
    fault it in page by page, and in a VM each fault is costly: measured on a 2-core VM, 96 prompts' prefill took
    2.5-3 s longer into a fresh 1.6 GB cache than into the same cache written before, while faulting it in took 0.16 s.
    Memory the VM's host has not backed yet costs far more at its first touch, however it is touched (another 2-core
    VM: 4.3 s for 1.5 GB, then 0.08 s for the same memory again), hence the engine's arena.
    Where the call is missing (another OS, an older kernel) the pages fault in on first write, as before."""
    libc = _libc()
    if tensor.device.type == "cpu" and libc is not None and tensor.numel():
        page = 4096
        start = tensor.data_ptr() // page * page
        end = tensor.data_ptr() + tensor.numel() * tensor.element_size()
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_POPULATE_WRITE)  # advice only: no error
    return tensor


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


@functools.cache
def keep_freed_memory() -> None:
    """Let glibc reuse freed activations instead of handing them back to the OS: each layer's outputs (up to ~12 MB in
    a prefill chunk) are allocated and freed again and again, and an allocation past glibc's mmap threshold, or heap
    memory it trimmed, comes back as fresh pages that fault in one by one (costly in a VM). Serving up to 32 MB from
    the heap and trimming past 1 GB only: measured on a 2-core Zen 5 VM, the peers' 128-prompt call 8% faster (median
    of 3 paired rounds against a fixed 128 kB threshold; 1.5-4.1% against glibc's defaults, 3 paired processes).
    PyTorch's CPU tuning guide swaps in jemalloc or tcmalloc for the same reason; this needs no preload. Once per
    process, glibc only (elsewhere nothing changes)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def _rms_norm(norm: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm (Llama's and Qwen2's: the same formula) as torch's one op: bitwise its result, in fewer passes."""
    return torch.nn.functional.rms_norm(hidden, norm.weight.shape, norm.weight, norm.variance_epsilon)


def _prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Grouped-query attention of many new positions, causal unless `mask` is given, as (rows, positions, hidden)."""
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                                           enable_gqa=True)
    return out.transpose(1, 2).flatten(2)
