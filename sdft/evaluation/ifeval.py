"""IFEval (Zhou et al. 2023) scored by lm-eval's own instruction checks (`lm_eval.tasks.ifeval`), offline.

Generation is sdft's like every generative benchmark; only the verdict is lm-eval's: `process_results` gives, per
prompt, prompt-level strict / loose (all instructions followed) and the per-instruction verdicts that instruction-level
accuracy pools over all instructions.

Two of the 25 instruction kinds need NLTK's punkt data (`length_constraints:number_sentences` counts sentences with
punkt, `change_case:capital_word_frequency` tokenises words with it), which cannot be downloaded here and is not shipped
by any package we can install. Rather than score them with a different tokenizer, prompts carrying either kind are left
out: 64 of the 541 prompts (77 of 834 instructions). `excluded_count()` says how many, and results record it.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl

DATA_FILE = "ifeval/input_data.jsonl"
NEEDS_PUNKT = frozenset({"length_constraints:number_sentences", "change_case:capital_word_frequency"})


@contextlib.contextmanager
def _no_nltk_download():
    """lm-eval's IFEval module calls `nltk.download("punkt_tab")` when imported; offline that only waits and prints.
    The instructions we score never use punkt, so the download is skipped."""
    import nltk

    download = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        yield
    finally:
        nltk.download = download


@functools.cache
def _lm_eval_ifeval():
    try:
        with _no_nltk_download():
            from lm_eval.tasks.ifeval import utils
    except ImportError as e:
        raise UserError(f"IFEval needs lm-eval's IFEval extra ({e.name} missing): pip install 'lm-eval[ifeval]'") from None
    return utils


def scorable(row: dict) -> bool:
    """Whether every instruction of the prompt can be checked without punkt."""
    return not NEEDS_PUNKT.intersection(row["instruction_id_list"])


def excluded_count(data_dir: str | Path) -> int:
    return sum(not scorable(row) for row in read_jsonl(Path(data_dir) / DATA_FILE))


def verdicts(doc: dict, response: str) -> dict:
    """lm-eval's verdicts for one prompt: prompt_level_{strict,loose}_acc (bool), inst_level_{strict,loose}_acc
    (one bool per instruction)."""
    return _lm_eval_ifeval().process_results(doc, [response])
