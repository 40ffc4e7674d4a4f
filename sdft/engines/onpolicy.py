"""On-policy self-distillation (Shenfeld et al. 2026, arXiv 2601.19897) with TRL's `SDFTTrainer`.

The student samples answers to the training prompt (`prompt`); the teacher scores the same answers conditioned on the
demonstration (`privileged_context`) and the student is trained towards its token distributions. sdft hands TRL both
prompts already rendered as text, so the only difference from SDFT (Yang et al. 2024) is on-policy distillation instead
of an off-policy rewrite: same rows, same seed model, same LoRA and budget, same distillation-template prompt.

Two adaptations, both because TRL builds chat prompts itself while sdft renders them (a template's own system prompt,
an assistant prefix, raw mode):
- TRL's teacher prompt is `teacher_prompt_template` joining the student's prompt and the context into one user turn;
  here `privileged_context` is the whole rendered teacher prompt and is used as it is.
- TRL tokenizes a text prompt with the tokenizer's special tokens, which would put a second BOS after a chat
  template's own; here a prompt is tokenized as `sdft train` tokenizes it (`models.needs_bos`).
- TRL cuts a prompt longer than max_prompt_length at its start, BOS included; here its leading special token is kept,
  as `sdft train`'s default truncation keeps it, and `onpolicy_row_counts` says how many prompts are cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdft.engines.training import (TrainerSettings, keep_prompt_end, leading_special_tokens, prompt_token_ids,
                                   run_training, trainer_arguments)


@dataclass
class OnPolicyRow:
    prompt: str  # the training prompt, as the student sees it
    teacher_prompt: str  # the distillation template's prompt, demonstration included


def _trainer_class():
    """SDFTTrainer with sdft's prompts (see the module docstring); built lazily so importing sdft needs no TRL."""
    from trl.experimental.sdft import SDFTTrainer
    from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder

    class RenderedTeacherPrompt(DemonstrationTeacherContextBuilder):
        def _compose_teacher_prompt(self, prompt, privileged_context):
            return privileged_context

    class RenderedPromptsTrainer(SDFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher_context_builder = RenderedTeacherPrompt(self)

        def _tokenize_prompts(self, prompts):
            tokenizer = self._tokenizer
            ids = [prompt_token_ids(tokenizer, p) for p in prompts]
            if not self.max_prompt_length:
                return ids
            return [keep_prompt_end(i, self.max_prompt_length, leading_special_tokens(i, tokenizer)) for i in ids]

    return RenderedPromptsTrainer


def onpolicy_row_counts(tokenizer, rows: list[OnPolicyRow], max_prompt_length: int) -> dict[str, int]:
    """What max_prompt_length cuts, for train_metrics.json: the rows whose prompt, or whose teacher's prompt (the
    demonstration in it), loses its start. None is dropped: the answers trained on are sampled, never cut away."""
    def cut(prompt: str) -> bool:
        return len(prompt_token_ids(tokenizer, prompt)) > max_prompt_length

    return {"total": len(rows), "trained": len(rows), "prompt_cut": sum(cut(r.prompt) for r in rows),
            "teacher_prompt_cut": sum(cut(r.teacher_prompt) for r in rows)}


def train_onpolicy(model, tokenizer, rows: list[OnPolicyRow], out_dir: Path, settings: TrainerSettings, peft_config,
                   options, max_prompt_length: int):
    """Run TRL's SDFTTrainer (resuming from the last checkpoint in out_dir); `options` is an `OnPolicyOptions`.
    Generation is TRL's transformers `generate` on the training device (no vLLM), in fp32 on a CPU."""
    from datasets import Dataset
    from trl.experimental.sdft import SDFTConfig

    mode = options.distillation_mode
    arguments = trainer_arguments(settings, out_dir, model)
    if arguments["use_cpu"]:
        # bf16 autocast wraps the model's forward, so generation would sample in bf16 too: on a CPU keep all fp32
        arguments["bf16"] = False
    args = SDFTConfig(
        **arguments,
        gradient_checkpointing=False,  # TRL's default; sdft's supervised training does not checkpoint either
        teacher_model_kind=options.teacher,
        distillation_mode=mode,
        distillation_topk=options.distillation_topk,
        # sampled_token is reverse KL only, which TRL spells alpha = 1
        **({"distillation_alpha": 1.0} if mode == "sampled_token" else {}),
        num_generations=options.num_generations,
        max_completion_length=options.max_completion_length,
        max_prompt_length=max_prompt_length,
        use_vllm=False,
    )
    dataset = Dataset.from_list([{"prompt": r.prompt, "privileged_context": r.teacher_prompt} for r in rows])
    trainer = _trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                               peft_config=peft_config)
    return trainer, run_training(trainer, out_dir, snapshot_steps=settings.snapshot_steps)
