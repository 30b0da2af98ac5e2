"""Column-wise correlations, shared by the metrics (tl), training (tl) and plots (pl)."""

from __future__ import annotations

import numpy as np


def column_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b`` (NaN if flat)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    norm = np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=0) / norm
    # a column constant up to rounding has no correlation
    flat = (np.ptp(a, axis=0) <= 1e-12) | (np.ptp(b, axis=0) <= 1e-12)
    return np.where(flat, np.nan, np.clip(r, -1, 1))


def column_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column pair (Pearson of average ranks)."""
    from scipy.stats import rankdata

    return column_pearson(rankdata(a, axis=0), rankdata(b, axis=0))
