"""Training data: file/hub loaders, the three record formats, and the registry of the paper's datasets.

Every example is normalised to {"id", "instruction", "response", "history"?, "system"?, "tests"?, "entry_point"?}:
`instruction` is the last user turn (alpaca instruction + input), `response` the target, `history` any earlier chat
turns, `system` a conversation's own system turn. A dataset of conversations (`messages`) trains as a conversation
(template `chat`), not in the Alpaca scaffold.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sdft.core.distributed import is_main_process
from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl_lines, read_text
from sdft.core.paths import data_dir as default_data_dir
from sdft.core.registry import check_references, registry
from sdft.data.templates import TEMPLATES

SUBSAMPLE_ABOVE = 10_000  # paper App. A: datasets over 10k rows -> a random 2000 (only when asked: paper_subsample)
SUBSAMPLE_TO = 2000


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A registry entry: where the data is, how to read it, and how SDFT treats it."""

    name: str
    local_file: str | None
    hub_id: str | None
    task: str  # selection check: math | function_call | code | generic
    train_template: str
    distill_template: str
    epochs: int
    columns: dict = field(default_factory=dict)
    hub_config: str | None = None
    hub_split: str = "train"
    hub_columns: dict | None = None  # the hub copy's column names, where they differ from the local file's


_ALPACA_COLUMNS = {"instruction": "instruction", "input": "input", "response": "output"}
DATASETS: dict[str, DatasetSpec] = registry("dataset", (
    (spec.name, spec)
    for spec in [
        DatasetSpec(name="gsm8k", local_file="gsm8k/sdft_gsm8k_train.jsonl", hub_id="openai/gsm8k", task="math",
                    train_template="gsm8k", distill_template="gsm8k_distill", epochs=5,
                    columns={"instruction": "question", "response": "answer"}, hub_config="main"),
        DatasetSpec(name="multiarith", local_file="multiarith/sdft_multiarith_test.jsonl",
                    hub_id="ChilleD/MultiArith", task="math", train_template="gsm8k",
                    distill_template="gsm8k_distill", epochs=5,
                    columns={"instruction": "instruction", "response": "output"},
                    hub_columns={"instruction": "question", "response": "final_ans"}),
        DatasetSpec(name="openfunctions", local_file="openfunctions/sdft_openfunction_train.jsonl",
                    hub_id="gorilla-llm/Berkeley-Function-Calling-Leaderboard", task="function_call",
                    train_template="alpaca", distill_template="distill_refer", epochs=5, columns=_ALPACA_COLUMNS),
        DatasetSpec(name="alpaca", local_file="alpaca/sdft_alpaca_train.jsonl", hub_id="tatsu-lab/alpaca",
                    task="generic", train_template="alpaca", distill_template="distill_using", epochs=2,
                    columns=_ALPACA_COLUMNS),
        # The SDFT file renames Dolly's context/response to input/output (sail-sg/sdft data/dolly/dolly_train.json).
        DatasetSpec(name="dolly", local_file="dolly/sdft_dolly_train.jsonl", hub_id="databricks/databricks-dolly-15k",
                    task="generic", train_template="alpaca", distill_template="distill_using", epochs=2,
                    columns=_ALPACA_COLUMNS,
                    hub_columns={"instruction": "instruction", "input": "context", "response": "response"}),
        DatasetSpec(name="lima", local_file="lima/sdft_lima_train.jsonl", hub_id="GAIR/lima", task="generic",
                    train_template="alpaca", distill_template="distill_using", epochs=2, columns=_ALPACA_COLUMNS),
        DatasetSpec(name="magicoder", local_file="magicoder/magicoder_train.jsonl",
                    hub_id="ise-uiuc/Magicoder-OSS-Instruct-75K", task="code", train_template="alpaca",
                    distill_template="distill_refer", epochs=2,
                    columns={"instruction": "problem", "response": "solution"}),
    ]
))
check_references("dataset", DATASETS, lambda spec: [spec.train_template, spec.distill_template], "template", TEMPLATES)


@dataclass
class LoadedDataset:
    name: str
    source: str
    examples: list[dict]
    spec: DatasetSpec | None
    conversational: bool = False  # every row a `messages` conversation

    @property
    def train_template(self) -> str:
        """The registry entry's training template, else `chat` for conversations (trained as they are), else alpaca."""
        if self.spec:
            return self.spec.train_template
        return "chat" if self.conversational else "alpaca"


def load_dataset(name_or_path: str, data_dir: str | None = None, columns: dict | None = None, limit: int | None = None,
                 seed: int = 0, split: str | None = None, subset: str | None = None,
                 paper_subsample: bool = False) -> LoadedDataset:
    """A registry name (local copy first, hub fallback, its own split and config), a local file, or any HF hub dataset
    id (its `split`, default train, and config `subset`). `limit` and `paper_subsample`: see `subsample`."""
    spec = DATASETS.get(name_or_path)
    path = Path(name_or_path)
    is_file = spec is None and (path.suffix.lower() in {".jsonl", ".json", ".csv", ".parquet"} or path.exists())
    if (split or subset) and (spec or is_file):
        raise UserError(f"split, subset: only a hub dataset id has them; '{name_or_path}' is "
                        + ("a registry dataset, read from its own" if spec else "a file"))
    if spec is not None:
        local = _registry_file(spec, data_dir)
        if local is not None:
            rows, source = _read_rows(local), str(local)
            mapping = {**spec.columns, **(columns or {})}
        else:
            rows, source = _read_hub(spec.hub_id, spec.hub_config, spec.hub_split), spec.hub_id
            mapping = {**(spec.hub_columns or spec.columns), **(columns or {})}
        stem = spec.name
    else:
        mapping = columns or {}
        if is_file:
            rows, source = _read_rows(path), str(path)
        elif "/" in name_or_path:
            rows, source = _read_hub(name_or_path, subset, split or "train"), name_or_path
        else:
            raise UserError(f"unknown dataset '{name_or_path}' (registry: {', '.join(DATASETS)}; or a file path / hub id)")
        stem = path.stem if path.exists() else name_or_path.replace("/", "_")
    examples = [normalise(row, mapping, source, line, f"{stem}-{index:05d}") for index, (line, row) in enumerate(rows)]
    examples = subsample(examples, seed, limit, paper_subsample, source)
    conversational = all(_messages_key(row, mapping) for _, row in rows)
    return LoadedDataset(spec.name if spec else stem, source, examples, spec, conversational)


def seeded_indices(n_rows: int, limit: int | None, seed: int) -> list[int]:
    """A seeded random subset of row indices, in file order (taking the first N would bias toward the file's start)."""
    if limit is not None and limit < 0:
        raise UserError(f"limit must be 0 or more, got {limit}")
    if limit is None or limit >= n_rows:
        return list(range(n_rows))
    return sorted(random.Random(seed).sample(range(n_rows), limit))


def subsample(examples: list[dict], seed: int, limit: int | None, paper_subsample: bool = False,
              source: str = "dataset") -> list[dict]:
    """At most `limit` rows and, with `paper_subsample`, the paper's rule (> 10k rows -> 2000), both a seeded random
    subset keeping file order. Rows are never dropped silently: one stderr line says how many of how many, and why."""
    return [examples[i] for i in subsample_indices(len(examples), seed, limit, paper_subsample, source)]


def subsample_indices(n_rows: int, seed: int, limit: int | None, paper_subsample: bool = False,
                      source: str = "dataset") -> list[int]:
    """`subsample`'s row indices, for a caller that keeps each row's position (its id), with the same stderr line."""
    caps = {f"limit {limit}": limit} if limit is not None else {}
    if paper_subsample and n_rows > SUBSAMPLE_ABOVE:
        caps[f"paper_subsample: over {SUBSAMPLE_ABOVE} rows -> {SUBSAMPLE_TO}"] = SUBSAMPLE_TO
    keep = min([n_rows, *caps.values()])
    if keep < n_rows and is_main_process():
        reasons = "; ".join(reason for reason, cap in caps.items() if cap == keep)
        print(f"sdft: {source}: using {keep} of {n_rows} rows, a random subset by seed {seed} ({reasons})",
              file=sys.stderr)
    return seeded_indices(n_rows, keep, seed)


def _registry_file(spec: DatasetSpec, data_dir: str | None) -> Path | None:
    base = default_data_dir(data_dir)
    if base is None or spec.local_file is None:
        return None
    path = base / spec.local_file
    return path if path.is_file() else None


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) pairs; the line number is what error messages point at. An empty file is an error: every
    later stage would run on nothing and report 0 of 0."""
    if not path.is_file():
        raise UserError("file not found", str(path))
    rows = _parse_rows(path)
    if not rows:
        raise UserError("no rows", str(path))
    return rows


def _parse_rows(path: Path) -> list[tuple[int, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl_lines(path)
    if suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise UserError(f"malformed JSON ({e.msg})", str(path), e.lineno) from None
        except RecursionError:
            raise UserError("JSON nested too deeply", str(path)) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError("expected a JSON array of objects", str(path))
        return [(i + 1, row) for i, row in enumerate(data)]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        rows = []
        try:
            for row in reader:
                if None in row:  # more cells than header columns: DictReader files them under the key None
                    raise UserError(f"{len(row) - 1 + len(row[None])} cells, header has {len(reader.fieldnames)}",
                                    str(path), reader.line_num)
                rows.append((reader.line_num, row))
        except csv.Error as e:  # a cell over the field size limit; line_num still counts only the lines before it
            raise UserError(f"malformed CSV ({e})", str(path), reader.line_num + 1) from None
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise UserError(f"unreadable Parquet file ({e})", str(path)) from None
        return [(i + 1, row) for i, row in enumerate(table.to_pylist())]
    raise UserError("unsupported file type (use .jsonl, .json, .csv or .parquet)", str(path))


def _read_hub(hub_id: str, config: str | None, split: str) -> list[tuple[int, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, missing, gated: all user-facing
        raise UserError(f"could not load hub dataset '{hub_id}' ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return [(i + 1, dict(row)) for i, row in enumerate(ds)]


_PAIRS = (("prompt", "completion"), ("question", "answer"))  # prompt/completion, and GSM8K-style question/answer


def normalise(row: dict, mapping: dict, source: str, line: int, default_id: str) -> dict:
    """One raw row in any supported format -> the normalised example. The row's other columns (those that are not its
    id, prompt, target or earlier turns) ride along in `extra_columns`, so an exported training set keeps them."""
    example_id = str(row.get(mapping.get("id", "id"), default_id))
    messages_key = _messages_key(row, mapping)
    if messages_key:
        example = _from_messages(row[messages_key], source, line)
        read = {messages_key}
    elif "instruction" not in mapping and "instruction" not in row and any(p in row and c in row for p, c in _PAIRS):
        prompt, completion = next((p, c) for p, c in _PAIRS if p in row and c in row)
        example = {"instruction": _text(row, prompt, source, line), "response": _text(row, completion, source, line)}
        read = {prompt, completion}
    else:
        read = {mapping.get(key, default) for key, default in
                (("instruction", "instruction"), ("input", "input"), ("response", "output"), ("history", "history"))}
        instruction = _text(row, mapping.get("instruction", "instruction"), source, line)
        extra = row.get(mapping.get("input", "input")) or ""
        response = _text(row, mapping.get("response", "output"), source, line)
        example = {"instruction": f"{instruction}\n{extra}" if extra else instruction, "response": response}
        history = _history_pairs(row.get(mapping.get("history", "history")), source, line)
        if history:
            example["history"] = history
    for key in ("tests", "entry_point"):
        if row.get(mapping.get(key, key)):
            example[key] = row[mapping.get(key, key)]
    extra_columns = {k: v for k, v in row.items() if k not in read | {mapping.get("id", "id")}}
    if extra_columns:  # as JSON holds them (a Parquet date as text), since distilled.jsonl carries them
        example["extra_columns"] = json.loads(json.dumps(extra_columns, default=str))
    return {"id": example_id, **example}


def _messages_key(row: dict, mapping: dict) -> str | None:
    """The column holding the row's turns when the row is a conversation (`messages`, ShareGPT's `conversations`)."""
    key = mapping.get("messages") or next((k for k in ("messages", "conversations") if k in row), None)
    return key if key in row else None


def _text(row: dict, column: str, source: str, line: int) -> str:
    if column not in row:
        raise UserError(f"missing column '{column}' (have: {', '.join(map(str, row)) or 'none'})", source, line)
    value = row[column]
    if not isinstance(value, str):
        raise UserError(f"column '{column}' is not text", source, line)
    return value


def _history_pairs(pairs, source: str, line: int) -> list[dict]:
    """Alpaca-format earlier turns ([[user, assistant], ...], as LIMA ships them) as chat turns."""
    if not pairs:
        return []
    if not isinstance(pairs, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(t, str) for t in p) for p in pairs):
        raise UserError("'history' must be a list of [user, assistant] text pairs", source, line)
    return [{"role": role, "content": text} for pair in pairs for role, text in zip(("user", "assistant"), pair)]


def _from_messages(messages, source: str, line: int) -> dict:
    """Multi-turn chat: the last assistant turn is the target, the user turn before it the instruction."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise UserError("'messages' must be a list of {role, content} objects", source, line)
    turns = [{"role": m.get("role") or m.get("from"), "content": m.get("content") or m.get("value") or ""} for m in messages]
    if not all(isinstance(t["role"], (str, type(None))) and isinstance(t["content"], str) for t in turns):
        raise UserError("every message's role and content must be text", source, line)
    turns = [{"role": {"human": "user", "gpt": "assistant"}.get(t["role"], t["role"]), "content": t["content"]} for t in turns]
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last is None or last == 0 or turns[last - 1]["role"] != "user":
        raise UserError("chat row needs a user turn followed by an assistant turn", source, line)
    example = {"instruction": turns[last - 1]["content"], "response": turns[last]["content"]}
    system = [t["content"] for t in turns[: last - 1] if t["role"] == "system"]
    history = [t for t in turns[: last - 1] if t["role"] != "system"]
    if history:
        example["history"] = history
    if system:
        example["system"] = system[0]
    return example


def normalise_prompt_rows(path: str, mapping: dict | None = None) -> list[dict]:
    """Rows to prompt with (no target needed): `instruction` from the mapping, `instruction`, or `prompt`."""
    mapping = mapping or {}
    source = Path(path)
    rows = []
    for index, (line, row) in enumerate(_read_rows(source)):
        column = mapping.get("instruction") or ("instruction" if "instruction" in row else "prompt")
        instruction = _text(row, column, str(source), line)
        extra = row.get(mapping.get("input", "input")) or ""
        rows.append({**row, "id": str(row.get(mapping.get("id", "id"), f"{source.stem}-{index:05d}")),
                     "instruction": f"{instruction}\n{extra}" if extra else instruction})
    return rows
