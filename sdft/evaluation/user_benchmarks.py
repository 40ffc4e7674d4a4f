"""Benchmarks declared from the user's own held-out rows, so the learning axis of a report can be the user's task.

A task is a file and a check: `sdft eval --tasks 'my_task: heldout.jsonl:exact' --benchmarks gsm8k,my_task`, or an
experiment's top-level `tasks:` section (`my_task: {file: heldout.jsonl, check: exact, columns: {instruction: q,
response: a}}`). Its name is then valid wherever a benchmark's is (`eval.benchmarks`, `target_benchmark`,
`decision.measures`, `sdft score --benchmark`).

The rows are read and normalised as training data are (`data.datasets.load_dataset`: JSONL/JSON/CSV/Parquet, the same
column mapping, chat rows keeping their earlier turns); the prompt is the row's instruction, the reference its response.
They are read when the task is declared, so a bad file or column fails a dry run, not an evaluation an hour in.

Checks: a task kind (math, function_call, code) scores with the check its default selection rule keeps rewrites by, on
the same inputs (code: the row's `tests` and `entry_point`), and takes its registry target's metric and length cap, so a
user's task evaluated as the target agrees with how its rewrites were selected, as `check_targets` verifies for the
registry. `exact`: the stripped answer equals the stripped reference; `contains`: the answer contains the stripped
reference, case-sensitively; `regex`: the answer has a match (`re.search`) of the row's reference taken as a pattern, or
of one fixed `pattern`; `module:function`: `function(prediction, reference)` imported from `module` (on the Python
path), returning a bool or a number in [0, 1].
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sdft.core.config import Options, at_least, build_config, field
from sdft.core.errors import UserError
from sdft.data.datasets import load_dataset
from sdft.data.templates import TEMPLATES
from sdft.evaluation.benchmarks import BENCHMARKS, Benchmark, CheckScore, Sample
from sdft.evaluation.checks import SELECTION_RULES, default_rule

# A task kind's registry target (GSM8K or MultiArith, which agree; OpenFunctions; HumanEval): its metric and length cap.
TASK_TARGETS = {bench.selection[0]: bench for bench in BENCHMARKS.values() if bench.selection}
DEFAULT_MAX_NEW_TOKENS = 256  # a short answer to compare with a reference
NAME = re.compile(r"[A-Za-z0-9_-]+")  # a task names its output files; a dot would read as `<benchmark>.<metric>`


def _exact(prediction: str, reference: str) -> bool:
    return prediction.strip() == reference.strip()


def _contains(prediction: str, reference: str) -> bool:
    return reference.strip() in prediction


def _matches(prediction: str, pattern: str) -> bool:
    return re.search(pattern, prediction) is not None


# check -> (compare(prediction, reference), metric)
REFERENCE_CHECKS: dict[str, tuple[Callable[[str, str], bool], str]] = {
    "exact": (_exact, "exact_match"), "contains": (_contains, "contains"), "regex": (_matches, "regex_match"),
}
CHECK_KINDS = (*TASK_TARGETS, *REFERENCE_CHECKS, "module:function")


@dataclass(kw_only=True)
class TaskDeclaration(Options):
    """One `tasks:` entry written as a mapping (`FILE:CHECK` is short for {file, check})."""

    file: str = field(help="held-out rows: JSONL, JSON, CSV or Parquet with a prompt and a reference column")
    check: str = field(help=" | ".join(CHECK_KINDS))
    columns: dict = field({}, help="column mapping as for training data, e.g. {instruction: q, response: a}")
    template: str = field("plain", help="prompt template")
    max_new_tokens: int | None = field(None, check=at_least(1),
                                       help="answer length cap (default: a task kind's target's, else 256)")
    pattern: str | None = field(None, help="regex: the one pattern every answer must match (default: each row's "
                                           "reference)")


@dataclass(frozen=True, kw_only=True)
class UserBenchmark(Benchmark):
    """A benchmark of the user's rows, read when declared; `data_file` is the user's file, not one in the data dir."""

    samples: tuple[Sample, ...] = ()

    def load(self, data_dir: str | Path | None = None) -> list[Sample]:
        return list(self.samples)


@dataclass(frozen=True)
class ReferenceScore:
    """A scorer comparing the answer with the row's reference; `compare` may be the user's, so its value is checked."""

    compare: Callable[[str, str], float | bool]
    name: str  # how an error names the check

    def __call__(self, sample: Sample, prediction: str, judge) -> float:
        value = self.compare(prediction, sample.reference)
        score = float(value) if hasattr(value, "__float__") else math.nan  # numpy's and torch's scalars too
        if not 0 <= score <= 1:  # NaN included
            raise UserError(f"check {self.name} returned {value!r} for '{sample.id}' (expected a bool or a number in "
                            "[0, 1])")
        return score


def user_benchmark(name: str, path: str | Path, check: str, columns: dict | None = None, template: str = "plain",
                   max_new_tokens: int | None = None, pattern: str | None = None) -> Benchmark:
    """The benchmark of the held-out rows in `path` scored by `check` (see the module docstring); its rows are read
    here, so every problem with the file, its columns or the check is a UserError now."""
    if template not in TEMPLATES:
        raise UserError(f"template: unknown template '{template}' (known: {' | '.join(TEMPLATES)})")
    if pattern is not None and check != "regex":
        raise UserError(f"pattern: only a regex check takes one, not {check}")
    if not Path(path).is_file():  # before load_dataset, which would take a missing path for a hub id
        raise UserError("held-out file not found", str(path))
    scorer, metric, selection = _scoring(check, pattern)
    samples = _samples(name, path, columns or {})
    if check == "regex" and pattern is None:
        for sample in samples:
            _compiled(sample.reference, f"reference of '{sample.id}' in {path}")
    target = TASK_TARGETS.get(check)
    cap = max_new_tokens or (target.max_new_tokens if target else DEFAULT_MAX_NEW_TOKENS)
    return UserBenchmark(name, kind="generate", data_file=str(path), metric=metric, template=template,
                         max_new_tokens=cap, scorer=scorer, selection=selection, in_default_suite=False,
                         samples=tuple(samples))


def _scoring(check: str, pattern: str | None) -> tuple[Callable, str, tuple[str, str] | None]:
    """(scorer, metric, the (task, rule) it agrees with) of a check."""
    if check in TASK_TARGETS:
        rule = SELECTION_RULES[check][default_rule(check)]
        scorer = CheckScore(rule.check, lambda sample: rule.inputs(sample.extra["example"]))
        return scorer, TASK_TARGETS[check].metric, (check, default_rule(check))
    if check == "regex" and pattern is not None:
        compiled = _compiled(pattern, "pattern")
        return ReferenceScore(lambda prediction, reference: _matches(prediction, compiled), check), "regex_match", None
    if check in REFERENCE_CHECKS:
        compare, metric = REFERENCE_CHECKS[check]
        return ReferenceScore(compare, check), metric, None
    if ":" in check:
        return ReferenceScore(_user_function(check), check), check, None
    raise UserError(f"check: unknown check '{check}' (known: {' | '.join(CHECK_KINDS)})")


def _compiled(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UserError(f"{what}: not a regular expression ({e})") from None


def _user_function(check: str) -> Callable:
    module_name, _, function_name = check.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # not found, or the user's module failing as it runs: either way, one line naming it
        raise UserError(f"check '{check}': cannot import {module_name} ({type(e).__name__}: {e}; is its folder on "
                        "PYTHONPATH?)") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"check '{check}': {module_name} has no function {function_name}")
    return function


def _samples(name: str, path: str | Path, columns: dict) -> list[Sample]:
    """The rows as samples: the prompt's fields (the instruction, a chat row's earlier turns and system turn), the
    response as the reference, and the whole example in the layout selection rules read (`reference` = response)."""
    samples, seen = [], set()
    for example in load_dataset(str(path), columns=columns).examples:
        if example["id"] in seen:
            raise UserError(f"id '{example['id']}' appears twice (task '{name}' keys its answers by id)", str(path))
        seen.add(example["id"])
        fields = {key: example[key] for key in ("instruction", "history", "system") if key in example}
        samples.append(Sample(example["id"], fields, example["response"],
                              {"example": {**example, "reference": example["response"]}}))
    return samples


def declaration(name, spec) -> TaskDeclaration:
    """One `tasks:` entry, checked: a name free for it, `FILE:CHECK` or a mapping of `TaskDeclaration`'s keys."""
    key = f"tasks.{name}"
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"{key}: a task's name is letters, digits, _ and - (it names the task's output files)")
    if name in BENCHMARKS:
        raise UserError(f"{key}: '{name}' is a built-in benchmark; give your task another name")
    if isinstance(spec, str):
        file, sep, check = spec.partition(":")
        if not sep:
            raise UserError(f"{key}: expected FILE:CHECK (check: {' | '.join(CHECK_KINDS)}), got '{spec}'")
        spec = {"file": file, "check": check}
    if not isinstance(spec, dict):
        raise UserError(f"{key}: expected FILE:CHECK or a mapping {{file, check, columns, ...}}, got {spec!r}")
    return build_config(TaskDeclaration, values=spec, prefix=f"{key}.")


def declare_tasks(tasks: dict) -> dict[str, Benchmark]:
    """name -> benchmark of each `tasks:` entry; a bad entry is one UserError naming it (tasks.<name>)."""
    if not isinstance(tasks, dict):
        raise UserError(f"tasks: expected a mapping of task name -> FILE:CHECK or {{file, check, ...}}, got {tasks!r}")
    declared = {}
    for name, spec in tasks.items():
        task = declaration(name, spec)
        try:
            declared[name] = user_benchmark(name, task.file, task.check, task.columns, task.template,
                                            task.max_new_tokens, task.pattern)
        except UserError as e:
            raise UserError(f"tasks.{name}: {e}") from None
    return declared


def file_digests(tasks: dict) -> dict[str, str]:
    """name -> sha256 of each declared task's file: what an evaluation of the task was computed from."""
    return {name: hashlib.sha256(Path(declaration(name, spec).file).read_bytes()).hexdigest()
            for name, spec in tasks.items()}
