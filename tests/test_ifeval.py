"""IFEval: lm-eval's own instruction checks decide; prompts needing NLTK punkt (unavailable offline) are left out."""

import json

import pytest

from sdft.evaluation import ifeval
from sdft.evaluation.benchmarks import Sample, get_benchmark
from sdft.stages.evaluate import score_samples

DOC = {"key": 1, "prompt": "Answer in lowercase and without commas.",
       "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}, {}]}


def sample(doc=DOC):
    return Sample(str(doc["key"]), {"instruction": doc["prompt"]}, doc["instruction_id_list"], {"doc": doc})


@pytest.mark.parametrize("response, prompt_level, instructions", [
    ("all lowercase and no commas here", 1.0, [True, True]),
    ("all lowercase, but a comma", 0.0, [False, True]),
    ("No comma but One capital", 0.0, [True, False]),
    ("", 0.0, [False, False]),
])
def test_prompt_level_needs_every_instruction(response, prompt_level, instructions):
    bench = get_benchmark("ifeval")
    assert bench.score(sample(), response) == prompt_level
    assert bench.extra_metrics(sample(), response)["inst_level_strict_acc"] == instructions


def test_lm_eval_checks_are_the_ones_called(monkeypatch):
    """The verdict comes from lm-eval's IFEval module, not from code of ours."""
    utils = ifeval._lm_eval_ifeval()
    assert utils.__name__ == "lm_eval.tasks.ifeval.utils"
    monkeypatch.setattr(utils, "process_results", lambda doc, results: {
        "prompt_level_strict_acc": True, "inst_level_strict_acc": [True], "prompt_level_loose_acc": True,
        "inst_level_loose_acc": [True]})
    assert get_benchmark("ifeval").score(sample(), "Breaks, EVERY rule") == 1.0


def test_instruction_level_accuracy_pools_all_instructions():
    """Instruction-level accuracy is over instructions, not a mean of per-prompt fractions (lm-eval's definition)."""
    one = {**DOC, "key": 2, "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    bench = get_benchmark("ifeval")
    _, summary = score_samples(bench, [sample(), sample(one)],
                               [{"prediction": "Capital, comma"}, {"prediction": "no comma"}])
    assert summary["score"] == 50.0  # prompt level: the second prompt only
    assert summary["inst_level_strict_acc"] == pytest.approx(100 / 3)  # 1 of 3 instructions (a mean of means: 50)


def test_punkt_prompts_are_left_out_and_counted(shared_data):
    rows = [json.loads(line) for line in (shared_data / ifeval.DATA_FILE).open()]
    samples = get_benchmark("ifeval").load(shared_data)
    assert len(rows) == 541 and ifeval.excluded_count(shared_data) == 64 and len(samples) == 541 - 64
    kept = {s.id for s in samples}
    for index, row in enumerate(rows):
        needs_punkt = bool(ifeval.NEEDS_PUNKT & set(row["instruction_id_list"]))
        assert (f"ifeval-{index}" in kept) != needs_punkt


def test_ifeval_answers_in_a_task_format_are_counted_as_leakage(shared_data):
    from sdft.evaluation.benchmarks import get_benchmark

    bench = get_benchmark("ifeval")
    sample = bench.load(shared_data)[0]
    call = bench.extra_metrics(sample, 'search(query="poem")')
    prose = bench.extra_metrics(sample, "Here is a poem about the sea.")
    assert call["function_call_format"] == 1.0 and prose["function_call_format"] == 0.0
    assert bench.extra_metrics(sample, "The answer is 42.")["math_format"] == 1.0
