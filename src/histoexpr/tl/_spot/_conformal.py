"""Split-conformal prediction intervals of the spot regressor, calibrated section by section.

Each training section is predicted by a regressor trained the same way on the other sections
(leave one section out; three spatial bands of spots with one section). The absolute residuals
``|measured - predicted|`` of all those held-out spots give, per gene, the conformal quantile
at level ``ceil((n + 1) * level) / n`` of the ``n`` residuals; the interval of a new tile is
its prediction plus or minus that quantile. Its coverage holds for a new section that is as
exchangeable with the training sections as they are with each other; a slide unlike them (see
the guard) can be covered less.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._metrics._expression_metrics import column_pearson

#: interval levels a model keeps (``hx.tl.predict(..., level=)`` chooses one)
LEVELS = (0.5, 0.8, 0.9, 0.95)


def inner_predictions(features: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                      folds: Sequence[tuple[list, list]],
                      refit: Callable[[list, list], Callable[[np.ndarray], np.ndarray]]
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(predicted, measured) of each fold's held-out spots by a regressor fitted on the rest."""
    out = []
    for train, test in folds:
        apply = refit([features[i][rows] for i, rows in train],
                      [targets[i][rows] for i, rows in train])
        predicted = np.vstack([apply(features[i][rows]) for i, rows in test])
        out.append((predicted, np.vstack([targets[i][rows] for i, rows in test])))
    return out


def conformal_quantile(residuals: np.ndarray, level: float) -> np.ndarray:
    """Per column: the ``ceil((n + 1) level)``-th smallest of ``n`` residuals (inf if beyond n)."""
    residuals = np.sort(np.asarray(residuals, dtype=np.float64), axis=0)
    n = len(residuals)
    rank = math.ceil((n + 1) * level)
    if rank > n:
        return np.full(residuals.shape[1], np.inf)
    return residuals[rank - 1]


def fit_intervals(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Per-gene half-widths at every level of :data:`LEVELS`, from the held-out residuals."""
    residuals = np.vstack([np.abs(measured - predicted) for predicted, measured in pairs])
    return {"method": "split-conformal, absolute residuals of held-out training sections",
            "n_calibration_spots": len(residuals),
            "half_width": {f"{level:g}": conformal_quantile(residuals, level).tolist()
                           for level in LEVELS}}


def gene_scores(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """Each gene's mean Pearson over the held-out parts (NaN where never defined)."""
    import warnings

    scores = np.vstack([column_pearson(predicted, measured) for predicted, measured in pairs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a gene flat in every fold: NaN
        return [float(v) for v in np.nanmean(scores, axis=0)]


def half_width(intervals: Mapping[str, Any], level: float) -> np.ndarray:
    """The per-gene half-width at ``level``, refused with the levels kept if it is not one."""
    kept = intervals["half_width"]
    key = f"{float(level):g}"
    if key not in kept:
        raise ValueError(f"level={level!r}: the model keeps prediction intervals at levels "
                         f"{sorted(float(k) for k in kept)}; pass one of them.")
    return np.asarray(kept[key], dtype=np.float32)
