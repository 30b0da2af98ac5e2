"""Expression as histoexpr learns it: raw counts, library sizes, log1p-normalised targets.

Shared by pp (gene selection), tl (training targets, metrics) and pl (measured maps);
``hx.pp.expression_targets`` is its public face.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData

#: counts per spot after normalisation (scanpy's ``normalize_total`` ``target_sum``)
TARGET_SUM = 1e4


def expression_targets(adata: AnnData, genes: Sequence[str]) -> np.ndarray:
    """Return the log1p-normalised expression of ``genes`` in each spot, as a regressor learns it.

    Counts are scaled to :data:`TARGET_SUM` per spot over **all** genes of the table (as
    ``sc.pp.normalize_total`` does), then ``log1p``; only then are the genes picked, so the
    targets do not depend on which other genes are predicted.

    Parameters
    ----------
    adata
        Spot table with raw counts in ``layers["counts"]`` or ``X``.
    genes
        Genes to return, all in ``adata.var_names``.

    Returns
    -------
    ``(n_spots, n_genes)`` float32 array.

    """
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise KeyError(f"{len(missing)} genes are not measured in this table (e.g. "
                       f"{missing[:5]}); predict only genes every section measures.")
    index = adata.var_names.get_indexer(list(genes))
    return log_normalised(adata, columns=index)


def log_normalised(adata: AnnData, *, columns: np.ndarray | None = None) -> np.ndarray:
    """``log1p`` of counts scaled to :data:`TARGET_SUM` per spot (a dense float32 array)."""
    counts = raw_counts(adata)
    library = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
    scale = np.divide(TARGET_SUM, library, out=np.zeros_like(library), where=library > 0)
    if columns is not None:
        counts = counts[:, columns]
    dense = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    return np.log1p(dense * scale[:, None]).astype(np.float32)


def library_sizes(adata: AnnData) -> np.ndarray:
    """Total counts of each spot over all genes."""
    return np.asarray(raw_counts(adata).sum(axis=1), dtype=np.float64).ravel()


def raw_counts(adata: AnnData):
    """``layers["counts"]`` if present, else ``X``; refused if it does not look like counts."""
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    values = counts.data if hasattr(counts, "data") and hasattr(counts, "indptr") else counts
    sample = np.asarray(values).ravel()[:10000]
    if sample.size and (sample.min() < 0 or not np.allclose(sample, np.round(sample))):
        raise ValueError(
            "The spot table holds no raw counts (negative or non-integer values in "
            "layers['counts'] / X). Keep the raw counts in layers['counts']."
        )
    return counts
