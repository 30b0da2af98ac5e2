"""Attention of slide-level models over the tissue, and the tiles they attend to most."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._utils import require_element
from ._docs import shared_docs
from ._spatial import _draw_shapes, draw_image

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@shared_docs
def attention(
    sdata: SpatialData,
    tiles_key: str = "he_tiles",
    *,
    key: str = "abmil",
    gene: str | None = None,
    cmap: str = "magma",
    alpha: float = 0.6,
    max_side: int = 1000,
    title: str | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Draw a model's attention (or its per-tile predicted expression) over the tissue.

    Parameters
    ----------
    sdata
        The section, with per-tile results of :func:`histoexpr.tl.predict` in its tile table.
    tiles_key
        Key of the tiles.
    key
        The ``key_added`` of the prediction.
    gene
        ``None`` draws the attention (the mean over branches); a gene draws its per-tile
        predicted expression.
    cmap
        Colormap.
    alpha
        Opacity of the tiles.

    Returns
    -------
    The axes drawn into.

    """
    import matplotlib.pyplot as plt

    require_element(sdata, tiles_key, "shapes")
    table = sdata.tables[f"{tiles_key}_table"]
    column = f"{key}_attention"
    if column not in table.obs.columns:
        raise KeyError(f"The tile table has no per-tile results {key!r}; run "
                       f"hx.tl.predict(model, ..., key_added={key!r}) first.")
    if gene is None:
        values, label = table.obs[column].to_numpy(), f"attention ({key})"
    elif gene in table.obsm[key].columns:
        values, label = table.obsm[key][gene].to_numpy(), f"predicted {gene} ({key})"
    else:
        raise KeyError(f"{gene!r} is not predicted under {key!r}; predicted: "
                       f"{list(table.obsm[key].columns)[:10]}.")
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


@shared_docs
def top_tiles(
    data: Any,
    predictions: AnnData,
    *,
    gene: str,
    key: str = "abmil",
    n_bins: int = 3,
    n_tiles: int = 5,
    by: str = "measured",
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
    key
        The ``key_added`` of the per-tile results.
    n_bins
        Number of expression bins (rows).
    n_tiles
        Tiles per bin (columns).
    by
        Bin by the ``"measured"`` or the ``"predicted"`` expression.

    Returns
    -------
    The figure.

    """
    import matplotlib.pyplot as plt

    from ..pp import TileDataset
    from ..tl._bag_data import collect_bags

    if gene not in predictions.var_names:
        raise KeyError(f"{gene!r} is not among the predicted genes.")
    if by not in ("measured", "predicted"):
        raise ValueError(f"by must be 'measured' or 'predicted', got {by!r}.")
    if by == "measured" and "measured" not in predictions.layers:
        raise KeyError("The predictions hold no measured values; pass by='predicted'.")
    info = next(v for v in predictions.uns.values() if isinstance(v, dict) and "tiles_key" in v)
    bags = collect_bags(data, tiles_key=info["tiles_key"], features_key=info["features_key"],
                        bags_key=info["bags_key"])
    rows_of = dict(zip(bags.bulk.obs_names, bags.rows, strict=True))
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
            table = bags.sections[section].tables[f"{bags.tiles_key}_table"]
            branch = table.obsm[f"{key}_attention"]
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
                datasets[section] = TileDataset(bags.sections[section], bags.tiles_key)
            image = datasets[section][int(row)]["image"].numpy()
            ax.imshow(np.moveaxis(image[:3], 0, -1) if image.shape[0] >= 3 else image[0],
                      cmap=None if image.shape[0] >= 3 else "gray")
            ax.set_title(f"{weight:.2f}", fontsize=7)
    fig.suptitle(f"Top-attention tiles by {by} {gene} (low to high)", fontsize=9)
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    return fig


def _finish(ax: Axes, title: str, save: str | Path | None) -> None:
    ax.set_aspect("equal")
    if not ax.yaxis_inverted():
        ax.invert_yaxis()
    ax.set_xlabel("x (um)")
    ax.set_ylabel("y (um)")
    ax.set_title(title)
    if save is not None:
        ax.figure.savefig(save, dpi=150, bbox_inches="tight")
