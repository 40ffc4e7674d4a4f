"""Typed configs: each command pairs an `XConfig` dataclass with its stage (as TRL pairs XConfig with XTrainer).

The CLI is generated from the dataclass fields, so a YAML file (`--config`) and flags fill the same object: file values
first, then any flag given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

import yaml

from .errors import UserError
from .jsonl import read_text


def field(default=dataclasses.MISSING, help: str = "", **kwargs):
    """A dataclass field with CLI help text."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _base_type(annotation):
    """`int | None` -> (int, optional); `list[str]` -> (list, ...)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(inner[0])
    return origin or annotation


def add_config_args(parser: argparse.ArgumentParser, cls, positional: tuple[str, ...] = ()) -> None:
    parser.add_argument("--config", help="YAML file with any of the options below (flags override it)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _base_type(hints[f.name])
        flag = f.name if f.name in positional else "--" + f.name.replace("_", "-")
        # argparse takes a positional's dest from its name and refuses dest= a second time
        extra = {"nargs": "?"} if f.name in positional else {"dest": f.name}
        help_text = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING and f.default is not None:
            help_text += f" (default: {f.default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind is list:
            parser.add_argument(flag, default=None, help=help_text + " [comma-separated]",
                                type=lambda s: [x for x in s.split(",") if x], **extra)
        elif kind is dict:
            parser.add_argument(flag, default=None, help=help_text + " [YAML/JSON mapping]", type=_mapping, **extra)
        else:
            parser.add_argument(flag, default=None, type=kind if kind in (int, float) else str, help=help_text, **extra)


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


def build_config(cls, args: argparse.Namespace | None = None, values: dict | None = None, source: str = "config"):
    """Config from (YAML file or `values`) overridden by the flags that were given; unknown keys are an error."""
    merged = dict(values or {})
    if args is not None and getattr(args, "config", None):
        merged.update(load_yaml(args.config))
        source = args.config
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(merged) - names
    if unknown:
        raise UserError(f"unknown option(s) {sorted(unknown)} (known: {', '.join(sorted(names))})", source)
    if args is not None:
        merged.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in merged]
    if missing:
        raise UserError(f"missing required option(s): {', '.join('--' + m.replace('_', '-') for m in missing)}")
    try:
        return cls(**merged)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad config: {e}", source) from None
