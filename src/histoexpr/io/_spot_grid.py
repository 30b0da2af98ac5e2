"""Spot arrays: the pixel step between neighbouring spots, fitted on their array coordinates."""

from __future__ import annotations

import numpy as np

from .._core.logs import logger

#: spots fitted at most (a strided subset of larger arrays: Visium HD holds millions of bins)
_MAX_FITTED = 200_000


def fit_array_grid(array_xy: np.ndarray, pixels: np.ndarray, *,
                   what: str = "the spots") -> tuple[np.ndarray, np.ndarray]:
    """Fit pixel positions on array coordinates: ``pixels ~ array_xy @ coef[:2] + coef[2]``.

    A least-squares fit of the spots' pixel positions ``(x, y)`` on their array coordinates
    (e.g. ``(array_col, array_row)``), so it holds for an array turned or mirrored on the image:
    ``coef[0]`` is the pixel displacement of one step of the first array coordinate, and its
    length the pixels per step. Spots more than a quarter of the shorter step off the fitted
    grid are outliers: left out of a second fit, and named in a warning.

    Parameters
    ----------
    array_xy
        ``(n, 2)`` array coordinates of the spots.
    pixels
        ``(n, 2)`` pixel positions ``(x, y)`` of the same spots.
    what
        The spots in words, for the messages.

    Returns
    -------
    ``coef`` (``(3, 2)``: the displacement per step of each array coordinate and the offset)
    and the boolean mask of the spots on the grid.

    Raises
    ------
    ValueError
        Fewer than 3 spots, spots on one line, or more than a fifth of them off any grid.
    """
    array_xy = np.asarray(array_xy, dtype=np.float64)
    pixels = np.asarray(pixels, dtype=np.float64)
    usable = np.isfinite(array_xy).all(axis=1) & np.isfinite(pixels).all(axis=1)
    stride = max(1, int(usable.sum()) // _MAX_FITTED)
    rows = np.flatnonzero(usable)[::stride]
    design = np.column_stack([array_xy[rows], np.ones(len(rows))])
    if len(rows) < 3 or np.linalg.matrix_rank(design) < 3:
        raise ValueError(f"{what} hold {len(rows)} spot(s) with finite positions, too few (or on "
                         "one line) to fit the spot array.")
    target = pixels[rows]
    inlier = np.ones(len(rows), dtype=bool)
    for _ in range(5):
        coef = np.linalg.lstsq(design[inlier], target[inlier], rcond=None)[0]
        tolerance = 0.25 * min(np.linalg.norm(coef[0]), np.linalg.norm(coef[1]))
        again = np.linalg.norm(design @ coef - target, axis=1) <= tolerance
        if (again == inlier).all() or again.sum() < 3:
            break
        inlier = again
    if inlier.mean() < 0.8 or np.linalg.matrix_rank(design[inlier]) < 3:
        raise ValueError(f"{int((~inlier).sum())} of {len(rows)} spots of {what} lie off the "
                         "array grid that a fit of their pixel positions on their array "
                         "coordinates gives: the positions do not form a spot array.")
    if not inlier.all():
        logger.warning("%d of %d spots of %s lie more than a quarter of a step off the array "
                       "grid; they were left out of the fit of the pixel size.",
                       int((~inlier).sum()), len(rows), what)
    full = np.column_stack([array_xy, np.ones(len(array_xy))])
    with np.errstate(invalid="ignore"):
        mask = usable & (np.linalg.norm(full @ coef - pixels, axis=1) <= tolerance)
    return coef, mask
