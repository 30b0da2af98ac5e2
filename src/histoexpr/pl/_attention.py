"""Attention of slide-level models over the tissue, and the tiles they attend to most."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._core.logs import logger
from .._core.ownership import require_element
from .._core.validate import check_choice, renamed_parameters
from ._docs import check_save, save_figure, shared_docs
from ._spatial import _draw_shapes, draw_image

#: below this Spearman correlation with the measured expression under the tiles,
#: ``hx.pl.attention`` warns that the map does not track expression
MIN_TRACKING_SPEARMAN = 0.2

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@shared_docs
@renamed_parameters(key="pred_key")
def attention(
    sdata: SpatialData,
    tiles_key: str = "he_tiles",
    *,
    pred_key: str = "abmil",
    gene: str | None = None,
    show: Literal["attention", "contribution", "prediction"] | None = None,
    table_key: str = "table",
    min_spearman: float = MIN_TRACKING_SPEARMAN,
    cmap: str = "magma",
    alpha: float = 0.6,
    max_side: int = 1000,
    title: str | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Draw a model's attention (or its per-tile predicted expression) over the tissue.

    Where the tiles sit on measured spots (``hx.pp.tile(..., centres="spots")`` with the spot
    table ``table_key``), the drawn map is checked against the truth: the Spearman correlation
    over the section's tiles with the measured (log1p-normalised) expression of ``gene`` (or,
    for the shared attention without ``gene``, its mean over the predicted genes). A map below
    ``min_spearman`` (default :data:`MIN_TRACKING_SPEARMAN`, 0.2) draws with a logged warning
    that it does not track expression, and the value is put in the title.

    Parameters
    ----------
    sdata
        The section, with per-tile results of :func:`histoexpr.tl.predict` in its tile table.
    tiles_key
        Key of the tiles.
    pred_key
        The ``key_added`` of the prediction. (Was ``key``, still accepted with a
        ``FutureWarning``.)
    gene
        ``None`` draws the attention (the mean over branches); a gene draws its per-tile
        predicted expression (or, with ``show``, its attention branch or contributions).
    show
        What to draw: ``"attention"`` (the gene's own branch where the model has one per gene,
        else the shared one), ``"contribution"`` (attention times output, needs ``gene``) or
        ``"prediction"`` (needs ``gene``); ``None`` draws the attention without ``gene`` and
        the prediction with it.
    table_key
        Key of the spot table holding the truth for the check.
    min_spearman
        Warn when the map's rank correlation with the measured expression is below this.
    cmap
        Colormap.
    alpha
        Opacity of the tiles.

    Returns
    -------
    The axes drawn into.

    Examples
    --------
    An attention MIL model trained on the bags of one synthetic section, its per-tile predicted
    EPCAM on another section (checked against the spots under the tiles):

    .. plot::

        >>> import histoexpr as hx
        >>> sections = {f"s{seed}": hx.datasets.synthetic_section(seed=seed, size_um=400)
        ...             for seed in (0, 1)}
        >>> for sdata in sections.values():
        ...     hx.pp.tile(sdata, "he", size_um=100, mpp=2.0, centres="spots", min_tissue=0.0)
        ...     hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
        ...     hx.pp.pseudobulk(sdata, "he_tiles", size_um=200, stride_um=100, min_spots=3)
        >>> model = hx.tl.fit({"s0": sections["s0"]}, model="abmil", genes=["EPCAM", "PTPRC"],
        ...                   epochs=20, val_fraction=0, batch_size=2, seed=0)
        >>> predicted = hx.tl.predict(model, {"s1": sections["s1"]})
        >>> ax = hx.pl.attention(sections["s1"], "he_tiles", gene="EPCAM", show="prediction")

    """
    check_save(save)
    import matplotlib.pyplot as plt

    require_element(sdata, tiles_key, "shapes")
    table = sdata.tables[f"{tiles_key}_table"]
    key = pred_key
    column = f"{key}_attention"
    if column not in table.obs.columns:
        raise KeyError(f"The tile table has no per-tile results {key!r}; run "
                       f"hx.tl.predict(model, ..., key_added={key!r}) first.")
    values, label = _map(table, key, gene, show)
    rho = _tracking(sdata, table, key, gene, values, table_key)
    if rho is not None:
        label = f"{label}, Spearman {rho:.2f} with measured"
        if rho < min_spearman:
            logger.warning("This map does not track expression: its Spearman correlation with "
                           "the measured expression under the tiles is %.3f (below %.2f). "
                           "Attention says what the model weighs, not where expression is; "
                           "draw show='contribution' of a model trained with an attention-entropy "
                           "penalty (e.g. attention_entropy=10), or a per-gene model "
                           "(per_gene=True).",
                           rho, min_spearman)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    image_key = table.uns.get("tiles", {}).get("image_key")
    if image_key is not None:
        draw_image(ax, sdata, image_key, max_side=max_side)
    series = pd.Series(values, index=table.obs["tile_id"].to_numpy())
    _draw_shapes(ax, sdata.shapes[tiles_key], series.reindex(sdata.shapes[tiles_key].index),
                 cmap=cmap, alpha=alpha, label=label, outline="black")
    _finish(ax, title if title is not None else label, save)
    return ax


def _map(table, key: str, gene: str | None, show: str | None) -> tuple[np.ndarray, str]:
    shows = ("attention", "contribution", "prediction")
    if show is not None and show not in shows:
        raise ValueError(f"show must be one of {shows} or None, got {show!r}.")
    show = show or ("attention" if gene is None else "prediction")
    if gene is not None and gene not in table.obsm[key].columns:
        raise KeyError(f"{gene!r} is not predicted under {key!r}; predicted: "
                       f"{list(table.obsm[key].columns)[:10]}.")
    if show == "attention":
        branches = table.obsm.get(f"{key}_attention")
        if gene is not None and branches is not None and gene in branches.columns:
            return branches[gene].to_numpy(), f"{gene} attention ({key})"
        return table.obs[f"{key}_attention"].to_numpy(), f"attention ({key})"
    if gene is None:
        raise ValueError(f"show={show!r} draws one gene; pass gene=.")
    if show == "prediction":
        return table.obsm[key][gene].to_numpy(), f"predicted {gene} ({key})"
    if f"{key}_contribution" not in table.obsm:
        raise KeyError(f"No contributions under {key!r}; predict again with hx.tl.predict.")
    return table.obsm[f"{key}_contribution"][gene].to_numpy(), f"{gene} contribution ({key})"


def _tracking(sdata, table, key: str, gene: str | None, values: np.ndarray,
              table_key: str) -> float | None:
    """Spearman correlation of a map with the measured expression under the tiles, if known."""
    from scipy.stats import spearmanr

    from ..pp import expression_targets

    if "spot_id" not in table.obs.columns or table_key not in sdata.tables:
        return None
    spots = sdata.tables[table_key]
    if gene is None and key not in table.obsm:
        return None  # no predicted genes to check the shared attention against
    genes = [gene] if gene is not None else list(table.obsm[key].columns)
    genes = [g for g in genes if g in spots.var_names]
    if not genes:
        return None
    instance_key = spots.uns.get("spatialdata_attrs", {}).get("instance_key", "spot_id")
    rows = pd.Index(spots.obs[instance_key].to_numpy()).get_indexer(table.obs["spot_id"])
    inside = (rows >= 0) & np.isfinite(values)
    if inside.sum() < 3:
        return None
    measured = expression_targets(spots[rows[inside]], genes)
    with np.errstate(invalid="ignore"):
        rhos = [spearmanr(values[inside], measured[:, j]).statistic for j in range(len(genes))]
    return None if np.isnan(rhos).all() else float(np.nanmean(rhos))


@shared_docs
@renamed_parameters(key="pred_key")
def top_tiles(
    data: Any,
    predictions: AnnData,
    *,
    gene: str,
    pred_key: str = "abmil",
    n_bins: int = 3,
    n_tiles: int = 5,
    by: Literal["measured", "predicted"] = "measured",
    save: str | Path | None = None,
) -> Figure:
    """The tiles with the highest attention in bags of low, middle and high expression.

    Bags (slides) are split into ``n_bins`` quantile bins of a gene's expression; each row of
    the figure shows the ``n_tiles`` tiles of that bin's bags that carry the most attention
    within their own bag (Graziani et al. 2022, Fig. 4).

    Parameters
    ----------
    data
        What was predicted on: a Cohort, a pseudo-bulked section or a mapping of them.
    predictions
        The bags' predictions returned by :func:`histoexpr.tl.predict` (or
        :func:`histoexpr.tl.cross_validate`).
    gene
        The gene whose expression defines the bins.
    pred_key
        The ``key_added`` of the per-tile results. (Was ``key``, still accepted with a
        ``FutureWarning``.)
    n_bins
        Number of expression bins (rows).
    n_tiles
        Tiles per bin (columns).
    by
        Bin by the ``"measured"`` or the ``"predicted"`` expression.

    Returns
    -------
    The figure.

    Examples
    --------
    The most attended tiles of held-out bags of low and high EPCAM:

    .. plot::

        >>> import histoexpr as hx
        >>> sections = {f"s{seed}": hx.datasets.synthetic_section(seed=seed, size_um=400)
        ...             for seed in (0, 1)}
        >>> for sdata in sections.values():
        ...     hx.pp.tile(sdata, "he", size_um=100, mpp=2.0, centres="spots", min_tissue=0.0)
        ...     hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
        ...     hx.pp.pseudobulk(sdata, "he_tiles", size_um=200, stride_um=100, min_spots=3)
        >>> model = hx.tl.fit({"s0": sections["s0"]}, model="abmil", genes=["EPCAM", "PTPRC"],
        ...                   epochs=20, val_fraction=0, batch_size=2, seed=0)
        >>> predicted = hx.tl.predict(model, {"s1": sections["s1"]})
        >>> figure = hx.pl.top_tiles({"s1": sections["s1"]}, predicted, gene="EPCAM",
        ...                          n_bins=2, n_tiles=3)

    """
    check_save(save)
    import matplotlib.pyplot as plt

    from ..pp import TileDataset
    from ..tl import bag_tiles

    if gene not in predictions.var_names:
        raise KeyError(f"{gene!r} is not among the predicted genes.")
    check_choice("by", by, ("measured", "predicted"))
    if by == "measured" and "measured" not in predictions.layers:
        raise KeyError("The predictions hold no measured values; pass by='predicted'.")
    info = next(v for v in predictions.uns.values() if isinstance(v, dict) and "tiles_key" in v)
    tiles_key = info["tiles_key"]
    members = bag_tiles(data, tiles_key=tiles_key, features_key=info["features_key"],
                        bags_key=info["bags_key"])
    rows_of = {bag: group["tile"].to_numpy() for bag, group in members.groupby("bag", sort=False)}
    if isinstance(data, Mapping):
        sections = data
    elif isinstance(data, list | tuple):  # tl names sections given without names by position
        sections = {f"section_{i}": one for i, one in enumerate(data)}
    else:
        sections = {name: data for name in members["section"].unique()}
    column = predictions[:, gene].layers["measured"] if by == "measured" else \
        predictions[:, gene].X
    values = np.asarray(column).ravel()
    bins = pd.qcut(pd.Series(values).rank(method="first"), n_bins, labels=False).to_numpy()
    fig, axes = plt.subplots(n_bins, n_tiles, figsize=(1.6 * n_tiles, 1.7 * n_bins),
                             squeeze=False)
    datasets: dict[str, Any] = {}
    for b in range(n_bins):
        candidates = []  # (attention within the bag, section, tile row)
        for name, section in zip(predictions.obs_names[bins == b],
                                 predictions.obs["section"][bins == b], strict=True):
            table = sections[section].tables[f"{tiles_key}_table"]
            branch = table.obsm[f"{pred_key}_attention"]
            weights = branch[gene if gene in branch.columns else branch.columns[0]].to_numpy()
            rows = rows_of[name]
            within = weights[rows] / weights[rows].sum()
            candidates += [(w, section, r) for w, r in zip(within, rows, strict=True)]
        candidates.sort(key=lambda c: -c[0])
        # a tile of overlapping bags is shown once, with its highest attention
        seen: set = set()
        candidates = [c for c in candidates if (c[1], c[2]) not in seen
                      and not seen.add((c[1], c[2]))]
        shown = sorted(values[bins == b])
        axes[b, 0].set_ylabel(f"{gene} {shown[0]:.2f}-{shown[-1]:.2f}", fontsize=8)
        for j in range(n_tiles):
            ax = axes[b, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(candidates):
                continue
            weight, section, row = candidates[j]
            if section not in datasets:
                datasets[section] = TileDataset(sections[section], tiles_key)
            image = datasets[section][int(row)]["image"].numpy()
            ax.imshow(np.moveaxis(image[:3], 0, -1) if image.shape[0] >= 3 else image[0],
                      cmap=None if image.shape[0] >= 3 else "gray")
            ax.set_title(f"{weight:.2f}", fontsize=7)
    fig.suptitle(f"Top-attention tiles by {by} {gene} (low to high)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def _finish(ax: Axes, title: str, save: str | Path | None) -> None:
    ax.set_aspect("equal")
    if not ax.yaxis_inverted():
        ax.invert_yaxis()
    ax.set_xlabel("x (um)")
    ax.set_ylabel("y (um)")
    ax.set_title(title)
    save_figure(ax.figure, save)
