"""User-facing errors: the CLI turns these into one stderr line and exit code 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (missing file, malformed row, unknown name). `where` is 'file' or 'file:line'."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
