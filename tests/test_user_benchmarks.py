"""The user's own task as a benchmark: each check kind scores known answers, a declared task runs through `sdft eval`
and `sdft score` on the tiny model, an experiment names it as its target, and a bad declaration is one line naming it."""

from __future__ import annotations

import json

import pytest
import yaml

from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl, write_jsonl
from sdft.evaluation.benchmarks import check_targets
from sdft.evaluation.checks import SELECTION_RULES, default_rule
from sdft.evaluation.user_benchmarks import declare_tasks, user_benchmark

QA_COLUMNS = {"instruction": "q", "response": "a"}


def scores(tmp_path, rows: list[dict], check: str, answers: list[str], **options) -> list[float]:
    """Each answer's score against the task's rows, in order."""
    path = tmp_path / "heldout.jsonl"
    write_jsonl(path, rows)
    bench = user_benchmark("my_task", path, check, **options)
    return [bench.score(sample, answer) for sample, answer in zip(bench.load(), answers, strict=True)]


@pytest.mark.parametrize("check, reference, right, wrong", [
    ("exact", "Paris", "  Paris\n", "paris"),
    ("contains", "Paris", "The capital is Paris.", "It is Lyon."),
    ("regex", r"\b(19|20)\d\d\b", "It happened in 1999.", "It happened long ago."),
    ("math", "She has 3 + 4 = 7 apples.\n#### 7", "3 + 4 = 7. The answer is 7.", "The answer is 8."),
    ("function_call", 'get_weather(city="Paris", unit="C")',
     "Sure: get_weather(unit='C', city='Paris') returns the forecast.", 'get_weather(city="Rome", unit="C")'),
])
def test_each_check_scores_known_answers(tmp_path, check, reference, right, wrong):
    rows = [{"q": "question", "a": reference}] * 2
    assert scores(tmp_path, [{**row, "id": str(i)} for i, row in enumerate(rows)], check, [right, wrong],
                  columns=QA_COLUMNS) == [1.0, 0.0]


def test_regex_with_one_fixed_pattern(tmp_path):
    rows = [{"id": str(i), "instruction": "Answer yes or no.", "output": "unused"} for i in range(2)]
    assert scores(tmp_path, rows, "regex", ["Yes.", "Maybe"], pattern=r"^(Yes|No)\b") == [1.0, 0.0]


def test_code_runs_the_rows_tests(tmp_path):
    rows = [{"id": str(i), "instruction": "Write add(a, b).", "output": "def add(a, b): return a + b",
             "tests": "def check(f):\n    assert f(1, 2) == 3", "entry_point": "add"} for i in range(2)]
    answers = ["```python\ndef add(a, b):\n    return a + b\n```", "```python\ndef add(a, b):\n    return a - b\n```"]
    assert scores(tmp_path, rows, "code", answers) == [1.0, 0.0]


def test_a_scorer_function_of_the_users_own(tmp_path, monkeypatch):
    (tmp_path / "my_scorers.py").write_text(
        "def overlap(prediction, reference):\n"
        "    words = set(reference.split())\n"
        "    return len(words & set(prediction.split())) / len(words)\n"
        "def too_much(prediction, reference):\n"
        "    return 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [{"id": str(i), "q": "Name two colours.", "a": "red blue"} for i in range(3)]
    assert scores(tmp_path, rows, "my_scorers:overlap", ["red and blue", "red", "green"], columns=QA_COLUMNS) == \
        [1.0, 0.5, 0.0]
    with pytest.raises(UserError, match=r"my_scorers:too_much returned 2 for '0'"):
        scores(tmp_path, rows[:1], "my_scorers:too_much", ["red"], columns=QA_COLUMNS)


@pytest.mark.parametrize("task", ["math", "function_call", "code"])
def test_a_task_kind_scores_with_its_default_selection_rule(tmp_path, task):
    """Evaluated as the target, the user's task counts as right what selection keeps as a right rewrite."""
    path = tmp_path / "heldout.jsonl"
    write_jsonl(path, [{"instruction": "q", "output": 'f(x=1)'}])
    bench = user_benchmark("my_task", path, task)
    rule = SELECTION_RULES[task][default_rule(task)]
    assert bench.selection == (task, default_rule(task)) and bench.scorer.check is rule.check
    check_targets({"my_task": bench})
    sample = bench.load()[0]
    for answer in ["f(x=1)", "```python\nf(x=1)\n```", "The answer is 1."]:
        assert bench.score(sample, answer) == float(rule(answer, sample.extra["example"]).ok)


# ---- through the commands ---------------------------------------------------------------------------------------


@pytest.fixture
def heldout(tmp_path):
    path = tmp_path / "heldout.csv"
    path.write_text("question,answer\nWhat is 2 + 2?,4\nCapital of France?,Paris\nColour of the sky?,blue\n")
    return path


def test_a_task_through_eval_and_score(tiny_model_dir, heldout, tmp_path, capsys):
    from sdft.cli import main

    out = tmp_path / "eval"
    tasks = f"my_task: {heldout}:contains"  # question/answer columns are read as training data's are
    assert main(["eval", "--model", tiny_model_dir, "--out", str(out), "--benchmarks", "my_task", "--tasks", tasks,
                 "--limit", "2", "--max-new-tokens", "4"]) == 0
    entry = json.loads((out / "results.json").read_text())["benchmarks"]["my_task"]
    assert entry["n"] == 2 and entry["metric"] == "contains" and entry["generation"]["max_new_tokens"] == 4
    rows = read_jsonl(out / "my_task.jsonl")
    assert len(rows) == 2 and {row["reference"] for row in rows} <= {"4", "Paris", "blue"}
    capsys.readouterr()

    assert main(["score", "--benchmark", "my_task", "--tasks", tasks,
                 "--predictions", str(out / "my_task.generations.jsonl")]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert (rescored["n"], rescored["score"]) == (2, entry["score"])


def write_experiment(tmp_path, heldout, **changes):
    train = tmp_path / "train.jsonl"
    write_jsonl(train, [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)])
    config = {
        "name": "own", "out": str(tmp_path / "run"), "datasets": [str(train)], "seeds": [0],
        "tasks": {"my_task": {"file": str(heldout), "check": "exact",
                              "columns": {"instruction": "question", "response": "answer"}},
                  "other_task": f"{heldout}:contains"},
        "target_benchmark": "my_task",
        "train": {"max_steps": 2, "eval_at_steps": [1]},
        "eval": {"benchmarks": ["my_task", "other_task"], "limit": 2},
        "decision": {"gains": [5], "measures": ["other_task"], "min_seeds": 1},
        "shift": {"benchmark": None},
        **changes,
    }
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_experiment_targets_the_users_task(tmp_path, heldout, capsys):
    from sdft.cli import main
    from sdft.experiment import load_experiment
    from sdft.pipeline import plan

    heldout.write_text("question,answer\nWhat is 2 + 2?,4\n")
    experiment = write_experiment(tmp_path, heldout)
    exp = load_experiment(str(experiment))
    assert exp.target_benchmark == "my_task" and set(exp.eval.tasks) == {"my_task", "other_task"}
    evals = [stage for stage in plan(exp).stages if stage.kind == "eval"]
    assert evals and all(set(stage.config["tasks"]) == {"my_task", "other_task"} for stage in evals)
    assert main(["run", str(experiment), "--dry-run"]) == 0
    assert "eval" in capsys.readouterr().out

    heldout.write_text("question,answer\nWhat is 2 + 3?,5\n")  # an edited held-out file is another evaluation
    assert plan(load_experiment(str(experiment))).stages[0].hash != evals[0].hash


@pytest.mark.parametrize("changes, needles", [
    ({"tasks": {"my_task": "heldout.csv:fuzzy"}}, ["tasks.my_task", "unknown check 'fuzzy'"]),
    ({"tasks": {"my_task": "missing.jsonl:exact"}}, ["tasks.my_task", "missing.jsonl", "not found"]),
    ({"tasks": {"my_task": "heldout.csv:no_such_module:score"}}, ["tasks.my_task", "no_such_module"]),
    ({"tasks": {"my_task": {"file": "heldout.csv", "check": "exact", "columns": {"instruction": "q"}}}},
     ["tasks.my_task", "heldout.csv:2", "missing column 'q'"]),
    ({"tasks": {"gsm8k": "heldout.csv:exact"}}, ["tasks.gsm8k", "built-in"]),
    ({"target_benchmark": "my_tsak"}, ["target_benchmark", "my_tsak"]),
    ({"eval": {"benchmarks": ["my_tsak"]}}, ["eval.benchmarks", "my_tsak"]),
    ({"eval": {"tasks": {}}}, ["eval.tasks", "top-level"]),
], ids=["check", "file", "module", "column", "name", "target", "benchmarks", "section"])
def test_a_bad_declaration_in_an_experiment_is_one_line(tmp_path, heldout, monkeypatch, capsys, changes, needles):
    from sdft.cli import main

    monkeypatch.chdir(tmp_path)
    experiment = write_experiment(tmp_path, heldout, **changes)
    assert main(["run", str(experiment), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(experiment) in err and all(n in err for n in needles), err


@pytest.mark.parametrize("tasks, benchmarks, needles", [
    ("my_task: heldout.csv", "my_task", ["tasks.my_task", "FILE:CHECK"]),
    ("my_task: missing.jsonl:exact", "my_task", ["tasks.my_task", "missing.jsonl"]),
    ("my_task: heldout.csv:no_such_module:score", "my_task", ["tasks.my_task", "no_such_module"]),
    ("{my_task: {file: heldout.csv, check: exact, colums: {}}}", "my_task", ["tasks.my_task.colums"]),
    ("my_task: heldout.csv:exact", "gsm8k,my_tsak", ["benchmarks", "my_tsak"]),
], ids=["syntax", "file", "module", "key", "typo"])
def test_a_bad_declaration_on_the_command_line_is_one_line(tmp_path, heldout, monkeypatch, capsys, tasks, benchmarks,
                                                           needles):
    from sdft.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--out", "out", "--tasks", tasks, "--benchmarks", benchmarks]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    assert not (tmp_path / "out").exists()


def test_declarations_are_mappings_of_names(heldout):
    with pytest.raises(UserError, match="tasks: expected a mapping"):
        declare_tasks([f"{heldout}:exact"])
    with pytest.raises(UserError, match=r"tasks\.a\.b: a task's name"):
        declare_tasks({"a.b": f"{heldout}:exact"})
