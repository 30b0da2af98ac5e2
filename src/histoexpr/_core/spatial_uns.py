"""What scanpy and squidpy read from a table to draw it over its image (``uns["spatial"]``).

``sc.pl.spatial`` and ``sq.pl.spatial_scatter`` draw the rows of a table at
``obsm["spatial"] * scalefactors["tissue_hires_scalef"]`` over ``uns["spatial"][library_id]
["images"]["hires"]``, with circles ``scalefactors["spot_diameter_fullres"] * scalef`` wide. In
histoexpr ``obsm["spatial"]`` is in micrometres of the section's ``"global"`` system, so the
"full resolution" of these scale factors is one micrometre: the image stored is the section's
image from ``(0, 0)`` um, downsampled so that its long side is at most ``max_side`` pixels, and
``tissue_hires_scalef`` is its pixels per micrometre. ``scalefactors["mpp"]`` (histoexpr's
addition) is the pixel size of the stored image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

#: Longest side, in pixels, of the image copied into a table (Visium's "hires" images are 2000).
MAX_SIDE = 2000


def add_spatial_uns(table: AnnData, sdata: SpatialData, image_key: str | None, *,
                    spot_diameter_um: float | None = None, library_id: str | None = None,
                    max_side: int = MAX_SIDE) -> AnnData:
    """Give ``table`` the ``uns["spatial"]`` record of scanpy's Visium tables, in place.

    The image is a downsampled RGB copy (``uint8``, long side ``<= max_side`` pixels) of
    ``sdata.images[image_key]``; ``library_id`` defaults to ``image_key``. Nothing is added when
    ``image_key`` is ``None`` or not an image of ``sdata``. ``spot_diameter_um=None`` (e.g.
    cells) takes 0.8 times the median distance between neighbouring rows. Returns ``table``.
    """
    from .image import image_levels, read_region

    if image_key is None or image_key not in sdata.images:
        return table
    level0 = image_levels(sdata, image_key)[0]
    height, width = level0.shape_yx
    x1 = level0.offset[0] + width * level0.mpp
    y1 = level0.offset[1] + height * level0.mpp
    if x1 <= 0 or y1 <= 0:
        return table  # the image lies wholly at negative coordinates: nothing to show from (0, 0)
    mpp = max(level0.mpp, max(x1, y1) / max_side)
    pixels = read_region(sdata, image_key, (0.0, 0.0, x1, y1), mpp=mpp, outside="fill")
    library_id = str(image_key if library_id is None else library_id)
    if spot_diameter_um is None:
        spot_diameter_um = _spacing(np.asarray(table.obsm["spatial"], dtype=float)) * 0.8
    table.uns["spatial"] = {library_id: {
        "images": {"hires": rgb_uint8(pixels)},
        "scalefactors": {"tissue_hires_scalef": float(1 / mpp),
                         "spot_diameter_fullres": float(spot_diameter_um),
                         "mpp": float(mpp)},
        "metadata": {"image_key": str(image_key), "source": "histoexpr",
                     "units": "obsm['spatial'] in um; full resolution = 1 um"},
    }}
    return table


def _spacing(centres: np.ndarray) -> float:
    """Median distance from each point to its nearest neighbour (10 um for fewer than two)."""
    from scipy.spatial import cKDTree

    if len(centres) < 2:
        return 10.0
    return float(np.median(cKDTree(centres[:, :2]).query(centres[:, :2], k=2)[0][:, 1]))


def rgb_uint8(pixels: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` of any dtype -> ``(H, W, 3)`` uint8 (fluorescence stretched to 1-99.5 %)."""
    if pixels.dtype == np.uint8:
        image = pixels
    else:
        values = pixels.astype(np.float32)
        low, high = np.percentile(values, [1, 99.5])
        image = np.round(np.clip((values - low) / max(high - low, 1e-6), 0, 1) * 255)
        image = image.astype(np.uint8)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(image[:3], 0, -1))


def spatial_record(table: AnnData, library_id: str | None = None) -> tuple[str, dict] | None:
    """``(library_id, record)`` of a table's ``uns["spatial"]`` (the only one, or the one named)."""
    libraries = table.uns.get("spatial") if hasattr(table.uns, "get") else None
    if not libraries:
        return None
    if library_id is None:
        if len(libraries) > 1:
            raise ValueError(f"The table holds the images of {len(libraries)} libraries "
                             f"({sorted(libraries)}); pass library_id= to choose one.")
        library_id = next(iter(libraries))
    if library_id not in libraries:
        raise KeyError(f"{library_id!r} is not a library of uns['spatial'] (libraries: "
                       f"{sorted(libraries)}).")
    return str(library_id), libraries[library_id]
