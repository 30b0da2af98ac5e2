"""What a spot regressor keeps about its own reliability, and what its predictions state.

``calibrate`` runs in ``fit`` (head routes; ``calibrate=False`` skips it): inner folds on the
training sections (leave one section out, or three spatial bands of one section) give held-out
predictions of every training spot, from which come each gene's inner Pearson, the conformal
interval half-widths (:mod:`._conformal`) and the guard's calibration (:mod:`._guard`). The
result is plain values, kept in ``model.metadata["calibration"]`` and so in the model file.

``annotate`` runs in ``predict``: per-tile guard scores and interval bounds, and the
prediction's record ``uns["prediction"]`` (units, genes, training sections, tiles, encoder,
guard summary, interval level).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..._core.expression import TARGET_SUM
from ..._core.logs import logger
from . import _conformal, _guard

#: what ``X`` of a prediction holds
UNITS = (
    f"log1p of counts normalised to {TARGET_SUM:g} per spot (scanpy's normalize_total "
    f"with target_sum={TARGET_SUM:g}, then log1p), natural log"
)
#: the layers of interval bounds a prediction carries
LOWER, UPPER = "lower", "upper"


def folds_of(prepared) -> tuple[str, list[tuple[list, list]]]:
    """Inner folds of the training sections as (training parts, held-out parts) of indices."""
    from ._spot_auto import inner_folds

    scheme, folds = inner_folds(prepared)
    index = {id(p): i for i, p in enumerate(prepared)}
    return scheme, [
        ([(index[id(s)], rows) for s, rows in train], [(index[id(test[0])], test[1])])
        for _, train, test in folds
    ]


def calibrate(
    prepared,
    features: Sequence[np.ndarray],
    refit: Callable | None,
    *,
    guard_features: Sequence[np.ndarray],
    inner: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """The model's calibration: inner Pearson per gene, interval half-widths, the guard.

    ``features`` are the head's inputs of each section's spots; ``refit(x, y)`` trains the
    model's head the same way on parts of them and returns a function from features to
    log1p-normalised predictions. ``guard_features`` are the encoder's own features of the
    same spots (before per-section scaling and context, which would hide a slide's shift).
    ``inner`` (held-out predicted and measured values of each
    inner fold, in the order of :func:`folds_of`) reuses fits already made, e.g. by
    ``route="auto"``'s search.
    """
    began = time.process_time()
    try:
        scheme, folds = folds_of(prepared)
    except ValueError as error:  # one section with too few spots for three bands
        logger.warning("No calibration (guard, intervals, inner scores): %s", error)
        return {"available": False, "reason": str(error)}
    targets = [p.targets for p in prepared]
    reused = inner is not None
    try:
        if inner is None:
            inner = _conformal.inner_predictions(features, targets, folds, refit)
        guard = _guard.fit_guard(guard_features, folds)
    except ValueError as error:  # an inner fold too small to train or to fit the guard on
        logger.warning("No calibration (guard, intervals, inner scores): %s", error)
        return {"available": False, "reason": f"inner folds too small: {error}"}
    record = {
        "available": True,
        "folds": scheme,
        "n_folds": len(folds),
        "reused_inner_fits": reused,
        "inner_pearson": _conformal.gene_scores(inner),
        "intervals": _conformal.fit_intervals(
            inner, libraries=[np.concatenate([prepared[i].library[rows] for i, rows in test])
                              for _, test in folds]),
        "guard": guard,
    }
    unbounded = _conformal.unbounded_levels(record["intervals"])
    if _conformal.DEFAULT_LEVEL in unbounded:  # predictions' intervals are infinite by default
        message = _conformal.unbounded_message(record["intervals"], unbounded)
        warnings.warn(message, UserWarning, stacklevel=4)
    elif unbounded:  # only levels asked for explicitly; predict warns if one is
        logger.info(_conformal.unbounded_message(record["intervals"], unbounded))
    record["cpu_seconds"] = round(time.process_time() - began, 2)
    logger.info(
        "Calibrated the spot regressor on %d inner folds (%s; %.1f CPU s%s).",
        len(folds),
        scheme,
        record["cpu_seconds"],
        ", reusing the search's fits" if reused else "",
    )
    return record


def annotate(
    table, metadata: Mapping[str, Any], features: np.ndarray | None, *, level: float, name: str,
    library_size: np.ndarray | None = None,
) -> None:
    """Add guard scores, interval layers and the prediction's record to a prediction table.

    ``library_size``: each tile's library size for depth-aware intervals (NaN or ``None``: the
    calibration's reference).
    """
    calibration = metadata.get("calibration") or {}
    record = dict(table.uns["prediction"])
    record.update(contract(metadata))
    if calibration.get("available"):
        table.var["inner_pearson"] = np.asarray(calibration["inner_pearson"], dtype=float)
    if calibration.get("available") and features is not None:
        tiles = _guard.score_tiles(calibration["guard"], features)
        for column, values in tiles.items():
            table.obs[column] = values
        summary = _guard.summarise(calibration["guard"], tiles)
        if summary["warns"]:
            message = (
                f"Slide {name}: {summary['fraction_out_of_range']:.0%} of its "
                f"{summary['n_tiles']} tiles lie out of the training data's range "
                f"(guard percentile > {summary['out_of_range_percentile']:g}; median "
                f"{summary['median_percentile']:.0f}). Its predictions are "
                "extrapolations: the tissue, stain or scanner differs from the training "
                "sections. See obs['out_of_range'] and uns['prediction']['guard']."
            )
            if metadata.get("standardise_sections"):
                message += (
                    " This model scales features within each section, which absorbs a global "
                    "change of stain strength, colour or exposure: if the slide is the same "
                    "tissue from another lab or scanner, its predictions may hold (the guard "
                    "reads the features before that scaling, so that another tissue is not "
                    "hidden); another tissue warns alike."
                )
            elif metadata.get("in_channels") == 3 and not metadata.get("stain"):
                message += (
                    " If it is the same tissue from another lab or scanner, a model with stain "
                    "normalisation (hx.tl.fit(..., route='auto', candidates={'stain': "
                    "['macenko']})) maps each slide's colours onto the training stain: under "
                    "each simulated change of stain strength, colour or exposure alone its "
                    "predictions moved by at most a quarter of an interval's half-width, and "
                    "its guard still warned on other tissue (the documentation's page 'What a "
                    "prediction means')."
                )
            warnings.warn(message, UserWarning, stacklevel=4)
        if float(level) in _conformal.unbounded_levels(calibration["intervals"]):
            message = f"Slide {name}: " + _conformal.unbounded_message(
                calibration["intervals"], [float(level)])
            warnings.warn(message, UserWarning, stacklevel=4)
        intervals = calibration["intervals"]
        depth, library = _depth_record(table, intervals, library_size)
        lower, upper = _conformal.bounds(intervals, table.X, level, library)
        table.layers[LOWER] = lower
        table.layers[UPPER] = upper
        table.var["interval_half_width"] = ((upper - lower) / 2).mean(axis=0).astype(float)
        record["intervals"] = {
            "available": True,
            "level": float(level),
            "layers": [LOWER, UPPER],
            "method": calibration["intervals"]["method"],
            "kind": calibration["intervals"].get("kind", "pooled"),
            "folds": calibration["folds"],
            "half_width": "var['interval_half_width'] (each gene's mean over the tiles)",
            "n_calibration_spots": int(calibration["intervals"]["n_calibration_spots"]),
            # each inner held-out training section's coverage of the 90 % interval when the
            # others calibrate it: how far one section's coverage strays (absent: older file)
            "inner_coverage_0.9": list(calibration["intervals"].get("inner_coverage_0.9", [])),
            **depth,
        }
        record["guard"] = summary
    else:
        why = (
            calibration.get("reason")
            or "the model has no calibration (trained with "
            "calibrate=False, by an older histoexpr, or by the 'cnn' route); retrain it "
            "with a head route to have one"
        )
        record["guard"] = {"available": False, "reason": why}
        record["intervals"] = {"available": False, "reason": why}
    table.uns["prediction"] = record


def _depth_record(table, intervals: Mapping[str, Any],
                  library_size: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray | None]:
    """Depth-aware intervals: the record of what was used, and each tile's library size.

    The library sizes also go to ``obs["interval_library_size"]``. ``({}, None)`` for intervals
    of another method (their width does not depend on depth).
    """
    if intervals.get("kind") != "depth":
        return {}, None
    reference = float(intervals["reference_library_size"])
    values = np.full(table.n_obs, np.nan) if library_size is None else np.asarray(
        library_size, dtype=np.float64)
    own = np.isfinite(values) & (values > 0)
    library = np.where(own, values, reference)
    table.obs["interval_library_size"] = library
    return {
        "library_size": (
            f"obs['interval_library_size']: {int(own.sum())} of {table.n_obs} tiles at their "
            f"spot's or the given library size, the others at the reference, {reference:.0f} "
            "UMIs per spot"
        ),
        "reference_library_size": reference,
        "depth_slope": float(intervals["depth_slope"]),
    }, library


def contract(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What a prediction's values are and what made them, from the model's metadata."""
    features = metadata.get("features") or {}
    calibration = metadata.get("calibration") or {}
    target = metadata.get("target", "log1p")
    return {
        "values": "log1p-normalised expression",
        "units": UNITS,
        "target_sum": float(TARGET_SUM),
        "target_transform": target,
        "scale": (
            "as measured (log1p-normalised) in the training spots"
            if target == "log1p"
            else f"trained on {target!r} targets (per section), put back on the scale "
            "of the pooled training spots: compare values within a slide"
        ),
        "n_genes": len(metadata["genes"]),
        "gene_scores": (
            "var['inner_pearson']: each gene's mean Pearson on held-out training "
            f"sections ({calibration.get('folds', 'inner folds')})"
            if calibration.get("available")
            else "not available"
        ),
        "trained_on": dict(metadata.get("trained_on", {})),
        "route": metadata.get("route"),
        "size_um": float(metadata["size_um"]),
        "mpp": float(metadata["mpp"]),
        "encoder": _encoder_label(metadata),
        "encoder_fingerprint": _fingerprint(metadata, features),
    }


def _encoder_label(metadata: Mapping[str, Any]) -> str:
    encoder = metadata.get("encoder", metadata.get("arch"))
    if isinstance(encoder, list | tuple):
        return "+".join(str(e) for e in encoder)
    return str(encoder)


def _fingerprint(metadata: Mapping[str, Any], features: Mapping[str, Any]) -> str:
    if "fingerprint" in features:
        return str(features["fingerprint"])
    if metadata.get("encoder_in_model"):
        return f"weights inside the model ({metadata.get('features_key', '')})"
    return "none recorded"


def network_refit(train: Callable[[list, list], Any]) -> Callable:
    """``refit`` for :func:`calibrate` from a function training a head network on (x, y)."""

    def refit(x: list, y: list) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        network = train(x, y).to("cpu").eval()

        def apply(features: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return network(torch.from_numpy(np.asarray(features, np.float32))).numpy()

        return apply

    return refit
