"""`--dtype auto` on CPU is decided by a timed matmul of the model's shapes, cached per machine and recorded in run.json.
Timings are faked: the tests check the decision and the cache, not the speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdft.engines import dtype_probe
from sdft.engines.models import resolve_dtype


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A fresh cache and a fake clock: `probe.speed["bf16"]` is bf16's speed relative to fp32; calls are counted."""
    monkeypatch.setenv("SDFT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dtype_probe, "_decisions", {})

    class Fake:
        speed = {"fp32": 1.0, "bf16": 2.0}
        calls = []

        def __call__(self, dtype, rows, hidden, intermediate):
            self.calls.append((dtype, rows, hidden, intermediate))
            name = "bf16" if dtype == torch.bfloat16 else "fp32"
            return rows * hidden * intermediate * 1e-9 / self.speed[name]

    fake = Fake()
    monkeypatch.setattr(dtype_probe, "matmul_seconds", fake)
    return fake


@pytest.mark.parametrize("bf16_speed, expected", [(2.0, torch.bfloat16), (0.5, torch.float32),
                                                  (1.05, torch.float32)])  # within the margin fp32, the exact one, wins
def test_auto_picks_the_measured_faster_dtype(probe, bf16_speed, expected):
    probe.speed["bf16"] = bf16_speed
    assert resolve_dtype("auto", "cpu") == expected


def test_measured_once_per_machine_then_cached(probe, tmp_path, monkeypatch):
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    measured = len(probe.calls)
    assert measured > 0
    probe.speed["bf16"] = 0.1  # a second call must not measure again
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    assert len(probe.calls) == measured
    cache = json.loads((tmp_path / "dtype_probe.json").read_text())
    (key, entry), = cache.items()
    assert dtype_probe.cpu_identity() in key and torch.__version__ in key
    assert entry["chosen"] == "bf16" and entry["bf16_speedup"] == pytest.approx(2.0)
    monkeypatch.setattr(dtype_probe, "cpu_flags_hash", lambda: "0ther0ne")  # same model name, other flags: measured afresh
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert len(probe.calls) > measured and len(json.loads((tmp_path / "dtype_probe.json").read_text())) == 2


def test_probe_uses_the_models_shapes_and_lands_in_run_json(probe, tmp_path):
    from sdft.provenance import provenance

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 256, "intermediate_size": 768}))
    resolve_dtype("auto", "cpu", tmp_path)
    assert {call[2:] for call in probe.calls} == {(256, 768)}  # the model's hidden and intermediate sizes
    assert {call[1] for call in probe.calls} == set(dtype_probe.ROWS)
    recorded = provenance("generate", {"dtype": "auto"})["dtype_auto"]
    (entry,) = recorded.values()
    assert entry["chosen"] == "bf16" and entry["shape"]["hidden"] == 256
    assert entry["gflops"]["bf16"]["64"] == pytest.approx(2 * entry["gflops"]["fp32"]["64"])


def test_run_json_names_the_gpu_or_none(monkeypatch):
    from sdft.provenance import provenance

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert provenance("train", {})["accelerator"] is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert provenance("train", {})["accelerator"] == {"name": "NVIDIA H200", "count": 1, "cuda": torch.version.cuda}


def test_a_tiny_model_gets_fp32_unmeasured(probe, tiny_model_dir):
    assert resolve_dtype("auto", "cpu", tiny_model_dir) == torch.float32  # 32 x 64: per-call overhead, not arithmetic
    assert probe.calls == []


def test_explicit_dtype_and_cuda_skip_the_probe(probe, monkeypatch):
    assert resolve_dtype("fp32", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert probe.calls == []


def test_training_autocast_follows_the_measurement(probe):
    from sdft.engines.training import use_bf16

    probe.speed["bf16"] = 0.5
    assert use_bf16(None) is False
    assert use_bf16(True) is True


def test_real_timing_is_positive():
    assert 0 < dtype_probe.matmul_seconds(torch.float32, 4, 8, 16, budget=0.001) < float("inf")


def test_large_torch_buffers_go_on_huge_pages_unless_told_otherwise():
    """An engine's start (`configure_threads`) backs torch's CPU buffers of 2 MB+ with transparent huge pages (where the kernel offers them
    on request), an explicit THP_MEM_ALLOC_ENABLE wins, and run.json records the setting."""
    from sdft.provenance import provenance

    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not mode.is_file() or "[madvise]" not in mode.read_text():
        pytest.skip("transparent huge pages are not on request (madvise) on this kernel")
    code = ("from sdft.engines.runtime import configure_threads; configure_threads(); "
            "import torch; x = torch.ones(64 << 20); "
            "print(next(int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')))")

    def huge_kib(**env) -> int:
        clean = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        return int(subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                                  check=True).stdout)

    assert huge_kib() >= 64 * 1024  # most of the 256 MB buffer
    assert huge_kib(THP_MEM_ALLOC_ENABLE="0") == 0
    assert provenance("generate", {})["huge_pages"] == os.environ["THP_MEM_ALLOC_ENABLE"]
