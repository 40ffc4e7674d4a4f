"""Scale-out that has run: `accelerate launch --num_processes 2 -m sdft train` on CPU (gloo) with a tiny model.

A thin launcher wraps the real CLI to record, per rank, what the Trainer ran with and a digest of the trained weights,
and every adapter write, so the test can check that the ranks trained one model, kept the effective batch, and saved
one adapter once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCHER = '''
import hashlib, json, os, sys
import peft
import sdft.stages.train as stage
from sdft.cli import main

out = None
original_train_model, original_save = stage.train_model, peft.PeftModel.save_pretrained

def recording_train_model(model, tokenizer, examples, out_dir, settings, before_train=None):
    global out
    out = out_dir
    trainer, result = original_train_model(model, tokenizer, examples, out_dir, settings, before_train)
    weights = b"".join(p.detach().float().numpy().tobytes() for _, p in sorted(trainer.model.named_parameters()))
    (out_dir / f"rank{os.environ['RANK']}.json").write_text(json.dumps({
        "world": trainer.args.world_size, "accumulation": trainer.args.gradient_accumulation_steps,
        "per_device": trainer.args.per_device_train_batch_size, "steps": trainer.state.global_step,
        "digest": hashlib.sha256(weights).hexdigest()}))
    return trainer, result

def counting_save(self, save_directory, *args, **kwargs):
    with open(os.environ["SAVES_LOG"], "a") as log:
        log.write(f"{os.environ['RANK']} {save_directory}\\n")
    return original_save(self, save_directory, *args, **kwargs)

stage.train_model, peft.PeftModel.save_pretrained = recording_train_model, counting_save
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.integration
def test_two_process_training_trains_one_model_with_the_effective_batch_and_saves_once(tmp_path, tiny_model_dir):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate's launcher not installed")
    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"question {i}", "output": f"answer {i} " * (1 + i % 3)}) + "\n"
                            for i in range(16)))
    launcher = tmp_path / "launch_train.py"
    launcher.write_text(LAUNCHER)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDFT_CACHE_DIR": str(tmp_path / "cache"),
           "SAVES_LOG": str(tmp_path / "saves.log"), "TOKENIZERS_PARALLELISM": "false"}
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", "29533", str(launcher), "train", "--data", str(data),
               "--out", str(out), "--model", tiny_model_dir, "--max-steps", "3", "--batch-size", "4",
               "--micro-batch-size", "1", "--save-steps", "100", "--learning-rate", "0.01", "--max-length", "64"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    # effective batch 4 = 1 per device x 2 accumulation steps x 2 processes (not 4 accumulation steps on each)
    assert all(r["per_device"] == 1 and r["accumulation"] == 2 and r["steps"] == 3 for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"], "the two ranks ended with different weights"
    saves = (tmp_path / "saves.log").read_text().splitlines()
    assert all(line.startswith("0 ") for line in saves), saves  # rank 0 writes, checkpoints included
    assert [line for line in saves if "/checkpoints/" not in line] == [f"0 {out}"], saves  # the adapter, once
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert json.loads((out / "train_metrics.json").read_text())["examples"] == 16
    assert json.loads((out / "run.json").read_text())["command"] == "train"
    assert not list(out.glob("*.tmp*"))
