"""Which process of a launched group this is (`accelerate launch`, `torchrun`), read from the launcher's environment.

The Trainer sets up the process group itself, later than sdft needs to know: the gradient accumulation that keeps the
effective batch is sized before it, and files outside the Trainer (tokenizer, metrics, run.json) are written by the
main process only, once."""

from __future__ import annotations

import os


def world_size() -> int:
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
