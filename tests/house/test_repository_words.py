"""The repository speaks of the project alone: its docs, changelog, benchmarks, tutorials, tests
and code describe histoexpr, its versions and its commits, never how the work on it was organised
(who worked on what, in which round, under which ticket number).

Each pattern below names such a word; the allow-list keeps the legitimate uses of the same
words (a pytest fixture of ``scope="session"``, a user's Python or dask session, hypothesis'
``deadline=``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: what is read: the text a user or a contributor meets
ROOTS = ("README.md", "CHANGELOG.md", "Makefile", "pyproject.toml", ".ci", "docs", "benchmarks",
         "tutorials", "tests", "src")
SUFFIXES = {".md", ".rst", ".py", ".ipynb", ".toml", ".txt", ".cfg", ".yaml", ".yml", ""}
#: built or downloaded, not written here
SKIPPED_PARTS = {"_build", "generated", "jupyter_execute", "_data", "__pycache__",
                 ".ipynb_checkpoints"}

#: words about how the work was organised -> what to write instead
PATTERNS: dict[str, str] = {
    r"\bsessions?\b": "a version (0.1.0.devN), a date or a commit",
    r"\bcoordinators?\b": "what the change does",
    r"\bworktrees?\b": "nothing: the reader sees one repository",
    r"\bsweeps?\b": "what was checked (e.g. 'every real data set read with the public API')",
    r"\bissues?\s*#?\d+": "the feature's name, a version or a commit",
    r"\b(?:the|this|of the|as the) issue(?:'s)?\b": "the target or baseline itself, by its name",
    r"\bitems?\s+\d+(?:\s*-\s*\d+)?\b": "the feature's name",
    r"\blent\b": "'no GPU was available'",
    r"\b(?:\d+|other|several|eight) helpers\b|\bhelpers shared the\b"
    r"|\bthe helper that follows\b": "'other jobs' or 'other processes'",
    r"\bthe lead(?:'s)?\b": "what was done, without who did it",
    r"\bdeadline\b(?!\s*=)": "nothing: the reader needs the result, not the schedule",
    r"\bthis task\b|\bturn's\b": "the project's own words",
    r"\bengineers?\b": "'contributors' or the project's own words",
    r"\bold main\b|\bmerged tree\b": "the commits compared (`abc1234` vs `def5678`)",
}
#: legitimate uses of the words above: a match inside one of these is fine
ALLOWED = (
    r"scope\s*=\s*[\"']session[\"']",  # pytest fixtures
    r"session[-_]info",  # the session-info package
    r"(?:python|jupyter|ipython|interactive|dask|napari|a later|another|the user's) sessions?\b",
)


def files() -> list[Path]:
    """Every text file under :data:`ROOTS`, this test aside (it spells the words it forbids)."""
    found = []
    for root in ROOTS:
        path = REPO / root
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for candidate in candidates:
            parts = set(candidate.relative_to(REPO).parts)
            if (candidate.is_file() and candidate.suffix in SUFFIXES and not parts & SKIPPED_PARTS
                    and candidate.resolve() != Path(__file__).resolve()):
                found.append(candidate)
    return found


def problems_in(text: str) -> list[str]:
    """``line: 'context' (use: ...)`` for every organisational word of ``text``."""
    allowed = [(m.start(), m.end()) for pattern in ALLOWED
               for m in re.finditer(pattern, text, re.IGNORECASE)]
    problems = []
    for pattern, instead in PATTERNS.items():
        for match in re.finditer(pattern, text, re.IGNORECASE):
            if any(a <= match.start() and match.end() <= b for a, b in allowed):
                continue
            line = text.count("\n", 0, match.start()) + 1
            context = text[max(0, match.start() - 30): match.end() + 30].replace("\n", " ")
            problems.append(f"line {line}: ...{context}... (write instead: {instead})")
    return problems


def test_the_repository_speaks_of_the_project_alone():
    found = {}
    for path in files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if problems := problems_in(text):
            found[str(path.relative_to(REPO))] = problems
    assert not found, "words about how the work was organised:\n" + "\n".join(
        f"{name}: {problem}" for name, problems in found.items() for problem in problems)


@pytest.mark.parametrize("text", [
    "## Unreleased (session 6)", "### Coordinator", "(issue 13, item 2)", "issue #4",
    "the issue's baseline", "8 helpers shared the 2 cores", "no GPU was lent to this task",
    "the lead's faster reading", "for the deadline.", "the new user's sweep",
])
def test_the_words_are_found(text):
    assert problems_in(text), text


@pytest.mark.parametrize("text", [
    '@pytest.fixture(scope="session")', "session-info2==0.4.1", "a later session reopens them",
    "in a Jupyter session", "settings(deadline=None)", "Shared helpers in `_utils.py`",
    "Small helpers shared by every room", "tissue", "a GitHub issue", "each item of the batch",
    "silently",
])
def test_legitimate_uses_pass(text):
    assert not problems_in(text), text
