"""The fast tier is a selection of the whole suite: every test named slow exists, and the
docstring examples left out of the doctest run are the ones that cannot run as written."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from _slow import DOCTESTS_KEPT_OUT, SLOW, SLOW_DOCTESTS

TESTS = Path(__file__).resolve().parents[1]


def _test_functions() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in TESTS.rglob("test_*.py"):
        assert path.name not in found, f"two test files named {path.name}: names must be unique"
        tree = ast.parse(path.read_text())
        found[path.name] = {node.name for node in tree.body
                            if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}
    return found


def test_every_slow_test_exists():
    functions = _test_functions()
    missing = [name for name in SLOW
               if name.split("::")[1] not in functions.get(name.split("::")[0], set())]
    assert not missing, f"tests/_slow.py names tests that do not exist: {missing}"


def test_every_doctest_named_has_an_example():
    for name in [*DOCTESTS_KEPT_OUT, *SLOW_DOCTESTS]:
        module_name, _, attribute = name.rpartition(".")
        module = importlib.import_module(module_name)
        assert ">>> " in (getattr(module, attribute).__doc__ or ""), name
    assert not set(DOCTESTS_KEPT_OUT) & set(SLOW_DOCTESTS)
