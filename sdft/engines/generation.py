"""Batched generation: an HF engine (length-sorted, left-padded, token-budgeted batches with a KV cache and finished rows
dropped from the batch) and a vLLM engine behind the same interface, plus resumable JSONL output.

Llama-architecture models (the embedded SmolLM2 among them) decode through a lean forward with a preallocated KV cache;
other models through their own HF forward. Both compute what `model.generate` computes (greedy fp32 outputs agree).

Sampling draws each row's noise from a generator seeded by (seed, prompt), so a row's sample does not depend on which
other rows share its batch, and batches are fixed from the whole prompt set, so a resumed run reproduces the rows an
uninterrupted run would have written.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch

from ..jsonl import ResumableJsonl
from .models import needs_bos


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64  # rows per batch at most
    token_budget: int = 32768  # rows x (longest prompt + max_new_tokens) per batch at most
    stop: list[str] = field(default_factory=list)
    backend: str = "auto"  # auto | hf | vllm


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or stop string) | "length" (cut at max_new_tokens)
    n_tokens: int
    prompt_tokens: int


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def plan_batches(lengths: Sequence[int], config: GenerationConfig) -> list[list[int]]:
    """Indices grouped longest-first so rows in a batch pad little, under the row and token limits."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= config.batch_size or (len(current) + 1) * (longest + config.max_new_tokens) > config.token_budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class HFEngine:
    """Generation with a plain HF causal LM, decoding step by step over a shrinking batch."""

    def __init__(self, model, tokenizer, config: GenerationConfig):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.tokenizer.padding_side = "left"
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in [*eos, tokenizer.eos_token_id] if i is not None}

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        add_special = not prompts or needs_bos(self.tokenizer, prompts[0])
        return self.tokenizer(list(prompts), add_special_tokens=add_special)["input_ids"]

    def complete(self, prompts: Sequence[str], skip: Iterable[int] = ()) -> Iterator[list[tuple[int, Completion]]]:
        """Yield each finished batch as (prompt index, completion) pairs; batches wholly in `skip` are not run."""
        token_ids = self.encode(prompts)
        skip = set(skip)
        for batch in plan_batches([len(t) for t in token_ids], self.config):
            if all(i in skip for i in batch):
                continue
            completions = self._decode([token_ids[i] for i in batch], [prompts[i] for i in batch])
            yield list(zip(batch, completions))

    @torch.inference_mode()
    def _decode(self, batch_ids: list[list[int]], prompts: list[str]) -> list[Completion]:
        cfg = self.config
        stepper_class = LeanLlamaStepper if LeanLlamaStepper.supports(self.model) else HFStepper
        stepper = stepper_class(self.model, batch_ids, self.tokenizer.pad_token_id, cfg.max_new_tokens)
        generators = [self._row_generator(p) for p in prompts] if cfg.temperature > 0 else None
        slots = list(range(len(batch_ids)))  # original row of each batch position the stepper holds
        live = list(slots)  # positions still generating
        generated: list[list[int]] = [[] for _ in batch_ids]
        results: list[Completion | None] = [None] * len(batch_ids)
        logits = stepper.prefill()
        for _ in range(cfg.max_new_tokens):
            if len(live) < len(slots):
                logits = logits[torch.tensor(live, device=logits.device)]
            rows = [slots[k] for k in live]
            next_tokens = self._choose(logits.float(), [generators[r] for r in rows] if generators else None).tolist()
            still = []
            for position, row, token in zip(live, rows, next_tokens):
                reason = None
                if token in self.eos_ids:
                    reason = "stop"
                else:
                    generated[row].append(token)
                    if cfg.stop and self._hit_stop(generated[row]):
                        reason = "stop"
                    elif len(generated[row]) >= cfg.max_new_tokens:
                        reason = "length"
                if reason:
                    results[row] = self._finish(generated[row], reason, len(batch_ids[row]))
                else:
                    still.append(position)
            if not still:
                break
            tokens = [0] * len(slots)  # finished rows still held get a dummy token until the next compaction
            for position in still:
                tokens[position] = generated[slots[position]][-1]
            live = still
            # Drop finished rows once they are an eighth of the batch: the cache copy costs about as much as a step.
            if len(slots) - len(live) >= max(1, len(slots) // 8):
                stepper.select(live)
                slots = [slots[k] for k in live]
                tokens = [tokens[k] for k in live]
                live = list(range(len(slots)))
            logits = stepper.step(tokens)
        return [r or self._finish(generated[i], "length", len(batch_ids[i])) for i, r in enumerate(results)]

    def _row_generator(self, prompt: str) -> torch.Generator:
        seed = int(hashlib.sha256(f"{self.config.seed}|{prompt}".encode()).hexdigest()[:15], 16)
        return torch.Generator().manual_seed(seed)

    def _choose(self, logits: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
        if generators is None:
            return logits.argmax(-1)
        probs = torch.softmax(logits / self.config.temperature, dim=-1)
        if self.config.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.config.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        # Exponential-race sampling with per-row noise: argmax(p / E) samples from p.
        noise = torch.stack([torch.empty(probs.shape[-1]).exponential_(generator=g) for g in generators]).to(probs.device)
        return (probs / noise).argmax(-1)

    def _hit_stop(self, tokens: list[int]) -> bool:
        tail = self.tokenizer.decode(tokens[-16:], skip_special_tokens=True)
        return any(s in tail for s in self.config.stop)

    def _finish(self, tokens: list[int], reason: str, prompt_tokens: int) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in self.config.stop:
            if stop in text:
                text = text[: text.index(stop)]
                reason = "stop"
        return Completion(text=text, finish_reason=reason, n_tokens=len(tokens), prompt_tokens=prompt_tokens)


class HFStepper:
    """Any HF causal LM through its own forward and a DynamicCache (the general fallback)."""

    def __init__(self, model, batch_ids: list[list[int]], pad_id: int, max_new_tokens: int):
        from transformers import DynamicCache

        self.model = model
        device = model.device
        width = max(len(ids) for ids in batch_ids)
        self.input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch_ids], device=device)
        self.attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch_ids], device=device)
        self.positions = (self.attention.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=model.config)

    def _forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=self.attention, position_ids=self.positions, cache=self.cache,
                          use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def prefill(self) -> torch.Tensor:
        logits = self._forward(self.input_ids)
        self.positions = self.positions[:, -1:]
        return logits

    def step(self, tokens: list[int]) -> torch.Tensor:
        self.attention = torch.cat([self.attention, self.attention.new_ones((len(tokens), 1))], dim=1)
        self.positions = self.positions + 1
        return self._forward(torch.tensor(tokens, device=self.attention.device)[:, None])

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.attention.device)
        self.cache.batch_select_indices(index)
        self.attention, self.positions = self.attention[index], self.positions[index]


class LeanLlamaStepper:
    """A lean forward for Llama-architecture models, the same arithmetic as HF's with less per-step work: the KV cache is
    preallocated and written in place (no concatenation), grouped-query heads attend without copying K/V (the query
    heads sharing a KV head are folded into the query axis), and Q/K/V and gate/up each run as one matmul.
    On CPU those copies and per-op overheads, not the matmuls, dominate HF's decode step."""

    MODEL_TYPES = ("llama", "qwen2")

    @classmethod
    def supports(cls, model) -> bool:
        config = model.config
        full_attention = all(t == "full_attention" for t in (getattr(config, "layer_types", None) or ["full_attention"]))
        return config.model_type in cls.MODEL_TYPES and full_attention and type(model).__name__.endswith("ForCausalLM")

    def __init__(self, model, batch_ids: list[list[int]], pad_id: int, max_new_tokens: int):
        config = model.config
        self.model = model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = [self._fused(layer) for layer in model.model.layers]
        device, dtype = model.device, model.dtype
        width = max(len(ids) for ids in batch_ids)
        rows, capacity = len(batch_ids), width + max_new_tokens
        self.input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch_ids], device=device)
        pads = torch.tensor([width - len(ids) for ids in batch_ids], device=device)
        self.valid = torch.arange(capacity, device=device)[None, :] >= pads[:, None]  # (rows, capacity): key not padding
        self.positions = (torch.arange(width, device=device)[None, :] - pads[:, None]).clamp(min=0)
        shape = (rows, self.kv_heads, capacity, self.head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in self.layers]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in self.layers]
        self.length = 0  # cache columns filled

    @staticmethod
    def _fused(layer):
        """(layer, (QKV weight, bias), gate/up weight); rebuilt per batch (a fraction of a step) so they never go stale."""
        attn, mlp = layer.self_attn, layer.mlp
        qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
        bias = torch.cat([p.bias for p in qkv]) if attn.q_proj.bias is not None else None
        return layer, (torch.cat([p.weight for p in qkv]), bias), torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])

    def prefill(self) -> torch.Tensor:
        rows, width = self.input_ids.shape
        causal = torch.ones(width, width, dtype=torch.bool, device=self.input_ids.device).tril()
        # Padding queries attend to themselves only, so no row of the mask is empty (an empty row gives NaN).
        mask = (causal & self.valid[:, None, None, :width]) | torch.eye(width, dtype=torch.bool, device=causal.device)
        logits = self._forward(self.input_ids, self.positions, mask)
        self.positions = self.positions[:, -1:]
        return logits

    def step(self, tokens: list[int]) -> torch.Tensor:
        self.positions = self.positions + 1
        mask = self.valid[:, None, None, : self.length + 1]
        return self._forward(torch.tensor(tokens, device=self.valid.device)[:, None], self.positions, mask)

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.valid.device)
        for cache in (self.keys, self.values):
            for i, old in enumerate(cache):
                new = old.new_empty((len(keep), *old.shape[1:]))
                new[:, :, : self.length] = old[index, :, : self.length]
                cache[i] = new
        self.valid, self.positions = self.valid[index], self.positions[index]

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import rotate_half

        rows, width = input_ids.shape
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        group = heads // kv_heads
        start, end = self.length, self.length + width
        hidden = self.model.model.embed_tokens(input_ids)
        cos, sin = (t.unsqueeze(1) for t in self.model.model.rotary_emb(hidden, positions))
        for layer_index, (layer, (qkv_weight, qkv_bias), gate_up_weight) in enumerate(self.layers):
            x = layer.input_layernorm(hidden)
            qk, v = torch.nn.functional.linear(x, qkv_weight, qkv_bias).split(
                [(heads + kv_heads) * head_dim, kv_heads * head_dim], dim=-1)
            qk = qk.view(rows, width, heads + kv_heads, head_dim).transpose(1, 2)
            qk = qk * cos + rotate_half(qk) * sin  # RoPE on queries and keys at once
            q, k = qk[:, :heads], qk[:, heads:]
            keys, values = self.keys[layer_index], self.values[layer_index]
            keys[:, :, start:end] = k
            values[:, :, start:end] = v.view(rows, width, kv_heads, head_dim).transpose(1, 2)
            keys, values = keys[:, :, :end], values[:, :, :end]
            if width == 1:  # decode: fold each KV head's query heads into the query axis
                out = torch.nn.functional.scaled_dot_product_attention(q.reshape(rows, kv_heads, group, head_dim), keys, values,
                                                                       attn_mask=mask, scale=layer.self_attn.scaling)
                out = out.reshape(rows, 1, heads * head_dim)
            else:
                out = torch.nn.functional.scaled_dot_product_attention(
                    q, keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1), attn_mask=mask,
                    scale=layer.self_attn.scaling)
                out = out.transpose(1, 2).reshape(rows, width, heads * head_dim)
            hidden = hidden + layer.self_attn.o_proj(out)
            gate, up = torch.nn.functional.linear(layer.post_attention_layernorm(hidden), gate_up_weight).chunk(2, dim=-1)
            hidden = hidden + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        self.length = end
        return self.model.lm_head(self.model.model.norm(hidden[:, -1]))


class VLLMEngine:
    """vLLM on CUDA: the same interface, with vLLM's continuous batching doing the scheduling."""

    def __init__(self, model_path: str, config: GenerationConfig, dtype: str = "auto"):
        from vllm import LLM  # optional extra: pip install 'sdft[vllm]'

        from .models import load_tokenizer

        self.config = config
        self.tokenizer = load_tokenizer(model_path)  # the HF tokenizer renders prompts, as with HFEngine
        self.llm = LLM(model=model_path, dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, "auto"),
                       seed=config.seed)

    def complete(self, prompts: Sequence[str], skip: Iterable[int] = ()) -> Iterator[list[tuple[int, Completion]]]:
        from vllm import SamplingParams

        cfg = self.config
        todo = [i for i in range(len(prompts)) if i not in set(skip)]
        params = [SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p if cfg.temperature > 0 else 1.0,
                                 max_tokens=cfg.max_new_tokens, stop=list(cfg.stop) or None,
                                 seed=int(prompt_hash(f"{cfg.seed}|{prompts[i]}"), 16) % (2**31)) for i in todo]
        for start in range(0, len(todo), 1024):  # chunks so a kill loses at most one chunk
            chunk = todo[start : start + 1024]
            outputs = self.llm.generate([prompts[i] for i in chunk], params[start : start + 1024], use_tqdm=False)
            yield [(i, _vllm_completion(out)) for i, out in zip(chunk, outputs)]


def _vllm_completion(request_output) -> Completion:
    out = request_output.outputs[0]
    return Completion(text=out.text, finish_reason="length" if out.finish_reason == "length" else "stop",
                      n_tokens=len(out.token_ids), prompt_tokens=len(request_output.prompt_token_ids or []))


def vllm_available() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def make_engine(model_spec: str, config: GenerationConfig, dtype: str = "auto", adapter: str | None = None):
    """The vLLM engine when asked for (or on 'auto' with vLLM + CUDA present), else the HF engine."""
    from .models import load_model, merged_model_path

    if config.backend == "vllm" or (config.backend == "auto" and vllm_available()):
        return VLLMEngine(merged_model_path(model_spec, adapter), config, dtype)
    model, tokenizer = load_model(model_spec, dtype=dtype, adapter=adapter)
    return HFEngine(model, tokenizer, config)


def generate_rows(engine, items: Sequence[tuple[str, str]], out_path: str | os.PathLike, progress: str | None = None) -> list[dict]:
    """Complete (id, prompt) items into `out_path` JSONL, resuming: rows keyed by id + prompt hash are never redone."""
    from tqdm.auto import tqdm

    def key(row: dict) -> str:
        return f"{row['id']}|{row['prompt_hash']}"

    keys = [f"{item_id}|{prompt_hash(prompt)}" for item_id, prompt in items]
    store = ResumableJsonl(out_path, key)
    done = [i for i, k in enumerate(keys) if k in store]
    bar = tqdm(total=len(items), initial=len(done), desc=progress or "generate", unit="row", disable=progress is None)
    try:
        for finished in engine.complete([prompt for _, prompt in items], skip=done):
            for index, completion in finished:
                if keys[index] in store:
                    continue
                item_id, prompt = items[index]
                store.add({"id": item_id, "prompt_hash": prompt_hash(prompt), "prediction": completion.text,
                           "finish_reason": completion.finish_reason, "n_tokens": completion.n_tokens,
                           "prompt_tokens": completion.prompt_tokens})
                bar.update(1)
    finally:
        bar.close()
        store.close()
    return store.finalize(keys)
