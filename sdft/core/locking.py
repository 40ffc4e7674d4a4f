"""One writer per run directory: `sdft run` holds an exclusive flock on `RUN/.lock` (its pid inside) while it runs.

Two runs writing the same stage files would interleave rows and race on renames, so the second one refuses at once.
The kernel drops an flock when its holder dies, however it dies, so the lock of a killed run is simply taken over;
the pid in the file only names the holder in the refusal.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sdft.core.errors import UserError

LOCK_FILE = ".lock"


class RunLock:
    """Held from construction until `release()` or until the object (and its open file) goes away."""

    def __init__(self, run_dir: str | os.PathLike):
        path = Path(run_dir) / LOCK_FILE
        self._file = path.open("a+", encoding="utf-8")  # "a+": a holder's pid is not wiped before we own the lock
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise UserError(f"another sdft process (pid {holder}) is running in this run directory; "
                            "wait for it to finish or stop it", str(run_dir)) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        self._file.close()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
