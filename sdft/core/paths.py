"""Where data and caches live. Data comes from a local directory first (`--data-dir`, $SDFT_DATA_DIR,
../shared/data) and falls back to the Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(explicit: str | None = None) -> Path | None:
    for candidate in (explicit, os.environ.get("SDFT_DATA_DIR")):
        if candidate:
            return Path(candidate)
    for guess in (Path.cwd() / "../shared/data", _REPO_ROOT / "../shared/data"):
        if guess.is_dir():
            return guess.resolve()
    return None


def cache_dir() -> Path:
    base = os.environ.get("SDFT_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "sdft")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path
