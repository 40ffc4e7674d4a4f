"""Distilled rows -> a training set another trainer reads as it is (TRL, LLaMA-Factory, any OpenAI-format tool).

For a user who already has a trainer, SDFT's product is the distilled dataset. Each row becomes the task's own
conversation (its system turn and earlier turns, then the task prompt: instruction + input, never sdft's distillation
prompt) answered by the selected target, in one of `FORMATS`:

- `messages`: {"messages": [system?, ..., user, {"role": "assistant", "content": target}]} (OpenAI / TRL
  conversational language modeling);
- `prompt-completion`: {"prompt": [system?, ..., user], "completion": [assistant]} (TRL's conversational
  prompt-completion: the trainer applies the model's chat template and trains on the completion only);
- `alpaca`: {"instruction", "input", "output", "system", "history": [[user, assistant], ...]} and `sharegpt`:
  {"conversations": [{"from": "human" | "gpt", "value"}], "system"} (LLaMA-Factory's two layouts).

The row's other columns (`extra_columns`, kept by `datasets.normalise`) come back under their own names, and sdft's
provenance goes in `sdft_`-prefixed columns that trainers leave alone. A layout LLaMA-Factory reads gets its entry in
the `dataset_info.json` beside the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl_lines, read_text, write_json, write_jsonl

DISTILLED_KEYS = ("id", "instruction", "original", "target", "accepted")


def changed_targets(rows: list[dict]) -> int:
    """The rows whose selected target differs from the original: where SDFT's training set differs from vanilla's.
    An accepted rewrite that repeats the original word for word changes nothing, so acceptance alone overstates how
    different the two training sets are."""
    return sum(row["target"] != row["original"] for row in rows)


def prompt_turns(row: dict) -> list[dict]:
    """The task's conversation up to the answer: the row's system turn, its earlier turns, then the task prompt."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*system, *row.get("history", []), {"role": "user", "content": row["instruction"]}]


def _answer(row: dict) -> dict:
    return {"role": "assistant", "content": row["target"]}


def _turn_pairs(row: dict, source: str) -> list[list[str]]:
    """Earlier turns as [user, assistant] pairs, the only history alpaca and sharegpt hold."""
    history = row.get("history", [])
    roles = [turn["role"] for turn in history]
    if roles != ["user", "assistant"] * (len(history) // 2):
        raise UserError(f"row '{row['id']}': earlier turns are not user/assistant pairs ({', '.join(roles)}); "
                        "--format messages keeps them as they are", source)
    return [[history[i]["content"], history[i + 1]["content"]] for i in range(0, len(history), 2)]


def _messages(row: dict, source: str) -> dict:
    return {"messages": [*prompt_turns(row), _answer(row)]}


def _prompt_completion(row: dict, source: str) -> dict:
    return {"prompt": prompt_turns(row), "completion": [_answer(row)]}


def _alpaca(row: dict, source: str) -> dict:
    # the input is already part of the instruction (LLaMA-Factory would join them with the same newline)
    return {"instruction": row["instruction"], "input": "", "output": row["target"], "system": row.get("system", ""),
            "history": _turn_pairs(row, source)}


def _sharegpt(row: dict, source: str) -> dict:
    texts = [*(text for pair in _turn_pairs(row, source) for text in pair), row["instruction"], row["target"]]
    return {"conversations": [{"from": ("human", "gpt")[i % 2], "value": text} for i, text in enumerate(texts)],
            "system": row.get("system", "")}


LAYOUTS = {"messages": _messages, "prompt-completion": _prompt_completion, "alpaca": _alpaca, "sharegpt": _sharegpt}
FORMATS = tuple(LAYOUTS)

# How LLaMA-Factory's dataset_info.json describes each layout it reads (its README, "Dataset format"); it has none
# for conversational prompt-completion, which TRL reads.
LLAMA_FACTORY = {
    "messages": {"formatting": "sharegpt", "columns": {"messages": "messages"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                          "assistant_tag": "assistant", "system_tag": "system"}},
    "alpaca": {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                   "system": "system", "history": "history"}},
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}},
}


def training_file_name(format: str) -> str:
    return f"train.{format}.jsonl"


def load_distilled(path: Path) -> list[dict]:
    """The rows of a distilled.jsonl; a file of other rows is one error naming its first such line."""
    rows = read_jsonl_lines(path)
    if not rows:
        raise UserError("no rows", str(path))
    for line, row in rows:
        missing = [key for key in DISTILLED_KEYS if key not in row]
        if missing:
            raise UserError(f"not a row of `sdft distill` (no {', '.join(missing)})", str(path), line)
    return [row for _, row in rows]


def training_rows(rows: list[dict], format: str, source: str) -> list[dict]:
    """Distilled rows in `format`, the user's own columns and sdft's provenance beside the layout's."""
    layout = LAYOUTS[format]
    return [{"id": row["id"], **row.get("extra_columns", {}), **layout(row, source),
             "sdft_accepted": row["accepted"], "sdft_reason": row.get("reason"), "sdft_original": row["original"]}
            for row in rows]


def write_training_set(rows: list[dict], format: str, path: Path, source: str, push_to_hub: str | None = None) -> dict:
    """Write the training set (and its dataset_info.json entry), push it to the hub if asked; what was written."""
    exported = training_rows(rows, format, source)
    write_jsonl(path, exported)
    written = {"format": format, "path": str(path), "rows": len(exported)}
    if format in LLAMA_FACTORY:
        written["dataset_info"] = str(add_dataset_info(path, format))
    if push_to_hub:
        push(exported, push_to_hub)
        written["pushed_to"] = push_to_hub
    return written


def add_dataset_info(path: Path, format: str) -> Path:
    """This file's entry (named after it) in the dataset_info.json beside it, the entries already there kept, so
    LLaMA-Factory finds it with `dataset_dir` set to the folder and `dataset` to the entry's name."""
    info_path = path.with_name("dataset_info.json")
    info = {}
    if info_path.is_file():
        try:
            info = json.loads(read_text(info_path))
        except json.JSONDecodeError as e:
            raise UserError(f"malformed JSON ({e.msg})", str(info_path), e.lineno) from None
        if not isinstance(info, dict):
            raise UserError("expected a JSON object of dataset entries", str(info_path))
    info[path.stem] = {"file_name": path.name, **LLAMA_FACTORY[format]}
    write_json(info_path, info)
    return info_path


def push(rows: list[dict], repo: str) -> None:
    """Upload the training set as a hub dataset; any failure (offline, no login, no rights) is the user's to fix."""
    import datasets

    try:
        datasets.Dataset.from_list(rows).push_to_hub(repo)
    except Exception as e:  # the hub client raises many types
        reason = next(iter(str(e).splitlines()), "")
        raise UserError(f"could not push to hub dataset '{repo}' ({type(e).__name__}: {reason})") from None
