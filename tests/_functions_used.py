"""The "Functions used" cell of each tutorial: links to the API pages of what it calls.

Each tutorial ends with a markdown cell (id ``functions-used``) that links every
``hx.<room>.<name>`` its code calls to its API page, every ``model="..."`` to that model's
options and ``hx.settings`` to its page. The cell is written from the notebook's code
(``python tests/_functions_used.py --write``; code cells are left as they are) and
``tests/house/test_docs.py`` fails when a tutorial's cell differs from the one its code gives.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
ROOMS = ("io", "datasets", "pp", "models", "tl", "pl")
CELL_ID = "functions-used"
_CALL = re.compile(r"\bhx\.(io|datasets|pp|models|tl|pl)\.([A-Za-z]\w*)")
_MODEL = re.compile(r"""\bmodel\s*=\s*["'](\w+)["']""")


def used(code: str) -> list[tuple[str, str]]:
    """The ``(room, name)`` of every ``hx.<room>.<name>`` in ``code``, in room order."""
    return sorted(set(_CALL.findall(code)), key=lambda x: (ROOMS.index(x[0]), x[1]))


def cell_source(code: str) -> str:
    """The markdown of the "Functions used" cell for a notebook's ``code``."""
    lines = ["## Functions used", "",
             "Each name links to its page in the {doc}`API reference </api>`.", ""]
    names = used(code)
    for room in ROOMS:
        items = []
        for name in (n for r, n in names if r == room):
            obj = getattr(importlib.import_module(f"histoexpr.{room}"), name)
            role = "class" if inspect.isclass(obj) else "func"
            items.append(f"{{{role}}}`hx.{room}.{name} <histoexpr.{room}.{name}>`")
        if items:
            lines.append(f"- `hx.{room}`: " + ", ".join(items))
    for model in sorted(set(_MODEL.findall(code))):
        lines.append(f'- the options of `model="{model}"`: {{ref}}`model-{model}`')
    if re.search(r"\bhx\.settings\b", code):
        lines.append("- {data}`hx.settings <histoexpr.settings>`")
    return "\n".join(lines)


def code_of(notebook) -> str:
    """The code of a notebook's code cells, joined."""
    return "\n".join(c.source for c in notebook.cells if c.cell_type == "code")


def current_cell(notebook):
    """The notebook's "Functions used" cell, or ``None``."""
    return next((c for c in notebook.cells if c.get("id") == CELL_ID), None)


def write(path: Path) -> None:
    """Write (or refresh) the "Functions used" cell at the end of the notebook at ``path``."""
    import nbformat

    notebook = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    cell = nbformat.v4.new_markdown_cell(cell_source(code_of(notebook)))
    cell.id = CELL_ID
    notebook.cells = [c for c in notebook.cells if c.get("id") != CELL_ID] + [cell]
    path.write_text(nbformat.writes(notebook) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/_functions_used.py --write")
    for notebook_path in sorted(TUTORIALS.glob("*.ipynb")):
        write(notebook_path)
        print(f"wrote the Functions used cell of {notebook_path.name}")
