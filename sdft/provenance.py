"""run.json beside every output: the resolved config, seed, package versions and git revision, so a run can be redone."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

from sdft.core.jsonl import write_json

PACKAGES = ("sdft", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "sentence-transformers",
            "sacrebleu", "rouge-score", "lm-eval", "vllm", "llama-cpp-python")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_revision() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def accelerator() -> dict | None:
    """The GPUs this process sees (first one's name, count, CUDA version), or None on a CPU-only machine."""
    import torch

    if not torch.cuda.is_available():
        return None
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(), "cuda": torch.version.cuda}


def provenance(command: str, config) -> dict:
    from sdft.engines.dtype_probe import decisions
    from sdft.engines.runtime import configure_threads

    resolved = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {
        "command": command,
        "argv": sys.argv,
        "config": resolved,
        "seed": resolved.get("seed"),
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": configure_threads(),
        "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE"),  # torch CPU buffers on transparent huge pages (engines.runtime)
        "accelerator": accelerator(),
        "dtype_auto": decisions(),  # what `--dtype auto` measured and chose on CPU in this process
        "git_revision": git_revision(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_run_json(out_dir: str | Path, command: str, config, name: str = "run.json") -> dict:
    record = provenance(command, config)
    write_json(Path(out_dir) / name, record)
    return record
