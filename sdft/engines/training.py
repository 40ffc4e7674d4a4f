"""Supervised fine-tuning engine shared by vanilla FT (Eq. 2) and SDFT (Eq. 5): one code path, one set of settings.

Built on transformers' Trainer, so `accelerate launch -m sdft train ...` runs it data-parallel on many GPUs (and DeepSpeed
through an accelerate config). Loss is on the response tokens only, end-of-turn token included; batches are grouped by
length to waste little on padding; bf16 autocast where the hardware runs it fast.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from sdft.core.distributed import world_size
from sdft.engines.models import needs_bos

IGNORE_INDEX = -100


@dataclass
class TrainingExample:
    input_ids: list[int]
    labels: list[int]
    prompt_cut: bool = False  # max_length took some of the prompt
    target_cut: bool = False  # max_length took some of the target

    @property
    def has_target(self) -> bool:
        return any(label != IGNORE_INDEX for label in self.labels)


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """A rendered prompt's ids, BOS added only where its text (a chat template's) does not already start with it."""
    return tokenizer(prompt, add_special_tokens=needs_bos(tokenizer, prompt))["input_ids"]


def leading_special_tokens(prompt_ids: list[int], tokenizer) -> int:
    """1 where the prompt opens with a special token (BOS, a chat template's first) that a cut at its start keeps, so
    the model still sees the start of a sequence; else 0."""
    return int(len(prompt_ids) > 1 and prompt_ids[0] in tokenizer.all_special_ids)


def keep_prompt_end(prompt_ids: list[int], room: int, head: int) -> list[int]:
    """The prompt in `room` tokens: its `head` leading special tokens and its end, where the question and the opening
    of the assistant's turn are (the last token wins over the head when only one fits)."""
    if len(prompt_ids) <= room:
        return prompt_ids
    head = min(head, room - 1)
    return prompt_ids[:head] + prompt_ids[len(prompt_ids) - (room - head):]


def tokenize_example(tokenizer, prompt: str, target: str, max_length: int,
                     truncation: str = "prompt_start") -> TrainingExample:
    """Prompt tokens are masked out of the loss; the target ends with the end-of-turn (EOS) token, which is trained.
    A long example is cut to `max_length` by one of three rules. `prompt_start` keeps the target and cuts the prompt's
    start (its leading special token kept): cut at the end, a long prompt would leave no target token to train on. A
    target longer than max_length keeps its start beside the smallest prompt tail (the head and one token). `total`
    cuts prompt + target at the end; `split` cuts each to its share of max_length, as the reference trained
    (`split_cutoff`)."""
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if truncation == "prompt_start":
        head = leading_special_tokens(prompt_ids, tokenizer)
        kept_target = target_ids[:max(max_length - min(len(prompt_ids), head + 1), 0)]
        kept_prompt = keep_prompt_end(prompt_ids, max_length - len(kept_target), head)
    elif truncation == "split":
        prompt_cap, target_cap = split_cutoff(len(prompt_ids), len(target_ids), max_length)
        kept_prompt, kept_target = prompt_ids[:prompt_cap], target_ids[:target_cap]
    elif truncation == "total":
        kept_prompt = prompt_ids[:max_length]
        kept_target = target_ids[:max_length - len(kept_prompt)]
    else:
        raise ValueError(f"unknown truncation {truncation!r}")
    return TrainingExample(kept_prompt + kept_target, [IGNORE_INDEX] * len(kept_prompt) + kept_target,
                           prompt_cut=len(kept_prompt) < len(prompt_ids), target_cut=len(kept_target) < len(target_ids))


def trainable_examples(examples: list[TrainingExample]) -> tuple[list[TrainingExample], dict[str, int]]:
    """The examples with a target token left to train on, and the row counts train_metrics.json reports: a row that
    max_length left without any target token is dropped and counted, never trained on nothing silently."""
    kept = [e for e in examples if e.has_target]
    return kept, {"total": len(examples), "trained": len(kept), "prompt_cut": sum(e.prompt_cut for e in kept),
                  "target_cut": sum(e.target_cut for e in kept), "dropped_no_target": len(examples) - len(kept)}


def split_cutoff(prompt_len: int, target_len: int, max_length: int) -> tuple[int, int]:
    """(prompt cap, target cap): LLaMA-Factory's `infer_max_len` as the reference ran it (sail-sg/sdft `reproduce`,
    src/llmtuner/data/preprocess.py): the target gets max_length's share in proportion to its length, at least one
    token (`reserved_label_len`), the prompt the rest. An example that fits is not cut. The float product is the
    reference's, so the caps match it to the token."""
    target_cap = max(int(max_length * (target_len / (prompt_len + target_len))), 1)
    return max_length - target_cap, target_cap


class ResponseCollator:
    """Right-pads a batch and asks the model for logits only from the first response position on.

    The vocabulary projection and the cross-entropy over ~50k classes are a large share of a small model's training
    step; prompt positions carry no loss, so their logits are skipped (`logits_to_keep`) and the labels cut to match.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)

        def padded(key, value):
            return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features])

        input_ids = padded("input_ids", self.pad_token_id)
        labels = padded("labels", IGNORE_INDEX)
        attention = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features])
        trained = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        # logits at position t predict token t + 1: keep from one before the first trained token
        start = max(int(trained[0]) - 1, 0) if len(trained) else 0
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels[:, start:],
                "logits_to_keep": torch.arange(start, width)}


@dataclass
class TrainerSettings:
    epochs: float
    max_steps: int
    learning_rate: float
    batch_size: int  # effective (per device x accumulation x devices)
    micro_batch_size: int
    seed: int
    save_steps: int
    logging_steps: int
    bf16: bool | None  # None = auto
    snapshot_steps: tuple[int, ...] = ()  # also save the trained weights at these steps (OUT/steps/step-N)


def use_bf16(requested: bool | None, model=None) -> bool:
    """bf16 autocast: as requested, else where CUDA supports it or this CPU measured it faster for the model's shapes."""
    if requested is not None:
        return requested
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from sdft.engines.dtype_probe import DEFAULT_SHAPE, cpu_auto_dtype

    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None)
    shape = (hidden, getattr(config, "intermediate_size", None) or 4 * hidden) if hidden else DEFAULT_SHAPE
    return cpu_auto_dtype(shape) == torch.bfloat16


def trainer_arguments(settings: TrainerSettings, out_dir: Path, model) -> dict:
    """The TrainingArguments every sdft training shares (supervised and on-policy): the budget, the optimizer and its
    schedule, the effective batch made up by accumulation, checkpoints under out_dir/checkpoints."""
    world = world_size()  # from the launcher's environment: the process group does not exist yet
    micro = min(settings.micro_batch_size, settings.batch_size)
    return dict(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=max(1, math.ceil(settings.batch_size / (micro * world))),
        max_grad_norm=1.0,
        optim="adamw_torch",
        weight_decay=0.0,
        bf16=use_bf16(settings.bf16, model),
        use_cpu=not torch.cuda.is_available(),
        logging_steps=settings.logging_steps,
        report_to="none",  # TensorBoard is attached by `run_training` so its logs land in out_dir/logs
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
    )


def snapshot_dir(out_dir: Path, step: int) -> Path:
    """Where training at `out_dir` keeps its weights of optimizer step `step` (a learning curve's point)."""
    return Path(out_dir) / "steps" / f"step-{step}"


def snapshot_callback(steps: tuple[int, ...], out_dir: Path):
    """A callback saving the trained weights (the adapter, or the whole model) after each of `steps`, for evaluating
    a learning curve from one run. Written to a temporary folder and renamed, so a kill mid-save leaves none; a step
    trained again after a resume is saved again."""
    from transformers import TrainerCallback

    class SnapshotAtSteps(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in steps and state.is_world_process_zero:
                target = snapshot_dir(out_dir, state.global_step)
                tmp = target.with_name(target.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                model.save_pretrained(str(tmp))
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)

    return SnapshotAtSteps()


def run_training(trainer, out_dir: Path, before_train=None, snapshot_steps: tuple[int, ...] = ()):
    """Train with TensorBoard logs in out_dir/logs, resuming from the newest complete checkpoint in out_dir, saving
    the weights at `snapshot_steps` (`snapshot_callback`)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    trainer.add_callback(TensorBoardCallback(SummaryWriter(log_dir=str(out_dir / "logs"))))
    if snapshot_steps:
        trainer.add_callback(snapshot_callback(tuple(snapshot_steps), out_dir))
    if before_train is not None:
        before_train(trainer)
    return trainer.train(resume_from_checkpoint=last_complete_checkpoint(Path(trainer.args.output_dir)))


def train_model(model, tokenizer, examples: list[TrainingExample], out_dir: Path, settings: TrainerSettings,
                before_train=None):
    """Run the Trainer (resuming from the last checkpoint in out_dir); `before_train(trainer)` lets the throughput
    measurements (perf/) instrument it."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    args = TrainingArguments(**trainer_arguments(settings, out_dir, model), train_sampling_strategy="group_by_length",
                             length_column_name="length")
    dataset = dataset.map(lambda row: {"length": len(row["input_ids"])})
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=ResponseCollator(tokenizer.pad_token_id))
    return trainer, run_training(trainer, out_dir, before_train, settings.snapshot_steps)


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing. It writes trainer_state.json last, so a kill while saving
    leaves a checkpoint without a readable one, which the Trainer would refuse to resume from: skip it (the step is
    saved again on the way)."""
    steps = []
    for path in folder.glob("checkpoint-*"):
        if not path.name.removeprefix("checkpoint-").isdigit():
            continue
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        steps.append((int(path.name.removeprefix("checkpoint-")), str(path)))
    return max(steps)[1] if steps else None
