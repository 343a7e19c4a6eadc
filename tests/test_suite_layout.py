"""The suite's own layout: helpers come from support modules, never from a test module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda path: path.name)
def test_no_module_imports_from_conftest_or_a_test_module(path: Path) -> None:
    # pytest loads conftest.py itself, and a test module imported from another runs its
    # tests twice; what both need belongs in support.py (or fronts.py, wire.py ...).
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            imported.append(module if node.level else module.removeprefix("tests."))
        elif isinstance(node, ast.Import):
            imported += [alias.name.removeprefix("tests.") for alias in node.names]
    wrong = [name for name in imported if name == "conftest" or name.startswith("test_")]
    assert wrong == []
