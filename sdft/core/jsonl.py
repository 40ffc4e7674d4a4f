"""JSONL reading with line-numbered errors, and resumable incremental writing.

Long stages append one row per finished item to `<out>.partial` and flush, so a killed run loses at most the row being
written; a rerun reads the partial file back (dropping a torn last line), skips keys already done, and the final
file appears only by an atomic rename when every row is present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sdft.core.errors import UserError


def read_text(path: str | os.PathLike) -> str:
    """A user's text file as str; bytes that are not UTF-8 are a one-line error naming the line, not a traceback."""
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", str(path))
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a BOM from Windows editors is not content
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"not UTF-8 text (byte 0x{data[e.start]:02x})", str(path), line) from None


def read_jsonl_lines(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, row) for every non-blank line of a user's JSONL file; any defect names the file and line."""
    rows = []
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"malformed JSON ({e.msg})", str(path), lineno) from None
        except RecursionError:
            raise UserError("JSON nested too deeply", str(path), lineno) from None
        if not isinstance(row, dict):
            raise UserError("expected a JSON object per line", str(path), lineno)
        rows.append((lineno, row))
    return rows


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [row for _, row in read_jsonl_lines(path)]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename) so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class ResumableJsonl:
    """Rows keyed by `key(row)`, appended as they finish; `finalize(order)` writes the complete file atomically."""

    def __init__(self, path: str | os.PathLike, key: Callable[[dict], str]):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.key = key
        self.done: dict[str, dict] = {}
        if self.path.is_file():
            for row in _read_tolerant(self.path):
                self.done[key(row)] = row
        if self.partial.is_file():
            for row in _read_tolerant(self.partial):
                self.done.setdefault(key(row), row)
            self._rewrite_partial()  # drop a torn last line before appending after it
        self._fh = None

    def _rewrite_partial(self) -> None:
        tmp = self.partial.with_name(self.partial.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for row in self.done.values():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, self.partial)

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def add(self, row: dict) -> None:
        if self._fh is None:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.partial.open("a", encoding="utf-8")
        self.done[self.key(row)] = row
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()

    def finalize(self, order: Iterable[str]) -> list[dict]:
        """Write the rows for `order` (all must be done) to the final path and remove the partial file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        rows = [self.done[k] for k in order]
        write_jsonl(self.path, rows)
        self.partial.unlink(missing_ok=True)
        return rows

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _read_tolerant(path: Path) -> Iterator[dict]:
    """Rows of a file we wrote ourselves; a torn final line from a kill is skipped."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row
