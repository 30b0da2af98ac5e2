"""Predicted against measured expression: maps side by side, scatters, per-gene bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
def prediction(
    data: SpatialData | AnnData,
    pred_key: str,
    truth_key: str | AnnData = "table",
    *,
    genes: str | Sequence[str] | None = None,
    image_key: str | None = "he",
    cmap: str = "viridis",
    max_side: int = 800,
    panel_size: float = 3.5,
    save: str | Path | None = None,
) -> Figure:
    """Predicted and measured expression of chosen genes, side by side.

    On a section (SpatialData): for each gene, the predicted map (tiles of the prediction table
    ``pred_key``, e.g. from a spot regressor) next to the measured map (spots of the table
    ``truth_key``, log1p-normalised counts), over the image. On slide-level AnnData (e.g.
    predicted bulk expression from a MIL model): one scatter of predicted against measured
    values per gene, with its Pearson correlation.

    Parameters
    ----------
    data
        A section holding both tables, or an AnnData of predictions (slides x genes).
    pred_key
        Section: key of the prediction table. AnnData: ``"X"`` or a layer of ``data`` holding
        the predictions.
    truth_key
        Section: key of the spot table (raw counts). AnnData: a layer of ``data`` holding the
        measurements, or an AnnData of measurements (rows matched by ``obs_names``).
    genes
        Genes to show (a single name is one gene); defaults to the first four predicted genes.
    image_key
        Section: image drawn under the maps; ``None`` draws the maps alone.
    cmap
        Colormap of the maps.
    max_side
        Section: longest side of the image drawn, in pixels.
    panel_size
        Width and height of each panel in inches.

    Returns
    -------
    The figure (one row per gene on a section, one panel per gene on AnnData).

    """
    from spatialdata import SpatialData

    if isinstance(genes, str):
        genes = [genes]  # one gene, not its letters
    if isinstance(data, SpatialData):
        figure = _maps(data, pred_key, truth_key, genes=genes, image_key=image_key, cmap=cmap,
                       max_side=max_side, panel_size=panel_size)
    else:
        figure = _scatters(data, pred_key, truth_key, genes=genes, panel_size=panel_size)
    if save is not None:
        figure.savefig(save, dpi=150, bbox_inches="tight")
    return figure


@shared_docs
def gene_metrics(
    metrics: pd.DataFrame,
    *,
    metric: str = "pearson",
    top: int | None = 30,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Bar plot of a per-gene score (e.g. from :func:`histoexpr.tl.evaluate`), best first.

    Parameters
    ----------
    metrics
        One row per gene (index = gene names), a column per metric; a ``gene`` column is used as
        the index when present (e.g. the frame of :func:`histoexpr.tl.cross_validate`, whose rows
        are then averaged per gene).
    metric
        Column to draw.
    top
        Draw only the best ``top`` genes; ``None`` draws all. The mean over all genes is drawn
        as a dashed line.

    Returns
    -------
    The axes drawn into.

    """
    import matplotlib.pyplot as plt

    if metric not in metrics.columns:
        raise KeyError(f"{metric!r} is not a column of the metrics; columns: "
                       f"{list(metrics.columns)}.")
    values = (metrics.groupby("gene")[metric].mean() if "gene" in metrics.columns
              else metrics[metric]).dropna().sort_values(ascending=False)
    shown = values if top is None else values.iloc[:top]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.22 * len(shown) + 1), 3.5))
    ax.bar(np.arange(len(shown)), shown.to_numpy(), color="#4c72b0")
    ax.axhline(values.mean(), color="black", linestyle="--", linewidth=1,
               label=f"mean over {len(values)} genes: {values.mean():.3f}")
    ax.set_xticks(np.arange(len(shown)), shown.index, rotation=90, fontsize=7)
    ax.set_ylabel(metric)
    ax.legend(frameon=False, loc="upper right")
    ax.set_xlim(-0.6, len(shown) - 0.4)
    if save is not None:
        ax.figure.savefig(save, dpi=150, bbox_inches="tight")
    return ax


def _maps(sdata, pred_key: str, truth_key: str, *, genes, image_key, cmap, max_side,
          panel_size) -> Figure:
    import matplotlib.pyplot as plt

    from .._expression import expression_targets

    require_element(sdata, pred_key, "tables")
    require_element(sdata, truth_key, "tables")
    pred, truth = sdata.tables[pred_key], sdata.tables[truth_key]
    genes = list(pred.var_names[:4]) if genes is None else list(genes)
    missing = [g for g in genes if g not in pred.var_names or g not in truth.var_names]
    if missing:
        raise KeyError(f"Genes {missing} are not both predicted ({pred_key!r}) and measured "
                       f"({truth_key!r}).")
    measured = expression_targets(truth, genes)
    figure, axes = plt.subplots(len(genes), 2, squeeze=False,
                                figsize=(2 * panel_size + 1, panel_size * len(genes)))
    pred_shapes = _annotated_shapes(sdata, pred)
    truth_shapes = _annotated_shapes(sdata, truth)
    for row, gene in enumerate(genes):
        predicted = np.asarray(pred[:, gene].X).ravel()
        for ax, (shapes, table, values, what) in zip(axes[row], (
                (pred_shapes, pred, predicted, "predicted"),
                (truth_shapes, truth, measured[:, row], "measured")), strict=True):
            if image_key is not None:
                draw_image(ax, sdata, image_key, max_side=max_side)
            _draw_shapes(ax, shapes, _by_instance(table, values, shapes), cmap=cmap, alpha=0.9,
                         label="log1p expression", outline="black")
            ax.set_aspect("equal")
            if not ax.yaxis_inverted():
                ax.invert_yaxis()
            ax.set_title(f"{gene}: {what}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.tight_layout()
    return figure


def _annotated_shapes(sdata, table):
    region = table.uns["spatialdata_attrs"]["region"]
    region = region[0] if isinstance(region, list) else region
    require_element(sdata, region, "shapes")
    return sdata.shapes[region]


def _by_instance(table, values: np.ndarray, shapes) -> pd.Series:
    instance_key = table.uns["spatialdata_attrs"]["instance_key"]
    return pd.Series(values, index=table.obs[instance_key].to_numpy()).reindex(shapes.index)


def _scatters(adata, pred_key: str, truth_key, *, genes, panel_size) -> Figure:
    import matplotlib.pyplot as plt

    from .._stats import column_pearson

    predicted = _values(adata, pred_key)
    if isinstance(truth_key, str):
        measured = _values(adata, truth_key)
    else:
        rows = adata.obs_names.intersection(truth_key.obs_names, sort=False)
        if not len(rows):
            raise ValueError("The predictions and the measurements share no obs_names.")
        predicted = predicted.loc[rows]
        measured = _values(truth_key, "X").loc[rows]
    shared = [g for g in predicted.columns if g in measured.columns]
    genes = shared[:4] if genes is None else list(genes)
    missing = [g for g in genes if g not in shared]
    if missing:
        raise KeyError(f"Genes {missing} are not both predicted and measured.")
    figure, axes = plt.subplots(1, len(genes), figsize=(panel_size * len(genes), panel_size),
                                squeeze=False)
    for ax, gene in zip(axes[0], genes, strict=True):
        x, y = measured[gene].to_numpy(float), predicted[gene].to_numpy(float)
        ax.scatter(x, y, s=12, alpha=0.7, color="#4c72b0", edgecolor="none")
        low, high = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--")
        r = column_pearson(x[:, None], y[:, None])[0]
        ax.set_title(f"{gene} (r = {r:.2f}, n = {len(x)})", fontsize=10)
        ax.set_xlabel("measured")
        ax.set_ylabel("predicted")
    figure.tight_layout()
    return figure


def _values(adata, key: str) -> pd.DataFrame:
    if key != "X" and key not in adata.layers:
        raise KeyError(f"{key!r} is neither 'X' nor a layer of the AnnData (layers: "
                       f"{list(adata.layers)}).")
    values = adata.X if key == "X" else adata.layers[key]
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values)
    return pd.DataFrame(values, index=adata.obs_names, columns=adata.var_names)
