"""The CLI's user-error contract (exit 2, one stderr line naming the file, no traceback, nothing written), --help, and
config files. A subset of the error cases runs the real CLI as subprocesses (in parallel); the full grid runs in process."""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from sdft.core.config import add_config_args, build_config
from sdft.core.errors import UserError

BAD_MODEL = "./no/such/model"
UNREACHABLE_HUB_ID = "no-such-org/no-such-model"
INPUT_FLAG = {"distill": "--dataset", "train": "--data", "generate": "--input"}

# case -> (input name, file contents or None, what stderr must name). Every case also passes --model ./no/such/model: a
# data error reported instead of the model error proves the input is validated before any model is touched.
CASES = {
    "missing": ("missing.jsonl", None, "missing.jsonl: file not found"),
    "malformed": ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{bad json\n',
                  "bad.jsonl:3: malformed JSON"),
    "column": ("nocol.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', "nocol.jsonl:2: missing column"),
    "unknown_dataset": ("nosuchdataset", None, "nosuchdataset"),
    "model": ("good.jsonl", '{"instruction": "a", "output": "b"}\n', f"{BAD_MODEL}: model not found"),
}
# `generate` only needs a prompt column, so its missing-column file lacks instruction/prompt.
GENERATE_NOCOL = '{"instruction": "a"}\n{"question": "c"}\n'

SUBPROCESS_TIMEOUT = 120  # a case that loads the model and generates before validating would blow this


def _env():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("SDFT_DATA_DIR", None)
    return env


def run_cli(args, cwd):
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "sdft", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"rc": None, "stdout": "", "stderr": f"TIMEOUT after {SUBPROCESS_TIMEOUT}s", "seconds": SUBPROCESS_TIMEOUT}
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "seconds": time.monotonic() - start}


def _write_config(path: Path, values: dict) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


def make_case(root: Path, command: str, case: str) -> tuple[Path, list[str]]:
    """A fresh working directory holding the case's input file, and the CLI arguments to run in it."""
    cwd = root / f"{command}_{case}"
    cwd.mkdir()
    name, content, _ = CASES[case]
    if command == "generate" and case == "column":
        content = GENERATE_NOCOL
    if content is not None:
        (cwd / name).write_text(content)
    return cwd, [command, INPUT_FLAG[command], name, "--out", "out_dir", "--model", BAD_MODEL]


def expected_message(command: str, case: str) -> str:
    if command == "generate" and case == "unknown_dataset":
        return "nosuchdataset: file not found"  # generate takes files only
    return CASES[case][2]


# Each subprocess pays ~3 s of torch import on a shared 2-core CPU, so the real CLI runs one case per error kind (every
# command covered) and the full command x case grid runs in process through the same `main` (same handler, same stderr).
SUBPROCESS_CASES = [("distill", "malformed"), ("train", "column"), ("generate", "missing"), ("distill", "unknown_dataset"),
                    ("train", "model")]


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """The subprocess cases, run concurrently once: key -> (result, cwd)."""
    root = tmp_path_factory.mktemp("cli")
    jobs = {key: make_case(root, *key) for key in SUBPROCESS_CASES}
    cfg = tmp_path_factory.mktemp("config")
    _write_config(cfg / "unknown.yaml", {"dataset": "from_yaml.jsonl", "out": "out_dir", "datset": "typo"})
    jobs[("config", "unknown_key")] = (cfg, ["distill", "--config", "unknown.yaml"])
    jobs[("help", "top")] = (cfg, ["--help"])
    jobs[("help", "bare")] = (cfg, [])
    jobs[("help", "version")] = (cfg, ["--version"])
    hub = root / "hub_model"
    hub.mkdir()
    (hub / "good.jsonl").write_text(CASES["model"][1])
    jobs[("hub", "model")] = (hub, ["distill", "--dataset", "good.jsonl", "--out", "out_dir", "--model", UNREACHABLE_HUB_ID])
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(run_cli, args, cwd) for key, (cwd, args) in jobs.items()}
        return {key: (futures[key].result(), jobs[key][0]) for key in jobs}


def assert_user_error(stderr, rc, *needles):
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.endswith("\n") and len(stderr.splitlines()) == 1, f"stderr is not one line: {stderr!r}"
    for needle in needles:
        assert needle in stderr, f"{needle!r} not in {stderr!r}"


def assert_nothing_written(cwd: Path, case: str):
    assert not (cwd / "out_dir").exists(), "an output was left behind"
    assert sorted(p.name for p in cwd.iterdir()) == ([] if CASES[case][1] is None else [CASES[case][0]])


@pytest.mark.parametrize("command, case", SUBPROCESS_CASES)
def test_user_error_contract_subprocess(cli_results, command, case):
    result, cwd = cli_results[(command, case)]
    assert result["stdout"] == ""
    assert_user_error(result["stderr"], result["rc"], f"sdft {command}: error: ", expected_message(command, case))
    assert_nothing_written(cwd, case)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", list(INPUT_FLAG))
def test_user_error_contract(command, case, tmp_path, monkeypatch, capsys):
    from sdft.cli import main

    cwd, args = make_case(tmp_path, command, case)
    monkeypatch.chdir(cwd)
    rc = main(args)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_user_error(captured.err, rc, f"sdft {command}: error: ", expected_message(command, case))
    assert_nothing_written(cwd, case)


def test_top_level_help(cli_results):
    result, _ = cli_results[("help", "top")]
    assert result["rc"] == 0, result
    for command in ("distill", "train", "generate", "eval", "score", "run", "report", "demo"):
        assert command in result["stdout"]


def test_bare_sdft_lists_the_commands_and_version_answers(cli_results):
    bare, _ = cli_results[("help", "bare")]
    assert bare["rc"] == 0 and bare["stderr"] == "", bare
    for command in ("distill", "train", "generate", "eval", "score", "run", "report", "demo"):
        assert f"    {command} " in bare["stdout"]
    version, _ = cli_results[("help", "version")]
    assert version["rc"] == 0 and version["stdout"].strip() == "sdft 0.1.0", version


def test_unreachable_hub_model_is_one_line(cli_results):
    """A hub id that cannot be had (offline here, nothing cached) is named with the reason: exit 2, nothing written."""
    result, cwd = cli_results[("hub", "model")]
    assert_user_error(result["stderr"], result["rc"], f"{UNREACHABLE_HUB_ID}: cannot load this model from the Hugging Face hub (")
    assert sorted(p.name for p in cwd.iterdir()) == ["good.jsonl"]


def test_required_options_say_so_in_help(commands, capsys):
    from sdft.cli import main

    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    page = " ".join(capsys.readouterr().out.split())
    assert "a file, or a hub id (required, here or in --config)" in page
    assert "--seed SEED seed for subsets" in page and "--seed SEED seed for subsets, sampling, mixing and initialisation (required" not in page


def test_config_unknown_key_subprocess(cli_results):
    result, cwd = cli_results[("config", "unknown_key")]
    assert_user_error(result["stderr"], result["rc"], "unknown.yaml", "datset")
    assert not (cwd / "out_dir").exists()


def test_config_values_are_used_and_flags_override(tmp_path, monkeypatch, capsys):
    from sdft.cli import main

    monkeypatch.chdir(tmp_path)
    _write_config(tmp_path / "values.yaml", {"dataset": "from_yaml.jsonl", "out": "out_dir", "model": BAD_MODEL})
    assert main(["distill", "--config", "values.yaml"]) == 2
    assert_user_error(capsys.readouterr().err, 2, "from_yaml.jsonl: file not found")
    assert main(["distill", "--config", "values.yaml", "--dataset", "from_flag.jsonl"]) == 2
    err = capsys.readouterr().err
    assert_user_error(err, 2, "from_flag.jsonl: file not found")
    assert "from_yaml" not in err
    assert not (tmp_path / "out_dir").exists()


# --- in process: help, build_config, validation order ---------------------------------------------------------------


@pytest.fixture(scope="module")
def commands():
    from sdft.cli import _commands

    return _commands()


KEY_FLAGS = {
    "distill": ["--dataset", "--out", "--model", "--limit", "--template", "--prompt-mode", "--config"],
    "train": ["--data", "--out", "--model", "--mix-ratio", "--epochs", "--learning-rate", "--lora-r", "--config"],
    "generate": ["--input", "--out", "--model", "--adapter", "--max-new-tokens", "--temperature", "--config"],
    "eval": ["--model", "--config"],
    "score": ["--config"],
    "run": ["experiment", "--config"],
    "report": ["run_dir", "--config"],
    "demo": ["--config"],
}


@pytest.mark.parametrize("command", list(KEY_FLAGS))
def test_command_help(commands, command, capsys):
    from sdft.cli import main

    assert command in commands
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sdft {command}")
    for flag in KEY_FLAGS[command]:
        assert flag in out, f"{flag} missing from `sdft {command} --help`"


def _namespace(commands, argv):
    from sdft.cli import build_parser

    return build_parser(commands).parse_args(argv)


def test_build_config_from_namespace(commands, tmp_path):
    from sdft.options import DistillConfig

    config_file = _write_config(tmp_path / "c.yaml", {"dataset": "gsm8k", "out": "o", "limit": 7, "temperature": 0.5,
                                                       "columns": {"instruction": "q"}})
    args = _namespace(commands, ["distill", "--config", config_file, "--limit", "3", "--prompt-mode", "raw"])
    config = build_config(DistillConfig, args)
    assert (config.dataset, config.out) == ("gsm8k", "o")  # from the file
    assert config.temperature == 0.5 and config.columns == {"instruction": "q"}
    assert config.limit == 3 and config.prompt_mode == "raw"  # flags win
    assert config.decoding().max_new_tokens == 512  # defaults for the rest


def test_build_config_hand_made_namespace(tmp_path):
    from sdft.options import TrainConfig

    config_file = _write_config(tmp_path / "t.yaml", {"data": "d.jsonl", "out": "o", "lora_r": 4, "merge": True})
    args = argparse.Namespace(config=config_file, command="train", data=None, out="flag_out", lora_r=None, merge=False,
                              target_modules=["all-linear"])
    config = build_config(TrainConfig, args)
    assert config.data == "d.jsonl" and config.lora_r == 4
    assert config.out == "flag_out" and config.merge is False and config.target_modules == ["all-linear"]


def test_build_config_typed_flags(commands):
    from sdft.options import TrainConfig

    args = _namespace(commands, ["train", "--data", "d", "--out", "o", "--mix-ratio", "0.5", "--target-modules", "q_proj,k_proj",
                                 "--merge", "--columns", "{instruction: question}"])
    config = build_config(TrainConfig, args)
    assert config.mix_ratio == 0.5 and config.target_modules == ["q_proj", "k_proj"] and config.merge is True
    assert config.columns == {"instruction": "question"}


def test_build_config_errors(commands, tmp_path):
    from sdft.options import DistillConfig

    with pytest.raises(UserError) as e:
        build_config(DistillConfig, _namespace(commands, ["distill", "--config", str(tmp_path / "none.yaml")]))
    assert "none.yaml" in str(e.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: gsm8k\nout: [unclosed\n")
    with pytest.raises(UserError) as e:
        build_config(DistillConfig, _namespace(commands, ["distill", "--config", str(bad)]))
    assert str(bad) in str(e.value)
    unknown = _write_config(tmp_path / "u.yaml", {"dataset": "gsm8k", "bogus": 1})
    with pytest.raises(UserError) as e:
        build_config(DistillConfig, _namespace(commands, ["distill", "--config", unknown]))
    assert str(e.value).startswith(f"{unknown}:") and "bogus" in str(e.value)
    with pytest.raises(UserError, match="--out"):
        build_config(DistillConfig, _namespace(commands, ["distill", "--dataset", "gsm8k"]))


@pytest.mark.parametrize("command", ["distill", "train", "generate"])
def test_prompt_mode_checked_before_model(commands, command, tmp_path, capsys, monkeypatch):
    """A bad --prompt-mode is reported before the (bad) model is resolved, i.e. without loading anything."""
    from sdft.cli import main

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    out = tmp_path / "out"
    rc = main([command, INPUT_FLAG[command], str(good), "--out", str(out), "--model", BAD_MODEL, "--prompt-mode", "fancy"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "prompt_mode: unknown value 'fancy'" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_positional_fields_parse():
    """Commands with a positional field (run, report) build a parser and fill the field (regression: argparse used to
    refuse `dest=` for positionals, so even `sdft --help` crashed)."""
    from dataclasses import dataclass

    from sdft.core.config import field

    @dataclass
    class Cfg:
        run_dir: str = field("runs/x", help="run directory")
        verbose: bool = field(False, help="talk more")

    parser = argparse.ArgumentParser()
    add_config_args(parser, Cfg, positional=("run_dir",))
    assert build_config(Cfg, parser.parse_args(["some/dir", "--verbose"])) == Cfg("some/dir", True)
    assert build_config(Cfg, parser.parse_args([])) == Cfg()


def test_report_positional_through_cli(commands):
    args = _namespace(commands, ["report", "runs/abc"])
    assert args.run_dir == "runs/abc"


def test_help_imports_no_torch_and_answers_within_a_second():
    """`sdft --help` and `sdft CMD --help` build the parser from the light option modules only; each page (the first
    one including the package import) takes under a second of CPU (wall time on this shared machine varies with load)."""
    script = """
import contextlib, io, sys, time
start = time.process_time()
from sdft.cli import _commands, main
slowest = 0.0
for argv in [["--help"]] + [[name, "--help"] for name in _commands()]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
    slowest, start = max(slowest, time.process_time() - start), time.process_time()
print(slowest, "torch" in sys.modules)
"""
    slowest, torch_loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                           check=True).stdout.split()
    assert torch_loaded == "False", "building the CLI imported torch"
    assert float(slowest) < 1.0, f"a help page took {slowest} s"
