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
