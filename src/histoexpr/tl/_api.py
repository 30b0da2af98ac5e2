"""The entry points ``fit``, ``predict`` and ``evaluate``, shared by every model.

Each model lives in its own module of a job room of :mod:`histoexpr.tl` (``tl/_patch``,
``tl/_spot``, ``tl/_mil``) that defines ``fit(data, **options)``
returning a trained :class:`histoexpr.models.Network` (whose ``metadata["model"]`` names the
model) and ``predict(model, data, **options)``. The entry points look the module up here, so
adding a model is one line in :data:`MODELS`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..models import Network

#: model name -> module of histoexpr.tl that trains and applies it
MODELS: dict[str, str] = {
    "patch_classifier": "._patch._patch_classifier",
    "cell_morphology": "._patch._cell_morphology",
    "abmil": "._mil._abmil",
    "meanpool_ridge": "._mil._ridge",
    "meanpool_logistic": "._mil._logistic",
    "spot_regressor": "._spot._spot_regressor",
}

#: model name -> (module, function) that cross-validates it
CROSS_VALIDATORS: dict[str, tuple[str, str]] = {
    "abmil": ("._mil._cross_validate", "cross_validate_bags"),
    "meanpool_ridge": ("._mil._cross_validate", "cross_validate_bags"),
    "meanpool_logistic": ("._mil._cross_validate", "cross_validate_bags"),
    "spot_regressor": ("._spot._cross_validate", "cross_validate_spots"),
}

#: kind of the prediction element -> (module, function) that scores it
EVALUATORS: dict[str, tuple[str, str]] = {
    "labels": ("._metrics._segmentation_metrics", "label_metrics"),
    "tables": ("._metrics._expression_metrics", "evaluate_expression"),
}


def _model_module(name: str) -> ModuleType:
    if name not in MODELS:
        known = ", ".join(repr(m) for m in MODELS) or "none yet"
        raise ValueError(f"Unknown model {name!r}; histoexpr trains: {known}.")
    return importlib.import_module(MODELS[name], package=__package__)


def fit(data: Any, *, model: str, **kwargs: Any) -> Network:
    """Train a model; one entry point for every model histoexpr has.

    Parameters
    ----------
    data
        What the model learns from: a SpatialData, a list of them, or a cohort, as the model's
        own ``fit`` documents.
    model
        Which model: ``"patch_classifier"``, ``"cell_morphology"``, ``"abmil"``,
        ``"meanpool_ridge"``, ``"meanpool_logistic"`` or ``"spot_regressor"``.
    **kwargs
        Options of the model's ``fit`` (see its documentation).

    Returns
    -------
    The trained network; ``network.metadata`` holds what it was trained on (classes or genes,
    um/px, normalisation) and its training ``history``. Save it with
    :func:`histoexpr.io.save_model`.
    """
    return _model_module(model).fit(data, **kwargs)


def predict(model: Network | str | Path, data: Any, **kwargs: Any) -> Any:
    """Apply a trained model; the model's own ``predict`` says what it writes and returns.

    Parameters
    ----------
    model
        A network returned by :func:`fit`, or a model file written by
        :func:`histoexpr.io.save_model` (read with :func:`histoexpr.io.load_model`).
    data
        What to predict on (a SpatialData, a list of them, or a cohort).
    **kwargs
        Options of the model's ``predict`` (see its documentation).

    Returns
    -------
    What the model's ``predict`` returns (predictions are also written into ``data``).
    """
    if isinstance(model, str | Path):
        from ..io import load_model

        model = load_model(model, device=kwargs.get("device"))
    name = (getattr(model, "metadata", None) or {}).get("model")
    if name is None:
        raise ValueError(
            "This network has no metadata['model']: it was not trained by hx.tl.fit. Train it "
            "with hx.tl.fit, or load a file written by hx.io.save_model."
        )
    return _model_module(name).predict(model, data, **kwargs)


def cross_validate(data: Any, *, model: str, **kwargs: Any) -> Any:
    """Cross-validate a model with folds that never split a group (patient or section).

    Bag models (``"abmil"``, ``"meanpool_ridge"``, ``"meanpool_logistic"``) hold out whole
    patients' slides or sections and return out-of-fold bag predictions; ``"spot_regressor"``
    runs the HEST protocol (genes chosen on the training sections of each fold) and returns
    per-gene correlations.

    Parameters
    ----------
    data
        A cohort or sections by name, as the model's procedure documents.
    model
        Which model: ``"abmil"``, ``"meanpool_ridge"``, ``"meanpool_logistic"`` or
        ``"spot_regressor"``.
    **kwargs
        ``groups`` (the group of each slide or section) and the options of the procedure and of
        the model's ``fit``.

    Returns
    -------
    Bag models: an AnnData of out-of-fold predictions with ``uns["scores"]``; spot regressors:
    a DataFrame with one row per held-out section and gene.
    """
    if model not in CROSS_VALIDATORS:
        raise ValueError(f"No cross-validation for model {model!r}; histoexpr cross-validates "
                         f"{', '.join(repr(m) for m in CROSS_VALIDATORS)}.")
    module, function = CROSS_VALIDATORS[model]
    return getattr(importlib.import_module(module, package=__package__), function)(
        data, model=model, **kwargs)


def evaluate(data: Any, pred_key: str, truth_key: str, **kwargs: Any) -> Any:
    """Score predictions against the truth, choosing the metrics by what is predicted.

    Parameters
    ----------
    data
        The SpatialData holding both the predictions and the truth.
    pred_key
        Key of the predictions: a label map (class maps, scored by Dice, IoU...) or a table
        (expression, scored by correlations).
    truth_key
        Key of the ground truth of the same kind.
    **kwargs
        Options of the evaluator (see its documentation).

    Returns
    -------
    The evaluator's metrics, as a DataFrame.
    """
    from .._utils import element_kind

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
    return getattr(importlib.import_module(module, package=__package__), function)(
        data, pred_key, truth_key, **kwargs)
