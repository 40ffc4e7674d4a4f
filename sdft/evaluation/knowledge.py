"""Knowledge benchmarks of the forgetting suite (MMLU, ARC-Challenge, HellaSwag, WinoGrande, TruthfulQA MC1/MC2), 0-shot.

Scored by lm-eval itself so the numbers are comparable with published ones: each task's YAML `include`s lm-eval's own
task config (prompt, choices, target, metric code) and only swaps the hub dataset for a local JSONL. Our data files
are reformatted copies (see ../shared/data/*/SOURCE.md), so each task converts a row into the schema of the hub
dataset that config expects. Known differences, forced by the data:
- hellaswag: the `ctx_a`/`ctx_b` split is lost, so lm-eval's `ctx_b.capitalize()` cannot be applied; the context is
  passed as `ctx_a` with an empty `ctx_b` (a prompt can differ in the case of one letter).
- arc_challenge: the AI2 choice labels are lost; labels A, B, C, ... are synthesised (they never reach the prompt).
- mmlu: one task over all 57 subjects, each prompt with its subject's description, which equals lm-eval's `mmlu`
  group score (a size-weighted mean of the subjects).
WinoGrande uses lm-eval's partial evaluation (each option fills the blank as context; the shared suffix is scored).
"""

from __future__ import annotations

import os
import string
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from sdft.analysis.stats import bootstrap_ci
from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl, write_jsonl
from sdft.core.registry import registry
from sdft.data.datasets import seeded_indices

_OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
# lm-eval puts this between context and continuation in all five configs; prediction lengths (acc_norm) exclude it.
_TARGET_DELIMITER = " "


@dataclass(frozen=True)
class KnowledgeTask:
    """One benchmark: our data file, the lm-eval config it reuses, and how our rows map onto that config."""

    data_file: str  # relative to the data dir
    metric: str  # reported metric: acc, acc_norm or mc2
    lm_eval_config: str  # lm-eval's task YAML, relative to lm_eval/tasks, whose prompt and scoring we reuse
    to_doc: Callable[[dict], dict]  # our row -> the hub dataset's schema that config reads
    reference: Callable[[dict], Any]  # our row -> gold option index (list of indices for mc2)
    prompt_field: str | None = None  # doc field to log as the prompt when contexts differ per choice (partial eval)
    overrides: dict = field(default_factory=dict)  # extra YAML keys on top of lm-eval's config

    @property
    def lm_eval_metric(self) -> str:
        """lm-eval's per-sample key: its truthfulqa_mc2 logs the MC2 value under `acc`."""
        return "acc" if self.metric == "mc2" else self.metric

    def yaml_config(self, name: str, docs_path: Path, cache_dir: Path) -> dict:
        """The task YAML: lm-eval's config with the dataset replaced by the local JSONL at `docs_path`."""
        import lm_eval.tasks

        base = Path(lm_eval.tasks.__file__).parent / self.lm_eval_config
        return {
            "include": str(base),
            "task": task_name(name),
            "tag": [],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(docs_path)}, "cache_dir": str(cache_dir)},
            "training_split": None,
            "validation_split": None,
            "fewshot_split": None,
            "test_split": "test",
            **self.overrides,
        }


def task_name(name: str) -> str:
    """Our lm-eval task name, distinct from lm-eval's built-in task of the same benchmark."""
    return f"sdft_{name}"


def _mmlu_doc(row: dict) -> dict:
    return {**row, "answer": "ABCD".index(row["answer"])}


def _arc_doc(row: dict) -> dict:
    labels = list(string.ascii_uppercase[: len(row["choices"])])
    return {"question": row["question"], "choices": {"text": row["choices"], "label": labels},
            "answerKey": labels[row["answer_index"]]}


def _hellaswag_doc(row: dict) -> dict:
    return {"activity_label": row["activity_label"], "ctx_a": row["ctx"], "ctx_b": "", "endings": row["endings"],
            "label": str(row["label"])}


def _targets(answers: dict[str, int]) -> dict:
    return {"choices": list(answers), "labels": list(answers.values())}


def _truthfulqa_doc(row: dict) -> dict:
    return {"question": row["question"], "mc1_targets": _targets(row["mc1_targets"]),
            "mc2_targets": _targets(row["mc2_targets"])}


KNOWLEDGE_TASKS: dict[str, KnowledgeTask] = registry("knowledge task", [
    ("mmlu", KnowledgeTask(
        "mmlu/mmlu_test.jsonl", "acc", "mmlu/default/_default_template_yaml", _mmlu_doc,
        reference=lambda row: "ABCD".index(row["answer"]),
        # lm-eval's per-subject description (mmlu/_generate_configs.py), rendered per document.
        overrides={"description": "The following are multiple choice questions (with answers) about "
                                  "{{subject.split('_') | join(' ')}}.\n\n"})),
    ("arc_challenge", KnowledgeTask(
        "arc_challenge/arc_challenge_test_parsed.jsonl", "acc_norm", "arc/arc_challenge.yaml", _arc_doc,
        reference=lambda row: row["answer_index"])),
    ("hellaswag", KnowledgeTask(
        "hellaswag/hellaswag_val.jsonl", "acc_norm", "hellaswag/hellaswag.yaml", _hellaswag_doc,
        reference=lambda row: row["label"])),
    ("winogrande", KnowledgeTask(
        "winogrande/winogrande_dev_parsed.jsonl", "acc", "winogrande/default.yaml",
        lambda row: {key: row[key] for key in ("sentence", "option1", "option2", "answer")},
        reference=lambda row: int(row["answer"]) - 1, prompt_field="sentence")),
    # The reference reports lm-eval's `truthfulqa` group `acc`: the mean of MC1 and MC2 (the generation task has no acc).
    ("truthfulqa_mc1", KnowledgeTask(
        "truthfulqa/mc_task.jsonl", "acc", "truthfulqa/truthfulqa_mc1.yaml", _truthfulqa_doc,
        reference=lambda row: list(row["mc1_targets"].values()).index(1))),
    ("truthfulqa_mc2", KnowledgeTask(
        "truthfulqa/mc_task.jsonl", "mc2", "truthfulqa/truthfulqa_mc2.yaml", _truthfulqa_doc,
        reference=lambda row: [i for i, label in enumerate(row["mc2_targets"].values()) if label])),
])


@contextmanager
def _offline() -> Iterator[None]:
    """Hub-offline environment for the duration of an evaluation, restored afterwards so other stages are unaffected.

    Libraries that read these variables at import time see them only if first imported inside this block; the local
    `json` dataset and an in-memory model need no hub access either way.
    """
    saved = {key: os.environ.get(key) for key in _OFFLINE_ENV}
    os.environ.update(_OFFLINE_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _row_id(name: str, row: dict, index: int) -> str:
    return str(row["id"]) if "id" in row else f"{name}-{index}"


def _summary(task: KnowledgeTask, rows: list[dict]) -> dict:
    scores = [row["score"] for row in rows]
    lo, hi = bootstrap_ci(scores)
    return {"score": 100 * float(np.mean(scores)), "n": len(rows), "ci95": [lo, hi], "metric": task.metric}


def _prediction(task: KnowledgeTask, sample: dict) -> int:
    """The option lm-eval's metric chose: argmax log-likelihood, per character of the option for acc_norm."""
    loglikelihoods = np.array([resp[0] for resp in sample["filtered_resps"]], dtype=float)
    if task.metric == "acc_norm":
        lengths = [len(args[1].removeprefix(_TARGET_DELIMITER)) for args in sample["arguments"]]
        loglikelihoods = loglikelihoods / np.array(lengths, dtype=float)
    return int(np.argmax(loglikelihoods))


def _prompt(task: KnowledgeTask, sample: dict) -> str:
    contexts = {args[0] for args in sample["arguments"]}
    return contexts.pop() if len(contexts) == 1 else sample["doc"][task.prompt_field]


def _sample_rows(name: str, task: KnowledgeTask, samples: list[dict], rows: list[dict], indices: list[int]) -> list[dict]:
    """One output row per evaluated document; lm-eval's `doc_id` is the position in the JSONL we wrote."""
    out = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        index = indices[sample["doc_id"]]
        row = rows[index]
        out.append({
            "id": _row_id(name, row, index),
            "prompt": _prompt(task, sample),
            "prediction": _prediction(task, sample),
            "reference": task.reference(row),
            "score": float(sample[task.lm_eval_metric]),
        })
    return out


def _hf_lm(model, tokenizer, batch_size: int):
    """lm-eval's wrapper around an in-memory model; lm-eval is an optional dependency."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise UserError("knowledge benchmarks need lm-eval: pip install 'sdft[lm-eval]'") from None
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def evaluate_knowledge(model, tokenizer, tasks: list[str], data_dir: Path, out_dir: Path, limit: int | None = None,
                       seed: int = 0, batch_size: int = 8) -> dict[str, dict]:
    """Score `model` 0-shot on the named knowledge tasks; per-sample rows go to `out_dir/<task>.jsonl`.

    With `limit`, a seeded random subset of each task is scored. A task whose output file already holds exactly the
    selected ids is not re-run. Returns per task {"score" (0-100), "n", "ci95", "metric"}.
    """
    unknown = [name for name in tasks if name not in KNOWLEDGE_TASKS]
    if unknown:
        raise UserError(f"unknown knowledge task(s) {unknown}; known: {sorted(KNOWLEDGE_TASKS)}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    results: dict[str, dict] = {}
    pending: dict[str, tuple[list[dict], list[int]]] = {}
    for name in tasks:
        task = KNOWLEDGE_TASKS[name]
        rows = read_jsonl(data_dir / task.data_file)
        indices = seeded_indices(len(rows), limit, seed)
        out_path = out_dir / f"{name}.jsonl"
        if out_path.is_file():
            done = read_jsonl(out_path)
            if [row["id"] for row in done] == [_row_id(name, rows[i], i) for i in indices]:
                results[name] = _summary(task, done)
                continue
        pending[name] = (rows, indices)
    if pending:
        with _offline():
            lm = _hf_lm(model, tokenizer, batch_size)
            for name, (rows, indices) in pending.items():  # one task at a time, so a killed run keeps finished tasks
                task = KNOWLEDGE_TASKS[name]
                samples = _run_lm_eval(lm, name, [task.to_doc(rows[i]) for i in indices])
                out_rows = _sample_rows(name, task, samples, rows, indices)
                write_jsonl(out_dir / f"{name}.jsonl", out_rows)
                results[name] = _summary(task, out_rows)
    return {name: results[name] for name in tasks}


def _run_lm_eval(lm, name: str, docs: list[dict]) -> list[dict]:
    """Score `docs` with lm-eval from a temp include dir holding them and the task YAML; returns its logged samples."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="sdft-knowledge-") as tmp:
        tmp = Path(tmp)
        docs_path = tmp / f"{name}.docs.jsonl"
        write_jsonl(docs_path, docs)
        config = KNOWLEDGE_TASKS[name].yaml_config(name, docs_path, tmp / "hf_datasets_cache")
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task_name(name)],
            task_manager=TaskManager(include_path=str(tmp), include_defaults=False),
            num_fewshot=0,
            log_samples=True,
            bootstrap_iters=0,  # our own bootstrap CI replaces lm-eval's stderr
        )
    return output["samples"][task_name(name)]
