"""Every hostile program must end "failed" or "timeout" within its limits, and the host must be untouched."""

import ast
import json
import os
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sdft.core.paths import data_dir
from sdft.evaluation.sandbox import isolation_layers, run_humaneval, run_python


def test_clean_program_passes():
    result = run_python("import sys\nprint('hi')\nprint('err', file=sys.stderr)\n")
    assert result.status == "passed" and result.returncode == 0
    assert result.stdout == "hi\n" and result.stderr == "err\n"


def test_error_fails():
    result = run_python("raise ValueError('boom')")
    assert result.status == "failed" and "ValueError: boom" in result.stderr


def test_scratch_dir_is_writable_and_thrown_away():
    result = run_python("import os\nopen('out.txt', 'w').write('x')\nprint(os.getcwd())")
    assert result.status == "passed"
    assert not Path(result.stdout.strip()).exists()


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("SDFT_SECRET_TOKEN", "hunter2")
    result = run_python("import os\nprint(sorted(os.environ))")
    assert result.status == "passed" and "SDFT_SECRET_TOKEN" not in result.stdout


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout_s=2)
    assert result.status == "timeout"
    assert time.monotonic() - start < 6


def test_sleep_times_out_on_wall_clock():
    result = run_python("import time\ntime.sleep(60)\n", timeout_s=1)
    assert result.status == "timeout" and result.duration_s < 5


def test_fork_bomb_is_contained():
    start = time.monotonic()
    result = run_python("import os\nwhile True:\n    os.fork()\n", timeout_s=5)
    assert result.status in ("failed", "timeout")
    assert time.monotonic() - start < 10
    assert run_python("print(1)").status == "passed"  # the host can still start processes


def test_rmtree_outside_scratch_is_contained():
    victim = Path(tempfile.mkdtemp(prefix="sdft-victim-"))
    try:
        victim.chmod(0o777)  # even world-writable: only the sandbox's own layers protect it
        (victim / "keep.txt").write_text("precious")
        result = run_python(f"import shutil\nshutil.rmtree({str(victim)!r})\n")
        assert result.status == "failed"
        assert (victim / "keep.txt").read_text() == "precious"
    finally:
        (victim / "keep.txt").unlink(missing_ok=True)
        victim.rmdir()


def test_network_is_unreachable():
    if "netns" not in isolation_layers():
        pytest.skip("no network namespace on this host")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\ns.sendall(b'leak')\n"
        result = run_python(code, timeout_s=5)
        assert result.status == "failed"
        with pytest.raises(socket.timeout):
            server.accept()


def test_huge_allocation_fails():
    result = run_python("x = bytearray(10**10)\n", timeout_s=5)
    assert result.status == "failed" and "MemoryError" in result.stderr


def test_runaway_output_is_capped():
    result = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout_s=5)
    assert result.status in ("failed", "timeout") and len(result.stdout) <= 1 << 20


@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    root = data_dir()
    path = root / "humaneval" / "HumanEval.jsonl" if root else None
    if path is None or not path.is_file():
        pytest.skip("HumanEval data not found")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_all_canonical_humaneval_solutions_pass(humaneval):
    assert len(humaneval) == 164
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: run_humaneval(p, p["canonical_solution"]), humaneval))
    failures = [(p["task_id"], r.status, r.stderr[-300:]) for p, r in zip(humaneval, results) if r.status != "passed"]
    assert not failures


def test_humaneval_wrong_solution_fails(humaneval):
    assert run_humaneval(humaneval[0], "    return not True\n").status == "failed"


@pytest.mark.parametrize("index", [0, 10, 38])  # 10 and 38 call helpers defined only in the prompt
def test_humaneval_accepts_restated_function(humaneval, index):
    problem = humaneval[index]
    source = problem["prompt"] + problem["canonical_solution"]
    tree = ast.parse(source)
    entry = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"])
    assert run_humaneval(problem, ast.get_source_segment(source, entry) + "\n").status == "passed"


def test_host_is_not_root_inside_the_sandbox():
    result = run_python("import os\nprint(os.geteuid())")
    assert result.status == "passed"
    if os.geteuid() == 0:
        assert result.stdout.strip() != "0"


# ---- "passed" means the tests ran to their end -------------------------------------------------------------------

ADD = {"prompt": "def add(a, b):\n", "entry_point": "add",
       "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"}

# Each ends the process early with status 0 (or a forged "done" signal) before `check(add)` can run.
EARLY_EXITS = {
    "SystemExit(0)": "raise SystemExit(0)",
    "sys.exit()": "import sys\nsys.exit()",
    "sys.exit(0)": "import sys\nsys.exit(0)",
    "os._exit(0)": "import os\nos._exit(0)",
    "exit()": "exit()",
    "quit()": "quit()",
    "atexit raises": "import atexit, sys\natexit.register(lambda: 1 / 0)\nsys.exit(0)",
    "atexit os._exit(0)": "import atexit, sys\natexit.register(lambda: __import__('os')._exit(0))\nsys.exit(3)",
    "SIGKILL self": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "SIGTERM handler exits 0": "import os, signal\nsignal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n"
                               "os.kill(os.getpid(), signal.SIGTERM)",
    "alarm raises SystemExit mid-test": "import signal\nsignal.signal(signal.SIGALRM, lambda *a: exit(0))\n"
                                        "signal.setitimer(signal.ITIMER_REAL, 0.01)\nimport time\ntime.sleep(1)",
    "exec another program": "import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'pass'])",
    "prints a fake token": "print('0123456789abcdef0123456789abcdef')\nprint('passed')\nraise SystemExit(0)",
    "writes every fd": "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, os.urandom(16).hex().encode())\n"
                       "    except OSError:\n        pass\nos._exit(0)",
    "reads every fd then exits": "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, os.read(fd, 64))\n"
                                 "    except OSError:\n        pass\nos._exit(0)",
    "KeyboardInterrupt": "raise KeyboardInterrupt",
}


@pytest.mark.parametrize("exit_code", list(EARLY_EXITS.values()), ids=list(EARLY_EXITS))
def test_early_exit_scores_zero_on_humaneval(exit_code):
    completion = "    return a + b\n" + exit_code + "\n"  # correct body, then the early exit at module level
    result = run_humaneval(ADD, completion, timeout_s=5)
    assert result.status in ("failed", "timeout"), result


@pytest.mark.parametrize("exit_code", list(EARLY_EXITS.values()), ids=list(EARLY_EXITS))
def test_early_exit_is_rejected_by_code_selection(exit_code):
    from sdft.evaluation.checks import code_check

    rewrite = f"```python\ndef add(a, b):\n    return a + b\n{exit_code}\n```"
    assert code_check(rewrite, ADD["test"], "add", timeout_s=5).reason in ("tests_failed", "timeout")


def test_correct_solution_still_passes():
    from sdft.evaluation.checks import code_check

    assert run_humaneval(ADD, "    return a + b\n").status == "passed"
    assert code_check("```python\ndef add(a, b):\n    return a + b\n```", ADD["test"], "add").ok


def test_exit_after_the_tests_is_still_a_failure_when_nonzero():
    assert run_python("print('done')\nraise SystemExit(1)").status == "failed"
    assert run_python("import sys\nsys.exit(0)").status == "failed"  # even at the end: the script did not return


def test_program_runs_as_main_with_its_own_file():
    result = run_python("import sys\nprint(__name__, __file__, sys.argv)")
    assert result.status == "passed" and result.stdout.strip() == "__main__ program.py ['program.py']"
