"""`sdft eval` and `sdft score`: run the forgetting benchmarks (docs/design.md §4) on a model (+ adapter), or re-score saved
predictions.

Outputs in `out/`: `<benchmark>.generations.jsonl` (raw completions, resumable), `<benchmark>.jsonl` (scored rows: id,
prompt, prediction, reference, score, finish_reason, extra metrics) and `results.json` (scores on 0–100 with bootstrap
95% intervals), updated after every benchmark and merged with what an earlier run left, so adding a benchmark keeps
the others. Decoding is greedy unless asked to sample (`temperature`, `sampled`); sampling is seeded per (seed,
prompt), so either way a rerun reproduces the same predictions and a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from sdft.analysis.stats import summarize
from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl, write_json, write_jsonl
from sdft.core.paths import data_dir as find_data_dir
from sdft.core.paths import download_dir
from sdft.data.datasets import subsample
from sdft.data.templates import render
from sdft.engines.generation import generate_rows, make_engine
from sdft.engines.models import default_device, load_model, resolve_dtype, resolve_model
from sdft.evaluation.benchmarks import GCG_SUFFIX_FILE, REFUSAL_KEYWORDS_FILE, Benchmark, Sample, get_benchmark
from sdft.evaluation.judge import VerdictCache
from sdft.evaluation.knowledge import evaluate_knowledge
from sdft.evaluation.user_benchmarks import UserBenchmark
from sdft.options import EvalConfig, ScoreConfig

RESULTS_FILE = "results.json"


def run_eval(config: EvalConfig) -> dict:
    """Evaluate the model on each benchmark and return the merged results.json content."""
    declared = config.declared_tasks()
    benchmarks = [get_benchmark(name, declared) for name in config.benchmarks]
    data_dir = resolve_data_dir(config.data_dir, files_read(benchmarks))
    judge = config.judge() if any(b.kind == "judge" for b in benchmarks) else None
    _require_judge(benchmarks, judge)
    out = Path(config.out)
    results = _open_results(out / RESULTS_FILE, config, judge)

    generated = [b for b in benchmarks if b.kind != "knowledge"]
    knowledge = [b.name for b in benchmarks if b.kind == "knowledge"]
    engine = make_engine(config.model, config.dtype, config, config.adapter) if generated else None  # one for all
    if knowledge:
        # the engine's own torch model when it has one; vLLM's weights are out of lm-eval's reach
        loaded = engine.torch_model() if engine else None
        model, tokenizer = loaded or load_model(config.model, config.dtype, config.adapter)
    write_json(out / RESULTS_FILE, results)  # only once the model loaded: a bad --model leaves no results behind
    for bench in generated:
        results["benchmarks"][bench.name] = _evaluate_generated(bench, engine, config, data_dir, out, judge)
        write_json(out / RESULTS_FILE, results)
    if knowledge:
        results["benchmarks"].update(evaluate_knowledge(model, tokenizer, knowledge, data_dir, out,
                                                        {name: config.limit_for(name) for name in knowledge},
                                                        config.seed, config.lm_eval_batch_size))
        write_json(out / RESULTS_FILE, results)
    return results


def score_predictions(benchmark: str | Benchmark, predictions_path: str | Path, data_dir: str | None = None,
                      judge=None) -> dict:
    """Re-score saved predictions (rows with `id` and `prediction`) against the benchmark's data (a registry name, or
    a declared task's benchmark: `user_benchmarks.user_benchmark`); returns its results.json entry for the ids given."""
    bench = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark)
    if bench.kind == "knowledge":
        raise UserError(f"'{bench.name}' is scored by log-likelihood, not from text: "
                        f"run `sdft eval --benchmarks {bench.name}`")
    _require_judge([bench], judge)
    by_id = {sample.id: sample for sample in bench.load(resolve_data_dir(data_dir, files_read([bench])))}
    rows = read_jsonl(predictions_path)
    if not rows:
        raise UserError("no predictions", str(predictions_path))
    samples: list[Sample] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, 1):
        if "id" not in row or not isinstance(row.get("prediction"), str):
            raise UserError("each row needs an 'id' and a string 'prediction'", str(predictions_path), line)
        sample_id = str(row["id"])
        if sample_id not in by_id:
            raise UserError(f"id '{sample_id}' is not in benchmark '{bench.name}'", str(predictions_path), line)
        if sample_id in seen:
            raise UserError(f"id '{sample_id}' appears twice", str(predictions_path), line)
        seen.add(sample_id)
        samples.append(by_id[sample_id])
    return score_samples(bench, samples, rows, judge)[1]


def score(config: ScoreConfig) -> dict:
    """`sdft score`: score_predictions with the judge built from the flags."""
    bench = get_benchmark(config.benchmark, config.declared_tasks())
    judge = config.judge() if bench.kind == "judge" else None
    return score_predictions(bench, config.predictions, config.data_dir, judge)


def score_samples(bench: Benchmark, samples: list[Sample], predictions: list[dict],
                  judge=None) -> tuple[list[dict], dict]:
    """Per-sample rows and the benchmark's summary {score (0–100), n, ci95, metric, extra metrics (0–100)}."""
    rows, extras = [], defaultdict(list)
    for sample, predicted in zip(samples, predictions, strict=True):
        prediction = predicted["prediction"]
        metrics = bench.extra_metrics(sample, prediction)
        for name, value in metrics.items():  # a list (one verdict per instruction) pools with the others'
            extras[name].extend(value if isinstance(value, list) else [value])
        rows.append({"id": sample.id, "prompt": predicted.get("prompt"), "prediction": prediction,
                     "reference": sample.reference, "score": bench.score(sample, prediction, judge),
                     "finish_reason": predicted.get("finish_reason"), "n_tokens": predicted.get("n_tokens"),
                     **metrics})
    summary = {**summarize([row["score"] for row in rows]), "metric": bench.metric}
    summary.update({name: 100 * float(np.mean(values)) for name, values in extras.items()})
    return rows, summary


def _evaluate_generated(bench: Benchmark, engine, config: EvalConfig, data_dir: Path, out: Path, judge) -> dict:
    samples = bench.load(data_dir)
    samples = subsample(samples, config.seed, config.limit_for(bench.name), source=bench.name)
    prompts = [render(bench.template, sample.fields, engine.tokenizer, config.prompt_mode) for sample in samples]
    decoding = config.benchmark_decoding(bench)
    dtype = resolve_dtype(config.dtype, default_device(), resolve_model(config.model))  # what "auto" meant here
    dtype = str(dtype).removeprefix("torch.")
    settings = {"max_new_tokens": decoding.max_new_tokens, "temperature": decoding.temperature,
                "top_p": decoding.top_p, "prompt_mode": config.prompt_mode, "dtype": dtype}
    # only where they change the output, so greedy generations of earlier versions are still resumed
    if decoding.temperature > 0:
        settings.update(top_k=decoding.top_k, seed=decoding.seed)
    if decoding.stop:
        settings["stop"] = decoding.stop
    generations_path = out / f"{bench.name}.generations.jsonl"
    _discard_if_settings_changed(generations_path, settings)
    items = [(sample.id, prompt) for sample, prompt in zip(samples, prompts)]
    generated = generate_rows(engine, items, decoding, generations_path, progress=bench.name)
    with VerdictCache.around(judge, out / f"{bench.name}.verdicts.jsonl") as judge:  # a rerun re-asks no pair
        rows, summary = score_samples(bench, samples, [{**g, "prompt": p} for g, p in zip(generated, prompts)], judge)
    write_jsonl(out / f"{bench.name}.jsonl", rows)
    truncated = sum(row["finish_reason"] == "length" for row in rows)
    return {**summary, "generation": {**settings, "truncated": truncated}}


def _discard_if_settings_changed(generations_path: Path, settings: dict) -> None:
    """Completions made under other settings (length cap, dtype) must not be resumed as if they were these."""
    settings_path = generations_path.with_name(generations_path.name.removesuffix(".jsonl") + ".settings.json")
    if settings_path.is_file() and json.loads(settings_path.read_text(encoding="utf-8")) != settings:
        generations_path.unlink(missing_ok=True)
        generations_path.with_name(generations_path.name + ".partial").unlink(missing_ok=True)  # ResumableJsonl's
    write_json(settings_path, settings)


def _open_results(path: Path, config: EvalConfig, judge) -> dict:
    """results.json to merge into (not written here); one output directory holds one model's results, so another
    model is refused (its generations would otherwise be resumed as this model's)."""
    results = {"benchmarks": {}}
    if path.is_file():
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"malformed results file ({e.msg})", str(path), e.lineno) from None
        if (results.get("model"), results.get("adapter")) != (config.model, config.adapter):
            raise UserError(f"holds results of model {results.get('model')} (adapter {results.get('adapter')}); "
                            "use another --out for this model", str(path))
    results.update(model=config.model, adapter=config.adapter)
    if judge is not None:
        results["judge"] = judge.identity
    return results


def _require_judge(benchmarks: list[Benchmark], judge) -> None:
    judged = [b.name for b in benchmarks if b.kind == "judge"]
    if judged and judge is None:
        raise UserError(f"{', '.join(judged)} is judged pairwise against reference answers: pass --judge-url URL "
                        "--judge-model NAME (an OpenAI-compatible server) or --judge-model hf:PATH")


def resolve_data_dir(explicit: str | None, files: Iterable[str] = ()) -> Path:
    """The data directory holding `files`: a local one, else the download cache. Without either, one line naming the
    missing files and the command that fetches them; with no files to hold and no data anywhere, the (empty) cache."""
    files = list(files)
    found = find_data_dir(explicit, files)
    if found is None and files:
        missing = [name for name in files if not (download_dir() / name).is_file()]
        raise UserError(f"data not found: {', '.join(missing)} (no --data-dir, $SDFT_DATA_DIR or ../shared/data, and "
                        f"not downloaded); fetch it with `sdft data download {','.join(missing)}`")
    if found is None:
        return download_dir()
    if not found.is_dir():
        raise UserError("data directory not found: pass --data-dir or set SDFT_DATA_DIR", str(found))
    return found


def files_read(benchmarks: Iterable[Benchmark]) -> list[str]:
    """The data files of the generated benchmarks, with AdvBench's refusal keywords and GCG suffix (knowledge tasks
    need none: lm-eval's hub tasks stand in for a missing copy; a user's task reads its own file)."""
    files = [bench.data_file for bench in benchmarks
             if bench.kind != "knowledge" and not isinstance(bench, UserBenchmark)]
    if any(name.startswith("advbench/") for name in files):
        files += [REFUSAL_KEYWORDS_FILE, GCG_SUFFIX_FILE]
    return list(dict.fromkeys(files))
