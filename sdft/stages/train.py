"""Fine-tuning stage: vanilla (Eq. 2), SDFT (Eq. 5) or any mix — the same engine and settings, only the targets differ.

`mix_ratio` r picks, by a seeded order over example ids, the fraction r of rows trained on their distilled target
(r = 1 is SDFT, r = 0 vanilla). The order is fixed per seed, so the rows of r = 0.25 are among those of r = 0.5.

`method: onpolicy` trains the same rows, model, LoRA and budget with on-policy self-distillation instead
(`engines.onpolicy`): the student answers the training prompt, the teacher is the seed shown the row's target in the
dataset's distillation template, exactly the prompt `sdft distill` gives the seed.

What max_length cuts is counted per row (`rows` in train_metrics.json, one stderr line when any row was cut or
dropped): a row left without a target token is dropped, never trained on nothing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from sdft.core.distributed import is_main_process
from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl, write_json
from sdft.data.datasets import DATASETS, DatasetSpec, load_dataset, subsample
from sdft.data.templates import render
from sdft.engines.models import load_tokenizer, resolve_dtype, resolve_model
from sdft.engines.training import TrainerSettings, tokenize_example, train_model, trainable_examples
from sdft.options import TrainConfig
from sdft.stages.distill import distill_template


def mixed_targets(rows: list[dict], ratio: float, seed: int) -> list[tuple[dict, str]]:
    """(row, target) pairs: distilled target for the seeded fraction `ratio` of rows, the original for the rest."""
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"mix ratio must be in [0, 1], got {ratio}")
    order = sorted(rows, key=lambda r: hashlib.sha256(f"{seed}|{r['id']}".encode()).hexdigest())
    chosen = {r["id"] for r in order[: round(ratio * len(rows))]}
    return [(r, r["target"] if r["id"] in chosen else r["original"]) for r in rows]


def load_training_rows(config: TrainConfig) -> tuple[list[tuple[dict, str]], str, DatasetSpec | None]:
    """(row, target) pairs, the training template and the dataset's registry entry (None for an unknown dataset)."""
    path = Path(config.data)
    if path.suffix == ".jsonl" and path.is_file():
        rows = read_jsonl(path)
        if rows and all("target" in r and "original" in r for r in rows):
            template = config.template or rows[0].get("train_template", "alpaca")
            default = 0.0 if config.method == "onpolicy" else 1.0  # on-policy: the originals are the demonstrations
            ratio = default if config.mix_ratio is None else config.mix_ratio
            rows = subsample(rows, config.seed, config.limit, config.paper_subsample, str(path))
            return mixed_targets(rows, ratio, config.seed), template, DATASETS.get(_stats_dataset(path))
    if config.mix_ratio not in (None, 0.0):
        raise UserError("--mix-ratio > 0 needs distilled data (run `sdft distill` first)", config.data)
    data = load_dataset(config.data, config.data_dir, config.columns or None, config.limit, config.seed, config.split,
                        config.subset, config.paper_subsample)
    template = config.template or data.train_template
    return [(ex, ex["response"]) for ex in data.examples], template, data.spec


def onpolicy_rows(pairs: list[tuple[dict, str]], template, teacher_template, tokenizer, prompt_mode: str) -> list:
    """The student's prompt as `sdft train` renders it, and the teacher's: the distillation template shown the target
    as its reference answer, as `sdft distill` renders it."""
    from sdft.engines.onpolicy import OnPolicyRow

    return [OnPolicyRow(render(template, row, tokenizer, prompt_mode),
                        render(teacher_template, {**row, "response": target}, tokenizer, prompt_mode))
            for row, target in pairs]


def report_row_counts(counts: dict[str, int], max_length: int, rule: str) -> None:
    """One stderr line when max_length cut or dropped a row: a row trained on less than it holds is never silent."""
    cuts = {name: n for name, n in counts.items() if name not in ("total", "trained")}
    if any(cuts.values()) and is_main_process():
        print(f"sdft train: fitting {counts['total']} rows to max_length {max_length} ({rule}): "
              + ", ".join(f"{n} {name}" for name, n in cuts.items()), file=sys.stderr)


def _stats_dataset(path: Path) -> str | None:
    stats = path.with_name("distill_stats.json")
    if stats.is_file():
        return json.loads(stats.read_text()).get("dataset")
    return None


def train(config: TrainConfig) -> dict:
    """Fine-tune and save the adapter (or full model) in config.out; returns training metrics."""
    import torch
    from transformers import AutoModelForCausalLM

    pairs, template, spec = load_training_rows(config)
    if not pairs:
        raise UserError("no training rows", config.data)
    tokenizer = load_tokenizer(config.model)
    # Trainable weights stay fp32 under "auto"; bf16 comes from autocast (config.bf16) where the hardware is fast at it.
    dtype = torch.float32 if config.dtype == "auto" else resolve_dtype(config.dtype, "cpu")
    model = AutoModelForCausalLM.from_pretrained(resolve_model(config.model), dtype=dtype)
    lora = None
    if config.finetune == "lora":
        from peft import LoraConfig

        targets = "all-linear" if config.target_modules in (["all-linear"], "all-linear") else list(config.target_modules)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
    out = Path(config.out)
    settings = TrainerSettings(epochs=config.epochs or (spec.epochs if spec else None) or 3, max_steps=config.max_steps,
                               learning_rate=config.learning_rate, batch_size=config.batch_size,
                               micro_batch_size=config.micro_batch_size, seed=config.seed, save_steps=config.save_steps,
                               logging_steps=config.logging_steps, bf16=config.bf16,
                               snapshot_steps=tuple(config.eval_at_steps))
    if config.method == "onpolicy":
        from sdft.engines.onpolicy import onpolicy_row_counts, train_onpolicy

        rows = onpolicy_rows(pairs, template, distill_template(config.teacher_template, spec), tokenizer,
                             config.prompt_mode)
        row_counts = onpolicy_row_counts(tokenizer, rows, config.max_length)
        report_row_counts(row_counts, config.max_length, "on-policy: a prompt's start is cut")
        trainer, result = train_onpolicy(model, tokenizer, rows, out, settings, lora, config, config.max_length)
    else:
        from peft import get_peft_model

        examples, row_counts = trainable_examples([
            tokenize_example(tokenizer, render(template, row, tokenizer, config.prompt_mode), target,
                             config.max_length, config.truncation)
            for row, target in pairs])
        report_row_counts(row_counts, config.max_length, f"truncation {config.truncation}")
        if not examples:
            raise UserError(f"no row keeps a target token within max_length {config.max_length} "
                            f"(truncation {config.truncation})", config.data)
        torch.manual_seed(config.seed)
        if lora is not None:
            model = get_peft_model(model, lora)
        trainer, result = train_model(model, tokenizer, examples, out, settings)
    trainer.save_model(str(out))  # on every rank (sharded setups gather the weights); the main process writes
    distilled = sum(1 for row, target in pairs if row.get("accepted") and target == row.get("distilled"))
    metrics = {**result.metrics, "steps": result.global_step, "method": config.method, "examples": len(pairs), "distilled_targets": distilled,
               "template": template, "rows": row_counts}
    if trainer.is_world_process_zero():  # one writer for the rest under `accelerate launch`
        tokenizer.save_pretrained(str(out))
        if config.merge and config.finetune == "lora":
            trainer.model.merge_and_unload().save_pretrained(str(out / "merged"))
            tokenizer.save_pretrained(str(out / "merged"))
        write_json(out / "train_metrics.json", metrics)
    return metrics
