"""The bad-input catalogue: every bad input histoexpr is tested against, and what it says.

A test of a bad input registers its row with :func:`bad_input`; the catalogue page
``docs/bad_inputs.md`` is written from the registry (``python tests/_catalogue.py --write``) and
``tests/house/test_catalogue.py`` fails when the page and the registry differ, so they cannot drift.

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
    quoted = re.match(r"`([^`]+)`", text)  # `the message`, then words about it
    if quoted:
        text = quoted.group(1)
    # backticks are markdown quoting (left out of both sides); "\u2026" is "..."
    text = text.replace("`", "").replace("\u2026", "...")
    parts = [" ".join(part.split()) for part in text.split("...")]
    pattern = ".*?".join(re.escape(part) for part in parts if part)
    return name, re.compile(pattern, re.S | re.I)


def _message(caught: BaseException | Warning) -> str:
    text = str(caught.args[0]) if isinstance(caught, KeyError) and caught.args else str(caught)
    return " ".join(text.replace("`", "").split())


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
    for path in sorted(TESTS.rglob("test_*.py")):
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
        "names and numbers). Where a message below quotes an error or a warning, the test that",
        "tries the input also checks it against the message actually raised.",
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
