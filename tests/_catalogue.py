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
import re
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


#: the sections of the page, by what the user meets: an error, a warning, or nothing to do
SECTIONS = (
    ("errors", "histoexpr stops and says why",
     "Nothing was written or changed: fix the input as the message says and run the call again."),
    ("warnings", "histoexpr goes on and warns",
     "The result is there, but check it: the message says what may be off and how to avoid it."),
    ("handled", "histoexpr handles it for you",
     "Inputs that used to go wrong and are now read or used as they should be; at most a log "
     "line (`hx.settings.verbosity = \"info\"`) says what was done."),
)


def section_of(row: Row) -> str:
    """The page section of a row: ``"handled"`` when there is nothing to do, else by message."""
    says = without_history(row.says).lower()
    if row.fix.lower().startswith("nothing"):
        return "handled"
    if says.startswith(("warning", "userwarning", "futurewarning", "warns")):
        return "warnings"
    return "errors"


def without_history(text: str) -> str:
    """``text`` without its ``(before: ...)`` notes (what histoexpr did before it was fixed)."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if depth == 0 and text.startswith("(before:", i):
            depth, i = 1, i + len("(before:")
            continue
        if depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
        else:
            out.append(text[i])
        i += 1
    return re.sub(r" ([,.;])(?!\.)", r"\1", " ".join("".join(out).split()))


def render(rows: list[Row]) -> str:
    """The catalogue page for ``rows``: for each message, when it comes and what to do."""
    def one_line(text: str) -> str:
        return " ".join(text.split())

    lines = [
        "# If you see this message",
        "",
        "What histoexpr says when an input cannot work as given, and what to do about it. Search",
        "this page for the words of your message (the `...` in a message stand for your own",
        "names and numbers).",
    ]
    for key, title, intro in SECTIONS:
        chosen = sorted((r for r in rows if section_of(r) == key),
                        key=lambda r: without_history(r.says).lower())
        lines += ["", f"## {title}", "", intro]
        for row in chosen:
            says = without_history(row.says) or row.says
            lines += ["", f"> {one_line(says)}", "",
                      f"- **When:** {one_line(row.given)}",
                      f"- **Do this:** {one_line(row.fix)}"]
    lines += ["", "---", "",
              f"Each of these {len(rows)} inputs is tried by a test of the suite, and this page "
              "is written from those tests (`python tests/_catalogue.py --write`), so it cannot "
              "drift from what histoexpr does."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render(collect())
    if sys.argv[1:] == ["--write"]:
        PAGE.write_text(text)
        print(f"wrote {PAGE} ({len(collect())} rows)")
    else:
        print(text)
