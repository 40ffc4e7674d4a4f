"""perf/run_all.py keeps each finished part's figures when a later part fails or is killed."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import run_all  # noqa: E402  (perf/ is a folder of scripts, not a package)


def test_a_part_that_fails_leaves_the_finished_parts_written(tmp_path, monkeypatch):
    results = tmp_path / "latest.json"
    results.write_text(json.dumps({"gen_peer_speedup": 1.0, "train_speedup": 1.5, "old_key": 7}))
    monkeypatch.setattr(run_all, "RESULTS", results)

    def part(name, argv):
        if name == "training":
            raise RuntimeError("killed in the training part")
        return {"gen_peer_speedup": 2.0} if name == "peers" else {"gen_baseline_speedup": 11.0}

    monkeypatch.setattr(run_all, "in_fresh_process", part)
    with pytest.raises(RuntimeError):
        run_all.main([])
    written = json.loads(results.read_text())
    assert written["gen_peer_speedup"] == 2.0 and written["gen_baseline_speedup"] == 11.0  # this run's
    assert written["train_speedup"] == 1.5  # the earlier run's, labelled as such
    assert written["kept_from_earlier_run"] == ["old_key", "train_speedup"]
    assert not results.with_suffix(".json.tmp").exists()


def test_a_complete_run_labels_nothing_it_measured(tmp_path, monkeypatch):
    results = tmp_path / "latest.json"
    monkeypatch.setattr(run_all, "RESULTS", results)
    monkeypatch.setattr(run_all, "in_fresh_process", lambda name, argv: {f"{name}_speedup": 3.0})
    monkeypatch.setattr(run_all.generation_throughput, "machine_info", lambda: {"cpu": "this one"})
    run_all.main(["--quick"])
    written = json.loads(results.read_text())
    assert written == {"machine": {"cpu": "this one"}, "generation_speedup": 3.0, "peers_speedup": 3.0,
                       "training_speedup": 3.0}


def test_parts_not_run_keep_their_earlier_figures(tmp_path, monkeypatch):
    results = tmp_path / "latest.json"
    results.write_text(json.dumps({"training_speedup": 1.5, "peers_speedup": 2.0, "machine": {"cpu": "an earlier one"}}))
    monkeypatch.setattr(run_all, "RESULTS", results)
    monkeypatch.setattr(run_all.generation_throughput, "machine_info", lambda: {"cpu": "this one"})
    ran = []
    monkeypatch.setattr(run_all, "in_fresh_process", lambda name, argv: ran.append(name) or {f"{name}_speedup": 3.0})
    run_all.main(["--parts", "peers"])
    assert ran == ["peers"]
    # the machine is always this run's: the kept figures are labelled as another run's
    assert json.loads(results.read_text()) == {"training_speedup": 1.5, "peers_speedup": 3.0, "machine": {"cpu": "this one"},
                                               "kept_from_earlier_run": ["training_speedup"]}
