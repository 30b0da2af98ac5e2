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
    """``log1p`` of counts scaled to :data:`TARGET_SUM` per spot (a dense float32 array).

    Its memory (the dense array and its float64 intermediate) is estimated first.
    """
    from .memory import check_memory

    counts = raw_counts(adata)
    scale = _scales(counts)
    if columns is not None:
        counts = counts[:, columns]
    n_spots, n_genes = counts.shape
    check_memory(
        float(n_spots) * n_genes * _DENSE_BYTES,
        f"The log-normalised expression of {n_spots:,} spots x {n_genes:,} genes as one dense "
        "array",
        "Ask for fewer genes (genes=[...] or a smaller n_top) or fewer sections at once; "
        "hx.pp.select_genes ranks every gene without this array with flavor='top_expressed' "
        "(the default).")
    return _log_rows(counts, scale)


def log_normalised_means(adata: AnnData) -> np.ndarray:
    """Each gene's mean over the spots of :func:`log_normalised`, without its dense array.

    The rows are log-normalised in blocks of about 64 MiB and added one after another, in the
    order numpy's ``mean(axis=0)`` adds them, so the means are the same float32 numbers as
    ``log_normalised(adata).mean(axis=0)`` while the memory does not grow with the spots.
    """
    counts = raw_counts(adata)
    scale = _scales(counts)
    n_spots, n_genes = counts.shape
    rows = max(1, _BLOCK_BYTES // (8 * max(1, n_genes)))
    total = np.zeros(n_genes, dtype=np.float32)
    for start in range(0, n_spots, rows):
        block = _log_rows(counts[start : start + rows], scale[start : start + rows])
        total = np.add.reduce(np.vstack([total[None], block]), axis=0)  # row after row
    return np.true_divide(total, n_spots)


#: bytes per value of :func:`log_normalised`: the dense counts and their product (float64),
#: the float32 result
_DENSE_BYTES = 8 + 8 + 4
#: rows of :func:`log_normalised_means` log-normalised at once, in bytes of float64 values
_BLOCK_BYTES = 64 * 2**20


def _scales(counts) -> np.ndarray:
    """The factor of each spot that scales its counts to :data:`TARGET_SUM` (0 if empty)."""
    library = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
    return np.divide(TARGET_SUM, library, out=np.zeros_like(library), where=library > 0)


def _log_rows(counts, scale: np.ndarray) -> np.ndarray:
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
