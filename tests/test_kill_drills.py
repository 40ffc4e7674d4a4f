"""Kill drills: `sdft run` on a tiny random model, killed with SIGKILL inside every long stage (evaluation, judging,
distillation, training, shift) and between stages, each time rerun; the final run must equal an uninterrupted one in
fp32 — every row present once, every file the same, the trained adapter the same bit for bit.

Kills land on progress seen on disk (rows in a `.partial` file, a checkpoint, a stage directory), so each one
interrupts the stage it names; a run that finishes before its kill fails the drill rather than passing unexercised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml


def _rows(pattern: str, at_least: int) -> Callable[[Path], bool]:
    """Ready once a file matching `pattern` under the run directory holds `at_least` complete rows."""
    return lambda run: any(_complete_rows(p) >= at_least for p in run.glob(pattern))


def _complete_rows(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:  # renamed into place between the glob and the read
        return 0


def _exists(pattern: str) -> Callable[[Path], bool]:
    return lambda run: any(run.glob(pattern))


# In stage order; each kill interrupts a fresh rerun of the same command.
KILLS = {
    "inside eval generation": _rows("stages/eval/seed-*/advbench.generations.jsonl.partial", 2),
    "inside judging": _rows("stages/eval/seed-*/alpaca_eval.verdicts.jsonl.partial", 2),
    "inside distillation": _rows("stages/distill/*/generations.jsonl.partial", 2),
    "inside training": _exists("stages/train/*/checkpoints/checkpoint-2"),
    "between stages": _exists("stages/train/*/done.json"),
    "inside shift": _exists("stages/shift/*"),
}


@pytest.fixture
def experiment(tmp_path, tiny_model_dir, gsm8k_file, shared_data):
    """One SDFT model against the seed: every stage kind, sampled distillation, LoRA dropout (RNG state on resume)."""
    config = {
        "name": "drill", "model": tiny_model_dir, "dtype": "fp32", "datasets": [str(gsm8k_file)], "methods": ["sdft"],
        "data_dir": str(shared_data),
        "distill": {"max_new_tokens": 12, "task": "math", "template": "gsm8k_distill", "temperature": 0.9,
                    "top_p": 0.9, "decode_rows": 2},
        "train": {"max_steps": 4, "save_steps": 1, "batch_size": 2, "micro_batch_size": 2, "lora_dropout": 0.1,
                  "bf16": False},
        "eval": {"benchmarks": ["advbench", "alpaca_eval"], "limit": 4, "max_new_tokens": 8, "decode_rows": 2,
                 "judge_model": f"hf:{tiny_model_dir}"},
        "shift": {"benchmark": "advbench"},
    }
    path = tmp_path / "drill.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _sdft_run(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "sdft", "run", str(config), "--out", str(out)]


# The same threads in every run, and the same set order (peft saves target_modules from a set).
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def kill_when(argv: list[str], ready: Callable[[], bool], timeout: float = 600) -> None:
    """Run `argv` and SIGKILL it the moment `ready()` holds; fails if it ended first."""
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)  # a fast machine runs a tiny stage in tens of milliseconds
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"ended before its kill (exit {proc.returncode}): {err.decode()[-2000:]}"


def _outputs(run: Path) -> dict[str, bytes]:
    """What a run produced, minus what legitimately differs between two runs (timings, provenance, checkpoints, the
    Trainer's pickled arguments), with the run directory's own path masked."""
    kept = {}
    for path in sorted(run.rglob("*")):
        name = str(path.relative_to(run))
        if path.is_file() and not ("checkpoints" in path.parts or "logs" in path.parts or path.name in
                                   ("done.json", "train_metrics.json", "training_args.bin", "run.json",
                                    "summary.json", "report.md", "report.html", ".lock")):
            kept[name] = path.read_bytes().replace(str(run).encode(), b"RUN")
    return kept


def test_run_killed_in_every_long_stage_and_between_stages_resumes_to_the_uninterrupted_output(experiment, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_sdft_run(experiment, full), env=ENV, check=True, capture_output=True)
    for ready in KILLS.values():
        kill_when(_sdft_run(experiment, killed), lambda: ready(killed))
    subprocess.run(_sdft_run(experiment, killed), env=ENV, check=True, capture_output=True)

    resumed, uninterrupted = _outputs(killed), _outputs(full)
    assert sorted(resumed) == sorted(uninterrupted)
    assert not [name for name in resumed if name.endswith((".partial", ".tmp"))]
    for name, content in uninterrupted.items():
        assert resumed[name] == content, f"{name} differs from the uninterrupted run"
    for name in resumed:  # 0 rows lost (the same files) and 0 repeated
        if name.endswith(".jsonl"):
            rows = [json.loads(line) for line in resumed[name].splitlines()]
            keys = [row.get("key") or (row.get("id"), row.get("prompt_hash")) for row in rows]
            assert len(keys) == len(set(keys)), f"{name} repeats a row"
    assert any(name.endswith("adapter_model.safetensors") for name in resumed)


def _distill_cli(out: Path, model: str, data: Path) -> list[str]:
    return [sys.executable, "-m", "sdft", "distill", "--model", model, "--dataset", str(data), "--out", str(out),
            "--task", "generic", "--template", "distill_using", "--max-new-tokens", "48", "--decode-rows", "4",
            "--temperature", "0.9", "--seed", "7", "--dtype", "fp32"]


def test_killed_distill_resumes_to_the_same_output(tmp_path, tiny_model_dir):
    """`sdft distill` alone, four rows decoding side by side: the rows resumed beside others than before still come
    out the same in fp32."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say something about {i}.", "output": f"Thing {i}."}) + "\n"
                            for i in range(16)))
    subprocess.run(_distill_cli(tmp_path / "full", tiny_model_dir, data), check=True, env=ENV, capture_output=True)
    killed = tmp_path / "killed"
    partial = killed / "generations.jsonl.partial"
    kill_when(_distill_cli(killed, tiny_model_dir, data), lambda: _rows(partial.name, 3)(killed))
    assert not (killed / "distilled.jsonl").exists()
    assert 3 <= len(partial.read_text().splitlines()) < 16

    subprocess.run(_distill_cli(killed, tiny_model_dir, data), check=True, env=ENV, capture_output=True)
    assert (killed / "distilled.jsonl").read_text() == (tmp_path / "full/distilled.jsonl").read_text()
    ids = [json.loads(line)["id"] for line in (killed / "generations.jsonl").open()]
    assert len(ids) == len(set(ids)) == 16
    assert json.loads((killed / "run.json").read_text())["config"]["seed"] == 7

