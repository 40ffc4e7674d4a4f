"""Model loading under concurrency: two processes converting the same GGUF into the shared cache at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import transformers

from sdft.engines.models import convert_gguf


def test_gguf_conversion_keeps_the_copy_another_process_published_first(tmp_path, tiny_model_dir, monkeypatch):
    """The loser of the race must neither fail (rename onto a non-empty folder) nor leave its temp copy behind."""
    monkeypatch.setenv("SDFT_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")  # the loaders are replaced below: only the magic bytes are read
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    save_tokenizer = tokenizer.save_pretrained

    def save_then_lose_the_race(folder, *args, **kwargs):
        save_tokenizer(folder, *args, **kwargs)
        rival = Path(folder).with_suffix("")  # "<name>-<hash>.tmp<pid>" -> "<name>-<hash>": the rival finishes first
        shutil.copytree(tiny_model_dir, rival)
        (rival / "rival").touch()

    tokenizer.save_pretrained = save_then_lose_the_race
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: transformers.LlamaForCausalLM.from_pretrained(tiny_model_dir))
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda *a, **k: transformers.LlamaConfig.from_pretrained(tiny_model_dir))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)

    target = convert_gguf(gguf)
    assert (target / "rival").is_file(), "the published copy was replaced"
    assert [p.name for p in target.parent.iterdir()] == [target.name], "a temp copy was left in the cache"
