"""`sdft data list` and `sdft data download`: where each data file sdft reads comes from, whether this machine has it,
and fetching it (converted and checksummed) into the cache the evaluation falls back to without a local folder."""

from __future__ import annotations

from pathlib import Path

from sdft.core.paths import download_dir, local_data_dir
from sdft.data.sources import download, select
from sdft.options import DataConfig


def data(config: DataConfig) -> list[dict]:
    """`sdft data ACTION`: one command, its action a positional word."""
    return {"list": list_data, "download": download_data}[config.action](config)


def list_data(config: DataConfig) -> list[dict]:
    """One line per data file: where it is on this machine (data dir, cache or missing) and where it comes from."""
    local, downloads = local_data_dir(config.data_dir), _download_target(config)
    print(f"data dir: {local or '(none)'}\ncache: {downloads}")
    rows = []
    for entry in select(config.names):
        where = "data dir" if local and (local / entry.path).is_file() else \
            "cache" if (downloads / entry.path).is_file() else "missing"
        rows.append({"file": entry.path, "where": where, "source": entry.describe()})
    width = max(len(row["file"]) for row in rows)
    for row in rows:
        print(f"{row['file']:<{width}}  {row['where']:<8}  {row['source']}")
    return rows


def download_data(config: DataConfig) -> list[dict]:
    """Every named file (default: all with a pinned download) fetched, converted and verified; one line each."""
    target = _download_target(config)
    rows = []
    for entry in select(config.names):
        if entry.pinned is None and not config.names:
            state = f"skipped: no pinned download ({entry.unpinned})"
        else:
            fetched = download(entry, target, config.mirror)
            state = f"{'downloaded' if fetched else 'already there'}, sha256 verified: {target / entry.path}"
        rows.append({"file": entry.path, "state": state})
        print(f"{entry.path}: {state}")
    return rows


def _download_target(config: DataConfig) -> Path:
    return Path(config.to) if config.to else download_dir()
