"""Spots and tiles drawn over a low-resolution view of the tissue."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._image import image_levels, read_region
from .._utils import require_element
from ._docs import shared_docs

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from spatialdata import SpatialData


@shared_docs
def tiles(
    sdata: SpatialData,
    tiles_key: str = "he_tiles",
    *,
    color: str | None = None,
    layer: str | None = None,
    image_key: str | None = None,
    cmap: str = "viridis",
    alpha: float = 0.5,
    max_side: int = 1000,
    title: str | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Draw tiles over the image, outlined or coloured by a value of the tile table.

    Parameters
    ----------
    sdata
        The section.
    tiles_key
        Key of the tile shapes (made by :func:`histoexpr.pp.tile`).
    color
        A column of the tile table's ``obs`` or one of its ``var_names``; ``None`` draws outlines.
    layer
        Layer of the table to read ``var_names`` from (``X`` when ``None``).
    image_key
        Image under the tiles; defaults to the image they were cut from.
    cmap
        Colormap for numeric values.
    alpha
        Opacity of the tiles.

    Returns
    -------
    The axes drawn into.

    """
    require_element(sdata, tiles_key, "shapes")
    table = _annotating_table(sdata, tiles_key)
    if image_key is None and table is not None:
        image_key = table.uns.get("tiles", {}).get("image_key")
    return _draw(sdata, tiles_key, table, color=color, layer=layer, image_key=image_key,
                 cmap=cmap, alpha=alpha, max_side=max_side, title=title, ax=ax, save=save)


@shared_docs
def spots(
    sdata: SpatialData,
    spots_key: str = "spots",
    *,
    color: str | None = None,
    layer: str | None = None,
    image_key: str | None = "he",
    cmap: str = "viridis",
    alpha: float = 0.8,
    max_side: int = 1000,
    title: str | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Draw capture spots over the image, coloured by expression or any spot annotation.

    Parameters
    ----------
    sdata
        The section.
    spots_key
        Key of the spot circles.
    color
        A gene (``var_names`` of the spot table) or a column of its ``obs``; ``None`` draws
        outlines.
    layer
        Layer of the table to read genes from (``X`` when ``None``).
    image_key
        Image under the spots; ``None`` draws the spots alone.
    cmap
        Colormap for numeric values.
    alpha
        Opacity of the spots.

    Returns
    -------
    The axes drawn into.

    """
    require_element(sdata, spots_key, "shapes")
    table = _annotating_table(sdata, spots_key)
    return _draw(sdata, spots_key, table, color=color, layer=layer, image_key=image_key,
                 cmap=cmap, alpha=alpha, max_side=max_side, title=title, ax=ax, save=save)


def _draw(sdata, shapes_key, table, *, color, layer, image_key, cmap, alpha, max_side, title,
          ax, save) -> Axes:
    import matplotlib.pyplot as plt

    check_max_side(max_side)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    dark_background = False
    if image_key is not None:
        dark_background = draw_image(ax, sdata, image_key, max_side=max_side).ndim == 2
    shapes = sdata.shapes[shapes_key]
    values = None if color is None else _shape_values(shapes, table, color, layer, shapes_key)
    _draw_shapes(ax, shapes, values, cmap=cmap, alpha=alpha, label=color,
                 outline="white" if dark_background else "black")
    ax.set_aspect("equal")
    if not ax.yaxis_inverted():  # image convention: y grows downwards
        ax.invert_yaxis()
    ax.set_xlabel("x (um)")
    ax.set_ylabel("y (um)")
    ax.set_title(title if title is not None else (color or shapes_key))
    if save is not None:
        ax.figure.savefig(save, dpi=150, bbox_inches="tight")
    return ax


def draw_image(ax: Axes, sdata: SpatialData, image_key: str, *, max_side: int = 1000) -> np.ndarray:
    """Show an image in micrometre coordinates, read at a level near ``max_side`` pixels.

    Returns what was shown: ``(H, W)`` for one channel (drawn in grey), else ``(H, W, 3)``.
    """
    check_max_side(max_side)
    level0 = image_levels(sdata, image_key)[0]
    height, width = level0.shape_yx
    x0, y0 = level0.offset
    x1, y1 = x0 + width * level0.mpp, y0 + height * level0.mpp
    mpp = max(level0.mpp, max(x1 - x0, y1 - y0) / max_side)
    shown = _displayable(read_region(sdata, image_key, (x0, y0, x1, y1), mpp=mpp, outside="fill"))
    ax.imshow(shown, extent=(x0, x1, y1, y0), cmap="gray" if shown.ndim == 2 else None,
              interpolation="antialiased")
    return shown


def check_max_side(max_side) -> None:
    """Refuse a ``max_side`` that is not a positive whole number of pixels."""
    if isinstance(max_side, bool) or not isinstance(max_side, int | np.integer) or max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels (e.g. 1000), got "
                         f"{max_side!r}.")


def _displayable(pixels: np.ndarray) -> np.ndarray:
    """(C, H, W) of any dtype -> (H, W) or (H, W, 3) floats in [0, 1] for imshow."""
    image = pixels.astype(np.float32)
    if pixels.dtype == np.uint8:
        image /= 255
    else:  # fluorescence: stretch the 1st-99.5th percentiles
        low, high = np.percentile(image, [1, 99.5])
        image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    if image.shape[0] == 1:
        return image[0]
    return np.moveaxis(image[:3], 0, -1)


def _annotating_table(sdata: SpatialData, shapes_key: str) -> AnnData | None:
    """The table that annotates a shapes element, if any (the first one, by name)."""
    from spatialdata import get_element_annotators

    names = sorted(get_element_annotators(sdata, shapes_key))
    return sdata.tables[names[0]] if names else None


def _shape_values(shapes, table, color: str, layer: str | None, shapes_key: str) -> pd.Series:
    """Values of ``color`` (an obs column or a gene) for each shape, in the shapes' order."""
    if table is None:
        if color in shapes.columns:
            return shapes[color]
        raise KeyError(f"No table annotates {shapes_key!r} and its shapes have no column "
                       f"{color!r}.")
    if color in table.obs.columns:
        values = table.obs[color]
    elif color in table.var_names:
        column = table[:, color].layers[layer] if layer is not None else table[:, color].X
        dense = column.toarray() if hasattr(column, "toarray") else np.asarray(column)
        values = pd.Series(dense.ravel(), index=table.obs.index)
    else:
        raise KeyError(
            f"{color!r} is neither a column of the table's obs nor one of its {table.n_vars} "
            f"genes. obs columns: {list(table.obs.columns)}."
        )
    instance_key = table.uns["spatialdata_attrs"]["instance_key"]
    values = pd.Series(values.to_numpy(), index=table.obs[instance_key].to_numpy())
    return values.reindex(shapes.index)


def _draw_shapes(ax: Axes, shapes, values: pd.Series | None, *, cmap: str, alpha: float,
                 label: str | None, outline: str) -> None:
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle, Polygon

    if "radius" in shapes.columns:
        patches = [Circle((point.x, point.y), radius)
                   for point, radius in zip(shapes.geometry, shapes["radius"], strict=True)]
    else:
        patches = [Polygon(np.asarray(geometry.exterior.coords), closed=True)
                   for geometry in shapes.geometry]
    if values is None:
        collection = PatchCollection(patches, facecolor="none", edgecolor=outline, linewidth=0.6)
        ax.add_collection(collection)
    elif isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
        _draw_categories(ax, patches, values.astype("category"), alpha=alpha)
    else:
        collection = PatchCollection(patches, cmap=cmap, alpha=alpha, edgecolor="none")
        collection.set_array(values.to_numpy(dtype=float))
        ax.add_collection(collection)
        ax.figure.colorbar(collection, ax=ax, shrink=0.7, label=label)
    ax.autoscale_view()


def _draw_categories(ax: Axes, patches, values: pd.Series, *, alpha: float) -> None:
    import matplotlib as mpl
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch

    palette = mpl.colormaps["tab10" if len(values.cat.categories) <= 10 else "tab20"]
    colours = {cat: palette(i % palette.N) for i, cat in enumerate(values.cat.categories)}
    faces = [colours.get(value, (0.6, 0.6, 0.6, 1.0)) for value in values]
    ax.add_collection(PatchCollection(patches, facecolor=faces, alpha=alpha, edgecolor="none"))
    handles = [Patch(color=colour, label=str(cat)) for cat, colour in colours.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
