"""Class maps over the tissue: transcript labels and predicted maps side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._core.image import image_levels, read_region
from .._core.ownership import require_element
from .._core.validate import check_fraction
from ._docs import check_save, save_figure, shared_docs
from ._spatial import draw_image

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

#: label values drawn as classes of a map that records none; more are a segmentation
_MAX_CLASSES = 256
_PALETTE = ("#9e9e9e", "#2ca02c", "#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b",
            "#e377c2", "#17becf", "#bcbd22")


@shared_docs
def labels(
    sdata: SpatialData,
    truth_key: str = "tx_labels",
    pred_key: str | None = None,
    *,
    image_key: str | None = None,
    classes: Mapping[str, int] | None = None,
    region: Sequence[float] | None = None,
    alpha: float = 0.5,
    max_side: int = 1000,
    ax: Axes | Sequence[Axes] | None = None,
    save: str | Path | None = None,
) -> list[Axes]:
    """Draw a class map over the image, and a predicted one beside it, with a legend.

    Each class has its own colour (the same in both panels); unlabelled pixels (0) are clear, so
    the image shows through.

    Parameters
    ----------
    sdata
        The section.
    truth_key
        Key of the first label map (e.g. from :func:`histoexpr.pp.transcript_labels`).
    pred_key
        Key of a second label map drawn beside it (e.g. from ``hx.tl.predict``).
    image_key
        Image drawn under the maps; defaults to the one the labels were made on, else the first
        image; ``None`` and no image draws the maps alone.
    classes
        ``{name: label value}``; defaults to the classes recorded with the maps.
    region
        ``(x_min, y_min, x_max, y_max)`` in um to show; defaults to the first map's extent.
    alpha
        Opacity of the maps.
    ax
        One Axes (``pred_key=None``) or two to draw into; a new figure when ``None``.

    Returns
    -------
    The axes drawn into: one per map.

    Examples
    --------
    Classes of a synthetic section labelled by its PTPRC and COL1A1 transcripts, over its DAPI:

    .. plot::

        >>> import histoexpr as hx
        >>> sdata = hx.datasets.synthetic_section(size_um=300, spots=False)
        >>> hx.pp.transcript_labels(sdata, genes=["PTPRC", "COL1A1"])
        >>> axes = hx.pl.labels(sdata, "tx_labels")

    """
    check_save(save)
    from matplotlib.patches import Patch

    keys = [truth_key] if pred_key is None else [truth_key, pred_key]
    for key in keys:
        require_element(sdata, key, "labels")
    check_fraction("alpha", alpha, closed="both")
    axes = _axes(ax, len(keys))
    classes = _classes(sdata, keys, classes)
    colours = {value: _PALETTE[i % len(_PALETTE)] for i, value in enumerate(classes.values())}
    image_key = _image_under(sdata, truth_key, image_key)
    box = image_levels(sdata, truth_key)[0].bounds if region is None else tuple(region)
    for axis, key in zip(axes, keys, strict=True):
        if image_key is not None:
            draw_image(axis, sdata, image_key, max_side=max_side)
        _draw_map(axis, sdata, key, colours, alpha, max_side)
        axis.set_xlim(box[0], box[2])
        axis.set_ylim(box[3], box[1])
        axis.set_xlabel("x (um)")
        axis.set_ylabel("y (um)")
        axis.set_title(key)
    handles = [Patch(facecolor=colours[value], label=name) for name, value in classes.items()]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    save_figure(axes[0].figure, save)
    return axes


def _axes(ax, n: int) -> list:
    import matplotlib.pyplot as plt

    if ax is None:
        _, created = plt.subplots(1, n, figsize=(5.5 * n, 5), squeeze=False)
        return list(created[0])
    axes = [ax] if not isinstance(ax, Sequence | np.ndarray) else list(np.ravel(ax))
    if len(axes) != n:
        raise ValueError(f"Pass {n} Axes (one per map), got {len(axes)}.")
    return axes


def _classes(sdata, keys: list[str], classes) -> dict[str, int]:
    if classes is not None:
        return {str(k): int(v) for k, v in classes.items()}
    for key in keys:
        recorded = sdata.labels[key].attrs.get("classes")
        if recorded:
            return {str(k): int(v) for k, v in recorded.items()}
    import dask.array as da

    data = image_levels(sdata, keys[0])[0].data.data  # lazy: counted chunk by chunk
    values = da.unique(data).compute() if isinstance(data, da.Array) else np.unique(data)
    values = [int(v) for v in values if v != 0]
    if len(values) > _MAX_CLASSES:
        raise ValueError(
            f"sdata.labels[{keys[0]!r}] holds {len(values):,} label values and records no "
            "classes: a segmentation (one value per cell), not a class map. Pass "
            "classes={name: value} for the values to draw, or draw a class map.")
    return {f"class {v}": v for v in values}


def _image_under(sdata, truth_key: str, image_key: str | None) -> str | None:
    if image_key is not None:
        require_element(sdata, image_key, "images")
        return image_key
    for table in sdata.tables.values():
        rule = table.uns.get("transcript_labels", {})
        if rule.get("labels_key") == truth_key and rule.get("image_key") in sdata.images:
            return rule["image_key"]
    return next(iter(sdata.images.keys()), None)


def _draw_map(axis, sdata, key: str, colours: dict[int, str], alpha: float,
              max_side: int) -> None:
    """The map as colours (clear where unlabelled or of no listed class)."""
    from matplotlib.colors import to_rgba

    from ._spatial import check_max_side

    check_max_side(max_side)
    level = image_levels(sdata, key)[0]
    box = level.bounds
    mpp = max(level.mpp, max(box[2] - box[0], box[3] - box[1]) / max_side)
    values = read_region(sdata, key, box, mpp=mpp, outside="fill")
    rgba = np.zeros(values.shape + (4,), dtype=np.float32)
    for value, colour in colours.items():
        rgba[values == value] = to_rgba(colour, alpha)
    axis.imshow(rgba, extent=(box[0], box[2], box[3], box[1]), interpolation="nearest")
