"""Tiling: square tiles over the tissue, on a grid or centred on spots."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._core.elements import foreign_tile_entries, square_shapes, tile_table
from .._core.image import (
    COORDINATE_SYSTEM,
    check_pixel_size_stated,
    image_levels,
    read_region,
)
from .._core.logs import log_added, logger, shown
from .._core.memory import check_memory
from .._core.ownership import (
    check_key_writable,
    discard_element,
    replace_elements,
    require_element,
)
from .._core.records import TileRecord, current_within
from .._core.validate import (
    check_bool,
    check_fraction,
    check_int,
    check_positive,
    renamed_parameters,
    stride_name,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: how the elements this step writes record their writer (see ``_core.ownership.store_element``)
STEP = "hx.pp.tile"

DEFAULT_SIZE = 224
# tissue fractions are measured on the tissue map at its own resolution, or at this fraction of
# the tile side where the map is finer, so that measuring costs little memory
_FRACTION_PIXELS_PER_TILE = 64
#: memory of one tile while tiling: centre, box, fraction, polygon, table row (~0.4 kB measured
#: by tracemalloc, more in the geometry library)
_BYTES_PER_TILE = 1024



@renamed_parameters(size="size_px", stride=stride_name, centers="centres")
def tile(
    sdata: SpatialData,
    image_key: str = "he",
    *,
    size_px: int | None = None,
    mpp: float | None = None,
    size_um: float | None = None,
    stride_px: float | None = None,
    stride_um: float | None = None,
    min_tissue: float = 0.5,
    tissue_key: str | None = None,
    centres: str | None = None,
    key_added: str | None = None,
    overwrite: bool = False,
) -> None:
    """Cut an image into square tiles, on a grid over the tissue or centred on spots.

    A tile is ``size_px`` pixels wide at ``mpp`` um/px, so it covers ``size_px * mpp`` um; give
    ``size_um`` instead of ``size_px`` to fix its width in micrometres. Grid tiles lie wholly
    inside the image, from its top-left corner every ``stride_um`` (or ``stride_px``). A tile is
    kept when the fraction of its area covered by tissue is at least ``min_tissue``; the tissue
    is read from the label map ``tissue_key``. When no tissue map exists, one is detected first
    with :func:`histoexpr.pp.detect_tissue` (default options) and added as
    ``sdata.labels[f"{image_key}_tissue"]``. Pixels are not read here: the tiles are geometry,
    read later by :class:`histoexpr.pp.TileDataset`.

    Parameters
    ----------
    sdata
        The section.
    image_key
        Key of the image in ``sdata.images``.
    size_px
        Tile width and height in pixels at ``mpp``; 224 unless ``size_um`` is given. (Was
        ``size``, still accepted with a ``FutureWarning``.)
    mpp
        Pixel size of the tiles in um/px; defaults to the image's full resolution. Tiles at a
        coarser pixel size are read from the matching pyramid level. ``mpp``, ``size_um`` and
        ``stride_um`` need an image that states its pixel size (a transformation to
        micrometres other than the identity): one that does not is refused, never read as
        1 um/px.
    size_um
        Tile width in micrometres, instead of ``size_px``; the tile then has
        ``round(size_um / mpp)`` pixels (and its pixel size is adjusted so that they cover
        exactly ``size_um``).
    stride_px
        Distance between neighbouring grid tiles in pixels at the tiles' ``mpp``; give it or
        ``stride_um``, not both. Both default to the tile size (tiles touch, no overlap). Not
        used with ``centres``. (The old ``stride``, in the unit of the size, is still accepted
        with a ``FutureWarning``.)
    stride_um
        Distance between neighbouring grid tiles in micrometres.
    min_tissue
        Smallest fraction, in ``[0, 1]``, of a tile's area covered by tissue for it to be kept;
        ``0`` keeps every tile.
    tissue_key
        Key of the tissue label map in ``sdata.labels`` (0 is background); defaults to
        ``f"{image_key}_tissue"``, detected first if it does not exist. A map that
        :func:`histoexpr.pp.detect_tissue` made is refused once its image holds other pixels
        (replaced or edited since); a map of the user's own is used as it is.
    centres
        Key of shapes in ``sdata.shapes`` (e.g. ``"spots"``): one tile is centred on each shape's
        centre instead of a grid. The table's ``obs["spot_id"]`` holds the shape's index. (Was
        ``centers``, still accepted with a ``FutureWarning``.)
    key_added
        Key of the tiles in ``sdata.shapes``; defaults to ``f"{image_key}_tiles"``. Their table
        is ``f"{key_added}_table"``.
    overwrite
        Replace existing elements named ``key_added`` and ``f"{key_added}_table"`` that an
        earlier ``tile`` wrote; an element of another origin is never replaced (an error
        suggests another key), nor a tile table holding entries ``tile`` did not write (the
        features of :func:`histoexpr.tl.embed`, the user's columns), which remaking the tiles
        would delete.

    Returns
    -------
    Nothing; adds ``sdata.shapes[key_added]``, the tiles as square polygons in micrometres,
    and ``sdata.tables[f"{key_added}_table"]`` annotating them: ``obs["tile_id"]`` (the shapes'
    index), ``obs["tissue_fraction"]``, ``obs["grid_row"]`` and ``obs["grid_col"]`` (grid tiles)
    or ``obs["spot_id"]`` (with ``centres``), ``obsm["spatial"]`` (tile centres in um) and
    ``uns["tiles"]`` with ``image_key``, ``size_px``, ``mpp``, ``size_um``, ``stride_um``
    (``None`` with ``centres``), ``centres`` (the ``centres`` key, ``None`` for a grid) and
    ``min_tissue``: how the tiles were made, checked before they are reused.

    Examples
    --------
    >>> import histoexpr as hx
    >>> sdata = hx.datasets.synthetic_section(seed=0)
    >>> hx.pp.tile(sdata, "he", size_um=100, mpp=1.0, stride_um=50)
    >>> hx.pp.tile(sdata, "he", size_um=55, mpp=1.0, centres="spots", min_tissue=0,
    ...            key_added="spot_tiles")
    """
    check_bool("overwrite", overwrite)
    require_element(sdata, image_key, "images")
    key_added = f"{image_key}_tiles" if key_added is None else key_added
    table_key = f"{key_added}_table"
    for key in (key_added, table_key):
        check_key_writable(sdata, key, overwrite=overwrite, step=STEP)
    if overwrite and table_key in sdata.tables:  # the table goes with the tiles it describes
        foreign = foreign_tile_entries(sdata, key_added, own_within=current_within())
        if foreign:
            raise KeyError(
                f"The tile table {table_key!r} holds entries hx.pp.tile did not write: "
                f"{shown(foreign)}. "
                "Remaking the tiles would delete them (they describe the old tiles), so "
                "overwrite=True does not: choose another key_added, or move those entries to a "
                "table of your own first. Nothing was written.")
    min_tissue = check_fraction("min_tissue", min_tissue, closed="both")
    if mpp is not None or size_um is not None or stride_um is not None:
        # a physical size asked of an image that does not state its own: refused, not 1 um/px
        check_pixel_size_stated(sdata, image_key)
    if stride_px is not None and stride_um is not None:
        raise ValueError("Give the stride either in pixels (stride_px) or in um (stride_um), "
                         "not both.")
    if centres is not None:
        require_element(sdata, centres, "shapes")
        if stride_px is not None or stride_um is not None:
            raise ValueError("A stride is for grid tiles; with centres, leave stride_px=None "
                             "and stride_um=None.")
    if tissue_key is not None:
        require_element(sdata, tissue_key, "labels")

    level0 = image_levels(sdata, image_key)[0]
    size_px, tile_mpp, size_um, stride_um = _tile_geometry(level0.mpp, size_px, mpp, size_um,
                                                           stride_px, stride_um)
    if tile_mpp < level0.mpp * (1 - 1e-6):
        logger.warning("Tiles at %g um/px are finer than the image (%g um/px): they will be "
                       "upsampled when read.", tile_mpp, level0.mpp)

    if centres is None:
        points, rows, cols = _grid_centres(level0, size_um, stride_um, size_px, tile_mpp)
    else:
        points, spot_ids = _shape_centres(sdata, centres)
    half = size_um / 2
    boxes = np.column_stack([points - half, points + half])  # x_min, y_min, x_max, y_max

    detected = False
    if tissue_key is None:
        tissue_key = f"{image_key}_tissue"
        if tissue_key not in sdata.labels:
            from ._tissue import detect_tissue

            logger.info("No tissue map %r: detecting tissue with hx.pp.detect_tissue.", tissue_key)
            detect_tissue(sdata, image_key, key_added=tissue_key)
            detected = True
    if not detected:
        _check_tissue_map(sdata, tissue_key)
    try:
        fractions = _tissue_fractions(sdata, tissue_key, boxes, size_um=size_um)
        keep = fractions >= min_tissue
        if not keep.any() and not fractions.max() > 0:
            raise ValueError(
                f"The tissue map {tissue_key!r} has no tissue under any of the {len(fractions)} "
                "tiles: it is empty, or was made for another image or region. Detect the "
                f"tissue again (hx.pp.detect_tissue(sdata, {image_key!r}, key_added="
                f"{tissue_key!r}, overwrite=True)), or pass min_tissue=0 to tile the whole image."
            )
        if not keep.any():
            raise ValueError(
                f"No tile of {size_um:g} um has at least min_tissue={min_tissue:g} of its area "
                f"on tissue ({tissue_key!r}); the best tile has {fractions.max():.3f}. Lower "
                "min_tissue or use smaller tiles."
            )
    except BaseException:
        if detected:  # the refused call leaves nothing behind: not the tissue map it detected
            discard_element(sdata, tissue_key)
        raise
    if (~keep).any():
        logger.info("Dropped %d of %d tiles with less than min_tissue=%g of tissue.",
                    int((~keep).sum()), keep.size, min_tissue)

    import pandas as pd

    n_tiles = int(keep.sum())
    tile_ids = np.arange(n_tiles)
    obs = pd.DataFrame({"tile_id": tile_ids, "tissue_fraction": fractions[keep]},
                       index=pd.Index(tile_ids.astype(str)))
    if centres is None:
        obs["grid_row"], obs["grid_col"] = rows[keep], cols[keep]
    else:
        obs["spot_id"] = np.asarray(spot_ids)[keep]
    record = TileRecord(image_key=image_key, size_px=size_px, mpp=tile_mpp, size_um=size_um,
                        stride_um=stride_um if centres is None else None, centres=centres,
                        min_tissue=float(min_tissue))
    shapes = square_shapes(boxes[keep], tile_ids)
    table = tile_table(obs, points[keep], key_added, record)

    replace_elements(sdata, [("shapes", key_added, shapes), ("tables", table_key, table)],
                     overwrite=overwrite, step=STEP)
    log_added("shapes", key_added, f"{n_tiles} tiles of {size_px} px at {tile_mpp:g} um/px")
    log_added("tables", table_key)


def _tile_geometry(image_mpp: float, size_px: int | None, mpp: float | None,
                   size_um: float | None, stride_px: float | None, stride_um: float | None):
    """Tile side in pixels, pixel size, side in um and stride in um, checked."""
    tile_mpp = image_mpp if mpp is None else check_positive("mpp", mpp, unit="um/px")
    if size_px is not None and size_um is not None:
        raise ValueError("Give the tile size either in pixels (size_px) or in um (size_um), "
                         "not both.")
    if size_um is None:
        size_px = DEFAULT_SIZE if size_px is None else check_int("size_px", size_px, minimum=1)
        size_um = size_px * tile_mpp
    else:
        size_um = check_positive("size_um", size_um, unit="um")
        size_px = round(size_um / tile_mpp)
        if size_px < 1:
            raise ValueError(
                f"size_um={size_um:g} is less than one pixel of {tile_mpp:g} um; give a larger "
                "size_um or a finer mpp."
            )
        tile_mpp = size_um / size_px
    if stride_px is not None:
        stride_um = check_positive("stride_px", stride_px, unit="pixels") * tile_mpp
    elif stride_um is not None:
        stride_um = check_positive("stride_um", stride_um, unit="um")
    else:
        stride_um = size_um
    return size_px, tile_mpp, size_um, stride_um


def _grid_centres(level0, size_um: float, stride_um: float, size_px: int, tile_mpp: float):
    """Centres (um), rows and columns of the grid tiles that lie wholly inside the image."""
    height_um, width_um = (n * level0.mpp for n in level0.shape_yx)
    if size_um > min(height_um, width_um) * (1 + 1e-9):
        raise ValueError(
            f"Tiles of {size_px} px at {tile_mpp:g} um/px ({size_um:g} um) are larger than the "
            f"image ({width_um:g} x {height_um:g} um). Use a smaller size or a finer mpp."
        )
    n_rows = int(np.floor((height_um - size_um) / stride_um + 1e-9)) + 1
    n_cols = int(np.floor((width_um - size_um) / stride_um + 1e-9)) + 1
    check_memory(float(n_rows) * n_cols * _BYTES_PER_TILE,
                 f"A grid of {float(n_rows) * n_cols:,.0f} tiles ({n_rows:,} x {n_cols:,}) of "
                 f"{size_um:g} um every {stride_um:g} um",
                 f"Pass a larger stride (stride_um=, or stride_px=; the default is the tile size, "
                 f"{size_px} px) or larger tiles.")
    rows, cols = (a.ravel() for a in np.mgrid[:n_rows, :n_cols])
    ox, oy = level0.offset
    centres = np.column_stack([ox + cols * stride_um, oy + rows * stride_um]) + size_um / 2
    return centres, rows, cols


def _shape_centres(sdata: SpatialData, shapes_key: str):
    """Centres (um, ``"global"``) of the shapes and their index."""
    from spatialdata.transformations import get_transformation

    shapes = sdata.shapes[shapes_key]
    transformations = get_transformation(shapes, get_all=True)
    if COORDINATE_SYSTEM not in transformations:
        raise ValueError(
            f"sdata.shapes[{shapes_key!r}] has no transformation to {COORDINATE_SYSTEM!r} "
            f"(it has {sorted(transformations)}); set one in micrometres first."
        )
    if len(shapes) == 0:
        raise ValueError(f"sdata.shapes[{shapes_key!r}] is empty: there is nothing to centre on.")
    matrix = transformations[COORDINATE_SYSTEM].to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")
    )
    centroids = shapes.geometry.centroid
    xy = np.column_stack([centroids.x.to_numpy(), centroids.y.to_numpy(), np.ones(len(shapes))])
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of the {len(shapes)} shapes of sdata.shapes[{shapes_key!r}] have no "
            f"centre (empty or NaN geometry, e.g. {list(shapes.index[bad][:3])}); drop them "
            "first, e.g. shapes[~shapes.geometry.is_empty & shapes.geometry.is_valid].")
    return (xy @ matrix.T)[:, :2], shapes.index.to_numpy()


def _check_tissue_map(sdata: SpatialData, tissue_key: str) -> None:
    """Refuse a tissue map that detect_tissue made from other pixels than its image holds now.

    A map records the image it was detected on and that image's fingerprint
    (``attrs["tissue"]``, :func:`histoexpr.pp.detect_tissue`; read back from a .zarr store, the
    copy kept in ``sdata.attrs`` while the map is unchanged); a map without the record (the
    user's own mask, or one made by an earlier version) is used as it is.
    """
    from .._core.image_facts import pixels_changed
    from .._core.ownership import element_record
    from ._tissue import RECORD_KEY

    record = element_record(sdata, tissue_key, RECORD_KEY)
    if record is None or not pixels_changed(sdata, record):
        return
    made_from = record.get("image_key")
    raise ValueError(
        f"The tissue map {tissue_key!r} was detected on other pixels than "
        f"sdata.images[{made_from!r}] holds now (the image was replaced or edited since): its "
        "tissue is not this image's. Detect the tissue again (hx.pp.detect_tissue(sdata, "
        f"{made_from!r}, key_added={tissue_key!r}, overwrite=True)), or pass tissue_key= of a "
        "map made from this image.")


def _tissue_fractions(sdata: SpatialData, tissue_key: str, boxes: np.ndarray, *,
                     size_um: float | None = None) -> np.ndarray:
    """Fraction of each box's area that lies on tissue (label > 0) of a label map.

    Parameters
    ----------
    sdata
        The section.
    tissue_key
        Key of the label map in ``sdata.labels``.
    boxes
        ``(n, 4)`` array of ``(x_min, y_min, x_max, y_max)`` in um.
    size_um
        Width of the boxes, if they are tiles: the map is read at no finer than 1/64 of it.

    Returns
    -------
    ``(n,)`` fractions in [0, 1], exact for the map's pixels (partly covered pixels count in
    proportion to the area covered); what lies outside the map counts as background.
    """
    from scipy.ndimage import map_coordinates

    level0 = image_levels(sdata, tissue_key)[0]
    read_mpp = level0.mpp
    if size_um is not None:
        read_mpp = max(read_mpp, size_um / _FRACTION_PIXELS_PER_TILE)
    height_um, width_um = (n * level0.mpp for n in level0.shape_yx)
    ox, oy = level0.offset
    # the map as read, whether each pixel is tissue, and their summed-area table (float64)
    out_h, out_w = (max(1, round(n / read_mpp)) for n in (height_um, width_um))
    check_memory(float(out_h) * out_w * (level0.data.dtype.itemsize + 1 + 8),
                 f"Measuring the tissue under the tiles on {tissue_key!r} ({out_w:,} x "
                 f"{out_h:,} px at {read_mpp:g} um/px)",
                 "Detect the tissue at a coarser pixel size (hx.pp.detect_tissue(sdata, "
                 "image_key, mpp=8, overwrite=True)) or pass a tissue_key= of a coarser map, "
                 "or use larger tiles.")
    tissue = read_region(sdata, tissue_key, (ox, oy, ox + width_um, oy + height_um),
                         mpp=read_mpp, outside="fill") > 0
    h, w = tissue.shape
    # summed-area table; its bilinear interpolation is the exact area of a fractional box.
    # Built row by row (each row the one above plus its own running sum: integers, exact in
    # float64), so that no int64 copy of the whole map is made
    table = np.zeros((h + 1, w + 1))
    running = np.empty(w)
    for row in range(h):
        np.cumsum(tissue[row], dtype=np.float64, out=running)
        np.add(table[row, 1:], running, out=table[row + 1, 1:])
    boxes = np.asarray(boxes, dtype=float)
    cols = np.clip((boxes[:, [0, 2]] - ox) * (w / width_um), 0, w)
    rows = np.clip((boxes[:, [1, 3]] - oy) * (h / height_um), 0, h)

    def at(r, c):
        return map_coordinates(table, [r, c], order=1, mode="nearest")

    area_px = (at(rows[:, 1], cols[:, 1]) - at(rows[:, 0], cols[:, 1])
               - at(rows[:, 1], cols[:, 0]) + at(rows[:, 0], cols[:, 0]))
    box_area_px = ((boxes[:, 2] - boxes[:, 0]) * (w / width_um)
                   * (boxes[:, 3] - boxes[:, 1]) * (h / height_um))
    return np.round(np.clip(area_px / box_area_px, 0, 1), 6)
