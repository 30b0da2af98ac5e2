"""The entry points ``fit``, ``predict`` and ``evaluate``, shared by every model.

Each model lives in its own module of a job room of :mod:`histoexpr.tl` (``tl/_patch``,
``tl/_spot``, ``tl/_mil``) that defines ``fit(data, options)`` returning a trained
:class:`histoexpr.models.Network` (whose ``metadata["model"]`` names the model) and
``predict(model, data, **options)``; its options class lives in the room's ``_options.py``. The
entry points look both up in the model table (:mod:`histoexpr.tl._models`), which is also where
a model is added (one entry), or, for a model written outside histoexpr, :func:`register_model`
at run time.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._core.logs import logged_step
from .._core.validate import check_bool
from ._models import (
    COHORT_MODELS,
    CROSS_VALIDATORS,
    MODEL_TABLE,
    MODELS,
    OPTIONS,
    OWN_MODELS,
    ModelSpec,
    options_of,
    spec_of,
)
from ._options import ModelOptions

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData

    from ..models import Network

__all__ = ["COHORT_MODELS", "CROSS_VALIDATORS", "MODELS", "OPTIONS", "cross_validate",
           "evaluate", "fit", "predict", "predict_options", "register_model", "write_help"]

#: kind of the prediction element -> the options of evaluate that its evaluator takes
EVALUATOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "labels": ("classes", "region", "ignore", "cells"),
    "tables": ("genes",),
}

#: kind of the prediction element -> (module, function) that scores it
EVALUATORS: dict[str, tuple[str, str]] = {
    "labels": ("._metrics._segmentation_metrics", "label_metrics"),
    "tables": ("._metrics._expression_metrics", "evaluate_expression"),
}


def _model_name(model: str | ModelOptions) -> str:
    """A model's name, given by name or by its options object (for the log)."""
    return repr(model) if isinstance(model, str) else repr(getattr(model, "model", model))


def _model_module(name: str) -> ModuleType:
    return spec_of(name).load()


def predict_options(model: str) -> tuple[str, ...]:
    """The names of the options that ``hx.tl.predict`` takes for a model of this name.

    Parameters
    ----------
    model
        A model name, as ``network.metadata["model"]`` holds it (e.g. ``"spot_regressor"``).

    Returns
    -------
    The option names, in the order of the model's ``predict`` (``key_added`` and
    ``overwrite`` included); :func:`predict` documents each.

    Examples
    --------
    >>> "stride_um" in hx.tl.predict_options("spot_regressor")
    True
    """
    if model not in MODELS:
        known = ", ".join(repr(m) for m in MODELS)
        raise ValueError(f"Unknown model {model!r}; histoexpr applies: {known}.")
    return tuple(name for name, _, _ in _function_source(MODELS[model], "predict")[1])


@logged_step(lambda data, *, model, **options: f"training {_model_name(model)}")
def fit(data: Any, *, model: str | ModelOptions, **options: Any) -> Network:
    """Train a model; one entry point for every model histoexpr has.

    ``hx.tl.fit(data, model="spot_regressor", route="mlp")`` and
    ``hx.tl.fit(data, model=hx.tl.SpotRegressorOptions(route="mlp"))`` train the same model.
    The options of every model are listed below (Notes), each model's in its options class.

    Parameters
    ----------
    data
        What the model learns from: a SpatialData, a list of them, or a cohort, as the model's
        own ``fit`` documents.
    model
        Which model: its name (its options take their defaults, then ``options``) or its
        options object. MODEL_LIST
    **options
        Options of the model, by name (see Notes); with an options object, they replace its
        fields. An unknown option is an error naming the model's options.

    Returns
    -------
    The trained network; ``network.metadata`` holds what it was trained on (classes or genes,
    um/px, normalisation), its ``options`` and its training ``history``. Save it with
    :func:`histoexpr.io.save_model`.

    Examples
    --------
    >>> options = hx.tl.SpotRegressorOptions(route="mlp", n_members=3)
    >>> model = hx.tl.fit(sections, model=options)
    >>> same = hx.tl.fit(sections, model="spot_regressor", route="mlp", n_members=3)

    Notes
    -----
    FIT_OPTIONS
    """
    chosen = options_of(model, **options)
    spec = spec_of(chosen)
    network = spec.load().fit(data, chosen)
    metadata = getattr(network, "metadata", None)
    trained = metadata.get("model") if isinstance(metadata, dict) else None
    if trained != spec.name:
        said = (f"metadata['model'] = {trained!r}" if isinstance(metadata, dict)
                else f"no metadata dict ({type(network).__name__})")
        raise ValueError(
            f"{spec.module}.fit returned a network with {said}, not {spec.name!r}: "
            "hx.tl.predict finds a network's model by that name. Fix that fit to return a "
            f"histoexpr.models.Network with network.metadata['model'] = {spec.name!r}.")
    network.metadata["options"] = chosen.record()
    return network


@logged_step("predicting")
def predict(model: Network | str | Path, data: Any, *, key_added: str | None = None,
            overwrite: bool = False, **options: Any) -> Any:
    """Apply a trained model: write its predictions into ``data`` and return what it wrote.

    Parameters
    ----------
    model
        A network returned by :func:`fit`, or a model file written by
        :func:`histoexpr.io.save_model` (read with :func:`histoexpr.io.load_model`).
    data
        What to predict on (a SpatialData, a list of them, or a cohort).
    key_added
        Where the predictions go; ``None`` uses the model's default (see Notes).
    overwrite
        Replace elements (and, for slide-level models, tile-table entries) of that name that
        an earlier ``predict`` wrote (never one of another origin).
    **options
        Options of the model's ``predict`` (see Notes).

    Returns
    -------
    What it wrote: a table of predictions (spot regressor, bag models, per-cell maps) or a
    label map (dense class maps).

    Notes
    -----
    PREDICT_OPTIONS
    """
    check_bool("overwrite", overwrite)
    source = str(model) if isinstance(model, str | Path) else "This network"
    if isinstance(model, str | Path):
        from ..io import load_model

        model = load_model(model, device=options.get("device"))
    name = (getattr(model, "metadata", None) or {}).get("model")
    if name is None:
        from .._core.torch_files import untrained_message

        raise ValueError(untrained_message(model, source))
    from ..io import Cohort

    spec = spec_of(name) if isinstance(name, str) and name in MODELS else None
    if isinstance(data, Cohort) and spec is not None and not spec.cohort:
        if spec.kind == "spot":  # slide by slide, with the model's one-section predict
            import inspect

            from ._spot._spot_cohort import predict_cohort

            taken = [n for n in inspect.signature(predict_cohort).parameters if n != "module"]
            unknown = [n for n in options if n not in taken]
            if unknown:
                raise TypeError(f"{', '.join(unknown)}: not an option of predicting a cohort "
                                f"slide by slide; it takes {', '.join(taken[2:])}.")
            return predict_cohort(model, data, module=spec.load(), key_added=key_added,
                                  overwrite=overwrite, **options)
        raise ValueError(
            f"A {name!r} model does not predict over a cohort; the models that do are "
            f"{list(COHORT_MODELS)} and those of kind 'spot'. Predict each slide with "
            "hx.tl.predict(model, cohort[slide_id]), or use one of those models.")
    if key_added is not None:
        options["key_added"] = key_added
    return _model_module(name).predict(model, data, overwrite=overwrite, **options)


@logged_step(lambda data, *, model, **options: f"cross-validating {_model_name(model)}")
def cross_validate(data: Any, *, model: str | ModelOptions, groups: Any = None,
                   **options: Any) -> Any:
    """Cross-validate a model with folds that never split a group (patient or section).

    Each model is cross-validated by the procedure its entry in the model table names (Notes
    lists the procedures and their models): the bag procedure holds out whole patients'
    slides or sections and returns out-of-fold bag predictions; the HEST protocol of the spot
    models chooses the genes on the training sections of each fold and returns per-gene
    correlations. Every fold trains with the same options, checked before the first fold.

    Parameters
    ----------
    data
        A cohort or sections by name, as the model's procedure documents.
    model
        Which model: its name or its options object (as for :func:`fit`).
        CV_MODEL_LIST
    groups
        The group (patient) of each section: folds hold out a whole group; ``None`` holds out
        one section at a time. Bag models also take a column of ``cohort.bulk.obs``.
    **options
        Options of the procedure (Notes) and of the model (as for :func:`fit`).

    Returns
    -------
    What the model's procedure returns: the bag procedure an AnnData of out-of-fold
    predictions with ``uns["scores"]``, the HEST protocol a DataFrame with one row per
    held-out section and gene.

    Notes
    -----
    CV_OPTIONS
    """
    spec = spec_of(model)
    if spec.cross_validator is None:
        raise ValueError(f"No cross-validation for model {spec.name!r}; histoexpr "
                         f"cross-validates {', '.join(repr(m) for m in CROSS_VALIDATORS)}.")
    base = model if isinstance(model, ModelOptions) else spec.options()
    return spec.load_cross_validator()(data, model=base, module=spec.load(), groups=groups,
                                       **options)


def evaluate(sdata: SpatialData, pred_key: str, truth_key: str, *,
             genes: str | Sequence[str] | None = None, classes: Mapping[str, int] | None = None,
             region: Sequence[float] | None = None, ignore: int = 0,
             cells: str | None = None) -> pd.DataFrame:
    """Score predictions against the truth, choosing the metrics by what is predicted.

    Parameters
    ----------
    sdata
        The SpatialData holding both the predictions and the truth.
    pred_key
        Key of the predictions: a label map (class maps, scored by Dice, IoU...) or a table
        (expression, scored by correlations).
    truth_key
        Key of the ground truth of the same kind (for expression, the spot table).
    genes
        Expression: the genes to score (one name or several); ``None`` scores every gene the
        prediction and the truth share.
    classes
        Label maps: ``{class name: label value}`` to score; ``None`` takes the prediction's
        ``attrs["classes"]``.
    region
        Label maps: ``(x_min, y_min, x_max, y_max)`` in um to score; ``None`` where both maps
        overlap.
    ignore
        Label maps: the label value left out of the scores (unassigned truth, places not
        predicted).
    cells
        Label maps: key of the cells, to score one vote per cell instead of per pixel. Where
        the maps have no per-cell table, each cell's most common value is read at half the
        map's pixel size; that memory is estimated first (a :class:`MemoryError` names
        ``region``).

    Returns
    -------
    Expression: one row per gene (``pearson``, ``spearman``...); label maps: Dice, IoU,
    precision and recall of each class and their mean.
    """
    from .._core.ownership import element_kind, require_spatialdata

    require_spatialdata(sdata)
    data = sdata
    for key, what in ((pred_key, "pred_key"), (truth_key, "truth_key")):
        if element_kind(data, key) is None:
            available = ", ".join(repr(k) for k in data.tables.keys()) or "none"
            labels = ", ".join(repr(k) for k in data.labels.keys()) or "none"
            raise KeyError(f"{what}={key!r} is not an element of the SpatialData; its tables "
                           f"are {available} and its label maps {labels}. Pass one of them (a "
                           "prediction from hx.tl.predict and the truth).")
    kind = element_kind(data, pred_key)
    if kind not in EVALUATORS:
        raise ValueError(f"Predictions stored as {kind} cannot be evaluated; histoexpr scores "
                         f"{', '.join(EVALUATORS) or 'nothing yet'}.")
    module, function = EVALUATORS[kind]
    evaluator = getattr(importlib.import_module(module, package=__package__), function)
    given = {"genes": genes, "classes": classes, "region": region, "cells": cells}
    accepted = EVALUATOR_OPTIONS[kind]
    wrong = [name for name, value in given.items() if value is not None and name not in accepted]
    if wrong:
        raise TypeError(f"{', '.join(wrong)} do(es) not apply to predictions stored as {kind}; "
                        f"they take {', '.join(accepted)}.")
    options = {name: value for name, value in given.items() if name in accepted}
    if kind == "labels":
        options["ignore"] = ignore
    return evaluator(data, pred_key, truth_key, **options)


# --- the docstrings of fit, predict and cross_validate list every option of every model ---------
# They are written at import from the options classes (fit) and from the Parameters sections of
# the model modules' predict and of the cross-validation procedures, read from their source so
# that reading the help does not import torch.

_PROCEDURE_OPTIONS = ("model", "module", "groups", "data", "sections")
_PREDICT_SHOWN_ELSEWHERE = ("model", "data", "sdata", "key_added", "overwrite")


def _parameters_section(doc: str) -> dict[str, str]:
    """``{name: its documentation}`` of a numpydoc ``Parameters`` section."""
    import inspect

    doc = inspect.cleandoc(doc)
    if "Parameters\n----------\n" not in doc:
        return {}
    section = doc.split("Parameters\n----------\n", 1)[1]
    entries: dict[str, list[str]] = {}
    name = None
    for line in section.splitlines():
        if line and not line.startswith(" "):
            if line.endswith("-" * len(line)) or line in ("Returns", "Examples", "Notes"):
                break
            name = line.split(" : ")[0].strip()
            entries[name] = []
        elif name is not None:
            entries[name].append(line.strip())
    return {k: " ".join(" ".join(v).split()) for k, v in entries.items()}


def _entry(name: str, annotation: str, default: str | None, text: str) -> str:
    import textwrap

    head = f"{name} : {annotation}" + ("" if default is None else f" = {default}")
    return head + "\n" + textwrap.indent(textwrap.fill(text, 84), "    ")


def _fit_options_doc() -> str:
    import dataclasses

    blocks = ["Options of each model: the fields of its options class (``hx.tl.<Class>``), "
              "with their defaults."]
    for name, cls in OPTIONS.items():
        lines = [f'**model="{name}"** (:class:`{_class_name(cls)}`)', ""]
        listed: set[str] = set()
        for variant in cls._variants():  # a model with one class per route: each route's own
            docs = _parameters_section(variant.__doc__ or "")
            fields = [f for f in dataclasses.fields(variant) if f.name not in listed]
            if variant is not cls:
                route = variant.__dataclass_fields__["route"].default
                lines += ["", f'route="{route}" adds (:class:`{_class_name(variant)}`):', ""]
            for field in fields:
                listed.add(field.name)
                lines.append(_entry(field.name, str(field.type), repr(field.default),
                                    docs.get(field.name, "")))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _class_name(cls: type) -> str:
    """The cross-reference of an options class: ``hx.tl``'s name, or its own module's."""
    if cls.__module__.split(".")[0] == "histoexpr":
        return f"~histoexpr.tl.{cls.__name__}"
    return f"~{cls.__module__}.{cls.__qualname__}"


def _function_source(module: str, function: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The docstring and ``(name, annotation, default)`` of keyword options of a function.

    Read from the module's source, so that histoexpr's own help imports no torch; where the
    source does not say (a module without a file such as ``__main__``, a function assigned
    rather than defined, a re-export the source does not resolve), from the function itself,
    imported (:func:`inspect.signature`).
    """
    try:
        return _source_options(module, function)
    except (ImportError, ValueError, OSError, SyntaxError, LookupError, AttributeError,
            TypeError, StopIteration):
        if module.split(".")[0] == "histoexpr":
            raise  # histoexpr's own help is read from source, never by importing torch
        return _inspected_options(module, function)


def _source_options(module: str, function: str, depth: int = 0):
    import ast
    import importlib.util

    found = importlib.util.find_spec(module, package=__package__)
    tree = ast.parse(Path(found.origin).read_text(encoding="utf-8"))
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function),
                None)
    if node is None:  # imported from another module: read it there
        source = next(n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module
                      and any(a.name == function and a.asname in (None, function)
                              for a in n.names))
        package = module if found.submodule_search_locations is not None else \
            module.rpartition(".")[0]
        if depth > 8:
            raise LookupError(f"{module}.{function} is re-exported too many times.")
        name = importlib.util.resolve_name("." * source.level + source.module, package)
        return _source_options(name, function, depth + 1)
    args = node.args
    options = [(a.arg, ast.unparse(a.annotation) if a.annotation else "Any",
                ast.unparse(d) if d is not None else None)
               for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    return ast.get_docstring(node) or "", options


def _inspected_options(module: str, function: str) -> tuple[str, list[tuple[str, str, str]]]:
    """:func:`_function_source` of a function of a module outside histoexpr, imported."""
    import inspect

    target = getattr(importlib.import_module(module), function)
    parameters = inspect.signature(target).parameters.values()
    options = [(p.name, "Any" if p.annotation is p.empty else
                p.annotation if isinstance(p.annotation, str) else
                inspect.formatannotation(p.annotation),
                None if p.default is p.empty else repr(p.default))
               for p in parameters if p.kind is p.KEYWORD_ONLY]
    return inspect.getdoc(target) or "", options


def _predict_options_doc() -> str:
    blocks = ["Options of each model's ``predict``:"]
    for name, module in MODELS.items():
        doc, options = _function_source(module, "predict")
        docs = _parameters_section(doc)
        key_added = next((d for n, _, d in options if n == "key_added"), None)
        lines = [f"**{name}** (``key_added`` defaults to {key_added})", ""]
        lines += [_entry(n, a, d, docs.get(n, "")) for n, a, d in options
                  if n not in _PREDICT_SHOWN_ELSEWHERE]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cv_options_doc() -> str:
    blocks = ["Options of each procedure (besides the model's options):"]
    for (module, function), models in _grouped(CROSS_VALIDATORS).items():
        doc, options = _function_source(module, function)
        docs = _parameters_section(doc)
        lines = [f"**{', '.join(models)}**", ""]
        lines += [_entry(n, a, d, docs.get(n, "")) for n, a, d in options
                  if n not in _PROCEDURE_OPTIONS]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _grouped(table: dict[str, tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for name, where in table.items():
        groups.setdefault(where, []).append(name)
    return groups


_TEMPLATES = {function: function.__doc__ for function in (fit, predict, cross_validate)}


def _fill(function: Any, placeholder: str, text: str, indent: str = "    ") -> None:
    import textwrap

    function.__doc__ = function.__doc__.replace(
        placeholder, textwrap.indent(text, indent).lstrip())


def write_help() -> None:
    """Write the model lists and options of every model of the table into the help."""
    import textwrap

    for function, template in _TEMPLATES.items():
        function.__doc__ = template
    _fill(fit, "MODEL_LIST", "One of:\n\n" + "\n".join(
        f'- ``"{n}"``: :class:`{_class_name(c)}`' for n, c in OPTIONS.items()),
        indent="        ")
    _fill(cross_validate, "CV_MODEL_LIST", textwrap.fill("The models cross-validated: " + ", ".join(
        f'``"{n}"``' for n in CROSS_VALIDATORS) + ".", 84), indent="        ")
    _fill(fit, "FIT_OPTIONS", _fit_options_doc())
    _fill(predict, "PREDICT_OPTIONS", _predict_options_doc())
    _fill(cross_validate, "CV_OPTIONS", _cv_options_doc())


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> None:
    """Add a model written outside histoexpr: ``hx.tl.fit``, ``predict``, ``cross_validate``.

    The model is one module (``fit(data, options)`` returning a
    :class:`~histoexpr.models.Network` whose ``metadata["model"]`` is the model's name, and
    ``predict(model, data, *, key_added=..., overwrite=False, ...)``), one options class (a
    frozen ``kw_only`` dataclass subclassing :class:`ModelOptions`, each option documented in
    the ``Parameters`` section of its docstring, choices as a ``Literal``) and this one entry.
    The entry points then train, apply and cross-validate it, and their help lists its options.

    Everything is checked before the model is added: the module is imported and must have
    ``fit`` and ``predict``, the cross-validation procedure (if named) must exist, and the
    options must be documented. A registration that fails leaves the table as it was.

    Parameters
    ----------
    spec
        The model: ``ModelSpec(name, OptionsClass, "package.module", kind=..., ...)``.
    overwrite
        Replace a model registered earlier under the same name (a notebook cell run again, a
        module edited and reloaded); histoexpr's own models are never replaced.

    Examples
    --------
    >>> hx.tl.register_model(hx.tl.ModelSpec("my_model", MyOptions, "mypackage.my_model",
    ...                                      kind="spot"))
    >>> network = hx.tl.fit(sections, model="my_model", alpha=2.0)
    """
    check_bool("overwrite", overwrite)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register_model takes a hx.tl.ModelSpec(name, OptionsClass, "
                        f"'package.module', kind=...), got {type(spec).__name__}.")
    if spec.name in OWN_MODELS:
        raise ValueError(f"Model {spec.name!r} is one of histoexpr's own models and is never "
                         "replaced; give the new model another name.")
    if spec.name in MODEL_TABLE and not overwrite:
        raise ValueError(f"Model {spec.name!r} exists already; give the new model another name, "
                         "or pass overwrite=True to replace the one registered earlier.")
    before = MODEL_TABLE.get(spec.name)
    try:
        _check_spec(spec)
        MODEL_TABLE[spec.name] = spec
        write_help()
    except BaseException:
        if before is None:
            MODEL_TABLE.pop(spec.name, None)
        else:
            MODEL_TABLE[spec.name] = before
        write_help()
        raise


def _check_spec(spec: ModelSpec) -> None:
    """Import a model's module and procedure, and document its options (:func:`register_model`)."""
    from ._options import _documented

    module = spec.load()
    lacking = [name for name in ("fit", "predict") if not callable(getattr(module, name, None))]
    if lacking:
        raise TypeError(f"Module {spec.module!r} of model {spec.name!r} has no function "
                        f"{' or '.join(lacking)}: it needs fit(data, options) and "
                        "predict(model, data, *, key_added=..., overwrite=False, ...).")
    if spec.cross_validator is not None:
        where, function = spec.cross_validator.split(":")
        if not callable(getattr(importlib.import_module(where), function, None)):
            raise TypeError(f"Module {where!r} has no function {function!r}: the "
                            f"cross_validator of model {spec.name!r}.")
    for variant in spec.options._variants():
        if "_option_docs" not in variant.__dict__:  # histoexpr's own decorator, applied here
            _documented(variant)


write_help()
