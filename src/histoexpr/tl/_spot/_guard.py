"""The spot regressor's domain-shift guard: how far a tile's features lie from the training tiles.

The guard is fitted on the encoder's features of the tiles, before the per-section scaling and
the context that the head may add (per-section scaling would hide a slide's shift). They are
standardised with the training tiles' mean and scale and projected on their
leading principal components; a tile's score combines its Mahalanobis distance along those
components (Hotelling's T^2) with its squared distance off them (the residual, scaled by its
training mean), ``sqrt((T^2 + Q / mean Q) / (k + 1))``.

A score means little alone, so it is calibrated: each training section in turn is scored by a
guard fitted on the other sections (leave one section out; three spatial bands of spots with one
section), and the pooled held-out scores give the percentiles. A new tile's percentile is the
share of those held-out training tiles that lie closer to their training data than it does; a
tile lies *out of range* above :data:`OUT_OF_RANGE_PERCENTILE`. So an unseen section of the
training domain has, by construction, about 1 % of its tiles out of range, while a slide of
another tissue, stain or scanner has most of them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: a tile beyond this percentile of the held-out training tiles' scores lies out of range
OUT_OF_RANGE_PERCENTILE = 99.0
#: a slide warns when more than this share of its tiles lie out of range
WARN_FRACTION = 0.5
#: principal components of the guard (fewer when there are fewer tiles or features)
N_COMPONENTS = 20
#: percentiles at which the held-out training scores are kept (0, 0.5, ..., 100)
LEVELS = np.linspace(0, 100, 201)


def fit_distance(features: np.ndarray, *, n_components: int = N_COMPONENTS) -> dict[str, Any]:
    """Mean, scale, components and variances of the training tiles (finite rows only)."""
    x = np.asarray(features, dtype=np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) < 3:
        raise ValueError(f"The guard needs at least 3 training tiles with features, got "
                         f"{len(x)}.")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    z = (x - mean) / scale
    k = int(min(n_components, z.shape[1], len(z) - 1))
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    components = vt[:k]
    variances = np.maximum(s[:k] ** 2 / (len(z) - 1), 1e-12)
    params = {"mean": mean, "scale": scale, "components": components, "variances": variances,
              "residual": 1.0}
    residual = _parts(params, x)[1]
    params["residual"] = float(max(residual.mean(), 1e-12))
    return params


def _parts(params: Mapping[str, Any], features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = (np.asarray(features, dtype=np.float64) - np.asarray(params["mean"])) / np.asarray(
        params["scale"])
    components = np.asarray(params["components"])
    projected = z @ components.T
    t2 = (projected ** 2 / np.asarray(params["variances"])).sum(axis=1)
    q = ((z - projected @ components) ** 2).sum(axis=1)
    return t2, q


def distance(params: Mapping[str, Any], features: np.ndarray) -> np.ndarray:
    """The guard's score of each tile (NaN where its features are not finite)."""
    t2, q = _parts(params, features)
    k = len(np.asarray(params["variances"]))
    score = np.sqrt((t2 + q / float(params["residual"])) / (k + 1))
    return np.where(np.isfinite(score), score, np.nan)


def fit_guard(features: Sequence[np.ndarray], folds: Sequence[tuple[list, list]]) -> dict:
    """The guard as a model file keeps it: fitted on all tiles, calibrated by inner folds.

    ``features`` holds one array per training section; each fold is (training parts, held-out
    parts), parts being ``(section index, rows)`` pairs.
    """
    held_out = []
    for train, test in folds:
        params = fit_distance(np.vstack([features[i][rows] for i, rows in train]))
        held_out.append(distance(params, np.vstack([features[i][rows] for i, rows in test])))
    scores = np.concatenate(held_out)
    scores = scores[np.isfinite(scores)]
    params = fit_distance(np.vstack(features))
    return {"method": "pca_mahalanobis_residual",
            "features": "the encoder's tile features, before per-section scaling and context",
            **{key: np.asarray(value).tolist() if not np.isscalar(value) else float(value)
               for key, value in params.items()},
            "calibration": np.percentile(scores, LEVELS).tolist(),
            "n_calibration_tiles": int(scores.size),
            "out_of_range_percentile": OUT_OF_RANGE_PERCENTILE,
            "warn_fraction": WARN_FRACTION}


def percentiles(guard: Mapping[str, Any], scores: np.ndarray) -> np.ndarray:
    """Percentile of each score among the held-out training tiles' scores (0-100)."""
    calibration = np.asarray(guard["calibration"], dtype=float)
    levels = np.linspace(0, 100, len(calibration))
    return np.where(np.isfinite(scores),
                    np.interp(scores, calibration, levels, left=0.0, right=100.0), np.nan)


def score_tiles(guard: Mapping[str, Any], features: np.ndarray) -> dict[str, np.ndarray]:
    """Score, percentile and out-of-range flag of each tile."""
    score = distance(guard, features)
    percentile = percentiles(guard, score)
    return {"guard_score": score, "guard_percentile": percentile,
            "out_of_range": ~(percentile <= float(guard["out_of_range_percentile"]))}


def summarise(guard: Mapping[str, Any], tiles: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The slide's summary: share of tiles out of range, median percentile, whether it warns."""
    out = np.asarray(tiles["out_of_range"], dtype=bool)
    fraction = float(out.mean()) if out.size else float("nan")
    return {"available": True,
            "fraction_out_of_range": fraction,
            "median_percentile": float(np.nanmedian(tiles["guard_percentile"]))
            if out.size else float("nan"),
            "out_of_range_percentile": float(guard["out_of_range_percentile"]),
            "warn_fraction": float(guard["warn_fraction"]),
            "warns": bool(fraction > float(guard["warn_fraction"])),
            "n_tiles": int(out.size),
            "n_calibration_tiles": int(guard["n_calibration_tiles"])}
