"""Where data and caches live. A data file comes from a local directory first (`--data-dir`, $SDFT_DATA_DIR,
../shared/data), then from the cache `sdft data download` fills; the dataset registry falls back to the Hugging Face
hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

_REPO_ROOT = Path(__file__).resolve().parents[2]
# Set (non-empty): do not guess ../shared/data, as on a machine that has none (tests of the download fallback).
NO_SHARED_DATA_ENV = "SDFT_NO_SHARED_DATA"


def local_data_dir(explicit: str | None = None) -> Path | None:
    """--data-dir, $SDFT_DATA_DIR, else ../shared/data beside the working directory or this checkout."""
    for candidate in (explicit, os.environ.get("SDFT_DATA_DIR")):
        if candidate:
            return Path(candidate)
    if os.environ.get(NO_SHARED_DATA_ENV):
        return None
    for guess in (Path.cwd() / "../shared/data", _REPO_ROOT / "../shared/data"):
        if guess.is_dir():
            return guess.resolve()
    return None


def download_dir() -> Path:
    """Where `sdft data download` writes, laid out like the local data directory."""
    return cache_dir() / "data"


def data_dir(explicit: str | None = None, needed: Iterable[str] = ()) -> Path | None:
    """The local data directory, else the download cache when it holds every `needed` file (paths relative to it)."""
    local = local_data_dir(explicit)
    if local is not None:
        return local
    downloads = download_dir()
    if downloads.is_dir() and all((downloads / name).is_file() for name in needed):
        return downloads
    return None


def cache_dir() -> Path:
    base = os.environ.get("SDFT_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "sdft")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path
