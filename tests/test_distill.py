"""Distillation (Eq. 3-4): selection rules, outputs, and resume after a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sdft.options import DistillConfig
from sdft.stages.distill import distill, select


def test_selection_keeps_only_correct_complete_rewrites():
    example = {"instruction": "q", "response": "... The answer is 72."}
    assert select("So 48 + 24 = 72. The answer is 72.", "stop", example, "math") == (True, "ok")
    assert select("The answer is 70.", "stop", example, "math") == (False, "wrong_answer")
    assert select("The answer is 72.", "length", example, "math") == (False, "truncated")
    assert select("Using the reference answer, the answer is 72.", "stop", example, "math") == (False, "meta_phrase")
    call = {"instruction": "q", "response": "f(a=1, b='x')"}
    assert select('f(b="x", a=1)', "stop", call, "function_call")[0]
    assert not select("Here it is: f(a=1, b='x')", "stop", call, "function_call")[0]
    assert select("Any answer", "stop", {"instruction": "q", "response": "r"}, "generic") == (True, "ok")


def test_distill_writes_rows_and_stats(tmp_path, tiny_model_dir, gsm8k_file):
    stats = distill(DistillConfig(dataset=str(gsm8k_file), out=str(tmp_path / "d"), model=tiny_model_dir, task="math",
                                  template="gsm8k_distill", max_new_tokens=8))
    rows = [json.loads(line) for line in (tmp_path / "d/distilled.jsonl").open()]
    assert stats["total"] == len(rows) == 6 and sum(stats["reasons"].values()) == 6
    assert json.loads((tmp_path / "d/distill_stats.json").read_text())["accepted"] == stats["accepted"]
    for row in rows:
        assert {"id", "instruction", "original", "distilled", "accepted", "reason", "target"} <= row.keys()
        assert row["target"] == (row["distilled"] if row["accepted"] else row["original"])
    # a random tiny model cannot reproduce the answers: everything falls back to the original
    assert stats["accepted"] == 0 and all(r["target"] == r["original"] for r in rows)


def _distill_cli(out, model, data, extra=()):
    return [sys.executable, "-m", "sdft", "distill", "--model", model, "--dataset", str(data), "--out", str(out),
            "--task", "generic", "--template", "distill_using", "--max-new-tokens", "48", "--decode-rows", "1",
            "--temperature", "0.9", "--seed", "7", *extra]


def test_killed_distill_resumes_to_the_same_output(tmp_path, tiny_model_dir):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say something about {i}.", "output": f"Thing {i}."}) + "\n"
                            for i in range(16)))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(_distill_cli(tmp_path / "full", tiny_model_dir, data), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_distill_cli(killed, tiny_model_dir, data), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = killed / "generations.jsonl.partial"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.is_file() and len(partial.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert not (killed / "distilled.jsonl").exists()
    done_before = len(partial.read_text().splitlines())
    assert 3 <= done_before < 16

    subprocess.run(_distill_cli(killed, tiny_model_dir, data), check=True, env=env, capture_output=True)
    assert (killed / "distilled.jsonl").read_text() == (tmp_path / "full/distilled.jsonl").read_text()
    ids = [json.loads(line)["id"] for line in (killed / "generations.jsonl").open()]
    assert len(ids) == len(set(ids)) == 16
    assert json.loads((killed / "run.json").read_text())["config"]["seed"] == 7
