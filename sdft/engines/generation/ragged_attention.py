"""Decoding attention that reads only each slot's own cache columns: a small C++ kernel built once per machine with
torch's extension builder (g++ and ninja), cached under the sdft cache directory. Where it cannot be built (no
compiler, a torch it does not compile against) or is turned off (`SDFT_RAGGED_ATTENTION=0`), the stepper keeps its
matmul attention over the padded cache.

Decoding attention on CPU is bound by reading the KV cache; with continuous batching the slots' lengths spread out, so
the padded read is often a third or more wasted, and a slot left idle (its row finished) is not read at all.

On a CPU with AVX-512 BF16 the same extension also holds a bf16 model's RMSNorm and SiLU·up as one-pass ops (one
compiled extension per machine; torch runs each as a chain of bf16 ops)."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

from sdft.core.paths import cache_dir
from sdft.engines.dtype_probe import cpu_flags_hash

SOURCE = Path(__file__).with_suffix(".cpp")
log = logging.getLogger(__name__)


@functools.cache
def kernel():
    """The compiled extension, or None where it cannot be built or loaded here (no compiler or ninja, a torch whose
    extension API or headers changed, an unwritable cache): the matmul attention is the same arithmetic, only slower,
    and one warning per process says so."""
    if os.environ.get("SDFT_RAGGED_ATTENTION", "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load

        # -march=native: one build per CPU flag set (a cache folder may be shared by machines that differ)
        build = cache_dir() / "kernels" / f"ragged_attention-torch{torch.__version__}-{cpu_flags_hash()}"
        build.mkdir(parents=True, exist_ok=True)
        return load("sdft_ragged_attention", [str(SOURCE)], build_directory=str(build), verbose=False,
                    extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except Exception as error:
        log.warning("ragged decoding attention not built (%s); using matmul attention",
                    f"{type(error).__name__}: {error}".splitlines()[0])
        return None


def serves(head_dim: int) -> bool:
    """Whether the kernel is built here and vectorises this head_dim (a multiple of 8, at most 256)."""
    return head_dim % 8 == 0 and head_dim <= 256 and kernel() is not None


def usable(keys: torch.Tensor, query_dtype: torch.dtype) -> bool:
    """Whether the kernel serves this cache and queries: on CPU, fp32 queries (an fp32 model) over a cache in fp32 or
    fp16 (`kv_cache: fp16`), or bf16 queries (a bf16 model) over a bf16 cache; a head_dim it vectorises."""
    pairs = {torch.float32: (torch.float32, torch.float16), torch.bfloat16: (torch.bfloat16,)}
    return keys.device.type == "cpu" and keys.dtype in pairs.get(query_dtype, ()) and serves(keys.shape[-1])


def prefills(keys: torch.Tensor, query_dtype: torch.dtype) -> bool:
    """Whether prompts are better prefilled through the kernel too (fed all their tokens like a long draft) than through
    SDPA: a bf16 model over a bf16 cache where the kernel reads it with AVX-512 BF16 (head_dim 64 or 128). Measured on
    an AVX-512 BF16 EPYC: 96 prompts of the peers' workload prefilled in 15.1 s vs 18.5 s (SDPA computes the masked
    half of every causal block and needs the shared prefix's K/V copied beside each row's)."""
    return (usable(keys, query_dtype) and keys.dtype == torch.bfloat16 and keys.shape[-1] in (64, 128)
            and kernel().reads_bf16_pairs())


def fuses_bf16() -> bool:
    """Whether the kernel's fused bf16 SiLU·up, RMSNorm (alone or after a residual add) and argmax are built here (a
    CPU with AVX-512 BF16)."""
    return kernel() is not None and hasattr(kernel(), "silu_mul")


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """bf16(silu(gate)) * up, rounded, of a bf16 projection (..., 2 intermediate) = [gate, up]: one pass, not four."""
    return kernel().silu_mul(gate_up)


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm of bf16 rows (fp32 statistics, the normalized row rounded, times the weight): one pass."""
    return kernel().rms_norm(hidden, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x += residual (bf16, rounded as torch's add), then HF's RMSNorm of x, in one pass: a residual connection and the
    norm after it."""
    return kernel().add_rms_norm(x, residual, weight, eps)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Each row's argmax of bf16 logits (rows, vocab), the first of tied maxima: one vectorised pass, rows over threads."""
    return kernel().argmax_rows(logits)


def decode_layer(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 slot: torch.Tensor, column: torch.Tensor, row: torch.Tensor, offset: torch.Tensor, slots: torch.Tensor,
                 lengths: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """One decoding layer's attention from its fused Q/K/V projection of the fed tokens, qkv (tokens, (heads + 2 kv_heads)
    head_dim) in fp32 or bf16: RoPE (cos, sin: (tokens, head_dim)) on queries and keys, each token's key and value
    written to its slot and column of the cache, the queries laid out per row (`row`, and `offset` among the row's
    tokens) as the kernel's `decode_attention` takes them, attention in fp32, -> (tokens, heads head_dim) in token order
    and qkv's dtype."""
    return kernel().decode_layer(qkv.contiguous(), cos.contiguous(), sin.contiguous(), keys, values, slot, column, row,
                                 offset, slots, lengths, heads, scale)
