"""The registry rule: a name is taken once, and every cross-reference (dataset -> check and templates, benchmark ->
template) names an entry that exists; the real registries are checked on import."""

from __future__ import annotations

import pytest

from sdft.core.registry import check_references, registry


def test_a_name_given_twice_is_refused():
    assert registry("template", [("a", 1), ("b", 2)]) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="two template entries named 'a'"):
        registry("template", [("a", 1), ("a", 2)])


def test_a_reference_to_an_unknown_name_is_refused():
    datasets = {"gsm8k": {"template": "gsm8k_infer"}, "plain": {"template": None}}
    check_references("dataset", datasets, lambda d: [d["template"]], "template", {"gsm8k_infer": object()})
    with pytest.raises(ValueError, match="dataset 'gsm8k' refers to unknown template 'gsm8k_infer'"):
        check_references("dataset", datasets, lambda d: [d["template"]], "template", {"alpaca": object()})


def test_the_package_registries_hold_together():
    from sdft.data.datasets import DATASETS
    from sdft.data.templates import TEMPLATES
    from sdft.evaluation.benchmarks import BENCHMARKS
    from sdft.evaluation.checks import SELECTION_RULES
    from sdft.evaluation.knowledge import KNOWLEDGE_TASKS

    assert {spec.task for spec in DATASETS.values()} <= set(SELECTION_RULES)
    assert {b.template for b in BENCHMARKS.values()} - {None} <= set(TEMPLATES)
    assert {name for name, b in BENCHMARKS.items() if b.kind == "knowledge"} == set(KNOWLEDGE_TASKS)


def test_each_task_target_scores_with_the_check_its_default_rule_selects_by():
    """Issue 39: SDFT keeps a rewrite with its call inside prose, so OpenFunctions must count such an answer right."""
    from sdft.evaluation.benchmarks import BENCHMARKS
    from sdft.evaluation.checks import (
        SELECTION_RULES,
        code_check,
        default_rule,
        function_call_contains_check,
        math_check,
    )

    targets = {name: bench.selection for name, bench in BENCHMARKS.items() if bench.selection}
    assert targets == {"gsm8k": ("math", "checked"), "multiarith": ("math", "checked"),
                       "openfunctions": ("function_call", "ast_contains"), "humaneval": ("code", "checked")}
    for name, (task, rule) in targets.items():
        assert rule == default_rule(task) and BENCHMARKS[name].scorer.check is SELECTION_RULES[task][rule].check
    checks = {name: BENCHMARKS[name].scorer.check for name in ("gsm8k", "openfunctions", "humaneval")}
    assert checks == {"gsm8k": math_check, "openfunctions": function_call_contains_check, "humaneval": code_check}


def test_a_target_scored_otherwise_than_it_selects_is_refused():
    from sdft.evaluation.benchmarks import Benchmark, CheckScore, check_targets
    from sdft.evaluation.checks import function_call_check, function_call_contains_check

    def target(selection, check):
        return {"calls": Benchmark("calls", kind="generate", data_file="calls.jsonl", metric="m", selection=selection,
                                   scorer=CheckScore(check))}

    check_targets(target(("function_call", "ast_contains"), function_call_contains_check))
    with pytest.raises(ValueError, match="'calls' does not score with the check of its selection rule 'ast_contains'"):
        check_targets(target(("function_call", "ast_contains"), function_call_check))
    with pytest.raises(ValueError, match="task 'function_call' selects by 'ast_contains' by default"):
        check_targets(target(("function_call", "ast_exact"), function_call_check))
    with pytest.raises(ValueError, match="unknown selection rule 'ast_exact' of task 'math'"):
        check_targets(target(("math", "ast_exact"), function_call_check))
