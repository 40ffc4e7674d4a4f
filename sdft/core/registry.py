"""The registries' one rule (datasets, selection checks, templates, benchmarks, knowledge tasks): a name is taken once,
and a name one entry gives for another registry's entry exists. Both are checked when the registry's module is
imported, so a slip in a table fails at once, not when a run reaches that entry."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, TypeVar

T = TypeVar("T")


def registry(kind: str, entries: Iterable[tuple[str, T]]) -> dict[str, T]:
    """name -> entry from (name, entry) pairs, refusing a name given twice (a dict literal would keep the last)."""
    table: dict[str, T] = {}
    for name, entry in entries:
        if name in table:
            raise ValueError(f"two {kind} entries named '{name}'")
        table[name] = entry
    return table


def check_references(kind: str, table: Mapping[str, T], names: Callable[[T], Iterable[str | None]], target: str,
                     known: Mapping[str, Any]) -> None:
    """Every name `names(entry)` gives (None: no reference) is a key of `known`, the `target` registry."""
    for name, entry in table.items():
        for ref in names(entry):
            if ref is not None and ref not in known:
                raise ValueError(f"{kind} '{name}' refers to unknown {target} '{ref}' (known: {', '.join(known)})")
