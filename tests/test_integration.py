"""End to end on the embedded SmolLM2-135M-Instruct through the real CLI: distill -> train -> generate with the adapter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def sdft(*args, data_dir=None):
    extra = ["--data-dir", str(data_dir)] if data_dir else []
    return subprocess.run([sys.executable, "-m", "sdft", *map(str, args), *extra], capture_output=True, text=True, timeout=900)


@pytest.mark.integration
def test_distill_train_generate_on_the_embedded_model(tmp_path, shared_data):
    distilled = tmp_path / "distilled"
    result = sdft("distill", "--dataset", "gsm8k", "--limit", 3, "--max-new-tokens", 96, "--out", distilled, data_dir=shared_data)
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads((distilled / "distill_stats.json").read_text())
    assert stats["total"] == 3 and sum(stats["reasons"].values()) == 3
    rows = [json.loads(line) for line in (distilled / "distilled.jsonl").open()]
    assert all(r["target"] == (r["distilled"] if r["accepted"] else r["original"]) for r in rows)
    assert json.loads((distilled / "run.json").read_text())["config"]["model"] == "smollm2-135m-instruct"

    adapter = tmp_path / "adapter"
    result = sdft("train", "--data", distilled / "distilled.jsonl", "--out", adapter, "--max-steps", 1,
                  "--micro-batch-size", 3, "--max-length", 384, data_dir=shared_data)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "instruction": "Name a colour."}) + "\n"
                       + json.dumps({"id": "b", "instruction": "What is 2 + 3?"}) + "\n")
    out = tmp_path / "gen.jsonl"
    result = sdft("generate", "--adapter", adapter, "--input", prompts, "--out", out, "--max-new-tokens", 16)
    assert result.returncode == 0, result.stderr[-2000:]
    generated = [json.loads(line) for line in out.open()]
    assert [g["id"] for g in generated] == ["a", "b"]
    assert all(g["finish_reason"] in ("stop", "length") and 0 < g["n_tokens"] <= 16 and g["prediction"] for g in generated)
