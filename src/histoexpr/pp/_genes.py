"""Genes to predict and the targets a regressor learns: log1p-normalised expression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from .._core.expression import (  #noqa: F401 (expression_targets is public here)
    TARGET_SUM,
    expression_targets,
    library_sizes,
    log_normalised,
    log_normalised_means,
    raw_counts,
)
from .._core.logs import logger
from .._core.panels import gene_panel  # noqa: F401 (public as hx.pp.gene_panel)
from .._core.validate import check_choice, check_int, renamed_parameters

if TYPE_CHECKING:
    from anndata import AnnData

#: how :func:`select_genes` ranks genes
Flavor = Literal["top_expressed", "pearson_residuals", "seurat_v3", "seurat", "cell_ranger"]
FLAVORS = get_args(Flavor)


@renamed_parameters(adatas="data")
def select_genes(
    data: AnnData | Sequence[AnnData],
    *,
    n_top: int = 50,
    flavor: Flavor = "top_expressed",
    genes: str | Sequence[str] | None = None,
) -> list[str]:
    """Choose the genes a model predicts, from the raw counts of the training sections.

    Sections with different gene sets are reduced to the genes they share (logged with a count).
    ``"top_expressed"`` ranks genes by their mean log1p-normalised expression over all spots (the
    robust choice on small legacy ST sections); ``"pearson_residuals"`` asks scanpy for the genes
    with the most variable analytic Pearson residuals of the counts (one batch per section);
    ``"seurat_v3"`` is scanpy's variance-stabilised ranking of the counts; ``"seurat"`` and
    ``"cell_ranger"`` rank the log-normalised data by dispersion (they favour low-count noise
    genes on small sections).

    ``"top_expressed"`` log-normalises the spots in blocks, so its memory does not grow with the
    number of spots times genes; ``"seurat"`` and ``"cell_ranger"`` need every spot and gene as
    one dense array, whose memory is estimated first (a :class:`MemoryError` names the fix).

    Parameters
    ----------
    data
        One spot table or several (spots x genes, raw counts in ``layers["counts"]`` or ``X``).
    n_top
        Number of genes to choose (ignored with ``genes``).
    flavor
        How to rank genes: one of ``"top_expressed"``, ``"pearson_residuals"``, ``"seurat_v3"``,
        ``"seurat"``, ``"cell_ranger"``.
    genes
        An explicit list of genes instead of a ranking (a single name is one gene); every gene
        must be measured in every section.

    Returns
    -------
    The gene names, best ranked first (or in the order given).

    """
    tables = _as_list(data)
    shared = shared_genes(tables)
    if genes is not None:
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        missing = [g for g in genes if g not in set(shared)]
        if missing:
            raise KeyError(
                f"{len(missing)} of {len(genes)} requested genes are not measured in every "
                f"section (e.g. {missing[:5]}); remove them or choose genes with n_top=."
            )
        if len(set(genes)) != len(genes):
            raise ValueError("genes= lists some genes more than once; pass each gene once.")
        return genes
    check_choice("flavor", flavor, Flavor)
    n_top = check_int("n_top", n_top, minimum=1)
    if n_top > len(shared):
        raise ValueError(f"n_top={n_top} but the sections share only {len(shared)} genes.")
    pooled = _pooled_counts(tables, shared)
    if flavor == "top_expressed":
        mean = log_normalised_means(pooled)
        order = np.argsort(-mean, kind="stable")[:n_top]
        return [shared[i] for i in order]
    return _scanpy_hvg(pooled, n_top=int(n_top), flavor=flavor, n_sections=len(tables))


def shared_genes(tables: Sequence[AnnData]) -> list[str]:
    """Genes measured in every table, in the first table's order; the loss is logged."""
    shared = list(tables[0].var_names)
    for table in tables[1:]:
        present = set(table.var_names)
        shared = [g for g in shared if g in present]
    union = set().union(*(set(t.var_names) for t in tables))
    if len(union) > len(shared):
        logger.info("The %d sections share %d of %d genes; using their intersection.",
                    len(tables), len(shared), len(union))
    if not shared:
        raise ValueError("The sections share no gene: check that they use the same gene names "
                         "(symbols or Ensembl ids).")
    return shared


def _as_list(adatas) -> list:
    if hasattr(adatas, "tables") and hasattr(adatas, "images"):  # a SpatialData
        adatas = [adatas]
    tables = [adatas] if hasattr(adatas, "var_names") else list(adatas)
    if not tables:
        raise ValueError("No spot table given.")
    wrong = [type(t).__name__ for t in tables if not hasattr(t, "var_names")]
    if wrong:
        raise TypeError(
            f"select_genes takes spot tables (AnnData), got {wrong[0]}. Pass the section's spot "
            "table, e.g. hx.pp.select_genes(sdata.tables['table'], n_top=50), or a list of them.")
    return tables


def _pooled_counts(tables: Sequence[AnnData], genes: list[str]) -> AnnData:
    """One AnnData of the raw counts of every section, restricted to ``genes``."""
    import anndata as ad
    import scipy.sparse as sp

    blocks = [sp.csr_matrix(raw_counts(t)[:, t.var_names.get_indexer(genes)], dtype=np.float32)
              for t in tables]
    sections = np.repeat(np.arange(len(tables)).astype(str), [t.n_obs for t in tables])
    import pandas as pd

    pooled = ad.AnnData(sp.vstack(blocks).tocsr(),
                        obs=pd.DataFrame({"section": pd.Categorical(sections)},
                                         index=pd.Index(np.arange(len(sections)).astype(str))),
                        var=pd.DataFrame(index=pd.Index(genes)))
    pooled.layers["counts"] = pooled.X.copy()
    return pooled


def _scanpy_hvg(pooled: AnnData, *, n_top: int, flavor: str, n_sections: int) -> list[str]:
    import scanpy as sc

    batch_key = "section" if n_sections > 1 else None
    if flavor == "pearson_residuals":
        frame = sc.experimental.pp.highly_variable_genes(
            pooled, flavor="pearson_residuals", n_top_genes=n_top, batch_key=batch_key,
            inplace=False)
        score = frame["residual_variances"].to_numpy()
    elif flavor == "seurat_v3":
        try:
            frame = sc.pp.highly_variable_genes(pooled, flavor="seurat_v3", n_top_genes=n_top,
                                                batch_key=batch_key, inplace=False)
        except ImportError as error:  # scanpy needs scikit-misc (skmisc) for this flavour
            raise ImportError(
                f"flavor='seurat_v3' needs the package scikit-misc ({error}). Install it (pip "
                "install scikit-misc), or choose flavor='pearson_residuals' or "
                "'top_expressed'.") from error
        score = frame["variances_norm"].to_numpy()
    else:
        logged = pooled.copy()
        logged.X = log_normalised(pooled)
        frame = sc.pp.highly_variable_genes(logged, flavor=flavor, n_top_genes=n_top,
                                            batch_key=batch_key, inplace=False)
        score = frame["dispersions_norm"].to_numpy()
    chosen = np.flatnonzero(frame["highly_variable"].to_numpy())
    chosen = chosen[np.argsort(-np.nan_to_num(score[chosen], nan=-np.inf), kind="stable")]
    return [pooled.var_names[i] for i in chosen[:n_top]]
