"""`--dtype auto` on CPU, decided by measurement: a matmul of the model's shapes timed in fp32 and bf16, once per machine.

Whether bf16 pays on a CPU is not readable from its flags: on an AMD EPYC with AVX-512 BF16 it ran faster than fp32, on
an Intel Xeon with the same flag at half the fp32 rate (docs/design.md §5). So both are timed on the model's MLP projection at a
decoding batch (64 rows) and a prefill chunk (512 rows), interleaved so a load spike hits both; bf16 is chosen only when
it is at least `BF16_MARGIN` faster, since fp32 is the exact one. fp16 is never a candidate on CPU (slow, and activations
overflow); a model too small for its matmuls to be more than call overhead (test models) gets fp32 unmeasured. The figures are cached in `cache/dtype_probe.json`, keyed by CPU (model, family and flags), torch version, threads and shapes
(delete the file to measure again), and every decision of this process is recorded in run.json.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import platform
import time
from pathlib import Path

import torch

from sdft.core.jsonl import write_json
from sdft.core.paths import cache_dir

ROWS = (64, 512)  # a decoding step's batch and a prefill chunk
BF16_MARGIN = 1.1
MIN_FLOPS = 5e7  # below this a prefill chunk's matmul is per-call overhead, not arithmetic: fp32, unmeasured
DEFAULT_SHAPE = (576, 1536)  # the embedded SmolLM2-135M: hidden, intermediate
_decisions: dict[str, dict] = {}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's flags as /proc/cpuinfo lists them (empty where there is none)."""
    return set(_cpuinfo().get("flags", "").split())


def cpu_flags_hash() -> str:
    """8 hex digits of the CPU's flag set: what a build with -march=native depends on."""
    fields = _cpuinfo()
    return hashlib.sha256((fields.get("flags") or platform.processor()).encode()).hexdigest()[:8]


def cpu_identity() -> str:
    """The CPU as the probe's cache tells machines apart: its model name, family/model/stepping and flag set. In these
    VMs the model name alone is a bare "AMD EPYC" on a Zen 4 and a Zen 5 alike, whose bf16 matmuls ran at 440 and 850
    GFLOP/s: a cache folder shared between them would have reused one's decision on the other."""
    fields = _cpuinfo()
    generation = "/".join(fields.get(name, "?") for name in ("cpu family", "model", "stepping"))
    return f"{cpu_model()} ({generation}, flags {cpu_flags_hash()})"


def linear_shape(model_path: str | Path | None) -> tuple[int, int]:
    """(hidden, intermediate) from a local model folder's config.json; the embedded model's when unknown."""
    config = Path(model_path) / "config.json" if model_path else None
    if config is None or not config.is_file():
        return DEFAULT_SHAPE
    values = json.loads(config.read_text())
    hidden = values.get("hidden_size") or values.get("n_embd")
    if not hidden:
        return DEFAULT_SHAPE
    return int(hidden), int(values.get("intermediate_size") or 4 * hidden)


def best_seconds(call, budget: float = 0.05, repeats: int = 100) -> float:
    """Best time of `call()` after one warm-up call, over ~`budget` seconds: this machine's noise only ever adds."""
    call()
    best, start = float("inf"), time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - start > budget:
            break
    return best


def matmul_seconds(dtype: torch.dtype, rows: int, hidden: int, intermediate: int, budget: float = 0.05) -> float:
    """Best time of `F.linear` (rows × hidden) · (intermediate × hidden)ᵀ in `dtype`, over ~`budget` seconds (the
    warm-up creates oneDNN's primitive)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=generator).to(dtype)
    w = torch.randn(intermediate, hidden, generator=generator).to(dtype)
    return best_seconds(lambda: torch.nn.functional.linear(x, w), budget)


def measure(shape: tuple[int, int], rounds: int = 3) -> dict:
    """GFLOP/s per dtype and row count, fp32 and bf16 timed in alternation; the faster safe dtype chosen."""
    hidden, intermediate = shape
    seconds = {name: {rows: float("inf") for rows in ROWS} for name in ("fp32", "bf16")}
    for _ in range(rounds):
        for rows in ROWS:
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                seconds[name][rows] = min(seconds[name][rows], matmul_seconds(dtype, rows, hidden, intermediate))
    total = {name: sum(per_rows.values()) for name, per_rows in seconds.items()}
    speedup = total["fp32"] / total["bf16"]
    return {
        "chosen": "bf16" if speedup >= BF16_MARGIN else "fp32",
        "bf16_speedup": round(speedup, 3),
        "gflops": {name: {str(rows): round(2 * rows * hidden * intermediate / s / 1e9, 1) for rows, s in per_rows.items()}
                   for name, per_rows in seconds.items()},
        "shape": {"hidden": hidden, "intermediate": intermediate, "rows": list(ROWS)},
    }


def probe_key(shape: tuple[int, int]) -> str:
    return f"{cpu_identity()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {shape[0]}x{shape[1]}"


def cpu_auto_dtype(shape: tuple[int, int] = DEFAULT_SHAPE) -> torch.dtype:
    """The dtype `auto` means on this CPU for a model of `shape`: cached, else measured now and cached.

    A file lock makes processes started together (the ranks of `accelerate launch`) measure once and agree."""
    key = probe_key(shape)
    if 2 * ROWS[-1] * shape[0] * shape[1] < MIN_FLOPS:
        _decisions[key] = {"chosen": "fp32", "reason": "model too small for the dtype to matter"}
        return torch.float32
    path = cache_dir() / "dtype_probe.json"
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        result = cached.get(key)
        if result is None:
            result = {**measure(shape), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            write_json(path, {**cached, key: result})
    _decisions[key] = {**result, "cache": str(path)}
    return torch.bfloat16 if result["chosen"] == "bf16" else torch.float32


def decisions() -> dict[str, dict]:
    """Every `auto` decision this process made, keyed like the cache: for run.json."""
    return dict(_decisions)

