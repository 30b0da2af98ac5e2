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

**The text of ``says`` is checked against what is actually raised.** Where ``says`` starts with an
exception or warning class (``"ValueError: the counts file '...' is empty"``), the decorated test
runs with :func:`pytest.raises` and :func:`pytest.warns` recorded, and fails unless one error or
warning it caught is of that class (or a subclass) and its message holds the parts of ``says``
between ``...`` in order (case- and whitespace-insensitive; a ``(before: ...)`` note or one after
a dash `` — `` at the end, and further ``; OtherError: ...`` answers, are not part of it). A
row may instead give ``match=``, a regular expression the caught message must match and ``says``
too. Rows whose ``says`` is a description
("refuses: ...", "log: ...") are checked by their test's own assertions only.
"""

from __future__ import annotations

import ast
import contextlib
import functools
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
    match: str | None = None

    @property
    def checked(self) -> bool:
        """Whether the message ``says`` quotes is checked against the one raised."""
        return declared(self.says, self.match) is not None


#: ``says`` that quotes an error or a warning: its class, then its message
DECLARED = re.compile(r"^`?([A-Z][A-Za-z]*(?:Error|Exception|Warning|Interrupt))`?:\s*(.*)$",
                      re.S)


def declared(says: str, match: str | None = None) -> tuple[str, re.Pattern] | None:
    """The class and the message pattern that ``says`` (or ``match``) declares, if any."""
    found = DECLARED.match(says.strip())
    if found is None:
        return None
    name, text = found.groups()
    if match is not None:
        return name, re.compile(match, re.S)
    text = re.split(r"\s*\(before:|\s+\u2014\s", text)[0]  # a note: (before: ...), or after a dash
    text = re.split(r";\s*[A-Z][A-Za-z]*(?:Error|Warning):", text)[0]  # a second answer
    parts = [" ".join(part.split()) for part in text.split("...")]
    pattern = ".*?".join(re.escape(part) for part in parts if part)
    return name, re.compile(pattern, re.S | re.I)


def _message(caught: BaseException | Warning) -> str:
    if isinstance(caught, KeyError) and caught.args:
        return " ".join(str(caught.args[0]).split())
    return " ".join(str(caught).split())


def check_says(says: str, caught: list, *, match: str | None = None, test: str = "") -> None:
    """Fail unless one of ``caught`` (errors, warnings) is what ``says`` declares."""
    spec = declared(says, match)
    if spec is None:
        return
    name, pattern = spec
    of_class = [c for c in caught if name in {k.__name__ for k in type(c).__mro__}]
    if not any(pattern.search(_message(c)) for c in of_class):
        shown = "; ".join(f"{type(c).__name__}: {_message(c)[:300]}" for c in caught) or "nothing"
        raise AssertionError(
            f"The catalogue row of {test} says {says!r}, but the test caught {shown}. Make "
            "`says` quote the message (parts between '...'), or give match=.")


@contextlib.contextmanager
def recording() -> list:
    """Record what ``pytest.raises`` and ``pytest.warns`` catch inside the block."""
    import pytest

    caught: list = []
    real_raises, real_warns = pytest.raises, pytest.warns

    class Recorder:
        def __init__(self, context, warns: bool) -> None:
            self.context, self.warns = context, warns

        def __enter__(self):
            return self.context.__enter__()

        def __exit__(self, *exc):
            result = self.context.__exit__(*exc)
            if self.warns:
                caught.extend(w.message for w in self.context)
            elif exc[1] is not None:
                caught.append(exc[1])
            return result

        def __getattr__(self, name):
            return getattr(self.context, name)

    def raises(*args, **kwargs):
        out = real_raises(*args, **kwargs)
        if len(args) > 1:  # pytest.raises(E, function, ...): an ExceptionInfo
            caught.append(out.value)
            return out
        return Recorder(out, warns=False)

    def warns(*args, **kwargs):
        out = real_warns(*args, **kwargs)
        if len(args) > 1:
            return out
        return Recorder(out, warns=True)

    pytest.raises, pytest.warns = raises, warns
    try:
        yield caught
    finally:
        pytest.raises, pytest.warns = real_raises, real_warns


def bad_input(kind: str, given: str, *, says: str, fix: str, match: str | None = None):
    """Mark a test as the check of one bad input; the error or warning ``says`` quotes is checked.

    The row is read statically (:func:`collect`). At run time, where ``says`` quotes an error or
    a warning (``"ValueError: ..."``), the test also fails unless it caught one whose message
    is the one quoted (see the module's docstring); ``match`` gives the pattern instead.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if match is not None and declared(says, match) is not None \
            and not declared(says, match)[1].search(" ".join(says.split())):
        raise ValueError(f"says={says!r} does not match its own match={match!r}")

    def mark(test):
        if declared(says, match) is None:
            return test

        @functools.wraps(test)
        def checked(*args, **kwargs):
            with recording() as caught:
                result = test(*args, **kwargs)
            check_says(says, caught, match=match, test=test.__name__)
            return result

        return checked

    return mark


def collect() -> list[Row]:
    """Every ``@bad_input(...)`` row of the test modules, read from their source."""
    rows = []
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        tests = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
        tests += [method for node in tree.body if isinstance(node, ast.ClassDef)
                  for method in node.body if isinstance(method, ast.FunctionDef)]
        for node in tests:  # test functions, not functions defined inside them
            for decorator in node.decorator_list:
                if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Name)
                        and decorator.func.id == "bad_input"):
                    kind, given = (ast.literal_eval(a) for a in decorator.args)
                    keywords = {k.arg: ast.literal_eval(k.value) for k in decorator.keywords}
                    rows.append(Row(kind, given, keywords["says"], keywords["fix"],
                                    f"{path.name}::{node.name}", keywords.get("match")))
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
        "before it was fixed; today each is refused or reported as the table says. Where the",
        "second column quotes an error or a warning (`ValueError: ...`), the test also checks",
        "that text against the message actually raised (the parts between `...`, in order).",
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
