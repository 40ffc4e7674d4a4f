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

from sdft.engines.sandbox import isolation_layers, run_humaneval, run_python
from sdft.paths import data_dir


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
