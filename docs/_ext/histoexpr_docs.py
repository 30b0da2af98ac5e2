"""Sphinx helpers of the histoexpr documentation.

Prose ``Returns``: histoexpr's docstrings describe what a function returns in a paragraph
(``Returns`` / ``-------`` / unindented prose), which napoleon would read as one return value per
line and show as a list of sentence fragments. :func:`prose_returns` sets such a section aside
before napoleon runs, and :func:`restore_prose_returns` puts it back afterwards as the paragraph
of the ``:returns:`` field; sections in the ``name : type`` + indented description form are
left to napoleon.

The ``histoexpr-models`` directive: the options of every model of ``hx.tl.fit``.
``hx.tl.fit(data, model=name, **options)`` passes ``options`` to the ``fit`` of the model's own
module of ``histoexpr.tl`` (``histoexpr.tl._api.MODELS``); ``hx.tl.predict``,
``hx.tl.cross_validate`` and ``hx.tl.evaluate`` do the same with their own tables. The directive
writes one section per model (label ``model-<name>``) and one per evaluator (label
``evaluator-<kind>``) with the documentation of those functions, read from the tables, so that a
new model is documented as soon as it is registered.
"""

from __future__ import annotations

import importlib
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def _tables() -> tuple[dict[str, str], dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    from histoexpr.tl import _api

    return _api.MODELS, _api.CROSS_VALIDATORS, _api.EVALUATORS


def _options_class(model: str) -> str:
    """The public name of the model's options class (``hx.tl.<Name>Options``)."""
    from histoexpr.tl import _models

    return f"histoexpr.tl.{_models.OPTIONS[model].__name__}"


def _qualified(module: str, function: str) -> str:
    """Full dotted name of ``function`` in a module given relative to ``histoexpr.tl``."""
    full_module = importlib.import_module(module, package="histoexpr.tl").__name__
    return f"{full_module}.{function}"


def _summary(name: str) -> str:
    module, _, attribute = name.rpartition(".")
    doc = getattr(importlib.import_module(module), attribute).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def model_summaries() -> dict[str, list[tuple[str, str]]]:
    """Name and summary line of each model, cross-validated model and evaluator."""
    models, cross_validators, evaluators = _tables()
    return {
        "models": [(m, _summary(_qualified(module, "fit"))) for m, module in models.items()],
        "cross_validators": [(m, _summary(_qualified(*f))) for m, f in cross_validators.items()],
        "evaluators": [(k, _summary(_qualified(*f))) for k, f in evaluators.items()],
    }


class ModelsDirective(SphinxDirective):
    """Document the options of every model, cross-validation procedure and evaluator."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        """The sections of every model and evaluator, parsed as reStructuredText."""
        models, cross_validators, evaluators = _tables()
        documented: set[str] = set()
        lines: list[str] = []

        def document(title: str, name: str) -> None:
            lines.extend([f".. rubric:: {title}", ""])
            lines.append(f".. autofunction:: {name}")
            if name in documented:  # shared by several models: one entry in the index
                lines.append("   :no-index:")
            documented.add(name)
            lines.append("")

        for model, module in models.items():
            fit = _qualified(module, "fit")
            title = f'``model="{model}"``'
            lines.extend([f".. _model-{model}:", "", title, "-" * len(title), "",
                          _summary(fit), ""])
            calls = [f'``hx.tl.fit(data, model="{model}", ...)``',
                     "``hx.tl.predict(network, data, ...)``"]
            if model in cross_validators:
                calls.append(f'``hx.tl.cross_validate(data, model="{model}", ...)``')
            lines.extend(["Called through " + ", ".join(calls) + ".", ""])
            document("Training, by hx.tl.fit", fit)
            lines.extend([".. rubric:: Training options, of hx.tl.fit", "",
                          f".. autoclass:: {_options_class(model)}", "   :no-index:", ""])
            document("Prediction options, of hx.tl.predict", _qualified(module, "predict"))
            if model in cross_validators:
                document("Cross-validation options, of hx.tl.cross_validate",
                         _qualified(*cross_validators[model]))
        for kind, (module, function) in evaluators.items():
            name = _qualified(module, function)
            title = f"Evaluating {kind}"
            lines.extend([f".. _evaluator-{kind}:", "", title, "-" * len(title), "",
                          f"``hx.tl.evaluate(data, pred_key, truth_key, ...)`` where the "
                          f"predictions are {kind}.", ""])
            document("Options, of hx.tl.evaluate", name)

        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="histoexpr-models"),
                                 container)
        # the functions live in private modules: show them by name, as hx.tl.fit calls them,
        # not by their module path (which changes when a model moves)
        for prefix in list(container.findall(addnodes.desc_addname)):
            if prefix.astext().startswith("histoexpr.tl._"):
                prefix.parent.remove(prefix)
        return container.children


_PLACEHOLDER = "HistoexprProseReturns"
_prose: dict[int, list[str]] = {}  # id of a docstring's lines -> its prose Returns section


def prose_returns(app: Any, what: str, name: str, obj: Any, options: Any,
                  lines: list[str]) -> None:
    """Before napoleon: set a prose ``Returns`` section of ``lines`` aside, leaving a mark."""
    for i in range(len(lines) - 1):
        if lines[i].strip() != "Returns" or not _is_underline(lines[i + 1]):
            continue
        end = i + 2
        while end < len(lines) and not (end + 1 < len(lines) and lines[end].strip()
                                        and _is_underline(lines[end + 1])):
            end += 1
        body = lines[i + 2:end]
        while body and not body[-1].strip():
            body.pop()
        filled = [line for line in body if line.strip()]
        if not filled or (len(filled) > 1 and filled[1][:1].isspace()):
            return  # numpydoc's "name : type" with an indented description: napoleon's
        _prose[id(lines)] = body
        lines[i + 2:end] = [_PLACEHOLDER, ""]
        return


def restore_prose_returns(app: Any, what: str, name: str, obj: Any, options: Any,
                          lines: list[str]) -> None:
    """After napoleon: put the prose back as the paragraph of the ``:returns:`` field."""
    body = _prose.pop(id(lines), None)
    if body is None:
        return
    for i, line in enumerate(lines):
        if _PLACEHOLDER in line:
            first = next(k for k, text in enumerate(body) if text.strip())
            lines[i:i + 1] = [f":returns: {body[first]}",
                              *(f"   {text}" if text.strip() else "" for text in body[first + 1:])]
            return


def _is_underline(line: str) -> bool:
    return len(line.strip()) >= 3 and set(line.strip()) == {"-"}


def setup(app: Any) -> dict[str, Any]:
    """Register the directive and the docstring hook (before napoleon's, priority 500)."""
    app.add_directive("histoexpr-models", ModelsDirective)
    app.connect("autodoc-process-docstring", prose_returns, priority=400)
    app.connect("autodoc-process-docstring", restore_prose_returns, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
