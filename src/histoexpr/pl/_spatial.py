"""Spots and tiles drawn over a low-resolution view of the tissue."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._core.image import image_levels, read_region
from .._core.logs import logger
from .._core.ownership import require_element
from .._core.spatial_uns import spatial_record
from ._docs import check_save, save_figure, shared_docs

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

#: memory of one shape drawn: its matplotlib patch and path, its face colour and its place in the
#: collection (3.2 kB for a square, 3.9 kB for a circle, measured by tracemalloc), and of each
#: vertex of a polygon (17 B measured)
_BYTES_PER_SHAPE = 4096
_BYTES_PER_VERTEX = 24


@shared_docs
def tiles(
    sdata: SpatialData | AnnData,
    tiles_key: str = "he_tiles",
    *,
    color: str | None = None,
    layer: str | None = None,
    image_key: str | None = None,
    region: Sequence[float] | None = None,
    library_id: str | None = None,
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
        The section, or a table of tiles with ``obsm["spatial"]`` in um (e.g. a prediction
        table of :func:`histoexpr.tl.predict`), drawn as squares of ``uns["tiles"]["size_um"]``
        over the image of its ``uns["spatial"]`` (see :func:`spots`).
    tiles_key
        Key of the tile shapes (made by :func:`histoexpr.pp.tile`); unused for a table.
    color
        A column of the tile table's ``obs`` or one of its ``var_names``; ``None`` draws outlines.
    layer
        Layer of the table to read ``var_names`` from (``X`` when ``None``).
    image_key
        Image under the tiles; defaults to the image they were cut from.
    region
        ``(x_min, y_min, x_max, y_max)`` in um (the section's coordinates, as everywhere in
        histoexpr) to show; the axes are limited to it. ``None`` shows everything.
    library_id
        For a table: which library of ``uns["spatial"]`` to draw (the only one by default).
    cmap
        Colormap for numeric values.
    alpha
        Opacity of the tiles.

    Returns
    -------
    The axes drawn into.

    Examples
    --------
    Tiles of 50 um over a synthetic section, coloured by the share of tissue under each:

    .. plot::

        >>> import histoexpr as hx
        >>> sdata = hx.datasets.synthetic_section(size_um=300)
        >>> hx.pp.detect_tissue(sdata, "he")
        >>> hx.pp.tile(sdata, "he", size_um=50, mpp=1.0)
        >>> ax = hx.pl.tiles(sdata, "he_tiles", color="tissue_fraction")

    """
    check_save(save)
    from anndata import AnnData

    region = check_region(region)
    if isinstance(sdata, AnnData):
        return _draw_table(sdata, color=color, layer=layer, library_id=library_id,
                           region=region, cmap=cmap, alpha=alpha, title=title, ax=ax, save=save)
    require_element(sdata, tiles_key, "shapes")
    table = _annotating_table(sdata, tiles_key)
    if image_key is None and table is not None:
        image_key = table.uns.get("tiles", {}).get("image_key")
    return _draw(sdata, tiles_key, table, color=color, layer=layer, image_key=image_key,
                 region=region, cmap=cmap, alpha=alpha, max_side=max_side, title=title, ax=ax,
                 save=save)


@shared_docs
def spots(
    sdata: SpatialData | AnnData,
    spots_key: str = "spots",
    *,
    color: str | None = None,
    layer: str | None = None,
    image_key: str | None = "he",
    region: Sequence[float] | None = None,
    library_id: str | None = None,
    cmap: str = "viridis",
    alpha: float = 0.8,
    max_side: int = 1000,
    title: str | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Draw capture spots over the image, coloured by expression or any spot annotation.

    The colourbar names what it shows: the ``obs`` column, or the gene and its values
    (``"EPCAM (counts)"`` for ``layer="counts"``, ``"EPCAM (log1p)"`` for a prediction table or
    a table that ``sc.pp.log1p`` marked).

    Parameters
    ----------
    sdata
        The section, or an AnnData with ``obsm["spatial"]`` in um: a prediction table of
        :func:`histoexpr.tl.predict` (drawn as its tiles) or any table with scanpy's
        ``uns["spatial"]`` record, whose image (``images["hires"]``) is drawn under the spots,
        circles ``scalefactors["spot_diameter_fullres"]`` um wide.
    spots_key
        Key of the spot circles; unused for a table.
    color
        A gene (``var_names`` of the spot table) or a column of its ``obs``; ``None`` draws
        outlines.
    layer
        Layer of the table to read genes from (``X`` when ``None``).
    image_key
        Image under the spots; ``None`` draws the spots alone. Unused for a table (its
        ``uns["spatial"]`` image is drawn).
    region
        ``(x_min, y_min, x_max, y_max)`` in um (the section's coordinates, as ``region=`` of
        :func:`histoexpr.pl.labels` and :func:`histoexpr.tl.predict`) to show: the image is read
        for that crop only, spots outside it are left out and the axes are limited to it.
        ``None`` shows everything.
    library_id
        For a table: which library of ``uns["spatial"]`` to draw (the only one by default).
    cmap
        Colormap for numeric values.
    alpha
        Opacity of the spots.

    Returns
    -------
    The axes drawn into.

    Examples
    --------
    .. plot::

        >>> import histoexpr as hx
        >>> sdata = hx.datasets.synthetic_section(size_um=300)
        >>> ax = hx.pl.spots(sdata, "spots", color="EPCAM", region=(0, 0, 150, 150))
        >>> ax.collections[0].colorbar.ax.get_ylabel()
        'EPCAM (counts)'

    A prediction table of :func:`histoexpr.tl.predict` draws on its own, over its stored image
    (``hx.pl.spots(sdata.tables["spot_tiles_expression"], color="EPCAM")``), as it does with
    ``sc.pl.spatial`` and ``sq.pl.spatial_scatter``.

    """
    check_save(save)
    from anndata import AnnData

    region = check_region(region)
    if isinstance(sdata, AnnData):
        return _draw_table(sdata, color=color, layer=layer, library_id=library_id,
                           region=region, cmap=cmap, alpha=alpha, title=title, ax=ax, save=save)
    require_element(sdata, spots_key, "shapes")
    table = _annotating_table(sdata, spots_key)
    return _draw(sdata, spots_key, table, color=color, layer=layer, image_key=image_key,
                 region=region, cmap=cmap, alpha=alpha, max_side=max_side, title=title, ax=ax,
                 save=save)


def _draw(sdata, shapes_key, table, *, color, layer, image_key, region, cmap, alpha, max_side,
          title, ax, save) -> Axes:
    import matplotlib.pyplot as plt

    check_max_side(max_side)
    if image_key is not None and image_key not in sdata.images and image_key not in sdata.labels:
        choice = "image_key= with one of them, or " if len(sdata.images) else ""
        raise KeyError(f"sdata has no image {image_key!r} (images: {sorted(sdata.images)}). Pass "
                       f"{choice}image_key=None to draw {shapes_key!r} alone.")
    shapes = sdata.shapes[shapes_key]
    if region is not None:
        shapes = shapes.cx[region[0]:region[2], region[1]:region[3]]
    values = None if color is None else _shape_values(shapes, table, color, layer, shapes_key)
    check_drawable(values, color)  # before a figure is made
    check_shapes_memory(shapes, f" of {shapes_key!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    dark_background = False
    if image_key is not None:
        dark_background = draw_image(ax, sdata, image_key, max_side=max_side,
                                     region=region).ndim == 2
    _draw_shapes(ax, shapes, values, cmap=cmap, alpha=alpha,
                 label=None if color is None else value_label(table, color, layer),
                 outline="white" if dark_background else "black")
    _finish(ax, region, title if title is not None else (color or shapes_key), save)
    return ax


def _finish(ax: Axes, region, title: str, save, unit: str = "um") -> None:
    ax.set_aspect("equal")
    if region is not None:
        ax.set_xlim(region[0], region[2])
        ax.set_ylim(region[3], region[1])
    if not ax.yaxis_inverted():  # image convention: y grows downwards
        ax.invert_yaxis()
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    ax.set_title(title)
    save_figure(ax.figure, save)


def _draw_table(table: AnnData, *, color, layer, library_id, region, cmap, alpha, title, ax,
                save) -> Axes:
    """A table drawn on its own: its rows at ``obsm["spatial"]`` over its ``uns["spatial"]``."""
    import matplotlib.pyplot as plt

    if color is not None:
        check_drawable(_column(table, color, layer), color)  # before a figure is made
    record = spatial_record(table, library_id)
    shapes = table_shapes(table, record)
    keep = np.ones(len(shapes), dtype=bool)
    if region is not None:
        keep = shapes.intersects(_box(region)).to_numpy()
    shapes = shapes[keep]
    check_shapes_memory(shapes, " of the table")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    if record is not None:
        draw_table_image(ax, record[1])
    values = None
    if color is not None:
        values = pd.Series(_column(table, color, layer)[keep], index=shapes.index)
    _draw_shapes(ax, shapes, values, cmap=cmap, alpha=alpha,
                 label=None if color is None else value_label(table, color, layer),
                 outline="black")
    # scanpy's and squidpy's own tables hold full-resolution pixels in obsm["spatial"]
    source = record[1].get("metadata", {}).get("source") if record is not None else "histoexpr"
    _finish(ax, region, title if title is not None else (color or "table"), save,
            unit="um" if source == "histoexpr" else "full-resolution px")
    return ax


def draw_table_image(ax: Axes, record: dict) -> np.ndarray | None:
    """Show the image of a ``uns["spatial"]`` record in the units of ``obsm["spatial"]`` (um).

    The ``"hires"`` image, else the ``"lowres"`` one (with its own scale factor), as scanpy's
    ``sc.pl.spatial`` takes them; a record with neither draws no image (logged).
    """
    images = record.get("images", {})
    scalefactors = record.get("scalefactors", {})
    name = next((n for n in ("hires", "lowres") if n in images
                 and f"tissue_{n}_scalef" in scalefactors), None)
    if name is None:
        logger.info("The table's uns['spatial'] record has no 'hires' or 'lowres' image with its "
                    "scale factor; drawing the spots without an image.")
        return None
    image = np.asarray(images[name])
    scale = float(scalefactors[f"tissue_{name}_scalef"])  # image pixels per unit of obsm
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width / scale, height / scale, 0),
              cmap="gray" if image.ndim == 2 else None, interpolation="antialiased")
    return image


def table_shapes(table: AnnData, record: tuple[str, dict] | None):
    """Circles (or the squares of tiles) at a table's ``obsm["spatial"]`` (um), in row order."""
    import geopandas as gpd
    from shapely import box, points

    if "spatial" not in table.obsm:
        raise KeyError("The table has no obsm['spatial'] (centres in um) to draw; pass the "
                       "section (SpatialData) instead, or a table made by histoexpr.")
    centres = np.asarray(table.obsm["spatial"], dtype=float)[:, :2]
    index = pd.RangeIndex(len(centres))
    tiles = table.uns.get("tiles") if hasattr(table.uns, "get") else None
    if tiles and "size_um" in tiles:
        half = float(tiles["size_um"]) / 2
        return gpd.GeoDataFrame(geometry=box(centres[:, 0] - half, centres[:, 1] - half,
                                             centres[:, 0] + half, centres[:, 1] + half),
                                index=index)
    if record is not None and "spot_diameter_fullres" in record[1]["scalefactors"]:
        radius = float(record[1]["scalefactors"]["spot_diameter_fullres"]) / 2
    else:  # no record: spots a little smaller than their spacing
        from scipy.spatial import cKDTree

        distance = cKDTree(centres).query(centres, k=2)[0][:, 1] if len(centres) > 1 else [10.0]
        radius = 0.4 * float(np.median(distance))
    return gpd.GeoDataFrame({"radius": np.full(len(centres), radius)},
                            geometry=points(centres), index=index)


def _box(region):
    from shapely import box

    return box(*region)


def check_region(region: Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """``region`` as four floats ``(x_min, y_min, x_max, y_max)``, or a clear error."""
    if region is None:
        return None
    try:
        values = tuple(float(v) for v in region)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not (values[0] < values[2] and values[1] < values[3]):
        raise ValueError(f"region must be (x_min, y_min, x_max, y_max) in um with x_min < x_max "
                         f"and y_min < y_max, e.g. (0, 0, 500, 500); got {region!r}.")
    return values  # type: ignore[return-value]


def value_label(table: AnnData | None, color: str, layer: str | None) -> str:
    """What a colourbar shows: an obs column's name, or a gene and its kind of values."""
    if table is None or color in table.obs.columns or color not in table.var_names:
        return color
    kind = values_kind(table, layer)
    return color if kind is None else f"{color} ({kind})"


def values_kind(table: AnnData, layer: str | None) -> str | None:
    """``"log1p"``, ``"counts"``, a layer's name, or ``None`` when the table does not say."""
    if layer is not None:
        return layer
    record = table.uns.get("prediction") if hasattr(table.uns, "get") else None
    if isinstance(record, dict) and "log1p" in str(record.get("values", "")):
        return "log1p"
    if "log1p" in table.uns:
        return "log1p"
    counts = table.layers["counts"] if "counts" in table.layers else None
    if counts is not None and counts.shape == table.X.shape:
        same = (counts != table.X)
        same = same.nnz == 0 if hasattr(same, "nnz") else not np.asarray(same).any()
        if same:
            return "counts"
    return None


def _column(table: AnnData, color: str, layer: str | None) -> np.ndarray:
    if color in table.obs.columns:
        return table.obs[color].to_numpy()
    if color in table.var_names:
        column = table[:, color].layers[layer] if layer is not None else table[:, color].X
        dense = column.toarray() if hasattr(column, "toarray") else np.asarray(column)
        return dense.ravel()
    raise KeyError(f"{color!r} is neither a column of the table's obs nor one of its "
                   f"{table.n_vars} genes. obs columns: {list(table.obs.columns)}.")


def draw_image(ax: Axes, sdata: SpatialData, image_key: str, *, max_side: int = 1000,
               region: Sequence[float] | None = None) -> np.ndarray:
    """Show an image in micrometre coordinates, read at a level near ``max_side`` pixels.

    ``region`` (``(x_min, y_min, x_max, y_max)`` in um) reads only that crop. Returns what was
    shown: ``(H, W)`` for one channel (drawn in grey), else ``(H, W, 3)``.
    """
    check_max_side(max_side)
    level0 = image_levels(sdata, image_key)[0]
    height, width = level0.shape_yx
    x0, y0 = level0.offset
    x1, y1 = x0 + width * level0.mpp, y0 + height * level0.mpp
    if region is not None:
        x0, y0, x1, y1 = (float(v) for v in region)
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


def check_drawable(values: Any, what: str | None) -> None:
    """Refuse numeric values to colour by of which none is a finite number (an empty plot)."""
    if values is None:
        return
    array = np.asarray(values)
    if array.dtype.kind in "biufc" and not np.isfinite(array.astype(float)).any():
        state = "empty" if array.size == 0 else "all NaN or infinite"
        raise ValueError(f"The values of {what!r} to colour by are {state} ({array.size} "
                         "values): the plot would show nothing. Check the column or gene (a "
                         "prediction that failed, a layer not filled) or draw another.")


def check_shapes_memory(shapes, what: str = "") -> None:
    """Refuse, before a patch is made, shapes whose patches exceed the memory limit.

    matplotlib holds one patch per shape (``_BYTES_PER_SHAPE``, and ``_BYTES_PER_VERTEX`` a
    vertex of a polygon): a million tiles or cells take GiB.
    """
    from .._core.memory import check_memory

    n_shapes = len(shapes)
    n_bytes = float(n_shapes) * _BYTES_PER_SHAPE
    if n_shapes and "radius" not in shapes.columns:
        import shapely

        n_bytes += float(shapely.get_num_coordinates(shapes.geometry.values).sum()
                         ) * _BYTES_PER_VERTEX
    check_memory(n_bytes, f"Drawing {n_shapes:,} shapes{what} (one matplotlib patch each)",
                 "Pass region=(x_min, y_min, x_max, y_max) in um to draw part of the section, "
                 "or draw fewer shapes (e.g. larger tiles, or a subset of the table).")


def _draw_shapes(ax: Axes, shapes, values: pd.Series | None, *, cmap: str, alpha: float,
                 label: str | None, outline: str, vmin: float | None = None,
                 vmax: float | None = None) -> None:
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle, Polygon

    check_shapes_memory(shapes)
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
        check_drawable(values, label)
        collection = PatchCollection(patches, cmap=cmap, alpha=alpha, edgecolor="none")
        collection.set_array(values.to_numpy(dtype=float))
        if vmin is not None or vmax is not None:
            collection.set_clim(vmin, vmax)
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
