"""The bad-input catalogue: every bad input histoexpr is tested against, and what it says.

A test of a bad input registers its row with :func:`bad_input`; the catalogue page
``docs/bad_inputs.md`` is written from the registry (``python tests/_catalogue.py --write``) and
``tests/test_catalogue.py`` fails when the page and the registry differ, so they cannot drift.

Usage in a test module::

    from _catalogue import bad_input

    @bad_input("data lost", "`histoexpr demo --out DIR --overwrite` on a folder of the user's",
               says="refuses: DIR was not written by histoexpr", fix="choose another --out")
    def test_demo_refuses_user_folder(tmp_path): ...

``kind`` is one of :data:`KINDS`; ``says`` is what histoexpr answers (an error, a warning, a log
line, or "refuses"); ``fix`` is what the user does about it.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PAGE = TESTS.parent / "docs" / "bad_inputs.md"
KINDS = ("data lost", "silently wrong", "obscure error")


@dataclass(frozen=True)
class Row:
    kind: str
    given: str
    says: str
    fix: str
    test: str


def bad_input(kind: str, given: str, *, says: str, fix: str):
    """Mark a test as the check of one bad input (a no-op at run time; read statically)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")

    def mark(test):
        return test

    return mark


def collect() -> list[Row]:
    """Every ``@bad_input(...)`` row of the test modules, read from their source."""
    rows = []
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Name)
                        and decorator.func.id == "bad_input"):
                    kind, given = (ast.literal_eval(a) for a in decorator.args)
                    keywords = {k.arg: ast.literal_eval(k.value) for k in decorator.keywords}
                    rows.append(Row(kind, given, keywords["says"], keywords["fix"],
                                    f"{path.name}::{node.name}"))
    return rows


def render(rows: list[Row]) -> str:
    """The catalogue page for ``rows``."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Bad inputs: what histoexpr says",
        "",
        "Every input below was tried by a test (named in the last column); the table is written",
        "from those tests (`python tests/_catalogue.py --write`), and the test suite fails when",
        "they differ, so it cannot drift. *Data lost* and *silently wrong* name what histoexpr did",
        "before it was fixed; today each is refused or reported as the table says.",
        "",
    ]
    counts = {kind: sum(r.kind == kind for r in rows) for kind in KINDS}
    lines.append(", ".join(f"{kind}: {n}" for kind, n in counts.items())
                 + f"; {len(rows)} inputs in all.")
    for kind in KINDS:
        lines += ["", f"## {kind.capitalize()}", "",
                  "| input | what histoexpr says | what to do | test |", "|---|---|---|---|"]
        lines += [f"| {cell(r.given)} | {cell(r.says)} | {cell(r.fix)} | `{r.test}` |"
                  for r in rows if r.kind == kind]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render(collect())
    if sys.argv[1:] == ["--write"]:
        PAGE.write_text(text)
        print(f"wrote {PAGE} ({len(collect())} rows)")
    else:
        print(text)
