"""The documentation, read as a user reads it: the built HTML pages, not the build's exit status.

Run after a build (``make docs`` and ``make docs-fast`` run it)::

    python tests/check_docs.py docs/_build/html              # API pages, links, raw directives
    python tests/check_docs.py docs/_build/html --executed   # also: every tutorial shows figures

It checks that every API page shows its docstring (summary, sections, parameters), that no page
shows an unrendered directive, that ``hx.tl.fit`` and friends link every model's options, that
tutorials link the API pages of the functions they call, that every ``hx.pl`` page shows an
example figure, and (``--executed``) that every tutorial page shows the figures of its executed
cells. It exits with status 1 and a list of the problems when one fails.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _functions_used import TUTORIALS, code_of, used  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
API_PAGE = REPO / "docs" / "api.md"
#: text that only shows on a page when a directive was not run
RAW_DIRECTIVES = (".. auto", ".. currentmodule", ":::{auto", "```{auto", "```{eval-rst",
                  ".. plot::")


# ------------------------------------------------------------------------------------------------
# the sources


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


def public_object(name: str):
    """The object of ``room.name`` (``histoexpr.<room>.<name>``)."""
    obj = importlib.import_module("histoexpr")
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------------
# the pages as a reader sees them


def article(path: Path):
    """The main content of a built page (without the navigation, header and footer)."""
    import bs4

    if not path.exists():
        raise FileNotFoundError(f"{path.name} was not built")
    page = bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    main = page.find("article")
    if main is None:
        raise ValueError(f"{path.name} has no article")
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


def prose_returns_of(doc: str) -> list[str] | None:
    """The lines of a Returns section written as prose (its second line not indented)."""
    match = re.search(r"^Returns\n-{3,}\n(.*?)(?:^\S[^\n]*\n-{3,}$|\Z)", doc,
                      re.MULTILINE | re.DOTALL)
    if match is None:
        return None
    lines = [line for line in match.group(1).splitlines() if line.strip()]
    return lines if len(lines) < 2 or not lines[1][:1].isspace() else None


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


# ------------------------------------------------------------------------------------------------
# the checks: each returns its problems


def api_pages_show_each_docstring(html: Path) -> list[str]:
    problems = []
    for name in api_names():
        obj = public_object(name)
        main = article(html / "generated" / f"histoexpr.{name}.html")
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
    return problems


def no_page_shows_a_raw_directive(html: Path) -> list[str]:
    problems = []
    for path in sorted(html.rglob("*.html")):
        if {"_sources", "_static", "_modules"} & set(path.relative_to(html).parts):
            continue
        text = article(path).get_text(" ") if "<article" in path.read_text() else ""
        problems += [f"{path.relative_to(html)}: shows {raw!r} as text" for raw in RAW_DIRECTIVES
                     if raw in text]
    return problems


def every_model_has_its_options_linked_from_fit(html: Path) -> list[str]:
    from histoexpr.tl._api import CROSS_VALIDATORS, EVALUATORS, MODELS

    problems = []
    models_page = article(html / "models.html")
    for model, module in MODELS.items():
        section = models_page.find(id=f"model-{model.replace('_', '-')}")
        if section is None:
            problems.append(f"models.html has no section for model {model!r}")
            continue
        fit = importlib.import_module(module, "histoexpr.tl").fit
        problems += check_documented(section, inspect.getdoc(fit), f"{model} fit")
    if "histoexpr.tl._" in models_page.get_text(" "):
        problems.append("models.html shows a private path (histoexpr.tl._...)")
    for function, models in [("fit", MODELS), ("predict", MODELS),
                             ("cross_validate", CROSS_VALIDATORS)]:
        links = {a["href"] for a in article(html / "generated" / f"histoexpr.tl.{function}.html")
                 .find_all("a", href=True)}
        missing = [m for m in models if f"../models.html#model-{m.replace('_', '-')}" not in links]
        if missing:
            problems.append(f"hx.tl.{function}'s page does not link the options of {missing}")
    links = {a["href"] for a in article(html / "generated" / "histoexpr.tl.evaluate.html")
             .find_all("a", href=True)}
    problems += [f"hx.tl.evaluate's page does not link evaluator {kind!r}" for kind in EVALUATORS
                 if f"../models.html#evaluator-{kind}" not in links]
    return problems


def tutorial_pages_link_the_api_pages(html: Path) -> list[str]:
    import nbformat

    problems = []
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        code = code_of(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))
        page = html / "tutorials" / f"{path.stem}.html"
        links = {a["href"].split("#")[0] for a in article(page).find_all("a", href=True)}
        missing = [f"hx.{room}.{name}" for room, name in used(code)
                   if f"../generated/histoexpr.{room}.{name}.html" not in links]
        if missing:
            problems.append(f"{page.name} does not link the API pages of {missing}")
    return problems


def figures_of(page: Path, main) -> tuple[list, list[str]]:
    """The images of ``main`` (a built page's article) and those whose file is missing."""
    images = main.find_all("img")
    broken = [img["src"] for img in images if not img["src"].startswith("data:")
              and not (page.parent / img["src"]).resolve().is_file()]
    return images, broken


def plot_pages_show_an_example_figure(html: Path) -> list[str]:
    problems = []
    for name in (n for n in api_names() if n.startswith("pl.")):
        if not inspect.isfunction(public_object(name)) or name == "pl.napari":
            continue  # the napari viewer opens a window, not a figure
        page = html / "generated" / f"histoexpr.{name}.html"
        images, broken = figures_of(page, article(page))
        if not images:
            problems.append(f"{page.name} shows no example figure (add an Examples section "
                            "with a `.. plot::` directive)")
        problems += [f"{page.name}: figure {src} is not a file of the build" for src in broken]
    return problems


def tutorial_pages_show_their_figures(html: Path) -> list[str]:
    problems = []
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        page = html / "tutorials" / f"{path.stem}.html"
        main = article(page)
        outputs = main.select("div.cell_output")
        figures = [img for cell in outputs for img in cell.find_all("img")]
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        if not outputs:
            problems.append(f"{page.name} shows no cell output of its {len(cells)} cells: were "
                            "the notebooks executed?")
        elif not figures:
            problems.append(f"{page.name} shows no figure of its {len(cells)} cells")
        _, broken = figures_of(page, main)
        problems += [f"{page.name}: figure {src} is not a file of the build" for src in broken]
    return problems


CHECKS = (api_pages_show_each_docstring, no_page_shows_a_raw_directive,
          every_model_has_its_options_linked_from_fit, tutorial_pages_link_the_api_pages,
          plot_pages_show_an_example_figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built HTML folder (docs/_build/html)")
    parser.add_argument("--executed", action="store_true",
                        help="the tutorials were executed: check that each shows its figures")
    args = parser.parse_args(argv)
    checks = CHECKS + ((tutorial_pages_show_their_figures,) if args.executed else ())
    failed = 0
    for check in checks:
        problems = check(args.html)
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        print(f"{check.__name__.replace('_', ' ')}: {status}")
        for problem in problems:
            print(f"  - {problem}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
