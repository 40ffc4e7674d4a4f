"""Data anywhere (issue 40): every data file sdft reads has a pinned upstream, a conversion and a checksum; `sdft data
download` reproduces ../shared/data byte for byte from a mirror laid out in each upstream's own schema (served on
127.0.0.1), refuses a mismatch leaving nothing behind, and `sdft data list` says where each file is. Without a data
folder the evaluation reads the download cache, and with nothing there stops in one line naming the command to run.
Knowledge tasks without a local copy run lm-eval's stock task (its hub dataset swapped here for a local file)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sdft.core import paths
from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl
from sdft.data.datasets import DATASETS
from sdft.data.sources import MIRROR_ENV, RAW_GITHUB, SOURCES, download, select, sha256_of

# the files the mirror serves, each in its upstream's own form
MIRRORED = ["gsm8k/sdft_gsm8k_test.jsonl", "openfunctions/sdft_openfunction_test.jsonl",
            "alpaca_eval/alpaca_eval.jsonl", "ifeval/input_data.jsonl", "refusal_keywords/qi2024_refusal_keywords.json",
            "humaneval/HumanEval.jsonl", "advbench/harmful_behaviors.jsonl"]


def _json_array(shared: Path, name: str) -> bytes:
    """What sail-sg/sdft and gorilla ship: the rows as an indented JSON array."""
    return json.dumps(read_jsonl(shared / name), indent=4, ensure_ascii=False).encode("utf-8")


def _alpaca_eval_annotations(shared: Path, name: str) -> bytes:
    """AlpacaEval's annotations: the reference as output_1 beside a second model's output and the judge's verdict."""
    return json.dumps([{"instruction": row["instruction"], "output_1": row["output"], "generator_1": row["generator"],
                        "dataset": row["dataset"], "output_2": "an answer of alpaca-7b", "generator_2": "alpaca-7b",
                        "annotator": "alpaca_eval_gpt4", "preference": 1.0} for row in read_jsonl(shared / name)],
                      indent=2).encode("utf-8")


def _keyword_module(shared: Path, name: str) -> bytes:
    """keyword_eval.py: the list as a module-level assignment among code."""
    keywords = json.loads((shared / name).read_text())
    return ("import json\n\n_test_prefixes = [\n" + "".join(f"    {k!r},\n" for k in keywords) + "]\n\n\n"
            "def main(outputs):\n    return [not any(p in o for p in _test_prefixes) for o in outputs]\n").encode()


UPSTREAM_FORM = {
    "gsm8k/sdft_gsm8k_test.jsonl": _json_array,
    "openfunctions/sdft_openfunction_test.jsonl": _json_array,
    "alpaca_eval/alpaca_eval.jsonl": _alpaca_eval_annotations,
    "ifeval/input_data.jsonl": lambda shared, name: (shared / name).read_bytes(),
    "refusal_keywords/qi2024_refusal_keywords.json": _keyword_module,
    "humaneval/HumanEval.jsonl": lambda shared, name: (shared / "humaneval/HumanEval.jsonl.gz").read_bytes(),
    "advbench/harmful_behaviors.jsonl": lambda shared, name: (shared / "advbench/harmful_behaviors.csv").read_bytes(),
}


def build_mirror(root: Path, shared: Path, names=MIRRORED, form=UPSTREAM_FORM) -> Path:
    """OWNER/REPO/COMMIT/PATH under `root`, as raw.githubusercontent.com lays it out."""
    for name in names:
        pinned = SOURCES[name].pinned
        upstream = root / pinned.repo / pinned.commit / pinned.files[0]
        upstream.parent.mkdir(parents=True, exist_ok=True)
        upstream.write_bytes(form[name](shared, name))
    return root


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mirror(shared_data, tmp_path_factory):
    """The mirror served over HTTP on loopback: its base URL."""
    root = build_mirror(tmp_path_factory.mktemp("mirror"), shared_data)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch):
    """No data folder anywhere, an empty cache: the download cache path."""
    monkeypatch.delenv("SDFT_DATA_DIR", raising=False)
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setenv(paths.NO_SHARED_DATA_ENV, "1")
    monkeypatch.setenv("SDFT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    from sdft.cli import main

    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---- the registry ---------------------------------------------------------------------------------------------------


def test_every_file_sdft_reads_has_a_source():
    """The benchmark registry, the knowledge tasks, IFEval, the retention prompts and the dataset registry read
    exactly the files the source registry names."""
    from sdft.evaluation import ifeval
    from sdft.evaluation.benchmarks import BENCHMARKS, GCG_SUFFIX_FILE, REFUSAL_KEYWORDS_FILE
    from sdft.evaluation.knowledge import KNOWLEDGE_TASKS
    from sdft.stages.likelihood import PROMPTS_FILE

    read = set().union({bench.data_file for bench in BENCHMARKS.values()},
                       {task.data_file for task in KNOWLEDGE_TASKS.values()},
                       {spec.local_file for spec in DATASETS.values() if spec.local_file},
                       {REFUSAL_KEYWORDS_FILE, GCG_SUFFIX_FILE, ifeval.DATA_FILE, PROMPTS_FILE})
    assert read == set(SOURCES)


def test_pins_are_the_commits_source_md_names(shared_data):
    """Each pin is a raw GitHub URL at the repository and full commit its folder's SOURCE.md gives."""
    for entry in SOURCES.values():
        if entry.pinned is None:
            assert entry.unpinned and entry.hub_id, entry.path
            continue
        repo, commit = entry.pinned.repo, entry.pinned.commit
        assert len(commit) == 40 and int(commit, 16) >= 0 and len(entry.pinned.sha256) == 64
        assert all(url.startswith(f"{RAW_GITHUB}/{repo}/{commit}/") for url in entry.pinned.urls(RAW_GITHUB))
        source_md = (shared_data / entry.folder / "SOURCE.md").read_text()
        assert repo in source_md and commit in source_md, entry.path


def test_local_copies_match_the_pinned_checksums(shared_data):
    """The checksums were taken from ../shared/data: a download reproduces what this machine evaluates on."""
    present = [entry for entry in SOURCES.values() if entry.pinned and (shared_data / entry.path).is_file()]
    assert len(present) == len([entry for entry in SOURCES.values() if entry.pinned])
    for entry in present:
        assert sha256_of(shared_data / entry.path) == entry.pinned.sha256, entry.path


def test_names_are_files_or_folders():
    assert [e.path for e in select(["gsm8k"])] == ["gsm8k/sdft_gsm8k_test.jsonl", "gsm8k/sdft_gsm8k_train.jsonl"]
    assert [e.path for e in select(["ifeval/input_data.jsonl"])] == ["ifeval/input_data.jsonl"]
    assert len(select()) == len(SOURCES)
    with pytest.raises(UserError, match="unknown data file or folder nope"):
        select(["nope"])


# ---- download -------------------------------------------------------------------------------------------------------


def test_download_reproduces_the_local_copies(mirror, shared_data, fresh_machine, capsys):
    rc, out, err = run_cli(["data", "download", ",".join(MIRRORED), "--mirror", mirror], capsys)
    assert rc == 0, err
    for name in MIRRORED:
        assert f"{name}: downloaded, sha256 verified: {fresh_machine / name}" in out
        assert (fresh_machine / name).read_bytes() == (shared_data / name).read_bytes()
        if name.endswith(".jsonl"):
            assert read_jsonl(fresh_machine / name) == read_jsonl(shared_data / name)
    assert files_under(fresh_machine) == sorted({*MIRRORED, *(name.split("/")[0] for name in MIRRORED)})
    rc, out, _ = run_cli(["data", "download", "gsm8k/sdft_gsm8k_test.jsonl", "--mirror", "http://127.0.0.1:9"], capsys)
    assert rc == 0 and "already there, sha256 verified" in out  # verified on disk: no fetch (port 9 answers nothing)


def test_mirror_from_the_environment_and_to_a_folder(mirror, shared_data, fresh_machine, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(MIRROR_ENV, mirror)
    rc, _, err = run_cli(["data", "download", "ifeval", "--to", str(tmp_path / "elsewhere")], capsys)
    assert rc == 0, err
    name = "ifeval/input_data.jsonl"
    assert (tmp_path / "elsewhere" / name).read_bytes() == (shared_data / name).read_bytes()
    assert not fresh_machine.exists()


def test_checksum_mismatch_is_refused_and_leaves_nothing(shared_data, fresh_machine, tmp_path, capsys):
    """A mirror whose rows differ by one character: one line, exit 2, no file, no temp file, no folder."""
    def tampered(shared, name):
        rows = read_jsonl(shared / name)
        rows[0]["answer"] += " "
        return json.dumps(rows, indent=4).encode()

    root = build_mirror(tmp_path / "bad", shared_data, ["gsm8k/sdft_gsm8k_test.jsonl"],
                        {"gsm8k/sdft_gsm8k_test.jsonl": tampered})
    rc, out, err = run_cli(["data", "download", "gsm8k/sdft_gsm8k_test.jsonl", "--mirror", root.as_uri()], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "gsm8k/sdft_gsm8k_test.jsonl: checksum mismatch" in err and "nothing written" in err
    assert not fresh_machine.exists()


def test_upstream_in_another_form_or_absent_is_one_line(shared_data, tmp_path):
    root = build_mirror(tmp_path / "csv_as_json", shared_data, ["gsm8k/sdft_gsm8k_test.jsonl"],
                        {"gsm8k/sdft_gsm8k_test.jsonl": lambda shared, name: b"question,answer\n1+1?,2\n"})
    entry = SOURCES["gsm8k/sdft_gsm8k_test.jsonl"]
    with pytest.raises(UserError, match="is not in the pinned form \\(JSONDecodeError") as e:
        download(entry, tmp_path / "out", root.as_uri())
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(UserError, match="cannot fetch file://.*openfunction_test.json"):
        download(SOURCES["openfunctions/sdft_openfunction_test.jsonl"], tmp_path / "out", root.as_uri())
    assert not (tmp_path / "out").exists()


def test_a_file_without_a_pinned_download_says_why(fresh_machine, capsys):
    rc, _, err = run_cli(["data", "download", "magicoder"], capsys)
    assert rc == 2 and "magicoder/magicoder_train.jsonl: no pinned download (" in err


def test_conversions_beyond_the_mirror():
    """The conversions the equality test does not serve (their inputs are larger than a test mirror should be), on
    a few items in each upstream's form."""
    import bz2

    from sdft.data.sources import ARC_PARSED, GCG_SUFFIX, HELLASWAG_TEXT, MMLU_CSVS, WINOGRANDE_PARSED

    arc = [{"instruction": "Please choose the correct answer to the question: Which is a gas?\n\nAnswer1: ice "
                           "Answer2: steam Answer3: rock\n\nAnswer format: answer1/answer2/answer3",
            "input": "", "output": "the correct answer is answer2", "answer": "answer2"}]
    assert json.loads(ARC_PARSED.apply({"test.json": json.dumps(arc).encode()})) == {
        "row": 0, "question": "Which is a gas?", "choices": ["ice", "steam", "rock"], "answer_index": 1}
    wino = [{"instruction": "Please choose the correct answer to fill in the blank to complete the given sentence: "
                            "Tom paid Al because _ owed him.\n\nOption1: Tom Option2: Al "
                            "Answer format: option1/option2",
             "input": "", "output": "the correct answer is option1", "answer": "option1"}]
    assert json.loads(WINOGRANDE_PARSED.apply({"test.json": json.dumps(wino).encode()})) == {
        "row": 0, "sentence": "Tom paid Al because _ owed him.", "option1": "Tom", "option2": "Al", "answer": "1"}
    text = "Baking: A cook: mixes flour. she\n2\na\nb\nputs it in the oven.\nd\n"
    assert json.loads(HELLASWAG_TEXT.apply({"val.txt.bz2": bz2.compress(text.encode())})) == {
        "row": 0, "activity_label": "Baking", "ctx": "A cook: mixes flour. she", "label": 2,
        "endings": ["a", "b", "puts it in the oven.", "d"]}
    mmlu = {"data/mmlu/test/anatomy_test.csv": b'"Where is the ""femur""?",leg,arm,head,neck,A\n',
            "data/mmlu/test/virology_test.csv": b"What is a virus?,a,b,c,d,D\n"}
    assert [json.loads(line) for line in MMLU_CSVS.apply(mmlu).splitlines()] == [
        {"subject": "anatomy", "question": 'Where is the "femur"?', "choices": ["leg", "arm", "head", "neck"],
         "answer": "A"},
        {"subject": "virology", "question": "What is a virus?", "choices": ["a", "b", "c", "d"], "answer": "D"}]
    main_py = ('_register_template(\n    name="alpaca_gcg",\n    format_user=StringFormatter(slots=[\n'
               '        "### Instruction:\\n{{content}}"\n        r""" oppositeley.]( Me "\\!--Two"""\n'
               '        "\\n\\n### Response:\\n"\n    ]),\n)\n')
    assert GCG_SUFFIX.apply({"main.py": main_py.encode()}) == b'oppositeley.]( Me "\\!--Two\n'


# ---- sdft data list -------------------------------------------------------------------------------------------------


def test_data_list_says_where_each_file_is_and_comes_from(shared_data, fresh_machine, tmp_path, capsys):
    local = tmp_path / "local"
    (local / "gsm8k").mkdir(parents=True)
    (local / "gsm8k/sdft_gsm8k_test.jsonl").write_bytes((shared_data / "gsm8k/sdft_gsm8k_test.jsonl").read_bytes())
    (fresh_machine / "ifeval").mkdir(parents=True)
    (fresh_machine / "ifeval/input_data.jsonl").write_bytes((shared_data / "ifeval/input_data.jsonl").read_bytes())
    rc, out, err = run_cli(["data", "list", "--data-dir", str(local)], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[:2] == [f"data dir: {local}", f"cache: {fresh_machine}"]
    by_file = {line.split()[0]: line for line in lines[2:]}
    assert list(by_file) == list(SOURCES)
    assert by_file["gsm8k/sdft_gsm8k_test.jsonl"].split()[1:3] == ["data", "dir"]
    assert "sail-sg/sdft@bfb6c255 data/gsm8k/gsm8k_test.json: JSON array -> JSONL [hub: openai/gsm8k]" \
        in by_file["gsm8k/sdft_gsm8k_test.jsonl"]
    assert by_file["ifeval/input_data.jsonl"].split()[1] == "cache"
    assert by_file["humaneval/HumanEval.jsonl"].split()[1] == "missing"
    assert "openai/human-eval@6d43fb98 data/HumanEval.jsonl.gz: gzip -> plain" in by_file["humaneval/HumanEval.jsonl"]
    assert "(+56 more)" in by_file["mmlu/mmlu_test.jsonl"]
    assert "no pinned download: " in by_file["magicoder/magicoder_train.jsonl"]
    rc, out, _ = run_cli(["data", "list", "advbench"], capsys)
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["advbench/harmful_behaviors.jsonl",
                                                                  "advbench/gcg_suffixes.txt"]


# ---- the evaluation's fallback to the cache -------------------------------------------------------------------------


def test_data_dir_order(fresh_machine, tmp_path, monkeypatch):
    """--data-dir, $SDFT_DATA_DIR, ../shared/data, then the cache only when it holds the files asked for."""
    assert paths.data_dir(needed=["gsm8k/sdft_gsm8k_test.jsonl"]) is None
    (fresh_machine / "gsm8k").mkdir(parents=True)
    (fresh_machine / "gsm8k/sdft_gsm8k_test.jsonl").write_text("{}\n")
    assert paths.data_dir(needed=["gsm8k/sdft_gsm8k_test.jsonl"]) == fresh_machine
    assert paths.data_dir(needed=["gsm8k/sdft_gsm8k_test.jsonl", "ifeval/input_data.jsonl"]) is None
    monkeypatch.setenv("SDFT_DATA_DIR", str(tmp_path / "env"))
    assert paths.data_dir(needed=["gsm8k/sdft_gsm8k_test.jsonl"]) == tmp_path / "env"
    assert paths.data_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    monkeypatch.delenv("SDFT_DATA_DIR")
    monkeypatch.delenv(paths.NO_SHARED_DATA_ENV)
    (tmp_path / "work").mkdir()
    (tmp_path / "shared/data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert paths.data_dir() == (tmp_path / "shared/data").resolve()


def test_evaluation_reads_the_cache_and_names_what_is_missing(mirror, fresh_machine):
    from sdft.evaluation.benchmarks import get_benchmark
    from sdft.stages.evaluate import resolve_data_dir, files_read

    with pytest.raises(UserError, match="fetch it with `sdft data download advbench/harmful_behaviors.jsonl,"
                                        "refusal_keywords/qi2024_refusal_keywords.json,advbench/gcg_suffixes.txt`"):
        resolve_data_dir(None, files_read([get_benchmark("advbench_jailbreak")]))
    download(SOURCES["gsm8k/sdft_gsm8k_test.jsonl"], fresh_machine, mirror)
    gsm8k = get_benchmark("gsm8k")
    assert resolve_data_dir(None, files_read([gsm8k])) == fresh_machine
    assert len(gsm8k.load(resolve_data_dir(None, files_read([gsm8k])))) == 1319
    with pytest.raises(UserError, match="data not found: ifeval/input_data.jsonl \\("):
        resolve_data_dir(None, files_read([gsm8k, get_benchmark("ifeval")]))
    assert files_read([get_benchmark("mmlu")]) == []  # knowledge tasks fall back to lm-eval's hub tasks
    assert resolve_data_dir(None, []) == fresh_machine


def _offline_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The real CLI on a fresh machine: offline, no data folder, an empty cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "SDFT_CACHE_DIR": str(tmp_path / "empty_cache"), paths.NO_SHARED_DATA_ENV: "1"}
    env.pop("SDFT_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "sdft", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def _assert_one_line(proc: subprocess.CompletedProcess, start: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(start), proc.stderr


def test_eval_on_a_fresh_machine_stops_in_one_line(tmp_path):
    """Exit 2, one line naming the file and the command, nothing written."""
    proc = _offline_cli(tmp_path, "eval", "--benchmarks", "gsm8k", "--model", "./no/such/model", "--out", "out")
    _assert_one_line(proc, "sdft eval: error: data not found: gsm8k/sdft_gsm8k_test.jsonl (")
    assert proc.stderr.rstrip().endswith("fetch it with `sdft data download gsm8k/sdft_gsm8k_test.jsonl`")
    assert not (tmp_path / "out").exists()


def test_demo_on_a_fresh_machine_stops_before_writing_anything(tmp_path):
    """The pipeline checks the data every evaluation stage reads before it creates the run directory."""
    proc = _offline_cli(tmp_path, "demo", "--out", "demo_out")
    _assert_one_line(proc, "sdft demo: error: data not found: openfunctions/sdft_openfunction_test.jsonl, ")
    assert "alpaca_eval/alpaca_eval.jsonl" in proc.stderr and "`sdft data download " in proc.stderr
    assert not (tmp_path / "demo_out").exists()


def test_an_unreachable_hub_dataset_is_one_line(tmp_path):
    proc = _offline_cli(tmp_path, "distill", "--dataset", "no-such-org/no-such-dataset", "--out", "out")
    _assert_one_line(proc, "sdft distill: error: could not load hub dataset 'no-such-org/no-such-dataset' (")
    assert not (tmp_path / "out").exists()


# ---- knowledge tasks without a local copy ---------------------------------------------------------------------------


def test_without_a_local_copy_knowledge_tasks_use_lm_evals_stock_config(tmp_path):
    pytest.importorskip("lm_eval")
    from sdft.evaluation.knowledge import KNOWLEDGE_TASKS, task_name

    for name, task in KNOWLEDGE_TASKS.items():
        local = task.yaml_config(name, tmp_path / "docs.jsonl", tmp_path)
        stock = task.yaml_config(name, None, tmp_path)
        assert stock["include"] == local["include"] and stock["include"].endswith(task.lm_eval_config)
        assert stock["task"] == task_name(name)
        assert "dataset_path" not in stock and "test_split" not in stock, name  # lm-eval's hub dataset and splits
        assert local["dataset_path"] == "json"
    assert KNOWLEDGE_TASKS["mmlu"].yaml_config("mmlu", None, tmp_path)["dataset_name"] == "all"  # one task, 57 subjects
    assert "description" in KNOWLEDGE_TASKS["mmlu"].yaml_config("mmlu", None, tmp_path)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_stock_task_offline_is_one_line_naming_the_download(tiny_model, tmp_path, monkeypatch):
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
    from sdft.evaluation.knowledge import evaluate_knowledge

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'cais/mmlu' on the Hub (offline mode is enabled)")

    monkeypatch.setattr(lm_eval_tasks.TaskManager, "load", offline)
    with pytest.raises(UserError) as e:
        evaluate_knowledge(*tiny_model, ["mmlu"], tmp_path / "no_data", tmp_path / "out", limit=2)
    assert str(e.value) == ("mmlu/mmlu_test.jsonl: not in the data directory, and lm-eval's mmlu task cannot load its "
                            "hub dataset (ConnectionError); fetch the local copy with "
                            "`sdft data download mmlu/mmlu_test.jsonl`")


def test_stock_task_scores_a_seeded_subset(tiny_model, shared_data, tmp_path, monkeypatch):
    """The stock path end to end, its hub dataset swapped for a local file in the hub's schema."""
    pytest.importorskip("lm_eval")
    from sdft.data.datasets import seeded_indices
    from sdft.evaluation import knowledge

    task = knowledge.KNOWLEDGE_TASKS["winogrande"]
    hub_docs = tmp_path / "winogrande_validation.jsonl"
    hub_docs.write_text("".join(json.dumps(task.to_doc(row)) + "\n"
                                for row in read_jsonl(shared_data / task.data_file)[:40]))
    local_hub = {"dataset_path": "json", "dataset_name": None, "training_split": None,
                 "dataset_kwargs": {"data_files": {"validation": str(hub_docs)}, "cache_dir": str(tmp_path / "hf")}}
    monkeypatch.setitem(knowledge.KNOWLEDGE_TASKS, "winogrande", dataclasses.replace(task, hub_overrides=local_hub))
    results = knowledge.evaluate_knowledge(*tiny_model, ["winogrande"], tmp_path / "no_data", tmp_path / "out",
                                           limit=3, seed=0)
    rows = read_jsonl(tmp_path / "out/winogrande.jsonl")
    expected = [f"winogrande-{i}" for i in seeded_indices(40, 3, 0)]
    assert [row["id"] for row in rows] == expected and results["winogrande"]["n"] == 3
    assert all(row["reference"] in (0, 1) and row["score"] == float(row["prediction"] == row["reference"])
               for row in rows)
