"""Typed configs: each command pairs a config dataclass (composed from the option groups of `sdft.options`) with its
stage, as TRL pairs XConfig with XTrainer.

The CLI is generated from the dataclass fields, so a YAML file (`--config`) and flags fill the same object: file values
first, then any flag given on the command line. Every option is checked when its config is built (`Options`), so a bad
value fails before any model loads, with the file and key it came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, Callable

import yaml

from sdft.core.errors import UserError
from sdft.core.jsonl import read_text


def field(default=dataclasses.MISSING, help: str = "", choices: typing.Iterable[str] | None = None,
          check: Callable[[Any], str | None] | None = None, omit_default: bool = False, repeatable: bool = False):
    """A dataclass field with CLI help text, optional allowed `choices` (for a list: of each element) and a `check`
    returning what is wrong with a value (None when it is fine). A dataclass class as default builds a fresh instance.
    `omit_default`: left out of a stage's config (so of its hash) while at its default, so an option added after runs
    were cached does not re-run their stages. `repeatable`: a list given on the command line by repeating its flag (for
    items that may hold commas) instead of comma-separated."""
    metadata = {"help": help, "choices": None if choices is None else tuple(choices), "check": check,
                "omit_default": omit_default, "repeatable": repeatable}
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or v >= low else f"must be ≥ {low:g}, got {v}"


def within(low: float, high: float, low_open: bool = False) -> Callable[[Any], str | None]:
    """low ≤ v ≤ high (low < v with low_open)."""
    bracket = "(" if low_open else "["
    return lambda v: None if v is None or (low < v if low_open else low <= v) and v <= high else \
        f"must be in {bracket}{low:g}, {high:g}], got {v}"


def each(check: Callable[[Any], str | None]) -> Callable[[list], str | None]:
    """`check` applied to every element of a list: the first problem found."""
    return lambda values: next(filter(None, map(check, values)), None)


@dataclasses.dataclass(kw_only=True)
class Options:
    """Base of every option group: checks each field's type, choices and `check` once the dataclass is built."""

    def __post_init__(self):
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = _checked_type(f.name, getattr(self, f.name), hints[f.name])
            setattr(self, f.name, value)
            choices, check = f.metadata.get("choices"), f.metadata.get("check")
            for item in (value if isinstance(value, list) else [value]):
                if choices and item is not None and item not in choices:
                    raise UserError(f"{f.name}: unknown value '{item}' (known: {' | '.join(choices)})")
            problem = check(value) if check else None
            if problem:
                raise UserError(f"{f.name}: {problem}")


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _checked_type(name: str, value, annotation):
    """`value` if it is of the annotated type (an int where a float goes is widened); else a UserError."""
    options = [a for a in typing.get_args(annotation)] if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else [annotation]
    for option in options:
        origin = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, bool):
            continue
        if origin is list and isinstance(value, list) and typing.get_args(option):
            return [_checked_type(f"{name}[{i}]", item, typing.get_args(option)[0]) for i, item in enumerate(value)]
        if isinstance(origin, type) and origin is not type(None) and isinstance(value, origin):
            return value
    expected = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise UserError(f"{name}: expected {expected}, got {value!r}")


def _base_type(annotation):
    """`int | None` -> int; `list[str]` -> list."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(inner[0])
    return origin or annotation


def add_config_args(parser: argparse.ArgumentParser, cls, positional: tuple[str, ...] = ()) -> None:
    parser.add_argument("--config", help="YAML file with any of the options below (flags override it)")
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        kind = _base_type(hints[f.name])
        flag = f.name if f.name in positional else "--" + f.name.replace("_", "-")
        # argparse takes a positional's dest from its name and refuses dest= a second time
        extra = {"nargs": "?"} if f.name in positional else {"dest": f.name}
        help_text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_text += f" ({' | '.join(f.metadata['choices'])})"
        if f.default is not dataclasses.MISSING and f.default is not None:
            help_text += f" (default: {f.default})"
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in positional:
            help_text += " (required, here or in --config)"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind is list and f.metadata.get("repeatable"):
            parser.add_argument(flag, action="append", default=None, help=help_text + " [repeat the flag]", **extra)
        elif kind is list:
            item = (typing.get_args(_optional_inner(hints[f.name])) or (str,))[0]
            parser.add_argument(flag, default=None, help=help_text + " [comma-separated]",
                                type=lambda s, item=item: [item(x) for x in s.split(",") if x], **extra)
        elif kind is dict:
            parser.add_argument(flag, default=None, help=help_text + " [YAML/JSON mapping]", type=_mapping, **extra)
        else:
            parser.add_argument(flag, default=None, type=kind if kind in (int, float) else str, help=help_text, **extra)


def _optional_inner(annotation):
    """`list[int] | None` -> list[int]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _mapping(text: str) -> dict:
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a mapping such as {instruction: question}")
    return value


def load_yaml(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UserError("config file not found", path)
    try:
        data = yaml.safe_load(read_text(file)) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise UserError(f"malformed YAML ({getattr(e, 'problem', e)})", path, None if line is None else line + 1) from None
    if not isinstance(data, dict):
        raise UserError("config must be a YAML mapping", path)
    return data


def build_config(cls, args: argparse.Namespace | None = None, values: dict | None = None, source: str | None = None,
                 prefix: str = ""):
    """Config from (YAML file or `values`) overridden by the flags that were given. Unknown keys and bad values are
    errors naming `source` (the file) and the key, `prefix` + name for a nested config (a field typed as a dataclass,
    given as a mapping)."""
    merged = dict(values or {})
    if args is not None and getattr(args, "config", None):
        merged.update(load_yaml(args.config))
        source = args.config
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - names)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(prefix + k for k in unknown)} (known: {', '.join(sorted(names))})",
                        source)
    if args is not None:
        merged.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    hints = _hints(cls)
    for name, value in merged.items():
        nested = hints[name]
        if dataclasses.is_dataclass(nested) and isinstance(value, dict):
            merged[name] = build_config(nested, values=value, source=source, prefix=f"{prefix}{name}.")
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in merged]
    if missing:
        raise UserError(f"missing required option(s): {', '.join('--' + prefix + m.replace('_', '-') for m in missing)}",
                        source)
    try:
        return cls(**merged)
    except UserError as e:
        raise UserError(prefix + str(e), source) from None
