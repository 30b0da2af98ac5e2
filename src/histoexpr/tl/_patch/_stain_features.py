"""Per-cell intensity features of additional stain channels (e.g. poly-T beside DAPI).

Used by the cell-morphology model when ``stains_key`` is given: for each chosen channel of that
image, the mean and spread of its intensity inside each cell and in a ring of ``ring_um``
around it (for nuclei: the cytoplasm; for whole-cell polygons: the cell's surroundings), the
ring's area relative to the cell's (cells pressed against their neighbours have a thin one), and
all of these averaged over neighbouring cells (Gaussians of ``smooth_um``), as the DAPI
features are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _channel_names(sdata, stains_key: str) -> list[str]:
    from ..._core.image import image_levels

    array = image_levels(sdata, stains_key)[0].data
    if "c" in array.coords:
        return [str(c) for c in array.coords["c"].values]
    return [str(i) for i in range(array.sizes.get("c", 1))]


def stain_channels(sdata, stains_key: str, stains: Sequence[str] | None) -> list[str]:
    """The channel names of ``stains_key`` to use; an error naming the fix if one is absent."""
    if stains_key not in sdata.images:
        images = ", ".join(repr(k) for k in sdata.images.keys()) or "none"
        raise KeyError(f"No stain image {stains_key!r} in sdata.images (images: {images}); pass "
                       "stains_key= the image of the other stains (hx.io.read_merscope writes "
                       "them as 'stains') or stains_key=None for the nuclear image alone.")
    available = _channel_names(sdata, stains_key)
    if stains is None:
        return available
    if isinstance(stains, str):
        stains = [stains]
    missing = [s for s in stains if str(s) not in available]
    if missing or not len(stains):
        raise ValueError(f"Stain channel(s) {missing or list(stains)} not in "
                         f"sdata.images[{stains_key!r}], whose channels are {available}; pass "
                         "stains= some of those names, or stains=None for all of them.")
    return [str(s) for s in stains]


def stain_features_bytes_per_px(sdata, stains_key: str, channels: Sequence[str]) -> int:
    """Bytes per pixel that :func:`stain_features` holds at its peak, for memory estimates.

    The image read (every channel, as float32, beside its pixels as stored), then per chosen
    channel its intensity and square (float32); the cells' int32 ids and ring, and the work of
    ``expand_labels`` (the distance transform's int32 indices and float64 distances): ~64 B.
    """
    from ..._core.image import image_levels

    itemsize = image_levels(sdata, stains_key)[0].data.dtype.itemsize
    n_available = len(_channel_names(sdata, stains_key))
    return n_available * (4 + itemsize) + 8 * len(channels) + 64


def stain_features(sdata, cells: str, stains_key: str, channels: Sequence[str],
                   bounds: tuple[float, float, float, float], *, mpp: float, ring_um: float,
                   smooth_um: Sequence[float], names: np.ndarray) -> np.ndarray:
    """Features (len(names), F) of the cells ``names`` (in that order) from the stain channels.

    Per channel: intensity (0..1) mean and standard deviation inside the cell and in the ring
    of ``ring_um`` around it (pixels of no cell within ``ring_um`` of it, each given to the
    nearest cell), and the ratio of the ring's mean to the cell's; plus the ring's area
    relative to the cell's. Then the same averaged over neighbouring cells. It holds about
    :func:`stain_features_bytes_per_px` bytes per pixel of ``bounds`` at ``mpp``: callers
    estimate that memory before calling it.
    """
    from skimage.segmentation import expand_labels

    from ..._core.cells import cell_centroids, cell_means, cell_raster, smooth_over_cells
    from ..._core.image import read_region, to_unit_float

    available = _channel_names(sdata, stains_key)
    pixels = to_unit_float(np.asarray(read_region(sdata, stains_key, bounds, mpp=mpp)))
    pixels = pixels[[available.index(c) for c in channels]]
    origin = (float(bounds[0]), float(bounds[1]))
    ids, raster_names = cell_raster(sdata, cells, origin, mpp, pixels.shape[1:])
    ring = expand_labels(ids, distance=max(1.0, ring_um / mpp))
    ring[ids > 0] = 0
    n = int(ids.max())
    area = np.bincount(ids.ravel(), minlength=n + 1)[1:].astype(float)
    ring_area = np.bincount(ring.ravel(), minlength=n + 1)[1:].astype(float)
    squares = pixels**2
    inside, inside_sq = cell_means(pixels, ids), cell_means(squares, ids)
    around, around_sq = cell_means(pixels, ring), cell_means(squares, ring)
    no_ring = ring_area == 0
    around[no_ring], around_sq[no_ring] = inside[no_ring], inside_sq[no_ring]
    own = np.column_stack([
        inside, np.sqrt(np.maximum(inside_sq - inside**2, 0)),
        around, np.sqrt(np.maximum(around_sq - around**2, 0)),
        np.log((around + 1e-3) / (inside + 1e-3)),
        np.log1p(ring_area / np.maximum(area, 1))[:, None]])
    centroids = cell_centroids(ids, origin, mpp)
    smoothed = [smooth_over_cells(own, centroids, float(sigma)) for sigma in smooth_um]
    features = np.column_stack([own, *smoothed])
    lookup = {str(name): i for i, name in enumerate(raster_names)}
    rows = [lookup.get(str(name), -1) for name in names]
    out = np.zeros((len(names), features.shape[1]))
    found = np.array(rows) >= 0
    out[found] = features[np.array(rows)[found]]
    if not found.all():  # a cell of the nuclear image's raster that this raster lacks
        out[~found] = features.mean(axis=0)
    return out
