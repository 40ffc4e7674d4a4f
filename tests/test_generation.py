"""The generation engine against HF `model.generate` (the reference code's way), its finish bookkeeping, seeded sampling,
batch planning and resumable output."""

from __future__ import annotations

import json
import random

import pytest
import torch

from sdft.data.templates import render
from sdft.engines import generation
from sdft.engines.generation import (
    HFEngine,
    LeanLlamaStepper,
    generate_rows,
    plan_batches,
    ragged_attention,
    scheduler,
    shared_prefixes,
)
from sdft.engines.options import DecodingOptions

PROMPTS = [
    "Hello there",
    "What is 2+2? Explain at length, step by step, and then give the final answer.",
    "a b c d e f g h i j k",
    "Write a haiku about the sea.",
    "Q: 17 * 3 = ?",
]


def tiny_model(config_class, model_class, tokenizer, init: float = 0.3):
    """A tiny random model with weights large enough that its next token depends on the whole context (at the usual
    0.02 init it mostly repeats its last input token), so a wrong cache or mask changes the output."""
    torch.manual_seed(0)
    config = config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, initializer_range=init, tie_word_embeddings=True,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id)
    return model_class(config).eval()


@pytest.fixture(scope="module")
def tiny(embedded_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    return tiny_model(LlamaConfig, LlamaForCausalLM, embedded_tokenizer), embedded_tokenizer


def reference(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy tokens from `model.generate` at batch 1, the plain path the engine must reproduce."""
    ids = tokenizer(prompt, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    tokens = out[0, ids.input_ids.shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def complete(model, tokenizer, prompts, decode_rows: int = 96, **decoding) -> dict:
    engine = HFEngine(model, tokenizer, decode_rows)
    return {i: c for batch in engine.complete(prompts, DecodingOptions(**decoding).decoding()) for i, c in batch}


def assert_batch_independent(engine: HFEngine) -> None:
    """Each of PROMPTS decodes (greedy, 16 tokens) to the same text alone as beside the others."""
    decoding = DecodingOptions(max_new_tokens=16).decoding()
    together = {i: c.text for batch in engine.complete(PROMPTS, decoding) for i, c in batch}
    for i, prompt in enumerate(PROMPTS):
        assert next(iter(engine.complete([prompt], decoding)))[0][1].text == together[i], prompt


@pytest.mark.parametrize("path", ["lean", "lean-matmul-attention", "hf-fallback"])
def test_greedy_matches_generate_at_batch_1(tiny, monkeypatch, path):
    model, tokenizer = tiny
    if path == "hf-fallback":
        monkeypatch.setattr(LeanLlamaStepper, "supports", classmethod(lambda cls, m: False))
    if path == "lean-matmul-attention":  # where the ragged kernel cannot be built
        monkeypatch.setattr(ragged_attention, "usable", lambda keys, query_dtype: False)
    prompts = PROMPTS + [render("alpaca", {"instruction": "Name a colour."}, tokenizer)]
    out = complete(model, tokenizer, prompts, max_new_tokens=24, decode_rows=4)
    for i, prompt in enumerate(prompts):
        expected = reference(model, tokenizer, prompt, 24)
        assert out[i].text == tokenizer.decode(expected, skip_special_tokens=True), prompt
        assert out[i].n_tokens == len(expected)
        assert out[i].prompt_tokens == len(tokenizer(prompt).input_ids)


def test_lean_qwen2_matches_generate(embedded_tokenizer):
    """Qwen2 goes through the lean stepper too: Llama's layout plus Q/K/V biases (packed with their weights)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = embedded_tokenizer
    model = tiny_model(Qwen2Config, Qwen2ForCausalLM, tokenizer)
    for attention in (layer.self_attn for layer in model.model.layers):  # random biases, so dropping one shows
        for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
            torch.nn.init.normal_(proj.bias, std=0.3)
    assert LeanLlamaStepper.supports(model)
    out = complete(model, tokenizer, PROMPTS, max_new_tokens=16, decode_rows=4)
    for i, prompt in enumerate(PROMPTS):
        assert out[i].text == tokenizer.decode(reference(model, tokenizer, prompt, 16), skip_special_tokens=True), prompt


def test_refilled_slots_decode_each_row_as_it_would_alone(tiny):
    """Rows stopping at different steps free slots that waiting rows take over mid-decode; every row's completion
    is still the one it gets when run on its own."""
    model, tokenizer = tiny
    prompts = [f"{p} {i}" for i in range(3) for p in PROMPTS]
    config = dict(max_new_tokens=16, temperature=1.0, seed=5, stop=["e"])
    alone = {i: complete(model, tokenizer, [p], decode_rows=1, **config)[0] for i, p in enumerate(prompts)}
    assert len({c.n_tokens for c in alone.values()}) > 3  # rows really do finish apart
    assert complete(model, tokenizer, prompts, decode_rows=3, **config) == alone


@pytest.mark.skipif(ragged_attention.kernel() is None, reason="the cache is allocated once only with the kernel")
def test_kv_cache_buffers_are_kept_for_the_next_call_and_never_shared_by_two_calls(tiny):
    """An engine keeps its cache buffers for its next call (their pages are already in: on a VM the first touch is the
    cost), and two calls running side by side never share them: each decodes as it would alone."""
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer)
    decoding = DecodingOptions(max_new_tokens=12).decoding()
    alone = {i: c.text for batch in engine.complete(PROMPTS, decoding) for i, c in batch}
    kept = [buffer.data_ptr() for buffer in engine.kv_arena]
    assert len(kept) == 2 * model.config.num_hidden_layers
    calls, texts = [engine.complete(PROMPTS, decoding), engine.complete(PROMPTS[::-1], decoding)], [{}, {}]
    running = [0, 1]
    while running:  # one batch of each call in turn: the second starts while the first holds the buffers
        for k in list(running):
            try:
                texts[k].update((i, c.text) for i, c in next(calls[k]))
            except StopIteration:
                running.remove(k)
    assert texts[0] == alone and texts[1] == {len(PROMPTS) - 1 - i: text for i, text in alone.items()}
    assert [buffer.data_ptr() for buffer in engine.kv_arena] == kept  # the first call's, given back


def test_shared_template_prefix_is_prefilled_once_and_changes_nothing(tiny, monkeypatch):
    model, tokenizer = tiny
    prompts = [render("alpaca", {"instruction": p}, tokenizer) for p in PROMPTS] + PROMPTS[:2]
    token_ids = HFEngine(model, tokenizer).encode(prompts)
    (prefix,) = shared_prefixes(token_ids)
    assert all(tuple(ids[: len(prefix)]) == prefix for ids in token_ids[:5])
    assert len({ids[len(prefix)] for ids in token_ids[:5]}) > 1  # the longest shared prefix, no longer
    prefilled = []
    original = LeanLlamaStepper._prefix_kv
    monkeypatch.setattr(LeanLlamaStepper, "_prefix_kv", lambda self, p: prefilled.append(p) or original(self, p))
    out = complete(model, tokenizer, prompts, max_new_tokens=12, decode_rows=2)
    assert prefilled and set(prefilled) == {prefix}
    for i, prompt in enumerate(prompts):
        assert out[i].text == tokenizer.decode(reference(model, tokenizer, prompt, 12), skip_special_tokens=True), prompt


def test_length_and_eos_finish_reasons(tiny):
    model, tokenizer = tiny
    out = complete(model, tokenizer, PROMPTS[:2], max_new_tokens=6)
    assert all(c.finish_reason == "length" and c.n_tokens == 6 for c in out.values())

    tokens = reference(model, tokenizer, PROMPTS[0], 12)
    eos = tokens[5]
    model.generation_config.eos_token_id = eos  # the engine treats this token as EOS
    try:
        (stopped,) = complete(model, tokenizer, PROMPTS[:1], max_new_tokens=12).values()
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert stopped.finish_reason == "stop"
    assert stopped.n_tokens == tokens.index(eos)


def test_stop_string_cuts_text(tiny):
    model, tokenizer = tiny
    text = tokenizer.decode(reference(model, tokenizer, PROMPTS[1], 20), skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip()
    (out,) = complete(model, tokenizer, PROMPTS[1:2], max_new_tokens=20, stop=[stop]).values()
    assert out.finish_reason == "stop"
    assert out.text == text[: text.index(stop)]
    assert out.n_tokens < 20


def test_seeded_sampling_is_reproducible_and_independent_of_batch(tiny):
    model, tokenizer = tiny
    config = dict(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3)
    together = complete(model, tokenizer, PROMPTS, decode_rows=8, **config)
    alone = complete(model, tokenizer, [PROMPTS[2]], decode_rows=1, **config)
    regrouped = complete(model, tokenizer, [PROMPTS[4], PROMPTS[2], PROMPTS[0]], decode_rows=2, **config)
    assert together[2] == alone[0] == regrouped[1]
    other_seed = complete(model, tokenizer, PROMPTS, decode_rows=8, **{**config, "seed": 4})
    assert any(other_seed[i].text != together[i].text for i in together)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "hf-fallback"])
def test_top_k_1_sampling_is_greedy_and_seeded_top_k_sampling_reproduces(tiny, monkeypatch, lean):
    model, tokenizer = tiny
    if not lean:
        monkeypatch.setattr(LeanLlamaStepper, "supports", classmethod(lambda cls, m: False))
    greedy = complete(model, tokenizer, PROMPTS, max_new_tokens=16, decode_rows=4)
    top1 = complete(model, tokenizer, PROMPTS, max_new_tokens=16, decode_rows=4, temperature=2.0, top_k=1, seed=5)
    assert {i: c.text for i, c in top1.items()} == {i: c.text for i, c in greedy.items()}
    config = dict(max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=20, seed=3)
    sampled = complete(model, tokenizer, PROMPTS, decode_rows=4, **config)
    assert complete(model, tokenizer, PROMPTS, decode_rows=3, **config) == sampled
    assert any(sampled[i].text != greedy[i].text for i in sampled)


def test_top_k_draws_only_among_the_k_likeliest():
    from sdft.engines.generation.scheduler import _choose

    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)).expand(400, 50)
    generators = [torch.Generator().manual_seed(i) for i in range(400)]
    drawn = _choose(logits, DecodingOptions(temperature=5.0, top_k=3), generators)
    assert set(drawn.tolist()) == set(logits[0].topk(3).indices.tolist())


def test_vllm_engine_passes_sampling_settings_per_request(monkeypatch):
    """vLLM gets top_k (-1, its "all", when greedy or unset), top_p, stop strings and a per-(seed, prompt) seed."""
    import sys
    from types import ModuleType, SimpleNamespace

    from sdft.engines.generation import VLLMEngine

    vllm = ModuleType("vllm")
    vllm.SamplingParams = lambda **settings: settings
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    engine = object.__new__(VLLMEngine)  # no LLM: its generate echoes the settings each prompt was given
    asked = []
    engine.llm = SimpleNamespace(generate=lambda prompts, params, use_tqdm: asked.extend(params) or [
        SimpleNamespace(outputs=[SimpleNamespace(text="x", finish_reason="stop", token_ids=[1])], prompt_token_ids=[1])
        for _ in prompts])

    def settings(**decoding):
        asked.clear()
        list(engine.complete(["a", "b"], DecodingOptions(max_new_tokens=8, stop=["\n#"], **decoding)))
        return asked[:]

    sampled = settings(temperature=0.95, top_p=0.7, top_k=50)
    assert [(p["top_k"], p["top_p"], p["stop"]) for p in sampled] == [(50, 0.7, ["\n#"])] * 2
    assert sampled[0]["seed"] != sampled[1]["seed"] and settings(temperature=0.95, top_p=0.7, top_k=50) == sampled
    assert [(p["top_k"], p["top_p"]) for p in settings(temperature=0.0, top_p=0.7, top_k=50)] == [(-1, 1.0)] * 2
    assert settings(temperature=1.0)[0]["top_k"] == -1


def test_plan_batches_respects_limits():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(200)]
    batches = plan_batches(lengths, rows=16, max_new_tokens=100, token_budget=3000)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for batch in batches:
        assert len(batch) <= 16
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * (longest + 100) <= 3000
        assert lengths[batch[0]] == longest  # longest first, so the first row sets the padding


def test_cache_budget_is_the_cpu_constant_and_on_a_gpu_a_share_of_its_free_memory(tiny, monkeypatch):
    from types import SimpleNamespace

    model, _ = tiny
    assert scheduler.cache_token_budget(model) == scheduler.TOKEN_BUDGET
    config = SimpleNamespace(num_hidden_layers=30, num_key_value_heads=3, num_attention_heads=9, hidden_size=576)
    gpu_model = SimpleNamespace(device=torch.device("cuda"), config=config, dtype=torch.bfloat16)
    per_token = 2 * 30 * 3 * 64 * 2  # K and V, layers, KV heads, head_dim, bytes
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * 2**30, 140 * 2**30))
    assert scheduler.cache_token_budget(gpu_model) == int(100 * 2**30 * scheduler.GPU_CACHE_SHARE) // per_token
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 140 * 2**30))
    assert scheduler.cache_token_budget(gpu_model) == scheduler.TOKEN_BUDGET  # never below the CPU's


class FailAfterFirstBatch:
    """An engine that dies after its first batch, like a killed run."""

    def __init__(self, engine):
        self.engine = engine

    def complete(self, prompts, decoding, skip=()):
        batches = self.engine.complete(prompts, decoding, skip)
        yield next(batches)
        raise KeyboardInterrupt


def test_generate_rows_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    model, tokenizer = tiny
    items = [(f"id{i}", p) for i, p in enumerate(PROMPTS)]
    decoding = DecodingOptions(max_new_tokens=8, temperature=0.8, seed=1)
    uninterrupted = generate_rows(HFEngine(model, tokenizer, 2), items, decoding, tmp_path / "full.jsonl")

    out = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_rows(FailAfterFirstBatch(HFEngine(model, tokenizer, 2)), items, decoding, out)
    assert not out.exists()
    assert len((tmp_path / "resumed.jsonl.partial").read_text().splitlines()) == 2
    resumed = generate_rows(HFEngine(model, tokenizer, 2), items, decoding, out)

    assert resumed == uninterrupted
    assert out.read_text() == (tmp_path / "full.jsonl").read_text()
    assert len({row["id"] for row in map(json.loads, out.read_text().splitlines())}) == len(items)


@pytest.mark.integration
def test_embedded_model_agrees_with_generate(shared_data):
    from sdft.engines.models import load_model

    model, tokenizer = load_model("smollm2-135m-instruct", dtype="fp32", device="cpu")
    gsm8k = [json.loads(line) for line in (shared_data / "gsm8k" / "sdft_gsm8k_train.jsonl").open()][:10]
    alpaca = [json.loads(line) for line in (shared_data / "alpaca" / "sdft_alpaca_train.jsonl").open()][:10]
    prompts = [render("gsm8k_distill", {"instruction": r["question"], "response": r["answer"]}, tokenizer) for r in gsm8k]
    prompts += [render("distill_using", {"instruction": "\n".join(filter(None, [r["instruction"], r["input"]])),
                                         "response": r["output"]}, tokenizer) for r in alpaca]
    assert generation.LeanLlamaStepper.supports(model)
    out = complete(model, tokenizer, prompts, max_new_tokens=48, decode_rows=32)
    agree = sum(out[i].text == tokenizer.decode(reference(model, tokenizer, p, 48), skip_special_tokens=True)
                for i, p in enumerate(prompts))
    assert agree >= 0.95 * len(prompts)


@pytest.mark.skipif(ragged_attention.kernel() is None, reason="no C++ compiler to build the kernel")
@pytest.mark.parametrize("dim", [24, 64, 128])  # a head_dim known at build time (64, 128) and one only at run time
def test_ragged_attention_equals_padded_matmul_attention(dim):
    """Each query attends to its own first columns of its row's slot only, whatever lies past them (garbage, NaN) and
    however wide the cache; slots not fed are not read (NaN throughout)."""
    torch.manual_seed(0)
    slots, kv_heads, queries, width = 5, 3, 4, 96
    keys, values = torch.randn(slots, kv_heads, width, dim), torch.randn(slots, kv_heads, width, dim)
    fed = torch.tensor([3, 0, 4])  # out of order; slots 1 and 2 idle
    # per query, e.g. a verify's fed tokens; 0 is a padding query (a slot fed fewer tokens than another): it attends
    # nothing and comes out zero
    lengths = torch.tensor([[1, 2, 0, 2], [17, 18, 19, 0], [64, 70, 80, 64]])
    ends = torch.zeros(slots, dtype=torch.long).index_put_((fed,), lengths.max(1).values)
    beyond = torch.arange(width)[None] >= ends[:, None]
    for cache in (keys, values):
        cache[beyond[:, None].expand(-1, kv_heads, -1)] = float("nan")
    q = torch.randn(len(fed), kv_heads, queries, dim)
    out = ragged_attention.kernel().decode_attention(q, keys[:, :, :80], values[:, :, :80], fed, lengths, 0.125)  # strided view
    for row, slot in enumerate(fed.tolist()):
        for m in range(queries):
            n = int(lengths[row, m])
            if n == 0:
                assert not out[row, :, m].any()
                continue
            scores = q[row, :, m : m + 1] @ keys[slot, :, :n].transpose(-1, -2) * 0.125
            torch.testing.assert_close(out[row, :, m : m + 1], scores.softmax(-1) @ values[slot, :, :n], rtol=1e-5, atol=1e-5)
    # an fp16 cache (kv_cache: fp16) is read as the same numbers widened to fp32
    keys16, values16 = keys.half(), values.half()
    torch.testing.assert_close(ragged_attention.kernel().decode_attention(q, keys16, values16, fed, lengths, 0.125),
                               ragged_attention.kernel().decode_attention(q, keys16.float(), values16.float(), fed, lengths, 0.125),
                               rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.skipif(ragged_attention.kernel() is None, reason="no C++ compiler to build the kernel")
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("queries", [12, 40])
def test_ragged_attention_over_a_bf16_cache_serves_many_queries_of_their_own_lengths(dim, queries):
    """A bf16 cache (a bf16 model's), read through AVX-512 BF16 where the CPU has it: several queries per row, as a
    verify's drafts feed them (12) or a prompt prefilled through the kernel (40: its tiled path), with causal lengths, a
    padding query, a query of one column and lengths across the 16-column blocks, each the attention over its own
    columns with fp32 scores and softmax; NaN past the longest is never read. A prompt's many queries weigh the values
    with probabilities rounded to bf16, as HF's eager and SDPA bf16 attention do; a few queries keep them in fp32."""
    torch.manual_seed(0)
    slots, kv_heads, width = 4, 2, 160
    keys = torch.randn(slots, kv_heads, width, dim).bfloat16()
    values = torch.randn(slots, kv_heads, width, dim).bfloat16()
    fed = torch.tensor([2, 0])
    lengths = torch.stack([torch.arange(100, 100 + queries), torch.randint(0, 140, (queries,))])
    lengths[1, :4] = torch.tensor([0, 1, 16, 17])
    ends = torch.zeros(slots, dtype=torch.long).index_put_((fed,), lengths.max(1).values)
    for cache in (keys, values):
        cache[(torch.arange(width)[None] >= ends[:, None])[:, None].expand(-1, kv_heads, -1)] = float("nan")
    q = torch.randn(len(fed), kv_heads, queries, dim).bfloat16().float()  # a bf16 model's queries
    out = ragged_attention.kernel().decode_attention(q, keys, values, fed, lengths, 0.125)
    probability_dtype = torch.bfloat16 if queries >= 32 else torch.float32
    # bf16 probabilities: where exp's last fp32 bit differs from torch's, a probability may round to the neighbouring bf16
    tolerance = 1e-4 if probability_dtype == torch.bfloat16 else 1e-5
    for row, slot in enumerate(fed.tolist()):
        for m in range(queries):
            n = int(lengths[row, m])
            if n == 0:
                assert not out[row, :, m].any()
                continue
            scores = q[row, :, m : m + 1] @ keys[slot, :, :n].float().transpose(-1, -2) * 0.125
            probabilities = scores.softmax(-1).to(probability_dtype).float()
            torch.testing.assert_close(out[row, :, m : m + 1], probabilities @ values[slot, :, :n].float(),
                                       rtol=1e-5, atol=tolerance)


@pytest.mark.skipif(ragged_attention.kernel() is None, reason="no C++ compiler to build the kernel")
@pytest.mark.parametrize("dtype, cache_dtype", [(torch.float32, torch.float32), (torch.float32, torch.float16),
                                                (torch.bfloat16, torch.bfloat16)])
def test_decode_layer_is_rope_cache_writes_and_attention_as_torch_computes_them(dtype, cache_dtype):
    """One kernel call per layer does what the matmul path does in torch ops: RoPE on queries and keys (bitwise as
    HF's `rotate_half` formula in the model's dtype, bf16 rounding included), each fed token's key and value written to
    its slot and column, the queries padded per row, attention, and the result back in token order and dtype. Two
    rows: one fed 3 tokens (a verify), one fed 1."""
    from transformers.models.llama.modeling_llama import rotate_half

    torch.manual_seed(0)
    heads, kv_heads, dim, slots, width = 6, 2, 16, 4, 24
    group = heads // kv_heads
    keys, values = torch.randn(slots, kv_heads, width, dim).to(cache_dtype), torch.randn(slots, kv_heads, width, dim).to(cache_dtype)
    fed_slots, fed_tokens, starts = [2, 0], [3, 1], [5, 9]  # slot 2 fed 3 tokens from column 5, slot 0 one at column 9
    row = torch.tensor([r for r, n in enumerate(fed_tokens) for _ in range(n)])
    offset = torch.tensor([j for n in fed_tokens for j in range(n)])
    slot = torch.tensor(fed_slots)[row]
    column = torch.tensor(starts)[row] + offset
    qkv = torch.randn(len(row), (heads + 2 * kv_heads) * dim).to(dtype)
    angles = column[:, None].float() * torch.rand(dim // 2)[None]
    cos, sin = torch.cat([angles, angles], -1).cos().to(dtype), torch.cat([angles, angles], -1).sin().to(dtype)
    seen = torch.zeros(len(fed_slots), max(fed_tokens), dtype=torch.long).index_put_((row, offset), column + 1)
    lengths = seen.repeat(1, group)
    expected_keys, expected_values = keys.clone(), values.clone()

    out = ragged_attention.decode_layer(qkv, cos, sin, keys, values, slot, column, row, offset, torch.tensor(fed_slots),
                                        lengths, heads, 0.25)
    qk = qkv[:, : (heads + kv_heads) * dim].view(len(row), heads + kv_heads, dim)
    qk = qk * cos[:, None] + rotate_half(qk) * sin[:, None]
    expected_keys[slot, :, column] = qk[:, heads:].to(cache_dtype)
    expected_values[slot, :, column] = qkv[:, (heads + kv_heads) * dim :].view(len(row), kv_heads, dim).to(cache_dtype)
    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
    assert out.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 8e-3  # the fp32 result rounded to bf16: within one bf16 step
    for t in range(len(row)):
        for h in range(heads):
            n, s = int(column[t]) + 1, int(slot[t])
            scores = qk[t, h].float() @ keys[s, h // group, :n].float().T * 0.25
            torch.testing.assert_close(out[t, h * dim : (h + 1) * dim].float(),
                                       scores.softmax(-1) @ values[s, h // group, :n].float(), rtol=tolerance, atol=tolerance)
    with pytest.raises(RuntimeError):  # a column past the cache is an error, not a write out of bounds
        ragged_attention.decode_layer(qkv, cos, sin, keys, values, slot, column + width, row, offset,
                                      torch.tensor(fed_slots), lengths, heads, 0.25)


@pytest.mark.skipif(ragged_attention.kernel() is None, reason="no C++ compiler to build the kernel")
def test_ragged_attention_refuses_reads_out_of_the_cache():
    """The kernel reads raw pointers: a slot id past the cache's slots or a length past its columns is an error, not
    a read out of bounds."""
    keys, values = torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
    q = torch.zeros(1, 1, 1, 8)
    with pytest.raises(RuntimeError):
        ragged_attention.kernel().decode_attention(q, keys, values, torch.tensor([2]), torch.tensor([[3]]), 1.0)
    with pytest.raises(RuntimeError):
        ragged_attention.kernel().decode_attention(q, keys, values, torch.tensor([1]), torch.tensor([[9]]), 1.0)
    assert ragged_attention.kernel().decode_attention(q, keys, values, torch.tensor([1]), torch.tensor([[8]]), 1.0).shape == q.shape
    assert ragged_attention.usable(torch.zeros(2, 1, 8, 8, dtype=torch.float16), torch.float32)
    assert not ragged_attention.usable(torch.zeros(2, 1, 8, 12), torch.float32)  # a head_dim it does not vectorise
    assert not ragged_attention.usable(torch.zeros(2, 1, 8, 8, dtype=torch.float16), torch.float16)  # fp16 queries
    assert ragged_attention.usable(torch.zeros(2, 1, 8, 8, dtype=torch.bfloat16), torch.bfloat16)  # a bf16 model
    assert not ragged_attention.usable(torch.zeros(2, 1, 8, 8, dtype=torch.bfloat16), torch.float32)


def test_lookup_draft_and_kept_tokens():
    history = [5, 6, 7, 8, 9, 1, 6, 7]
    assert scheduler.lookup_draft(history, 3) == [8, 9, 1]  # the trigram ends 6 7: what followed 6 7 before
    assert scheduler.lookup_draft([1, 2, 3], 2) == []  # 3 never occurred before
    assert scheduler.lookup_draft([4, 1, 4], 5) == [1, 4]  # a unigram match, cut at the history's end
    # 256 then 0 holds the bytes of token 1 across their boundary: not an occurrence of 1
    assert scheduler.lookup_draft([256, 0, 5, 1], 2) == []
    assert scheduler.lookup_draft([256, 0, 1, 9, 256, 0, 5, 1], 2) == [9, 256]
    assert scheduler._kept([10, 11, 12, 13], [11, 12, 99, 7]) == [11, 12, 99]  # 13 rejected: the model chose 99
    assert scheduler._kept([10, 11], [42, 11]) == [42]  # the first draft token already wrong
    assert scheduler._kept([10], [3, 4, 5]) == [3]  # no draft: one token, as a plain step


def test_speculation_keeps_greedy_output_in_fewer_forwards(embedded_tokenizer, monkeypatch):
    """Prompt-lookup drafts checked in one forward: the same tokens as plain greedy decoding and as `model.generate`,
    with some drafts accepted (lengths advance past them) and some rejected (their K/V masked, then overwritten)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = embedded_tokenizer
    model = tiny_model(LlamaConfig, LlamaForCausalLM, tokenizer, init=0.1)  # repeats itself now and then: drafts hit
    prompts = [p + " " + p for p in PROMPTS]
    drafted, accepted, verify = [], [], LeanLlamaStepper.verify

    def counting_verify(self, fed):
        logits = verify(self, fed)
        greedy = iter(logits.argmax(-1).tolist())  # fed tokens slot by slot
        for tokens in filter(None, fed):
            drafted.append(len(tokens) - 1)
            accepted.append(len(scheduler._kept(tokens, [next(greedy) for _ in tokens])) - 1)
        return logits

    monkeypatch.setattr(LeanLlamaStepper, "verify", counting_verify)
    speculated = complete(model, tokenizer, prompts, max_new_tokens=32, decode_rows=4)
    monkeypatch.setattr(scheduler, "SPECULATION_TOKENS", 0)
    plain = complete(model, tokenizer, prompts, max_new_tokens=32, decode_rows=4)
    assert 0 < sum(accepted) < sum(drafted)
    for i, prompt in enumerate(prompts):
        assert (speculated[i].text, speculated[i].n_tokens) == (plain[i].text, plain[i].n_tokens)
        assert speculated[i].text == tokenizer.decode(reference(model, tokenizer, prompt, 32), skip_special_tokens=True)


def test_int8_linear_is_close_to_fp32_and_each_rows_result_ignores_its_batch():
    """int8 weights per channel and activations per row: a few percent from fp32, and a row's output is the same
    alone or beside rows of any scale (continuous batching must not change a row's tokens)."""
    from sdft.engines.generation.lean_llama import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    quantized = Int8Linear(linear.weight, linear.bias)
    x = torch.randn(5, 64)
    exact = linear(x).detach()
    out = quantized(x)
    assert ((out - exact).norm(dim=1) / exact.norm(dim=1)).max() < 0.05
    beside = torch.cat([x[:1], 100 * torch.randn(7, 64), 1e-3 * torch.randn(3, 64)])
    assert torch.equal(quantized(beside)[:1], quantized(x[:1]))
    assert quantized(x.view(5, 1, 64)).shape == (5, 1, 48)


def test_int8_engine_is_batch_independent_and_refuses_what_it_cannot_run(tiny):
    """quantize: int8 decodes each prompt the same alone or in a batch; a bf16 model is refused."""
    from sdft.core.errors import UserError

    model, tokenizer = tiny
    assert_batch_independent(HFEngine(model, tokenizer, 4, quantize="int8"))
    with pytest.raises(UserError, match="quantize: int8"):
        HFEngine(model.to(torch.bfloat16), tokenizer, 4, quantize="int8")
    model.to(torch.float32)


@pytest.mark.skipif(ragged_attention.kernel() is None, reason="no C++ compiler to build the kernel")
def test_fp16_kv_cache_keeps_prefill_exact_decodes_close_and_refuses_what_it_cannot_run(tiny, monkeypatch):
    """kv_cache: fp16 stores K/V in fp16: the prompt's own logits are exact (it attends to its fp32 K/V), decoding steps
    come close to fp32's but not equal (they read the fp16 copy); each prompt decodes the same alone or in a batch;
    where the kernel cannot serve the cache (a bf16 model, no kernel) the option is refused."""
    from sdft.core.errors import UserError

    model, tokenizer = tiny
    ids = HFEngine(model, tokenizer).encode(PROMPTS)
    steppers = {kv: LeanLlamaStepper(model, len(ids), columns=64, kv_cache=kv) for kv in ("model", "fp16")}
    assert steppers["fp16"].keys[0].dtype == torch.float16 and steppers["fp16"].ragged
    with torch.inference_mode():
        first = {kv: stepper.admit(list(range(len(ids))), ids) for kv, stepper in steppers.items()}
        assert torch.equal(first["fp16"], first["model"])
        tokens = first["model"].argmax(-1).tolist()
        for _ in range(3):
            logits = {kv: stepper.step(tokens) for kv, stepper in steppers.items()}
            gap = (logits["fp16"] - logits["model"]).abs().max() / logits["model"].abs().max()
            assert 0 < gap < 1e-2
            tokens = logits["model"].argmax(-1).tolist()
    assert_batch_independent(HFEngine(model, tokenizer, 4, kv_cache="fp16"))
    monkeypatch.setattr(ragged_attention, "serves", lambda head_dim: False)
    with pytest.raises(UserError, match="kv_cache: fp16"):
        HFEngine(model, tokenizer, 4, kv_cache="fp16")


@pytest.mark.skipif(ragged_attention.kernel() is None, reason="no C++ compiler to build the kernel")
def test_bf16_model_decodes_through_the_kernel_close_to_the_matmul_attention(tiny, monkeypatch):
    """A bf16 model (what `--dtype auto` picks on a CPU with fast bf16 matmuls) decodes through the ragged kernel over a
    bf16 cache: the prompt's logits are the matmul path's (the same prefill), each decoding step's come close (the
    kernel keeps scores and probabilities in fp32 where the matmuls round them to bf16), and each prompt decodes the
    same alone or in a batch."""
    import copy

    model, tokenizer = tiny
    model = copy.deepcopy(model).to(torch.bfloat16)
    ids = HFEngine(model, tokenizer).encode(PROMPTS)
    ragged = LeanLlamaStepper(model, len(ids), columns=64)
    with monkeypatch.context() as patch:
        patch.setattr(ragged_attention, "usable", lambda keys, query_dtype: False)
        matmul = LeanLlamaStepper(model, len(ids), columns=64)
    assert ragged.ragged and not matmul.ragged and ragged.keys[0].dtype == torch.bfloat16
    with torch.inference_mode():
        first = [stepper.admit(list(range(len(ids))), ids) for stepper in (ragged, matmul)]
        assert torch.equal(*first)
        tokens = first[0].argmax(-1).tolist()
        for _ in range(3):
            logits = [stepper.step(tokens).float() for stepper in (ragged, matmul)]
            assert (logits[0] - logits[1]).abs().max() / logits[1].abs().max() < 5e-2  # seen: 1.3-1.9e-2
            tokens = logits[1].argmax(-1).tolist()
    assert_batch_independent(HFEngine(model, tokenizer, 4))


@pytest.mark.skipif(not (ragged_attention.kernel() and ragged_attention.kernel().reads_bf16_pairs()),
                    reason="prompts are prefilled through the kernel only where it reads bf16 with AVX-512 BF16")
def test_bf16_prompts_prefilled_through_the_kernel_match_sdpa_prefill(embedded_tokenizer, monkeypatch):
    """Where the kernel reads a bf16 cache with AVX-512 BF16, prompts are prefilled through it (the shared prefix's K/V
    copied into each slot, the rest fed as one long draft): the same cache and next-token logits as SDPA's prefill up to
    bf16 rounding, rows admitted out of slot order given back in the order asked, and decoding goes on the same."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(embedded_tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()  # head_dim 64: the kernel's fast bf16 path
    prompts = [render("alpaca", {"instruction": p}, embedded_tokenizer) for p in PROMPTS]
    ids = HFEngine(model, embedded_tokenizer).encode(prompts)
    prefixes = shared_prefixes(ids)
    slots = [3, 0, 4, 1, 2]
    kernel = LeanLlamaStepper(model, len(ids), prefixes, columns=128)
    with monkeypatch.context() as patch:
        patch.setattr(ragged_attention, "prefills", lambda keys, query_dtype: False)
        sdpa = LeanLlamaStepper(model, len(ids), prefixes, columns=128)
    assert prefixes and kernel.ragged_prefill and not sdpa.ragged_prefill and kernel.fuses
    with torch.inference_mode():
        logits = [stepper.admit(slots, ids).float() for stepper in (kernel, sdpa)]
        assert torch.equal(kernel.lengths, sdpa.lengths)
        assert (logits[0] - logits[1]).abs().max() / logits[1].abs().max() < 5e-2
        for slot, row_ids in zip(slots, ids):
            for cache in ("keys", "values"):
                torch.testing.assert_close(getattr(kernel, cache)[0][slot, :, : len(row_ids)].float(),
                                           getattr(sdpa, cache)[0][slot, :, : len(row_ids)].float(), rtol=2e-2, atol=2e-2)
        tokens = [None] * len(ids)
        for slot, row_logits in zip(slots, logits[1]):
            tokens[slot] = int(row_logits.argmax())
        steps = [stepper.step(tokens).float() for stepper in (kernel, sdpa)]
        assert (steps[0] - steps[1]).abs().max() / steps[1].abs().max() < 5e-2


@pytest.mark.skipif(not (ragged_attention.kernel() and ragged_attention.kernel().reads_bf16_pairs()),
                    reason="rows are admitted beside a step only where prompts are prefilled through the kernel")
def test_rows_admitted_beside_a_step_match_admitting_them_after_it(embedded_tokenizer, monkeypatch):
    """A waiting row prefilled in the forward that steps and verifies the decoding rows (`admit_beside`) gives bitwise
    the logits, lengths and cache of admitting it in a forward of its own after that step; the engine's outputs are the
    same with it on or off, on more prompts than slots."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(embedded_tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    prompts = [render("alpaca", {"instruction": p}, embedded_tokenizer) for p in PROMPTS]
    ids = HFEngine(model, embedded_tokenizer).encode(prompts)
    prefixes = shared_prefixes(ids)
    beside, apart = (LeanLlamaStepper(model, 4, prefixes, columns=128) for _ in range(2))
    assert beside.admits_beside
    with torch.inference_mode():
        first = [stepper.admit([0, 2, 1], ids[:3]) for stepper in (beside, apart)]
        assert torch.equal(*first)
        tokens = first[0].argmax(-1).tolist()
        fed = [[tokens[0]], [tokens[2], 5, 7], [tokens[1]], None]  # slot 1 verifies a draft; slot 3 is free
        new_logits, fed_logits = beside.admit_beside([3], [ids[3]], fed)
        expected_fed = apart.verify(fed)
        apart.advance([1, 1, 1, 0])
        expected_new = apart.admit([3], [ids[3]])
        beside.advance([1, 1, 1, 0])
        assert torch.equal(new_logits, expected_new) and torch.equal(fed_logits, expected_fed)
        assert torch.equal(beside.lengths, apart.lengths)
        for cache in ("keys", "values"):
            for layer in range(config.num_hidden_layers):
                for slot, length in enumerate(beside.lengths.tolist()):
                    assert torch.equal(getattr(beside, cache)[layer][slot, :, :length],
                                       getattr(apart, cache)[layer][slot, :, :length])
    admitted_beside = []
    with monkeypatch.context() as patch:
        admit_beside = LeanLlamaStepper.admit_beside
        patch.setattr(LeanLlamaStepper, "admit_beside",
                      lambda self, *args: admitted_beside.append(args[0]) or admit_beside(self, *args))
        fused = complete(model, embedded_tokenizer, prompts, decode_rows=2, max_new_tokens=12)
    with monkeypatch.context() as patch:
        construct = LeanLlamaStepper.__init__

        def without_beside(self, *args, **kwargs):
            construct(self, *args, **kwargs)
            self.admits_beside = False

        patch.setattr(LeanLlamaStepper, "__init__", without_beside)
        plain = complete(model, embedded_tokenizer, prompts, decode_rows=2, max_new_tokens=12)
    assert admitted_beside and fused == plain


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_add_inside_the_matmul_is_bitwise_the_add_after_it(dtype):
    """`PackedLinear.plus` (oneDNN's add post-op in fp32) gives the very sums of adding the residual after the matmul,
    at decoding's and prefill's row counts, with and without bias, so the exact engine stays exact."""
    from sdft.engines.generation.lean_llama import PackedLinear

    generator = torch.Generator().manual_seed(0)
    for rows, (out_features, in_features) in [(1, (48, 32)), (96, (576, 1536)), (700, (96, 64))]:
        weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
        bias = torch.randn(out_features, generator=generator).to(dtype)
        x = torch.randn(1, rows, in_features, generator=generator).to(dtype)
        residual = torch.randn(1, rows, out_features, generator=generator).to(dtype)
        for linear in (PackedLinear(weight), PackedLinear(weight, bias)):
            assert torch.equal(linear.plus(x, residual), residual + linear(x))


@pytest.mark.skipif(not ragged_attention.fuses_bf16(), reason="the fused bf16 ops are built on AVX-512 BF16 CPUs only")
def test_fused_bf16_silu_mul_and_rms_norm_are_hf_modules_results():
    """A bf16 model's SiLU·up and RMSNorm (alone or after a residual add), each one pass in the kernel: SiLU·up bitwise torch's two ops (wide inputs,
    so exp's both tails are hit), RMSNorm HF's own module up to the last bf16 bit in a rare row (fp32 sums in another
    order), at decoding's and prefill's row counts and for a strided view as the stepper passes them."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    generator = torch.Generator().manual_seed(0)
    norm = LlamaRMSNorm(576, eps=1e-5).to(torch.bfloat16)
    norm.weight.data = torch.randn(576, generator=generator).to(torch.bfloat16)
    for rows in (1, 37, 700):
        gate_up = (torch.randn(1, rows, 2 * 1536, generator=generator) * 8).to(torch.bfloat16)
        gate, up = gate_up.chunk(2, dim=-1)
        assert torch.equal(ragged_attention.silu_mul(gate_up), torch.nn.functional.silu(gate) * up)
        hidden = (torch.randn(1, rows, 2 * 576, generator=generator) * 3).to(torch.bfloat16)[..., :576]  # strided rows
        expected, fused = norm(hidden), ragged_attention.rms_norm(hidden, norm.weight, norm.variance_epsilon)
        assert fused.shape == expected.shape
        differs = fused != expected
        assert differs.sum() <= rows * 576 // 1000
        assert ((fused.float() - expected.float()).abs()[differs] <= expected.float().abs()[differs] / 64).all()
        # a residual connection and the next norm in one pass: the sum bitwise torch's bf16 add (left in the first
        # argument), the norm bitwise the kernel's RMSNorm of that sum
        out, residual = hidden.contiguous() * 5, hidden.contiguous()
        total = out + residual
        assert torch.equal(ragged_attention.add_rms_norm(out, residual, norm.weight, norm.variance_epsilon),
                           ragged_attention.rms_norm(total, norm.weight, norm.variance_epsilon))
        assert torch.equal(out, total)


def test_greedy_tokens_is_argmax_first_of_ties():
    from sdft.engines.generation.scheduler import greedy_tokens

    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        logits = torch.randn(96, 4099, generator=generator).mul(2).round().to(dtype)  # many rows tie at their maximum
        logits[:, [3, 700, 4000]] = 9
        assert torch.equal(greedy_tokens(logits), logits.argmax(-1)) and (greedy_tokens(logits) == 3).all()
        logits[0], logits[1, 4098], logits[2, 17] = float("-inf"), 10, float("inf")  # all -inf; past the last 16; inf
        for view in (logits, logits[:, 5:], logits[:, :17]):  # strided rows; fewer columns than a vector's two
            assert torch.equal(greedy_tokens(view), view.argmax(-1))
        assert greedy_tokens(logits)[:3].tolist() == [0, 4098, 17]
