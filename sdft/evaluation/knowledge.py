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
Without the local copy (no data folder, nothing downloaded by `sdft data download`), a task runs lm-eval's stock config
on its hub dataset instead: lm-eval's own documents and ids, so its scores are not those of the local copy.
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
from sdft.data.datasets import subsample_indices

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
    reference: Callable[[dict], Any]  # a doc in the hub dataset's schema -> gold option index (list for mc2)
    prompt_field: str | None = None  # doc field to log as the prompt when contexts differ per choice (partial eval)
    overrides: dict = field(default_factory=dict)  # extra YAML keys on top of lm-eval's config
    hub_overrides: dict = field(default_factory=dict)  # keys that make lm-eval's hub dataset this one task

    @property
    def lm_eval_metric(self) -> str:
        """lm-eval's per-sample key: its truthfulqa_mc2 logs the MC2 value under `acc`."""
        return "acc" if self.metric == "mc2" else self.metric

    def yaml_config(self, name: str, docs_path: Path | None, cache_dir: Path) -> dict:
        """The task YAML: lm-eval's config with the dataset replaced by the local JSONL at `docs_path`; None: lm-eval's
        stock config, which reads its hub dataset."""
        import lm_eval.tasks

        base = Path(lm_eval.tasks.__file__).parent / self.lm_eval_config
        config = {"include": str(base), "task": task_name(name), "tag": []}
        if docs_path is None:
            return {**config, **self.hub_overrides, **self.overrides}
        return {
            **config,
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
        reference=lambda doc: doc["answer"],
        hub_overrides={"dataset_name": "all"},  # cais/mmlu's 57 subjects in one split, with their `subject`
        # lm-eval's per-subject description (mmlu/_generate_configs.py), rendered per document.
        overrides={"description": "The following are multiple choice questions (with answers) about "
                                  "{{subject.split('_') | join(' ')}}.\n\n"})),
    ("arc_challenge", KnowledgeTask(
        "arc_challenge/arc_challenge_test_parsed.jsonl", "acc_norm", "arc/arc_challenge.yaml", _arc_doc,
        reference=lambda doc: doc["choices"]["label"].index(doc["answerKey"]))),
    ("hellaswag", KnowledgeTask(
        "hellaswag/hellaswag_val.jsonl", "acc_norm", "hellaswag/hellaswag.yaml", _hellaswag_doc,
        reference=lambda doc: int(doc["label"]))),
    ("winogrande", KnowledgeTask(
        "winogrande/winogrande_dev_parsed.jsonl", "acc", "winogrande/default.yaml",
        lambda row: {key: row[key] for key in ("sentence", "option1", "option2", "answer")},
        reference=lambda doc: int(doc["answer"]) - 1, prompt_field="sentence")),
    # The reference reports lm-eval's `truthfulqa` group `acc`: the mean of MC1 and MC2 (the generation task has no acc).
    ("truthfulqa_mc1", KnowledgeTask(
        "truthfulqa/mc_task.jsonl", "acc", "truthfulqa/truthfulqa_mc1.yaml", _truthfulqa_doc,
        reference=lambda doc: doc["mc1_targets"]["labels"].index(1))),
    ("truthfulqa_mc2", KnowledgeTask(
        "truthfulqa/mc_task.jsonl", "mc2", "truthfulqa/truthfulqa_mc2.yaml", _truthfulqa_doc,
        reference=lambda doc: [i for i, label in enumerate(doc["mc2_targets"]["labels"]) if label])),
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
    """Score, interval and, where the rows say what guessing scores, `chance` (0-100): a seed at chance has nothing
    the task can show it forgetting."""
    scores = [row["score"] for row in rows]
    lo, hi = bootstrap_ci(scores)
    chance = [row["chance"] for row in rows if "chance" in row]
    return {"score": 100 * float(np.mean(scores)), "n": len(rows), "ci95": [lo, hi], "metric": task.metric,
            **({"chance": 100 * float(np.mean(chance))} if len(chance) == len(rows) else {})}


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


def _sample_rows(task: KnowledgeTask, samples: list[dict], row_id: Callable[[int], str]) -> list[dict]:
    """One output row per evaluated document, named by `row_id` of lm-eval's `doc_id`."""
    out = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        out.append({
            "id": row_id(sample["doc_id"]),
            "prompt": _prompt(task, sample),
            "prediction": _prediction(task, sample),
            "reference": task.reference(sample["doc"]),
            "score": float(sample[task.lm_eval_metric]),
            "chance": _chance(task, sample),
        })
    return out


def _chance(task: KnowledgeTask, sample: dict) -> float:
    """What guessing scores on this item: one option of n right (acc), or the true options' share (mc2)."""
    options = len(sample["arguments"])
    if task.metric == "mc2":
        return len(task.reference(sample["doc"])) / options
    return 1 / options


def _hf_lm(model, tokenizer, batch_size: int):
    """lm-eval's wrapper around an in-memory model; lm-eval is an optional dependency."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise UserError("knowledge benchmarks need lm-eval: pip install 'sdft[lm-eval]'") from None
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def evaluate_knowledge(model, tokenizer, tasks: list[str], data_dir: Path, out_dir: Path,
                       limit: int | None | dict[str, int | None] = None, seed: int = 0,
                       batch_size: int = 8) -> dict[str, dict]:
    """Score `model` 0-shot on the named knowledge tasks; per-sample rows go to `out_dir/<task>.jsonl`.

    With `limit` (one for every task, or a task's own in a mapping), a seeded random subset of each task is scored,
    and the cut printed. A task whose output file already holds exactly the selected ids is not re-run. A task whose data file is not in `data_dir` runs lm-eval's stock task on the hub.
    Returns per task {"score" (0-100), "n", "ci95", "metric"}.
    """
    unknown = [name for name in tasks if name not in KNOWLEDGE_TASKS]
    if unknown:
        raise UserError(f"unknown knowledge task(s) {unknown}; known: {sorted(KNOWLEDGE_TASKS)}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    limits = limit if isinstance(limit, dict) else dict.fromkeys(tasks, limit)
    results: dict[str, dict] = {}
    pending: dict[str, tuple[list[dict], list[int]]] = {}
    for name in [name for name in tasks if (data_dir / KNOWLEDGE_TASKS[name].data_file).is_file()]:
        task = KNOWLEDGE_TASKS[name]
        rows = read_jsonl(data_dir / task.data_file)
        indices = subsample_indices(len(rows), seed, limits[name], source=name)
        done = _finished(out_dir / f"{name}.jsonl", [_row_id(name, rows[i], i) for i in indices])
        if done is not None:
            results[name] = _summary(task, done)
            continue
        pending[name] = (rows, indices)
    for name in [name for name in tasks if not (data_dir / KNOWLEDGE_TASKS[name].data_file).is_file()]:
        results[name] = _run_stock_task(model, tokenizer, name, out_dir, limits[name], seed, batch_size)
    if pending:
        with _offline():
            lm = _hf_lm(model, tokenizer, batch_size)
            for name, (rows, indices) in pending.items():  # one task at a time, so a killed run keeps finished tasks
                task = KNOWLEDGE_TASKS[name]
                samples = _run_lm_eval(lm, name, [task.to_doc(rows[i]) for i in indices])
                out_rows = _sample_rows(task, samples,
                                        lambda doc_id: _row_id(name, rows[indices[doc_id]], indices[doc_id]))
                write_jsonl(out_dir / f"{name}.jsonl", out_rows)
                results[name] = _summary(task, out_rows)
    return {name: results[name] for name in tasks}


def _finished(out_path: Path, ids: list[str]) -> list[dict] | None:
    """The rows an earlier run wrote, when they are exactly those of `ids`."""
    if out_path.is_file():
        done = read_jsonl(out_path)
        if [row["id"] for row in done] == ids:
            return done
    return None


def _run_stock_task(model, tokenizer, name: str, out_dir: Path, limit: int | None, seed: int, batch_size: int) -> dict:
    """No local copy: lm-eval's stock config on its hub dataset, a seeded subset of its documents with `limit`. Rows
    are named by lm-eval's document index."""
    lm = _hf_lm(model, tokenizer, batch_size)  # first: it says so when lm-eval is missing
    import lm_eval

    task = KNOWLEDGE_TASKS[name]
    with _task_manager(name, None) as manager:
        try:  # building the task loads its hub dataset
            stock = manager.load(task_name(name))["tasks"][task_name(name)]
        except OSError as e:  # offline, unreachable or missing: datasets' errors are OSErrors
            raise UserError(f"{task.data_file}: not in the data directory, and lm-eval's {name} task cannot load its "
                            f"hub dataset ({type(e).__name__}); fetch the local copy with "
                            f"`sdft data download {task.data_file}`") from None
        indices = subsample_indices(len(stock.eval_docs), seed, limit, source=name)
        done = _finished(out_dir / f"{name}.jsonl", [f"{name}-{i}" for i in indices])
        if done is not None:
            return _summary(task, done)
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[stock],
            task_manager=manager,
            samples=None if limit is None else {task_name(name): indices},
            num_fewshot=0,
            log_samples=True,
            bootstrap_iters=0,
        )
    out_rows = _sample_rows(task, output["samples"][task_name(name)], lambda doc_id: f"{name}-{doc_id}")
    write_jsonl(out_dir / f"{name}.jsonl", out_rows)
    return _summary(task, out_rows)


@contextmanager
def _task_manager(name: str, docs: list[dict] | None):
    """lm-eval's task manager over a temp include dir holding the task YAML and `docs` (None: the hub dataset's)."""
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="sdft-knowledge-") as tmp:
        tmp = Path(tmp)
        docs_path = None
        if docs is not None:
            docs_path = tmp / f"{name}.docs.jsonl"
            write_jsonl(docs_path, docs)
        config = KNOWLEDGE_TASKS[name].yaml_config(name, docs_path, tmp / "hf_datasets_cache")
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        yield TaskManager(include_path=str(tmp), include_defaults=False)


def _run_lm_eval(lm, name: str, docs: list[dict]) -> list[dict]:
    """Score `docs` with lm-eval from a temp include dir holding them and the task YAML; returns its logged samples."""
    import lm_eval

    with _task_manager(name, docs) as manager:
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task_name(name)],
            task_manager=manager,
            num_fewshot=0,
            log_samples=True,
            bootstrap_iters=0,  # our own bootstrap CI replaces lm-eval's stderr
        )
    return output["samples"][task_name(name)]
