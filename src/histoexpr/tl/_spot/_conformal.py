"""Split-conformal prediction intervals of the spot regressor, calibrated section by section.

Each training section is predicted by a regressor trained the same way on the other sections
(leave one section out; three spatial bands of spots with one section). The residuals
``measured - predicted`` of those held-out spots calibrate, per gene, the interval of a new tile
around its prediction. Several ways of turning them into intervals are kept here
(:data:`METHODS`); the one a model uses (:data:`METHOD`) was chosen by an inner criterion alone
(``benchmarks/bench_spot_guard.py --select``: each inner held-out training section's coverage
when the others calibrate it, worst distance to the level), never by the outer sections:

``pooled``
    the conformal quantile of all held-out absolute residuals, at rank
    ``ceil((n + 1) * level)`` of ``n``; one half-width per gene.
``section_weighted``
    the same quantile with every calibration section weighted alike (a large section no longer
    dominates), level corrected as ``level * (1 + 1 / n)``.
``offset``
    residual = section offset (its mean residual) + within-section error; the quantile of
    ``|offset_k + error_i|`` over every section's offset and every centred residual of any
    section (their convolution, sections weighted alike): a new section draws its own offset.
``mondrian``
    Mondrian conformal by prediction level: per gene, the calibration predictions' tertiles
    split the spots into three bins, each with its own conformal quantile; a new tile takes its
    bin's.
``spread``
    normalised conformal on what a new slide shows: per gene, the residuals are divided by the
    section's spread of *predictions* (standard deviation over its tiles, relative to the
    calibration sections' mean spread, clipped to [1/2, 2]); a new slide's half-width is the
    quantile times its own relative spread.
``depth``
    normalised conformal on the spot's sequencing depth: a spot measured with fewer UMIs
    (library size ``L``, counts over all genes) is noisier. The calibration fits one slope
    ``b`` of ``log |residual|`` on ``log L`` (least squares within each gene, clipped to
    [-1, 0]: more UMIs never widen an interval); per gene, the residuals divided by
    ``(L / L_ref) ** b`` (``L_ref`` the geometric mean of the calibration spots' library sizes)
    give the quantile, and a tile's half-width is that quantile times ``(L / L_ref) ** b`` for
    the library size its interval is asked at (``L_ref`` where none is given: an H&E-only
    slide). ``L`` above the deepest calibration spot's is taken as that: the fitted relation is
    not extrapolated to narrower intervals than any depth it has seen (another platform may be
    sequenced far deeper, and the model's own error does not shrink with depth).

Coverage holds for a new section that is as exchangeable with the training sections as they are
with each other; a slide unlike them (see the guard) can be covered less. A model file written
before the methods were kept holds ``half_width`` alone: read as ``pooled``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from .._metrics._expression_metrics import column_pearson

#: interval levels a model keeps (``hx.tl.predict(..., level=)`` chooses one)
LEVELS = (0.5, 0.8, 0.9, 0.95)
#: the level of a prediction's intervals when none is asked for
DEFAULT_LEVEL = 0.9
#: the ways of calibrating intervals, simplest first (see the module's text)
METHODS = ("pooled", "section_weighted", "offset", "mondrian", "spread", "depth")
#: the method a model is calibrated with, chosen by the inner criterion
METHOD = "depth"
#: the relative spread of a slide's predictions is clipped to this range (``spread``)
SPREAD_CLIP = (0.5, 2.0)
#: a slide with fewer tiles has no spread of its own (relative spread 1)
MIN_SPREAD_TILES = 10
DESCRIPTIONS = {
    "pooled": "split-conformal, absolute residuals of held-out training sections",
    "section_weighted": "split-conformal, absolute residuals of held-out training sections "
    "weighted alike per section",
    "offset": "split-conformal, section offsets convolved with within-section residuals of "
    "held-out training sections",
    "mondrian": "Mondrian split-conformal by prediction level (per-gene tertiles), absolute "
    "residuals of held-out training sections",
    "spread": "normalised split-conformal, absolute residuals of held-out training sections "
    "over each section's relative spread of predictions",
    "depth": "normalised split-conformal, absolute residuals of held-out training sections "
    "over a power of each spot's library size relative to the calibration's",
}
#: the range of the fitted slope of log |residual| on log library size (``depth``)
DEPTH_SLOPE_CLIP = (-1.0, 0.0)


def inner_predictions(
    features: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    folds: Sequence[tuple[list, list]],
    refit: Callable[[list, list], Callable[[np.ndarray], np.ndarray]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(predicted, measured) of each fold's held-out spots by a regressor fitted on the rest."""
    out = []
    for train, test in folds:
        apply = refit(
            [features[i][rows] for i, rows in train], [targets[i][rows] for i, rows in train]
        )
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


def weighted_quantile(
    values: np.ndarray, weights: np.ndarray, level: float, n: int | None = None
) -> np.ndarray:
    """Per column: the smallest value whose weighted share at or below it reaches ``level``.

    ``level`` is corrected for the ``n`` spots (default: the rows) as ``level * (1 + 1 / n)``
    (inf beyond 1).
    """
    values = np.asarray(values, dtype=np.float64)
    level = level * (1 + 1 / (len(values) if n is None else n))
    if level > 1:
        return np.full(values.shape[1], np.inf)
    order = np.argsort(values, axis=0)
    cumulative = np.cumsum(np.asarray(weights, dtype=np.float64)[order], axis=0)
    cumulative /= cumulative[-1]
    index = np.minimum((cumulative < level - 1e-12).sum(axis=0), len(values) - 1)
    return np.take_along_axis(values, order, axis=0)[index, np.arange(values.shape[1])]


def _section_weights(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.concatenate([np.full(len(p), 1.0 / len(p)) for p, _ in pairs])


def _spreads(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each section's per-gene standard deviation of predictions (sections x genes)."""
    return np.vstack([np.asarray(p, dtype=np.float64).std(axis=0) for p, _ in pairs])


def relative_spread(reference: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """A slide's per-gene spread of predictions over the calibration's mean, clipped."""
    predicted = np.asarray(predicted, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if len(predicted) < MIN_SPREAD_TILES:
        return np.ones(predicted.shape[1])
    ratio = np.divide(
        predicted.std(axis=0), reference, out=np.ones_like(reference), where=reference > 1e-12
    )
    return np.clip(ratio, *SPREAD_CLIP)


def depth_slope(residuals: np.ndarray, library: np.ndarray) -> float:
    """The slope of ``log |residual|`` on ``log library size``, within genes, clipped.

    Least squares over every (spot, gene) with a non-zero residual, each gene's own mean
    removed from both sides; 0 where the library sizes do not vary.
    """
    magnitude = np.abs(np.asarray(residuals, dtype=np.float64))
    used = magnitude > 0
    log_library = np.broadcast_to(np.log(np.asarray(library, np.float64))[:, None],
                                  magnitude.shape)
    slope_num = slope_den = 0.0
    for gene in range(magnitude.shape[1]):
        rows = used[:, gene]
        if rows.sum() < 2:
            continue
        x = log_library[rows, gene] - log_library[rows, gene].mean()
        y = np.log(magnitude[rows, gene])
        slope_num += float(x @ (y - y.mean()))
        slope_den += float(x @ x)
    if slope_den <= 1e-12:
        return 0.0
    return float(np.clip(slope_num / slope_den, *DEPTH_SLOPE_CLIP))


def depth_scale(intervals: Mapping[str, Any], library_size: Any, n: int) -> np.ndarray:
    """Each of ``n`` tiles' factor ``(L / L_ref) ** b`` (``depth``); 1 where ``L`` is None/NaN.

    ``L`` is capped at the deepest calibration spot's library size.
    """
    if library_size is None:
        return np.ones((n, 1))
    library = np.broadcast_to(np.asarray(library_size, dtype=np.float64), (n,))
    library = np.minimum(library, float(intervals["deepest_library_size"]))
    ratio = library / float(intervals["reference_library_size"])
    known = np.isfinite(ratio) & (ratio > 0)  # NaN: the reference
    return np.where(known, np.where(known, ratio, 1.0) ** float(intervals["depth_slope"]),
                    1.0)[:, None]


def _fit(pairs: Sequence[tuple[np.ndarray, np.ndarray]], method: str,
         libraries: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """The method's per-gene parameters at every level of :data:`LEVELS`.

    ``libraries``: each pair's spots' library sizes (``depth`` needs them).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown interval method {method!r}; use one of {METHODS}.")
    if method == "depth" and libraries is None:
        raise ValueError("The 'depth' interval method needs the calibration spots' library "
                         "sizes.")
    signed = np.vstack([np.asarray(m, np.float64) - p for p, m in pairs])
    residuals = np.abs(signed)
    params: dict[str, Any] = {"kind": method}
    if method == "pooled":
        quantile = partial(conformal_quantile, residuals)
    elif method == "section_weighted":
        weights = _section_weights(pairs)
        quantile = partial(weighted_quantile, residuals, weights)
    elif method == "offset":
        offsets = [
            np.asarray(m, np.float64).mean(axis=0) - np.asarray(p).mean(axis=0) for p, m in pairs
        ]
        centred = np.vstack(
            [np.asarray(m, np.float64) - p - b for (p, m), b in zip(pairs, offsets, strict=True)]
        )
        weights = np.tile(_section_weights(pairs), len(offsets))
        mixed = np.abs(np.vstack([centred + b for b in offsets]))
        quantile = partial(weighted_quantile, mixed, weights, n=len(centred))
    elif method == "mondrian":
        predicted = np.vstack([p for p, _ in pairs]).astype(np.float64)
        edges = np.quantile(predicted, [1 / 3, 2 / 3], axis=0)  # 2 x genes
        bins = _bins(edges, predicted)
        params["edges"] = edges.T.tolist()
        params["bin_half_width"] = {
            f"{level:g}": np.stack(
                [_bin_quantile(residuals, bins == b, level) for b in range(3)], axis=1
            ).tolist()
            for level in LEVELS
        }
        quantile = partial(conformal_quantile, residuals)
    elif method == "depth":
        library = np.concatenate([np.asarray(v, dtype=np.float64) for v in libraries])
        if len(library) != len(residuals) or not np.all(library > 0):
            raise ValueError("The 'depth' interval method needs one positive library size per "
                             "calibration spot.")
        params["depth_slope"] = depth_slope(signed, library)
        params["reference_library_size"] = float(np.exp(np.log(library).mean()))
        params["deepest_library_size"] = float(library.max())
        scale = depth_scale(params, library, len(library))
        quantile = partial(conformal_quantile, residuals / scale)
    else:  # spread
        spreads = _spreads(pairs)
        reference = spreads.mean(axis=0)
        scale = np.vstack(
            [np.broadcast_to(relative_spread(reference, p), p.shape) for p, _ in pairs]
        )
        params["reference_spread"] = reference.tolist()
        quantile = partial(conformal_quantile, residuals / scale)
    params["half_width"] = {f"{level:g}": quantile(level).tolist() for level in LEVELS}
    return params


def _bins(edges: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Bin 0, 1 or 2 of each prediction by the per-gene edges (2 x genes)."""
    return (predicted > edges[0]).astype(int) + (predicted > edges[1]).astype(int)


def _bin_quantile(residuals: np.ndarray, members: np.ndarray, level: float) -> np.ndarray:
    out = np.empty(residuals.shape[1])
    for gene in range(residuals.shape[1]):
        out[gene] = conformal_quantile(residuals[members[:, gene], gene][:, None], level)[0]
    return out


def bounds(
    intervals: Mapping[str, Any], predicted: np.ndarray, level: float, library_size: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of a slide's predictions (tiles x genes) at ``level``.

    ``library_size`` (``depth`` only; one number, or one per tile): the library size a tile's
    measurement is asked about; ``None``: the calibration's reference.
    """
    predicted = np.asarray(predicted, dtype=np.float32)
    half = np.broadcast_to(half_width(intervals, level), predicted.shape)
    kind = intervals.get("kind", "pooled")
    key = f"{float(level):g}"
    if kind == "mondrian":
        table = np.asarray(intervals["bin_half_width"][key], dtype=np.float32)  # genes x 3
        bins = _bins(np.asarray(intervals["edges"], dtype=np.float64).T, predicted)
        half = np.take_along_axis(table.T, bins, axis=0) if len(predicted) else half
    elif kind == "spread":
        scale = relative_spread(np.asarray(intervals["reference_spread"]), predicted)
        half = half * scale.astype(np.float32)
    elif kind == "depth":
        half = half * depth_scale(intervals, library_size, len(predicted)).astype(np.float32)
    return predicted - half, predicted + half


def section_coverage(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], method: str, level: float = 0.9,
    libraries: Sequence[np.ndarray] | None = None,
) -> list[float]:
    """Each held-out part's coverage when the other parts calibrate ``method`` (inner check).

    With ``libraries``, each part's intervals are asked at its own spots' library sizes.
    """
    out = []
    for k, (predicted, measured) in enumerate(pairs):
        rest = [pair for j, pair in enumerate(pairs) if j != k]
        if not rest:
            return []
        others = None if libraries is None else [v for j, v in enumerate(libraries) if j != k]
        lower, upper = bounds(_fit(rest, method, others), predicted, level,
                              None if libraries is None else libraries[k])
        out.append(float(((measured >= lower) & (measured <= upper)).mean()))
    return out


def fit_intervals(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], method: str | None = None,
    libraries: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The interval calibration a model keeps, from the held-out residuals of the inner folds.

    ``libraries``: each pair's spots' library sizes (the ``depth`` method needs them). Besides
    the method's parameters it keeps each inner held-out part's coverage of the 90 % interval
    when the other parts calibrate it, at its own spots' library sizes (empty with a single
    part).
    """
    method = METHOD if method is None else method
    params = _fit(pairs, method, libraries)
    return {
        "method": DESCRIPTIONS[method],
        **params,
        "n_calibration_spots": int(sum(len(p) for p, _ in pairs)),
        "n_calibration_parts": len(pairs),
        "inner_coverage_0.9": [
            round(c, 4) for c in section_coverage(pairs, method, libraries=libraries)
        ],
    }


def gene_scores(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """Each gene's mean Pearson over the held-out parts (NaN where never defined)."""
    import warnings

    scores = np.vstack([column_pearson(predicted, measured) for predicted, measured in pairs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a gene flat in every fold: NaN
        return [float(v) for v in np.nanmean(scores, axis=0)]


def half_width(intervals: Mapping[str, Any], level: float) -> np.ndarray:
    """The per-gene half-width at ``level``, refused with the levels kept if it is not one.

    For ``mondrian``, ``spread`` and ``depth`` it is the pooled quantile (of absolute
    residuals, of residuals over the relative spread, or at the reference library size): a
    slide's own half-widths come from :func:`bounds`.
    """
    kept = intervals["half_width"]
    key = f"{float(level):g}"
    if key not in kept:
        raise ValueError(
            f"level={level!r}: the model keeps prediction intervals at levels "
            f"{sorted(float(k) for k in kept)}; pass one of them."
        )
    return np.asarray(kept[key], dtype=np.float32)


def unbounded_levels(intervals: Mapping[str, Any]) -> list[float]:
    """The kept levels whose interval is infinite for some gene (too few calibration spots)."""
    return sorted(
        float(key) for key, values in intervals.get("half_width", {}).items()
        if not np.all(np.isfinite(np.asarray(values, dtype=np.float64)))
    )


def spots_needed(level: float) -> int:
    """Calibration residuals a finite split-conformal interval at ``level`` needs."""
    return math.ceil(level / (1 - level) - 1e-9)


def unbounded_message(intervals: Mapping[str, Any], levels: Sequence[float]) -> str:
    """Why intervals at ``levels`` are infinite, and what to do."""
    n = intervals.get("n_calibration_spots", "too few")
    named = ", ".join(f"{level:g} (needs {spots_needed(level)})" for level in levels)
    bounded = [float(k) for k in intervals.get("half_width", {}) if float(k) not in levels]
    hint = (f"; intervals at levels {sorted(bounded)} are finite" if bounded else "")
    return (
        f"Prediction intervals at levels {named} are infinite: the model was calibrated on "
        f"{n} held-out training spots, fewer than a split-conformal interval at that level "
        f"needs{hint}. Train on more spots or sections for finite intervals at every level."
    )
