"""The README's "Your data with your model" commands, run in order as a user would, on the embedded model and a few
rows: the only changes are the model (org/model -> the embedded one), the data file and smaller budgets appended to
each command (more rows, tokens and steps would only take longer)."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# What each command gets appended so it runs in seconds; the README's own flags stay as written.
SMALL = {"distill": ["--limit", "4", "--max-new-tokens", "32"],
         "train": ["--max-steps", "1", "--batch-size", "2", "--micro-batch-size", "2"],
         "eval": ["--max-new-tokens", "16"]}


def readme_commands() -> list[list[str]]:
    section = README.read_text().split("## Your data with your model", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_names_commands_and_flags_that_exist():
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["sdft", "distill"], ["sdft", "train"], ["sdft", "train"], ["sdft", "eval"],
                                         ["sdft", "eval"]]


@pytest.mark.integration
def test_your_data_commands_run_as_written(tmp_path, shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k/sdft_gsm8k_train.jsonl").open()][:4]
    (tmp_path / "your.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for command in readme_commands():
        argv = [{"org/model": "smollm2-135m-instruct"}.get(a, a) for a in command[1:]]
        argv = ["2" if a == "200" and argv[i - 1] == "--limit" else a for i, a in enumerate(argv)]
        done = subprocess.run([sys.executable, "-m", "sdft", *argv, *SMALL[argv[0]]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(command)}\n{done.stderr[-2000:]}"
    assert (tmp_path / "runs/distill/distilled.jsonl").is_file()
    assert (tmp_path / "runs/distill/train.messages.jsonl").is_file()
    assert (tmp_path / "runs/sdft/adapter_config.json").is_file() and (tmp_path / "runs/vanilla/adapter_config.json").is_file()
    for run in ("eval-seed", "eval-sdft"):
        results = json.loads((tmp_path / "runs" / run / "results.json").read_text())["benchmarks"]
        assert set(results) == {"ifeval", "hellaswag", "arc_challenge", "winogrande"}
