"""Choosing the two genes of transcript labels: abundant, clustered, and apart from each other."""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np

from .._core.logs import logger
from .._core.memory import check_memory
from .._core.ownership import require_element
from .._core.validate import check_positive, renamed_parameters

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData

#: memory of one bin for each candidate gene: its counts and smoothed density (float64)
_BYTES_PER_BIN_PER_GENE = 16
#: and of one bin besides: the tissue mask, the smoothing's float64 work and a pair's
#: comparison (the two densities over the tissue, masks and the median's copy)
_BYTES_PER_BIN = 41


@renamed_parameters(min_count="min_counts")
def rank_gene_pairs(
    sdata: SpatialData,
    points_key: str = "transcripts",
    *,
    n_candidates: int = 20,
    min_counts: int = 100,
    bin_um: float = 10.0,
    smooth_um: float = 20.0,
) -> pd.DataFrame:
    """Rank pairs of genes by how well they would define transcript labels.

    A good pair for :func:`histoexpr.pp.transcript_labels` has two abundant genes, each clustered
    in its own places (a pattern the image can show), and the two rarely in the same place. The
    ``n_candidates`` most abundant genes with at least ``min_counts`` transcripts are binned on a
    grid of ``bin_um``, over the bins that hold any transcript (the tissue). For each gene:

    - ``clustering``: the variance-to-mean ratio of its bin counts, minus 1 (0 for transcripts
      scattered at random, large for clusters);

    and for each pair:

    - ``correlation``: Pearson's correlation of the two genes' densities, smoothed by a Gaussian
      of ``smooth_um`` (negative: the genes avoid each other);
    - ``overlap``: the share of the smaller gene's transcripts in bins where the other gene's
      smoothed density is above its median over the tissue.

    The ``score`` is ``sqrt(min count) * sqrt(clustering_a * clustering_b) * (1 - overlap) *
    (1 - max(correlation, 0))``: highest for abundant, clustered, exclusive pairs.

    Parameters
    ----------
    sdata
        The section.
    points_key
        Key of the transcripts in ``sdata.points`` (column ``gene``, ``x``, ``y`` in um). Every
        transcript is held in memory; that memory is estimated first (about 136 B each): a
        MemoryError names the number of transcripts and asks to crop the points.
    n_candidates
        How many of the most abundant genes are paired. Each holds two float64 grids of
        ``bin_um``; their memory is estimated first: a MemoryError names the bins and the
        genes.
    min_counts
        Genes with fewer transcripts are not candidates. (Was ``min_count``, still accepted
        with a ``FutureWarning``.)
    bin_um
        Side of the bins, in um; the grids' memory is estimated first (see ``n_candidates``).
    smooth_um
        Width (sigma) of the smoothing of the densities compared between genes, in um.

    Returns
    -------
    One row per pair, best first: ``gene_a``, ``gene_b`` (the more abundant first), ``count_a``,
    ``count_b``, ``clustering_a``, ``clustering_b``, ``correlation``, ``overlap`` and ``score``.

    Examples
    --------
    >>> pairs = hx.pp.rank_gene_pairs(sdata)
    >>> genes = tuple(pairs.iloc[0][["gene_a", "gene_b"]])

    """
    import pandas as pd
    from scipy.ndimage import gaussian_filter

    from ._transcript_labels import _points_frame

    require_element(sdata, points_key, "points")
    if n_candidates < 2:
        raise ValueError(f"n_candidates must be at least 2, got {n_candidates!r}.")
    check_positive("bin_um", bin_um, unit="um")
    check_positive("smooth_um", smooth_um, allow_zero=True, unit="um")
    points = _points_frame(sdata, points_key)
    totals = points["gene"].value_counts()
    candidates = totals[totals >= min_counts].index[:n_candidates].tolist()
    if len(candidates) < 2:
        raise ValueError(
            f"Fewer than two genes have at least min_counts={min_counts} transcripts (the most "
            f"abundant: {totals.head(3).to_dict()}); lower min_counts."
        )
    logger.info("Ranking %d pairs of the %d most abundant genes.",
                len(candidates) * (len(candidates) - 1) // 2, len(candidates))
    # the grids' size from the extent alone (the same arithmetic as rows and cols below; NaN
    # coordinates leave the estimate NaN, not refused, as before), before any grid is made
    n_rows = np.floor((points["y"].max() - points["y"].min()) / bin_um) + 1
    n_cols = np.floor((points["x"].max() - points["x"].min()) / bin_um) + 1
    per_bin = _BYTES_PER_BIN + _BYTES_PER_BIN_PER_GENE * len(candidates)
    check_memory(
        float(n_rows) * float(n_cols) * per_bin,
        f"rank_gene_pairs on a grid of {n_cols:,.0f} x {n_rows:,.0f} bins of {bin_um:g} um for "
        f"{len(candidates)} candidate genes",
        "Pass a larger bin_um or fewer n_candidates.")
    cols = np.floor((points["x"] - points["x"].min()) / bin_um).astype(int).to_numpy()
    rows = np.floor((points["y"] - points["y"].min()) / bin_um).astype(int).to_numpy()
    shape = (rows.max() + 1, cols.max() + 1)
    tissue = np.zeros(shape, dtype=bool)
    tissue[rows, cols] = True
    counts, smooth = {}, {}
    for gene in candidates:
        chosen = (points["gene"] == gene).to_numpy()
        grid = np.zeros(shape)
        np.add.at(grid, (rows[chosen], cols[chosen]), 1)
        counts[gene] = grid
        smooth[gene] = gaussian_filter(grid, smooth_um / bin_um)
    clustering = {g: float(c[tissue].var() / c[tissue].mean() - 1) for g, c in counts.items()}

    records = []
    for gene_a, gene_b in combinations(candidates, 2):
        a, b = smooth[gene_a][tissue], smooth[gene_b][tissue]
        correlation = float(np.corrcoef(a, b)[0, 1])
        overlap = max(_overlap(counts[gene_a], smooth[gene_b], tissue),
                      _overlap(counts[gene_b], smooth[gene_a], tissue))
        spread = np.sqrt(max(clustering[gene_a], 0) * max(clustering[gene_b], 0))
        score = (np.sqrt(min(totals[gene_a], totals[gene_b])) * spread * (1 - overlap)
                 * (1 - max(correlation, 0)))
        records.append({"gene_a": gene_a, "gene_b": gene_b, "count_a": int(totals[gene_a]),
                        "count_b": int(totals[gene_b]), "clustering_a": clustering[gene_a],
                        "clustering_b": clustering[gene_b], "correlation": correlation,
                        "overlap": overlap, "score": float(score)})
    table = pd.DataFrame.from_records(records)
    return table.sort_values("score", ascending=False, ignore_index=True)


def _overlap(counts: np.ndarray, other_density: np.ndarray, tissue: np.ndarray) -> float:
    """Share of a gene's transcripts where another gene's density is above its tissue median."""
    dense = other_density > np.median(other_density[tissue])
    return float(counts[dense & tissue].sum() / max(counts[tissue].sum(), 1))
