"""The layout's rules (docs/architecture.md): imports run only downward between sdft's packages, and `import sdft` is
light and leaves its host process as it found it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "sdft"

# layer -> the layers it may import (besides itself). Lowest first; a module's layer is its first folder under sdft/,
# or for a top-level module its own name.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "engines": {"core"},
    "analysis": {"core", "data", "engines"},
    "evaluation": {"core", "data", "engines", "analysis"},
    "options": {"core", "data", "engines", "evaluation"},
    "stages": {"core", "data", "engines", "evaluation", "analysis", "options"},
    "experiment": {"core", "data", "engines", "evaluation", "analysis", "options"},
    "provenance": {"core", "engines"},
    "pipeline": {"core", "data", "engines", "evaluation", "analysis", "options", "stages", "experiment", "provenance"},
    "cli": {"core", "engines", "options", "experiment", "provenance", "pipeline", "stages"},
    "__main__": {"cli"},
    "api": {"core", "data", "engines", "evaluation", "analysis", "options", "experiment", "stages", "pipeline"},
    "__init__": {"core", "options", "experiment", "stages", "pipeline", "api"},
}


def _layer(module: str) -> str:
    """'sdft.engines.generation.scheduler' -> 'engines'; 'sdft.pipeline' -> 'pipeline'; 'sdft' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every sdft module a file imports, lazily inside functions too, relative imports resolved."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from sdft import x`: x is a subpackage or module, the layer imported
            found |= {f"{target}.{alias.name}" for alias in node.names} if target == "sdft" else {target}
    return {name for name in found if name == "sdft" or name.startswith("sdft.")}


def upward_imports(root: Path) -> list[str]:
    """'a.py: layer x imports layer y' for every import the ALLOWED table does not permit."""
    problems = []
    layers = set(ALLOWED)
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        layer = _layer(module)
        if layer not in ALLOWED:
            problems.append(f"{path.relative_to(root.parent)}: layer '{layer}' is not in the table")
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for name in sorted(_imported(tree, module, path.name == "__init__.py")):
            target = _layer(name)
            if target not in layers or target == layer or (name == "sdft" and layer == "__init__"):
                continue
            if target not in ALLOWED[layer]:
                problems.append(f"{path.relative_to(root.parent)}: {layer} imports {name} ({target})")
    return problems


def test_imports_only_run_downward():
    assert upward_imports(PACKAGE_ROOT) == []


def test_the_table_is_an_order():
    """Downward means a strict order: the layers can be listed so that each imports only layers listed before it."""
    placed: list[str] = []
    remaining = dict(ALLOWED)
    while remaining:
        ready = [layer for layer, below in remaining.items() if below <= set(placed)]
        assert ready, f"a cycle among {sorted(remaining)}"
        placed += ready
        for layer in ready:
            del remaining[layer]


@pytest.mark.parametrize("source", [
    "from sdft.stages.train import train\n",                      # absolute, at the top
    "def f():\n    from sdft.pipeline import run\n",               # lazy, inside a function
    "from ..analysis.stats import bootstrap_ci\n",                # relative
    "import sdft.evaluation.checks\n",                             # plain import
])
def test_an_upward_import_is_caught(tmp_path, source):
    """The check fails on a lower package importing a higher one, however the import is written."""
    root = tmp_path / "sdft"
    (root / "core").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "core" / "__init__.py").write_text("")
    (root / "core" / "bad.py").write_text(source)
    assert len(upward_imports(root)) == 1
    (root / "core" / "bad.py").write_text("from sdft.core.errors import UserError\n")
    assert upward_imports(root) == []


def test_import_sdft_is_light_and_leaves_the_environment_alone():
    """No torch (nor transformers, numpy), fast, and os.environ unchanged; the public names resolve on first use."""
    code = ("import os, sys, time; before = dict(os.environ); t = time.perf_counter(); import sdft; "
            "took = time.perf_counter() - t; import json; "
            "print(json.dumps({'took': took, 'env_same': dict(os.environ) == before, "
            "'heavy': sorted(m for m in ('torch', 'transformers', 'numpy', 'datasets') if m in sys.modules), "
            "'all': sdft.__all__}))")
    report = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert report["env_same"]
    assert report["heavy"] == []
    assert report["took"] < 0.3
    import sdft

    for name in report["all"]:
        assert getattr(sdft, name) is not None
    with pytest.raises(AttributeError):
        sdft.no_such_name
