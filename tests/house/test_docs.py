"""The documentation's sources: every public name in the API reference, every tutorial linked to
what it calls, and the checks of the built pages (``tests/check_docs.py``) on small pages.

The builds themselves run outside the test suite: ``make docs`` (executing the tutorials) and
``make docs-fast`` build the pages and read them with ``tests/check_docs.py``; CI runs that step
after the tests.
"""

from __future__ import annotations

import importlib

import pytest
from _functions_used import CELL_ID, ROOMS, TUTORIALS, cell_source, code_of, current_cell
from check_docs import (
    api_names,
    api_sections,
    check_documented,
    figures_of,
    no_page_shows_a_raw_directive,
    tutorial_pages_show_their_figures,
)


def test_api_reference_lists_every_public_name():
    sections = api_sections()
    listed = set(api_names())
    problems = []
    for room in ROOMS:
        public = importlib.import_module(f"histoexpr.{room}").__all__
        missing = [name for name in public if f"{room}.{name}" not in listed]
        if not missing:
            continue
        section = next((h for h, names in sections.items()
                        if any(n.startswith(f"{room}.") for n in names)), None)
        where = (f"the autosummary list of section '## {section}'" if section else
                 f"a new section '## ...: `hx.{room}`' with an autosummary list")
        problems.append(f"histoexpr.{room}.__all__ has {', '.join(missing)}: add "
                        f"{', '.join(f'{room}.{n}' for n in missing)} to {where}")
    unknown = [name for name in listed if "." in name and
               name.split(".")[1] not in importlib.import_module(
                   f"histoexpr.{name.split('.')[0]}").__all__]
    if unknown:
        problems.append(f"docs/api.md lists names that are not public: {', '.join(unknown)}")
    assert not problems, "docs/api.md is out of date:\n" + "\n".join(problems)


def test_every_tutorial_links_the_functions_it_calls():
    nbformat = pytest.importorskip("nbformat")
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        notebook = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        cell = current_cell(notebook)
        assert cell is not None and cell.cell_type == "markdown", (
            f"{path.name} has no '{CELL_ID}' cell: run `python tests/_functions_used.py --write`")
        assert cell.source == cell_source(code_of(notebook)), (
            f"{path.name}'s Functions used cell differs from what its code calls: run "
            "`python tests/_functions_used.py --write`")


# ------------------------------------------------------------------------------------------------
# the checks of the built pages, on small hand-written pages


def _page(path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><body><nav>menu</nav><article>{body}</article></body></html>")


def test_check_finds_a_missing_parameter_and_section(tmp_path):
    bs4 = pytest.importorskip("bs4")
    doc = "Draw it.\n\nParameters\n----------\nsdata\n    The data.\nkey : str\n    Key.\n"
    body = "<p>Draw it.</p><dl><dt>Parameters</dt><dd>sdata - the data</dd></dl>"
    main = bs4.BeautifulSoup(body, "html.parser")
    problems = check_documented(main, doc, "hx.pl.x")
    assert problems == ["hx.pl.x: parameter 'key' is not in its Parameters"]
    assert "f: the 'Returns' section is not on the page" in check_documented(
        main, doc + "\nReturns\n-------\nNone\n", "f")


def test_check_finds_a_raw_directive_and_a_tutorial_without_figures(tmp_path):
    pytest.importorskip("bs4")
    html = tmp_path / "html"
    _page(html / "generated" / "a.html", "<p>.. autofunction:: histoexpr.pp.tile</p>")
    assert no_page_shows_a_raw_directive(html) == [
        "generated/a.html: shows '.. auto' as text"]
    tutorials = sorted(TUTORIALS.glob("*.ipynb"))
    for path in tutorials:  # outputs without a figure, except the first tutorial
        image = '<img src="fig.png">' if path == tutorials[0] else ""
        _page(html / "tutorials" / f"{path.stem}.html",
              f'<div class="cell_output"><pre>text</pre>{image}</div>')
    (html / "tutorials" / "fig.png").write_bytes(b"png")
    problems = tutorial_pages_show_their_figures(html)
    assert len(problems) == len(tutorials) - 1
    assert all("shows no figure" in p for p in problems)
    _page(html / "tutorials" / f"{tutorials[0].stem}.html", '<img src="gone.png">')
    assert "gone.png" in " ".join(tutorial_pages_show_their_figures(html))
    main = pytest.importorskip("bs4").BeautifulSoup('<img src="data:image/png;base64,AA">',
                                                    "html.parser")
    assert figures_of(html / "x.html", main)[1] == []
