"""Predicted against measured expression: maps side by side, scatters, per-gene bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core.ownership import require_element
from .._core.spatial_uns import spatial_record
from .._core.validate import check_positive, renamed_parameters
from ._docs import check_save, save_figure, shared_docs
from ._spatial import (
    _draw_shapes,
    draw_image,
    draw_table_image,
    table_shapes,
    value_label,
)

#: values of a block of rows read at a time to check interval bounds (dense layers)
_BLOCK_VALUES = 2**22

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@shared_docs
def prediction(
    data: SpatialData | AnnData,
    pred_key: str,
    truth_key: str | AnnData | None = "table",
    *,
    genes: str | Sequence[str] | None = None,
    image_key: str | None = "he",
    cmap: str = "viridis",
    shared_scale: bool = True,
    interval: bool = False,
    scale_bar: bool = True,
    scale_bar_um: float | None = None,
    library_id: str | None = None,
    max_side: int = 800,
    panel_size: float = 3.5,
    save: str | Path | None = None,
) -> Figure:
    """Predicted and measured expression of chosen genes, side by side.

    On a section (SpatialData): for each gene, the predicted map (tiles of the prediction table
    ``pred_key``, e.g. from a spot regressor) next to the measured map (spots of the table
    ``truth_key``, log1p-normalised counts), over the image. The same maps are drawn from a
    prediction table on its own (an AnnData with ``uns["spatial"]``, as
    :func:`histoexpr.tl.predict` writes it): over its stored image, with the measurements from
    an AnnData of spots (``obsm["spatial"]`` in um) or a layer of the table. On slide-level
    AnnData without ``uns["spatial"]`` (e.g. predicted bulk expression from a MIL model): one
    scatter of predicted against measured values per gene, with its Pearson correlation.

    A slide without measurements (H&E only) is drawn with ``truth_key=None``: the predicted
    maps alone (and the interval widths with ``interval=True``), from a section or a prediction
    table. The scatters compare with measurements, so they refuse ``truth_key=None``.

    The maps of a gene share one colour scale (``shared_scale``), their colourbars name the
    values (``"EPCAM (log1p)"``), and each map has a scale bar in um.

    Parameters
    ----------
    data
        A section holding both tables, or an AnnData of predictions (tiles or slides x genes).
    pred_key
        Section: key of the prediction table. AnnData: ``"X"`` or a layer of ``data`` holding
        the predictions.
    truth_key
        Section: key of the spot table (raw counts); a section without it is a ``KeyError``
        that names what to pass (the default is not guessed). AnnData: a layer of ``data`` holding
        the measurements, or an AnnData of measurements (rows matched by ``obs_names`` for the
        scatters; for the maps a spot table of raw counts with ``obsm["spatial"]`` in um, drawn
        log1p-normalised at its own positions). ``None``: no measurements (an H&E-only slide);
        the maps show the predictions alone, without a measured map.
    genes
        Genes to show (a single name is one gene); defaults to the first four predicted genes.
    image_key
        Section: image drawn under the maps; ``None`` draws the maps alone.
    cmap
        Colormap of the maps.
    shared_scale
        Maps: one colour scale for the predicted and the measured map of each gene (limits
        from the smallest and largest of both), so that equal colours mean equal values;
        ``False`` scales each map to its own values. Without measurements
        (``truth_key=None``) the predicted map has its own scale either way.
    interval
        Maps: add a map per gene (the third, or the second with ``truth_key=None``), the width
        of the prediction interval
        (``layers["upper"] - layers["lower"]`` of the prediction table, as
        :func:`histoexpr.tl.predict` writes them for a calibrated spot regressor; its level is
        in ``uns["prediction"]["intervals"]``), on its own colour scale.
    scale_bar
        Maps: draw a scale bar in um in the lower right corner of each map.
    scale_bar_um
        Length of the scale bar in um; ``None`` chooses a round length near a fifth of the
        map's width.
    library_id
        Prediction table: which library of ``uns["spatial"]`` to draw (the only one by
        default).
    max_side
        Section: longest side of the image drawn, in pixels.
    panel_size
        Width and height of each panel in inches.

    Returns
    -------
    The figure (one row per gene for maps, one panel per gene for scatters).

    Examples
    --------
    .. plot::

        >>> import histoexpr as hx
        >>> train, test = (hx.datasets.synthetic_section(seed=seed, size_um=300, spot_pitch_um=40,
        ...                                               spot_diameter_um=35) for seed in (0, 1))
        >>> model = hx.tl.fit({"train": train}, model="spot_regressor", genes=["EPCAM"],
        ...                   size_um=40, mpp=1.0, route="ridge")
        >>> table = hx.tl.predict(model, test)
        >>> figure = hx.pl.prediction(test, "he_expr_tiles_expression", "table",
        ...                           genes="EPCAM", scale_bar_um=50)
        >>> figure = hx.pl.prediction(table, "X", test.tables["table"], genes="EPCAM")
        >>> del test.tables["table"]  # as an H&E-only slide: no measured table
        >>> figure = hx.pl.prediction(test, "he_expr_tiles_expression", None, genes="EPCAM")

    """
    check_save(save)
    from anndata import AnnData
    from spatialdata import SpatialData

    if not isinstance(data, SpatialData | AnnData):
        raise TypeError(f"data must be a SpatialData (a section with its tables) or an AnnData of "
                        f"predictions, got {type(data).__name__}; pass the section "
                        "hx.tl.predict wrote into, or the table it returned.")
    if isinstance(genes, str):
        genes = [genes]  # one gene, not its letters
    if genes is not None and not len(genes):
        raise ValueError("genes is empty: there would be nothing to draw. Name a gene or more "
                         "(genes='EPCAM'), or pass None for the first four predicted.")
    if scale_bar_um is not None:
        check_positive("scale_bar_um", scale_bar_um, unit="um (or None)")
    check_positive("panel_size", panel_size, unit="inches")
    style = {"cmap": cmap, "shared_scale": shared_scale, "interval": interval,
             "scale_bar_um": scale_bar_um if scale_bar else 0.0, "panel_size": panel_size}
    if isinstance(data, SpatialData):
        figure = _maps(data, pred_key, truth_key, genes=genes, image_key=image_key,
                       max_side=max_side, **style)
    elif spatial_record(data, library_id) is not None and "spatial" in data.obsm:
        figure = _table_maps(data, pred_key, truth_key, genes=genes, library_id=library_id,
                             **style)
    else:
        if interval:
            raise ValueError("interval=True draws maps; this AnnData has no uns['spatial'] "
                             "to draw them on (pass a section or a prediction table of tiles).")
        if truth_key is None:
            raise ValueError("truth_key=None draws the predictions alone, as maps; this AnnData "
                             "has no uns['spatial'] to draw them on, and its scatters need the "
                             "measurements. Pass a layer or an AnnData of measurements, or a "
                             "section or a prediction table of tiles.")
        figure = _scatters(data, pred_key, truth_key, genes=genes, panel_size=panel_size)
    save_figure(figure, save)
    return figure


@renamed_parameters(top="n_top")
@shared_docs
def gene_metrics(
    metrics: pd.DataFrame,
    *,
    metric: str = "pearson",
    n_top: int | None = 30,
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
    n_top
        Draw only the best ``n_top`` genes; ``None`` draws all. The mean over all genes is drawn
        as a dashed line. (Was ``top``, still accepted with a ``FutureWarning``.)

    Returns
    -------
    The axes drawn into.

    Examples
    --------
    Per-gene Pearson correlations (here written by hand; usually the frame of
    :func:`histoexpr.tl.evaluate` or :func:`histoexpr.tl.cross_validate`):

    .. plot::

        >>> import pandas as pd
        >>> import histoexpr as hx
        >>> metrics = pd.DataFrame({"pearson": [0.62, 0.48, 0.35, 0.12]},
        ...                        index=["EPCAM", "KRT8", "CDH1", "PTPRC"])
        >>> ax = hx.pl.gene_metrics(metrics)

    """
    check_save(save)
    import matplotlib.pyplot as plt

    if metric not in metrics.columns:
        raise KeyError(f"{metric!r} is not a column of the metrics; columns: "
                       f"{list(metrics.columns)}.")
    values = (metrics.groupby("gene")[metric].mean() if "gene" in metrics.columns
              else metrics[metric]).dropna().sort_values(ascending=False)
    if values.empty:
        raise ValueError(f"Every value of {metric!r} in the metrics is NaN ({len(metrics)} rows): "
                         "the plot would show nothing. Genes constant in the truth or the "
                         "prediction have no correlation; check the evaluation.")
    shown = values if n_top is None else values.iloc[:n_top]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.22 * len(shown) + 1), 3.5))
    ax.bar(np.arange(len(shown)), shown.to_numpy(), color="#4c72b0")
    ax.axhline(values.mean(), color="black", linestyle="--", linewidth=1,
               label=f"mean over {len(values)} genes: {values.mean():.3f}")
    ax.set_xticks(np.arange(len(shown)), shown.index, rotation=90, fontsize=7)
    ax.set_ylabel(metric)
    ax.legend(frameon=False, loc="upper right")
    ax.set_xlim(-0.6, len(shown) - 0.4)
    save_figure(ax.figure, save)
    return ax


def _maps(sdata, pred_key: str, truth_key: str | None, *, genes, image_key, cmap, max_side,
          panel_size, shared_scale, interval, scale_bar_um) -> Figure:
    from .._core.expression import expression_targets

    require_element(sdata, pred_key, "tables")
    if truth_key is not None and truth_key not in sdata.tables:
        available = ", ".join(repr(key) for key in sdata.tables.keys()) or "none"
        raise KeyError(f"sdata.tables has no element {truth_key!r} (truth_key, the table of "
                       f"measured expression); available: {available}. For a slide without "
                       "measurements (H&E only), pass truth_key=None to draw the predictions "
                       "alone; to compare, pass the key of the measured spot table.")
    pred = sdata.tables[pred_key]
    truth = None if truth_key is None else sdata.tables[truth_key]
    if interval:
        _check_intervals(pred, pred_key)
    genes = list(pred.var_names[:4]) if genes is None else list(genes)
    missing = [g for g in genes if g not in pred.var_names
               or (truth is not None and g not in truth.var_names)]
    if missing and truth is None:
        raise KeyError(f"Genes {missing} are not predicted ({pred_key!r}).")
    if missing:
        raise KeyError(f"Genes {missing} are not both predicted ({pred_key!r}) and measured "
                       f"({truth_key!r}).")
    predicted = _values(pred, "X", genes)  # the genes' columns only
    widths = _interval_widths(pred, genes) if interval else None
    pred_shapes = _annotated_shapes(sdata, pred)
    if truth is not None:
        measured = expression_targets(truth, genes)
        truth_shapes = _annotated_shapes(sdata, truth)

    def background(ax):
        if image_key is not None:
            draw_image(ax, sdata, image_key, max_side=max_side)

    panels = []
    for row, gene in enumerate(genes):
        maps = ((pred_shapes, _by_instance(pred, predicted[gene].to_numpy(), pred_shapes),
                 value_label(pred, gene, None), "predicted"),)
        if truth is not None:
            maps += ((truth_shapes, _by_instance(truth, measured[:, row], truth_shapes),
                      f"{gene} (log1p)", "measured"),)
        if widths is not None:
            maps += ((pred_shapes, _by_instance(pred, widths[gene].to_numpy(), pred_shapes),
                      f"{gene} interval width", "interval width"),)
        panels.append((gene, maps))
    return _draw_panels(panels, background, cmap=cmap, panel_size=panel_size,
                        shared_scale=shared_scale, scale_bar_um=scale_bar_um)


def _table_maps(pred, pred_key: str, truth_key, *, genes, library_id, cmap, panel_size,
                shared_scale, interval, scale_bar_um) -> Figure:
    """Maps of a prediction table on its own, over the image of its ``uns["spatial"]``."""
    from anndata import AnnData

    from .._core.expression import expression_targets

    record = spatial_record(pred, library_id)
    _layer(pred, pred_key)
    if isinstance(truth_key, AnnData):
        truth = truth_key
        if "spatial" not in truth.obsm:
            raise KeyError("The measured AnnData has no obsm['spatial'] (spot centres in um) "
                           "to draw it at; pass a spot table of histoexpr or scanpy.")
        shared = [g for g in pred.var_names if g in truth.var_names]
    else:
        truth = None
        if truth_key is not None and truth_key != "X" and truth_key not in pred.layers:
            raise KeyError(f"truth_key {truth_key!r} is neither 'X' nor a layer of the "
                           f"prediction table (layers: {list(pred.layers)}). Pass the measured "
                           "spot table (an AnnData) or a layer of measurements; for a slide "
                           "without measurements (H&E only), pass truth_key=None to draw the "
                           "predictions alone.")
        shared = list(pred.var_names)
    genes = shared[:4] if genes is None else list(genes)
    missing = [g for g in genes if g not in shared]
    if missing:
        raise KeyError(f"Genes {missing} are not "
                       + ("predicted." if truth_key is None else "both predicted and measured."))
    if interval:
        _check_intervals(pred, pred_key)
    predicted = _values(pred, pred_key, genes)  # the genes' columns only
    pred_shapes = table_shapes(pred, record)
    if truth is not None:
        truth_shapes = table_shapes(truth, spatial_record(truth))
        measured = pd.DataFrame(expression_targets(truth, genes), columns=genes,
                                index=truth_shapes.index)
        measured_label = "log1p"
    elif truth_key is not None:
        truth_shapes = pred_shapes
        measured = _values(pred, truth_key, genes)
        measured.index = pred_shapes.index
        measured_label = truth_key
    unit = value_label(pred, genes[0], None if pred_key == "X" else pred_key)
    unit = unit[len(genes[0]):].strip() if unit != genes[0] else ""
    widths = _interval_widths(pred, genes) if interval else None
    panels = [(gene, (
        (pred_shapes, pd.Series(predicted[gene].to_numpy(float), index=pred_shapes.index),
         f"{gene} {unit}".strip(), "predicted"),)
        + (() if truth_key is None else (
            (truth_shapes, measured[gene], f"{gene} ({measured_label})", "measured"),))
        + (() if widths is None else (
            (pred_shapes, pd.Series(widths[gene].to_numpy(float), index=pred_shapes.index),
             f"{gene} interval width", "interval width"),)))
        for gene in genes]
    return _draw_panels(panels, lambda ax: draw_table_image(ax, record[1]), cmap=cmap,
                        panel_size=panel_size, shared_scale=shared_scale,
                        scale_bar_um=scale_bar_um)


def _draw_panels(panels, background, *, cmap, panel_size, shared_scale,
                 scale_bar_um) -> Figure:
    """One row per gene: its maps, the predicted and measured on one colour scale if shared.

    Each map is ``(shapes, values, colourbar label, what)``, ``what`` one of ``"predicted"``,
    ``"measured"`` or ``"interval width"`` (its title; a width has its own colour scale).
    """
    import matplotlib.pyplot as plt

    columns = max(len(maps) for _, maps in panels)
    figure, axes = plt.subplots(len(panels), columns, squeeze=False,
                                figsize=(columns * panel_size + 1, panel_size * len(panels)))
    for row, (gene, maps) in enumerate(panels):
        limits = (None, None)
        if shared_scale:  # the predicted and measured maps (an interval width has its own)
            both = np.concatenate([values.to_numpy(float) for _, values, _, what in maps
                                   if what != "interval width"])
            both = both[np.isfinite(both)]
            if both.size:
                limits = (float(both.min()), float(both.max()))
        for column, (shapes, values, label, what) in enumerate(maps):
            ax = axes[row][column]
            background(ax)
            low, high = limits if what != "interval width" else (None, None)
            _draw_shapes(ax, shapes, values, cmap=cmap, alpha=0.9, label=label,
                         outline="black", vmin=low, vmax=high)
            ax.set_aspect("equal")
            if not ax.yaxis_inverted():
                ax.invert_yaxis()
            ax.set_title(f"{gene}: {what}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            if scale_bar_um != 0.0:
                add_scale_bar(ax, scale_bar_um)
    figure.tight_layout()
    return figure


def add_scale_bar(ax: Axes, length_um: float | None = None):
    """A scale bar of ``length_um`` (a round length near a fifth of the width when ``None``).

    The axes must be in um (as every histoexpr map is). Returns the ``AnchoredSizeBar``.
    """
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    if length_um is None:
        x0, x1 = ax.get_xlim()
        length_um = round_length(abs(x1 - x0) / 5)
    bar = AnchoredSizeBar(ax.transData, length_um, f"{length_um:g} um", "lower right",
                          pad=0.3, borderpad=0.3, sep=3, frameon=True, size_vertical=0,
                          color="black", fontproperties={"size": 7})
    bar.patch.set_alpha(0.7)
    ax.add_artist(bar)
    return bar


def round_length(target: float) -> float:
    """The largest of 1, 2 or 5 times a power of ten not above ``target`` (> 0)."""
    power = 10 ** np.floor(np.log10(target))
    return float(max(step * power for step in (1, 2, 5) if step * power <= target))


def _annotated_shapes(sdata, table):
    region = table.uns["spatialdata_attrs"]["region"]
    region = region[0] if isinstance(region, list) else region
    require_element(sdata, region, "shapes")
    return sdata.shapes[region]


def _by_instance(table, values: np.ndarray, shapes) -> pd.Series:
    instance_key = table.uns["spatialdata_attrs"]["instance_key"]
    return pd.Series(values, index=table.obs[instance_key].to_numpy()).reindex(shapes.index)


def _check_intervals(pred, pred_key: str) -> None:
    """Refuse a prediction table without interval bounds, or with ``upper`` below ``lower``.

    Every gene's bounds are checked, a block of rows at a time (sparse layers as they are), so
    no dense copy of the whole layers is made.
    """
    missing = [layer for layer in ("lower", "upper") if layer not in pred.layers]
    if missing:
        raise KeyError(f"The prediction table {pred_key!r} has no layers {missing}: no "
                       "prediction intervals to draw. Predict with a model calibrated in fit "
                       "(hx.tl.fit(..., calibrate=True), a head route), or pass interval=False.")
    inverted = _count_below(pred.layers["upper"], pred.layers["lower"])
    if inverted:
        raise ValueError(f"The prediction table {pred_key!r} has layers['upper'] below "
                         f"layers['lower'] in {inverted} values: they are not the interval "
                         "bounds hx.tl.predict writes (swapped, or overwritten). Predict again "
                         "to have them, or pass interval=False.")


def _count_below(upper, lower) -> int:
    """How many values of ``upper - lower`` are negative, without densifying both whole."""
    from scipy import sparse

    if sparse.issparse(upper) and sparse.issparse(lower):
        return int(np.count_nonzero(sparse.csr_matrix(upper - lower).data < 0))
    n_rows, n_columns = upper.shape
    step = max(1, _BLOCK_VALUES // max(n_columns, 1))
    return sum(int(np.count_nonzero(_dense(upper[start:start + step])
                                    - _dense(lower[start:start + step]) < 0))
               for start in range(0, n_rows, step))


def _interval_widths(pred, genes: Sequence[str]) -> pd.DataFrame:
    """Width of each tile's prediction interval (``upper - lower``) for ``genes``.

    A gene whose widths differ only by the rounding of float32 bounds (one width for every
    tile, as on an H&E-only slide) gets that one width: rounding noise is not drawn as a map.
    """
    widths = _values(pred, "upper", genes) - _values(pred, "lower", genes)
    spread = widths.max() - widths.min()
    flat = spread <= 1e-5 * widths.abs().max() + 1e-6
    for gene in widths.columns[flat.to_numpy()]:
        widths[gene] = float(widths[gene].mean())
    return widths


def _scatters(adata, pred_key: str, truth_key, *, genes, panel_size) -> Figure:
    import matplotlib.pyplot as plt

    from .._core.stats import column_pearson

    _layer(adata, pred_key)
    truth, rows = adata, None
    if isinstance(truth_key, str):
        _layer(adata, truth_key)
    else:
        truth, truth_key = truth_key, "X"
        rows = adata.obs_names.intersection(truth.obs_names, sort=False)
        if not len(rows):
            raise ValueError("The predictions and the measurements share no obs_names.")
    shared = [g for g in adata.var_names if g in truth.var_names]
    genes = shared[:4] if genes is None else list(genes)
    missing = [g for g in genes if g not in shared]
    if missing:
        raise KeyError(f"Genes {missing} are not both predicted and measured.")
    predicted = _values(adata, pred_key, genes)  # the genes' columns only
    measured = _values(truth, truth_key, genes)
    if rows is not None:
        predicted, measured = predicted.loc[rows], measured.loc[rows]
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


def _layer(adata, key: str):
    """``adata.X`` (``key="X"``) or the layer ``key``, as stored (sparse stays sparse)."""
    if key != "X" and key not in adata.layers:
        raise KeyError(f"{key!r} is neither 'X' nor a layer of the AnnData (layers: "
                       f"{list(adata.layers)}).")
    return adata.X if key == "X" else adata.layers[key]


def _values(adata, key: str, genes: Sequence[str]) -> pd.DataFrame:
    """The values of ``genes`` in ``X`` or a layer, one column each.

    The genes' columns are taken first and only they are made dense: a sparse layer of many
    genes is never densified whole to draw a few.
    """
    values = _layer(adata, key)
    names = list(dict.fromkeys(genes))  # a gene named twice is one column
    columns = adata.var_names.get_indexer(names)
    chosen = np.unique(columns)  # increasing, as backed (h5py) arrays need them
    dense = _dense(values[:, chosen])[:, np.searchsorted(chosen, columns)]
    return pd.DataFrame(dense, index=adata.obs_names, columns=names)


def _dense(values) -> np.ndarray:
    """``values`` (a slice of ``X`` or a layer: dense, sparse or lazy) as a numpy array."""
    return values.toarray() if hasattr(values, "toarray") else np.asarray(values)
