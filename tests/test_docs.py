"""The documentation, read as a user reads it: the built HTML pages, not the build's exit status.

Two builds: a fast one without executing the notebooks (the API pages, the model options, the
links of the tutorials) and the executed one of ``make docs`` (the tutorials' figures).
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _functions_used import CELL_ID, ROOMS, TUTORIALS, cell_source, code_of, current_cell, used

REPO = Path(__file__).resolve().parents[1]
API_PAGE = REPO / "docs" / "api.md"
#: text that only shows on a page when a directive was not run
RAW_DIRECTIVES = (".. auto", ".. currentmodule", ":::{auto", "```{auto", "```{eval-rst")


# ------------------------------------------------------------------------------------------------
# the sources: every public name in the API reference, every tutorial linked to what it calls


def api_sections() -> dict[str, list[str]]:
    """``## heading`` of docs/api.md -> the names its autosummary lists (``"pp.tile"``...)."""
    sections: dict[str, list[str]] = {}
    heading = "(before the first heading)"
    for line in API_PAGE.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            sections.setdefault(heading, [])
        elif match := re.fullmatch(r"\s+~?(?:histoexpr\.)?([a-z_]+(?:\.\w+)?)\s*", line):
            sections.setdefault(heading, []).append(match.group(1))
    return sections


def api_names() -> list[str]:
    """Every name of docs/api.md's autosummary lists, as ``room.name`` (or ``settings``)."""
    return [name for names in api_sections().values() for name in names]


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
# the pages as a reader sees them


def build(out: Path, *, execute: bool, env: dict[str, str] | None = None) -> Path:
    """Build a copy of docs/ (the repository's docs/generated is left alone) into ``out``."""
    source = out / "docs"
    shutil.copytree(REPO / "docs", source,  # the tutorials' link is copied as a folder
                    ignore=shutil.ignore_patterns("_build", "generated", "jupyter_execute"))
    for page in REPO.glob("*.md"):  # included by docs/ (the changelog)
        shutil.copy(page, out / page.name)
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
               str(source), str(out / "html")]
    if not execute:
        command[4:4] = ["-D", "nb_execution_mode=off"]
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**_environment(), **(env or {})})
    assert result.returncode == 0, result.stderr[-5000:]
    return out / "html"


def _environment() -> dict[str, str]:
    import os

    # no MPLBACKEND: the notebooks' kernel must use its inline backend to record the figures
    environment = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    return {**environment, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


def article(path: Path):
    """The main content of a built page (without the navigation, header and footer)."""
    bs4 = pytest.importorskip("bs4")
    assert path.exists(), f"{path.name} was not built"
    page = bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    main = page.find("article")
    assert main is not None, f"{path.name} has no article"
    return main


def words(text: str) -> str:
    """Letters and digits only, lower case: text compared across markup and smart quotes."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def rendered(rst: str) -> str:
    """What a line of reStructuredText shows: roles by their title or last name part."""
    def role(match: re.Match) -> str:
        target = match.group(1)
        if "<" in target:
            return target.split("<")[0]
        return target.lstrip("!~").split(".")[-1] if target.startswith("~") else target
    return re.sub(r":[\w:]+:`([^`]+)`", role, rst)


def sections_of(doc: str) -> list[str]:
    """The numpydoc section headings of a docstring (Parameters, Returns, Examples...)."""
    return re.findall(r"^([A-Z][\w ]+)\n-{3,}$", doc, re.MULTILINE)


def parameters_of(doc: str) -> list[str]:
    """The names documented in the Parameters section of a numpydoc docstring."""
    match = re.search(r"^Parameters\n-{3,}\n(.*?)(?:^\S[^\n]*\n-{3,}$|\Z)", doc,
                      re.MULTILINE | re.DOTALL)
    if match is None:
        return []
    names = []
    for line in match.group(1).splitlines():
        if line and not line[0].isspace():
            names += [n.strip().lstrip("*") for n in line.split(" : ")[0].split(",")]
    return [n for n in names if n]


def check_documented(main, doc: str, what: str) -> list[str]:
    """What of the docstring ``doc`` the page section ``main`` does not show."""
    problems = []
    text = words(main.get_text(" "))
    summary = doc.strip().splitlines()[0]
    if words(rendered(summary)) not in text:
        problems.append(f"{what}: the summary line {summary!r} is not on the page")
    headings = {words(t.get_text()) for t in main.find_all(["dt", "p"])
                if t.name == "dt" or "rubric" in (t.get("class") or [])}
    for section in sections_of(doc):
        if words(section) not in headings:
            problems.append(f"{what}: the {section!r} section is not on the page")
    field = next((t for t in main.find_all("dt") if words(t.get_text()) == "parameters"), None)
    if "Parameters" in sections_of(doc) and field is not None:
        shown = words(field.find_next_sibling("dd").get_text(" "))
        problems += [f"{what}: parameter {name!r} is not in its Parameters"
                     for name in parameters_of(doc) if words(name) not in shown]
    returns = next((t for t in main.find_all("dt") if words(t.get_text()) == "returns"), None)
    prose = prose_returns_of(doc)
    if returns is not None and prose is not None:  # one paragraph, not a list of its lines
        items = len(returns.find_next_sibling("dd").find_all("li"))
        bullets = sum(line.lstrip().startswith(("- ", "* ")) for line in prose)
        if items > bullets:
            problems.append(f"{what}: its Returns paragraph is shown as a list of {items} lines")
    return problems


def prose_returns_of(doc: str) -> list[str] | None:
    """The lines of a Returns section written as prose (its second line not indented)."""
    match = re.search(r"^Returns\n-{3,}\n(.*?)(?:^\S[^\n]*\n-{3,}$|\Z)", doc,
                      re.MULTILINE | re.DOTALL)
    if match is None:
        return None
    lines = [line for line in match.group(1).splitlines() if line.strip()]
    return lines if len(lines) < 2 or not lines[1][:1].isspace() else None


@pytest.fixture(scope="module")
def fast_html(tmp_path_factory) -> Path:
    """The docs built without executing the notebooks (about 30 s of CPU)."""
    pytest.importorskip("myst_nb", reason="the docs extra is not installed")
    return build(tmp_path_factory.mktemp("docs"), execute=False)


def no_raw_directives(html: Path) -> list[str]:
    """``page: directive`` for every raw directive shown as text in the built pages."""
    problems = []
    for path in sorted(html.rglob("*.html")):
        if {"_sources", "_static", "_modules"} & set(path.relative_to(html).parts):
            continue
        text = article(path).get_text(" ") if "<article" in path.read_text() else ""
        problems += [f"{path.relative_to(html)}: {raw!r}" for raw in RAW_DIRECTIVES
                     if raw in text]
    return problems


@pytest.mark.slow
def test_api_pages_show_each_docstring(fast_html):
    problems = []
    for name in api_names():
        obj = importlib.import_module("histoexpr")
        for part in name.split("."):
            obj = getattr(obj, part)
        main = article(fast_html / "generated" / f"histoexpr.{name}.html")
        problems += check_documented(main, inspect.getdoc(obj) or "", f"hx.{name}")
        if inspect.isclass(obj):  # the class's own public methods, with their docstrings
            for method, member in vars(obj).items():
                if (not method.startswith("_") and callable(member)
                        and inspect.getdoc(member)):
                    signature = main.find(id=f"histoexpr.{name}.{method}")
                    if signature is None:
                        problems.append(f"hx.{name}.{method} is not on hx.{name}'s page")
                        continue
                    problems += check_documented(  # the method's own entry of the page
                        signature.parent, inspect.getdoc(getattr(obj, method)),
                        f"hx.{name}.{method}")
    assert not problems, "API pages that do not show their docstring:\n" + "\n".join(problems)


@pytest.mark.slow
def test_no_page_shows_a_raw_directive(fast_html):
    problems = no_raw_directives(fast_html)
    assert not problems, "pages that show a directive as text:\n" + "\n".join(problems)


@pytest.mark.slow
def test_every_model_has_its_options_linked_from_fit(fast_html):
    from histoexpr.tl._api import CROSS_VALIDATORS, EVALUATORS, MODELS

    models_page = article(fast_html / "models.html")
    for model, module in MODELS.items():
        section = models_page.find(id=f"model-{model.replace('_', '-')}")
        assert section is not None, f"models.html has no section for model {model!r}"
        fit = importlib.import_module(module, "histoexpr.tl").fit
        assert not check_documented(section, inspect.getdoc(fit), f"{model} fit")
    for function, models in [("fit", MODELS), ("predict", MODELS),
                             ("cross_validate", CROSS_VALIDATORS)]:
        links = {a["href"] for a in
                 article(fast_html / "generated" / f"histoexpr.tl.{function}.html")
                 .find_all("a", href=True)}
        missing = [m for m in models if f"../models.html#model-{m.replace('_', '-')}" not in links]
        assert not missing, f"hx.tl.{function}'s page does not link the options of {missing}"
    links = {a["href"] for a in article(fast_html / "generated" / "histoexpr.tl.evaluate.html")
             .find_all("a", href=True)}
    assert all(f"../models.html#evaluator-{kind}" in links for kind in EVALUATORS)


@pytest.mark.slow
def test_tutorial_pages_link_the_api_pages(fast_html):
    nbformat = pytest.importorskip("nbformat")
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        code = code_of(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))
        page = fast_html / "tutorials" / f"{path.stem}.html"
        links = {a["href"].split("#")[0] for a in article(page).find_all("a", href=True)}
        missing = [f"hx.{room}.{name}" for room, name in used(code)
                   if f"../generated/histoexpr.{room}.{name}.html" not in links]
        assert not missing, f"{page.name} does not link the API pages of {missing}"


@pytest.mark.realdata  # the tutorials read ../shared/data (hx.datasets, offline)
@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path, data_dir):
    """The build of ``make docs``, executing every tutorial; each shows its figures."""
    pytest.importorskip("myst_nb", reason="the docs extra is not installed")
    html = build(tmp_path, execute=True, env={"HISTOEXPR_DATA_DIR": str(data_dir)})
    tutorial = (html / "tutorials" / "01_read_tile_plot.html").read_text()
    assert "spots x" in tutorial  # an executed cell's output
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        page = html / "tutorials" / f"{path.stem}.html"
        figures = [img for cell in article(page).select("div.cell_output")
                   for img in cell.find_all("img")]
        code = json.loads(path.read_text(encoding="utf-8"))
        assert figures, f"{page.name} shows no figure of its {len(code['cells'])} cells"
        for img in figures:  # each figure is a file of the build, not a broken link
            assert (page.parent / img["src"]).resolve().is_file(), f"{page.name}: {img['src']}"
    problems = no_raw_directives(html)
    assert not problems, "pages that show a directive as text:\n" + "\n".join(problems)
    assert (html / "generated" / "histoexpr.io.read_wsi.html").exists()
