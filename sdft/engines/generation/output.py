"""Resumable generation output: each completed row goes to a JSONL file (`sdft.core.jsonl.ResumableJsonl`) as it finishes,
keyed by id + prompt hash, so a killed run resumes with only the missing rows."""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

from sdft.core.jsonl import ResumableJsonl
from sdft.engines.generation.interfaces import Engine
from sdft.engines.options import DecodingOptions


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def generate_rows(engine: Engine, items: Sequence[tuple[str, str]], decoding: DecodingOptions, out_path: str | os.PathLike,
                  progress: str | None = None) -> list[dict]:
    """Complete (id, prompt) items into `out_path` JSONL, resuming: rows keyed by id + prompt hash are never redone."""
    from tqdm.auto import tqdm

    def key(row: dict) -> str:
        return f"{row['id']}|{row['prompt_hash']}"

    keys = [f"{item_id}|{prompt_hash(prompt)}" for item_id, prompt in items]
    store = ResumableJsonl(out_path, key)
    done = [i for i, k in enumerate(keys) if k in store]
    bar = tqdm(total=len(items), initial=len(done), desc=progress or "generate", unit="row", disable=progress is None)
    try:
        for finished in engine.complete([prompt for _, prompt in items], decoding, skip=done):
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
