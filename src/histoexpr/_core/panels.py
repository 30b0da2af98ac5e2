"""Named gene panels, and the one way every function accepts genes: a panel name or a list."""

from __future__ import annotations

from collections.abc import Sequence

#: The colorectal-cancer panel that Graziani et al. (2022) train on (TCGA-COAD bulk RNA-seq), as
#: listed in their code (maragraziani/interpretableWSItoRNAseq).
PANELS: dict[str, tuple[str, ...]] = {
    "graziani2022": (
        "SEMA5A", "CTTNBP2", "WARS", "POFUT1", "QPRT", "PLAGL2", "TP53RK", "DDX27", "FSCN1",
        "TIMP3", "VAV2", "RBMS1", "ARSGL1", "SPINK4", "RAB34", "MGP", "TNS1", "SDC2", "LYZ",
        "TRIB2", "AXIN2",
    ),
}


def gene_panel(name: str) -> list[str]:
    """The genes of a named panel shipped with histoexpr.

    Parameters
    ----------
    name
        Name of the panel: ``"graziani2022"`` (the 21 colorectal-cancer genes of Graziani et al.
        2022, "Attention-based interpretable regression of gene expression in histology").

    Returns
    -------
    The gene symbols, in the panel's order. Functions that take ``genes=`` accept either a panel
    name or any list of genes.

    Examples
    --------
    >>> import histoexpr as hx
    >>> hx.pp.gene_panel("graziani2022")[:3]
    ['SEMA5A', 'CTTNBP2', 'WARS']

    """
    if name not in PANELS:
        raise KeyError(f"Unknown gene panel {name!r}; histoexpr ships {sorted(PANELS)}. Pass a "
                       "list of genes instead to use any other panel.")
    return list(PANELS[name])


def resolve_genes(genes: str | Sequence[str] | None, available: Sequence[str], *,
                  what: str = "the expression table") -> list[str]:
    """``genes`` (a panel name, a list, or ``None`` for all) checked against ``available``."""
    available = [str(g) for g in available]
    if genes is None:
        return available
    if isinstance(genes, str):
        genes = gene_panel(genes) if genes in PANELS else [genes]
    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError("genes is empty; pass at least one gene or a panel name.")
    duplicated = sorted({g for g in genes if genes.count(g) > 1})
    if duplicated:
        raise ValueError(f"genes lists {duplicated} more than once; list each gene once.")
    known = set(available)
    missing = [g for g in genes if g not in known]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise KeyError(f"{len(missing)} of {len(genes)} genes are not in {what}: {shown}. "
                       "Check the symbols (and var_names), or drop those genes.")
    return genes
