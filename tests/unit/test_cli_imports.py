"""The CLI modules share workers/cli/kit.py by its public names, imported at module top.

No CLI module (workers/cli/*.py, workers/*/cli.py) imports another module's
underscore names, and none imports inside a function body (the old way round an
import cycle through the entry point).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

MODULES = sorted([*(ROOT / "workers" / "cli").glob("*.py"), *(ROOT / "workers").glob("*/cli.py")])


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_no_private_names_imported(path: Path) -> None:
    tree = ast.parse(path.read_text())
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_no_imports_inside_functions(path: Path) -> None:
    tree = ast.parse(path.read_text())
    inner = [
        f"line {inner.lineno} in {node.name}"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
        if isinstance(inner, (ast.Import, ast.ImportFrom))
    ]
    assert inner == []


def test_command_modules_use_the_kit_not_the_entry_point() -> None:
    importers = [
        relative(path)
        for path in MODULES
        if "workers.cli.main" in path.read_text() and path.name != "__main__.py"
    ]
    assert importers == []
