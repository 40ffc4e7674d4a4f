"""One `sdft run` per run directory (a second refuses at once, a dead holder's lock is taken over), and torch threads
sized to this process's cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sdft.core.errors import UserError
from sdft.core.locking import LOCK_FILE, RunLock
from sdft.engines.runtime import available_cores, configure_threads

HOLD = "import sys, time\nfrom sdft.core.locking import RunLock\nlock = RunLock(sys.argv[1])\nprint('held', flush=True)\ntime.sleep(60)\n"


def test_second_holder_refuses_at_once_naming_the_first(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid}") as refused:
            RunLock(tmp_path)
        assert str(tmp_path) in str(refused.value) and "\n" not in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).release()  # the killed holder's lock is free again


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text("999999999\n")
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(UserError):
            RunLock(tmp_path)  # the same process running twice on one directory is refused too


def test_second_sdft_run_exits_2_with_one_line(tmp_path, capsys):
    from sdft.cli import main

    experiment = tmp_path / "exp.yaml"
    experiment.write_text(f"name: x\nout: {tmp_path / 'run'}\ndatasets: [gsm8k]\nmethods: [vanilla]\n")
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run"):
        assert main(["run", str(experiment)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {os.getpid()}" in err[0]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_FILE]  # nothing written by the refused run


def test_threads_follow_omp_num_threads_or_the_available_cores(monkeypatch):
    import torch

    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        for env, expected in (("1", 1), ("", available_cores()), ("zero", available_cores())):
            monkeypatch.setenv("OMP_NUM_THREADS", env)
            configure_threads.cache_clear()
            chosen = configure_threads()
            assert chosen["torch_threads"] == expected == torch.get_num_threads()
            assert (chosen["reason"] == "OMP_NUM_THREADS") == (env == "1")
    finally:
        configure_threads.cache_clear()
        torch.set_num_threads(before)


def test_run_json_records_the_thread_choice(tmp_path):
    from sdft.provenance import write_run_json

    record = write_run_json(tmp_path, "test", {"seed": 1})
    assert record["threads"]["torch_threads"] >= 1 and record["threads"]["cores_available"] >= 1
