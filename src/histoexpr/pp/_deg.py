"""Up / down (/ unchanged) labels per gene and sample, as HistCode classifies driver genes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._core.logs import logger
from .._core.panels import resolve_genes
from .._core.validate import check_bool, check_choice, check_positive, check_store_name

if TYPE_CHECKING:
    from anndata import AnnData

#: the label categories, in order
DEG_LABELS = ("down", "unchanged", "up")
#: where ``bulk.uns`` records the columns each ``key_added`` of :func:`deg` wrote
_RECORD = "deg"


def deg_labels(
    bulk: AnnData,
    genes: str | Sequence[str] | None = None,
    *,
    method: Literal["quantile", "fold_change"] = "quantile",
    lower: float = 0.25,
    upper: float = 0.75,
    reference: str | Sequence[str] | None = None,
    log2_threshold: float = 1.0,
    pseudocount: float = 1.0,
    layer: str | None = None,
    key_added: str = "deg",
    overwrite: bool = False,
) -> None:
    """Label each gene in each sample as up, down or unchanged.

    ``method="quantile"``: a sample is ``"down"`` where the gene is at most its ``lower``
    quantile over the samples, ``"up"`` where it is above the ``upper`` quantile, ``"unchanged"``
    in between; ``lower == upper`` gives two classes split at that quantile.
    ``method="fold_change"``: ``log2((x + pseudocount) / (m + pseudocount))`` against the mean
    ``m`` of the ``reference`` samples is ``"up"`` from ``log2_threshold``, ``"down"`` from
    ``-log2_threshold``, ``"unchanged"`` in between (``log2_threshold=0`` gives two classes).
    Give normalised expression (e.g. CPM or TPM, not raw counts of unequal depth).

    Parameters
    ----------
    bulk
        Samples x genes expression (a cohort's ``bulk`` or a pseudo-bulk bag table).
    genes
        Genes to label: a list, a panel name (:func:`histoexpr.pp.gene_panel`) or ``None`` for
        all genes.
    method
        ``"quantile"`` or ``"fold_change"``.
    lower
        Quantile (0-1) at or below which a sample is ``"down"`` (``method="quantile"``).
    upper
        Quantile (0-1) above which a sample is ``"up"`` (``method="quantile"``).
    reference
        The reference samples of ``method="fold_change"``: a list of ``obs_names`` or the name of
        a boolean column of ``bulk.obs``.
    log2_threshold
        Absolute log2 fold change from which a sample is up or down.
    pseudocount
        Added to both sides of the fold change.
    layer
        Layer holding the expression; ``X`` when ``None``.
    key_added
        Prefix of the columns added to ``bulk.obs``; one plain name (no ``/``), as it names
        them in the file when the bulk is saved.
    overwrite
        Replace existing columns, only those this step wrote before under ``key_added`` (as
        recorded in ``bulk.uns["deg"]``); a column of the user's is never replaced.

    Returns
    -------
    Nothing; adds one categorical column ``f"{key_added}_{gene}"`` per gene to ``bulk.obs``
    (categories ``"down"``, ``"unchanged"``, ``"up"``, or ``"down"``, ``"up"`` for two classes)
    and records them in ``bulk.uns["deg"][key_added]``.
    Train a classifier on them with ``hx.tl.fit(..., task="classification", genes=...)``.

    """
    check_bool("overwrite", overwrite)
    import pandas as pd

    # the columns f"{key_added}_{gene}" and the record uns["deg"][key_added] become names in
    # the file when the bulk is saved (h5ad, zarr)
    check_store_name("key_added", key_added, what="set of labels in bulk.obs and bulk.uns")
    if bulk.n_obs == 0:
        raise ValueError("The bulk has no samples (0 rows): there is nothing to label. Give "
                         "the samples x genes expression (e.g. cohort.bulk).")
    genes = resolve_genes(genes, bulk.var_names, what="bulk.var_names")
    columns = [f"{key_added}_{gene}" for gene in genes]
    existing = [c for c in columns if c in bulk.obs.columns]
    if existing and not overwrite:
        raise KeyError(f"bulk.obs already has {existing[:3]}...; pass overwrite=True or choose "
                       "another key_added.")
    own = set((bulk.uns.get(_RECORD, {}).get(key_added) or {}).get("columns") or [])
    foreign = [c for c in existing if c not in own]
    if foreign:
        raise KeyError(
            f"bulk.obs already has {foreign[:3]}, which hx.pp.deg_labels did not write (no record "
            f"in bulk.uns[{_RECORD!r}][{key_added!r}]), so overwrite=True does not replace them. "
            "Choose another key_added, or rename those columns.")
    values = _expression(bulk, genes, layer)
    if not np.isfinite(values).all():
        raise ValueError("The expression holds NaN or infinite values; fill or drop those "
                         "samples before labelling.")
    if method == "quantile":
        if not 0 <= lower <= upper <= 1:
            raise ValueError(f"Need 0 <= lower <= upper <= 1, got lower={lower}, upper={upper}.")
        low = np.quantile(values, lower, axis=0)
        high = np.quantile(values, upper, axis=0)
        two_classes = lower == upper
        codes = np.where(values <= low, 0, np.where(values > high, 2, 1))
    elif method == "fold_change":
        check_positive("log2_threshold", log2_threshold, allow_zero=True)
        mask = _reference_mask(bulk, reference)
        log2fc = np.log2((values + pseudocount) / (values[mask].mean(axis=0) + pseudocount))
        two_classes = log2_threshold == 0
        codes = np.where(log2fc >= log2_threshold, 2, np.where(log2fc <= -log2_threshold, 0, 1))
        if two_classes:
            codes = np.where(log2fc > 0, 2, 0)
    else:
        check_choice("method", method, ("quantile", "fold_change"))
    categories = ["down", "up"] if two_classes else list(DEG_LABELS)
    for j, column in enumerate(columns):
        labels = np.asarray(DEG_LABELS, dtype=object)[codes[:, j]]
        bulk.obs[column] = pd.Categorical(labels, categories=categories)
    records = dict(bulk.uns.get(_RECORD, {}))
    previous = (records.get(key_added) or {}).get("columns") or []
    records[key_added] = {"step": "hx.pp.deg", "method": method,
                          "columns": sorted(set(previous) | set(columns))}
    bulk.uns[_RECORD] = records
    counts = {label: int((codes == code).sum()) for code, label in enumerate(DEG_LABELS)
              if label in categories}
    logger.info("Adding %d columns `bulk.obs['%s_<gene>']` (%s labels over %d samples x %d "
                "genes)", len(columns), key_added, counts, bulk.n_obs, len(genes))


def _expression(bulk, genes: list[str], layer: str | None) -> np.ndarray:
    if layer is not None and layer not in bulk.layers:
        raise KeyError(f"bulk has no layer {layer!r}; its layers are {list(bulk.layers)}.")
    matrix = bulk[:, genes].X if layer is None else bulk[:, genes].layers[layer]
    matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    return matrix.astype(float)


def _reference_mask(bulk, reference) -> np.ndarray:
    if reference is None:
        raise ValueError("method='fold_change' needs reference=: the reference samples' "
                         "obs_names or a boolean obs column.")
    if isinstance(reference, str):
        if reference not in bulk.obs.columns or bulk.obs[reference].dtype != bool:
            raise KeyError(f"reference={reference!r} must be a boolean column of bulk.obs.")
        mask = bulk.obs[reference].to_numpy()
    else:
        unknown = [r for r in reference if r not in bulk.obs_names]
        if unknown:
            raise KeyError(f"Reference samples {unknown[:5]} are not in bulk.obs_names.")
        mask = bulk.obs_names.isin(list(reference))
    if not mask.any():
        raise ValueError("No reference sample selected; the reference mean is undefined.")
    return mask
