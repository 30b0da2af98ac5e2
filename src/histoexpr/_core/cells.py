"""Cells (polygons or a label image) rasterised onto a grid: the cell of every grid pixel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .labels import integer_labels
from .logs import logger

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: the Gaussians (um) of :func:`cell_features`' gradient and Laplacian maps
SIGMAS_UM = (0.5, 1.0, 2.0)
#: the squares (um) over which :func:`cell_features` averages intensity and foreground
CONTEXT_UM = (10.0, 25.0)


def cell_raster(sdata: SpatialData, cells: str, origin: tuple[float, float], step: float,
                shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The cell of every pixel of a grid, and the cells' names.

    ``cells`` is a key of ``sdata.shapes`` (polygons) or ``sdata.labels`` (a label image); the
    grid has ``shape`` pixels of ``step`` um from ``origin`` (x, y) in the ``"global"`` system.
    Returns ``(ids, names)``: ``ids`` (int32, 0 outside every cell, ``i`` in the cell
    ``names[i - 1]``) and the names of the cells that cover at least one pixel.
    """
    require_cells(sdata, cells)
    raster = _polygon_raster if cells in sdata.shapes else _label_raster
    ids, names = raster(sdata, cells, origin, step, shape)
    if not len(names):
        raise ValueError(f"No cell of {cells!r} lies on the grid; check that the cells and the "
                         "image share the 'global' coordinate system.")
    return ids, names


def require_cells(sdata: SpatialData, cells: str) -> None:
    """Raise a clear error unless ``cells`` names cell polygons or a cell label image."""
    if cells not in sdata.shapes and cells not in sdata.labels:
        raise KeyError(f"No cells {cells!r} in sdata.shapes or sdata.labels; read cell polygons "
                       "with hx.io.read_cell_boundaries or pass a cell label image.")


def raster_bytes_per_px(sdata: SpatialData, cells: str) -> int:
    """Bytes per grid pixel that :func:`cell_raster` holds at its peak, for memory estimates.

    Polygons: the int32 ids. A label image adds the labels read and padded, and
    ``np.unique``'s flattened and sorted copies (2 + 2 labels' bytes), its order, inverse and
    running count (3 x 8 bytes).
    """
    require_cells(sdata, cells)
    if cells in sdata.shapes:
        return 4
    from .image import image_levels

    itemsize = image_levels(sdata, cells)[0].data.dtype.itemsize
    return 4 + 4 * itemsize + 3 * 8


def cell_features_bytes_per_px(n_channels: int, sigmas_um: tuple[float, ...] = SIGMAS_UM,
                               context_um: tuple[float, ...] = CONTEXT_UM) -> int:
    """Bytes per pixel that :func:`cell_features` holds at its peak, for memory estimates.

    Per channel: the float32 intensity and the ``2 + 2 * len(sigmas_um) + 2 * len(context_um)``
    float32 maps (12 by default, the intensity among them), each held twice (the list and the
    stacked array, then the stacked array and its square). Besides: the last channel's maps
    (still referenced), the smoothed intensity, the cells' int32 ids and the per-cell sums'
    work (a mask, the ids and one map in float64). Measured: 164 B/px for one channel (180
    estimated), 360 for three (380). The cell raster's own peak (:func:`raster_bytes_per_px`)
    comes while only the maps are held, and is lower.
    """
    n_maps = 2 + 2 * len(sigmas_um) + 2 * len(context_um)
    return n_channels * (4 + 2 * 4 * n_maps) + 4 * n_maps + 32


def cell_centroids(ids: np.ndarray, origin: tuple[float, float], step: float) -> np.ndarray:
    """Centroids (x, y) in um of the cells ``1..ids.max()`` of a raster."""
    rows, cols = np.nonzero(ids)
    n = int(ids.max())
    area = np.maximum(np.bincount(ids[rows, cols], minlength=n + 1)[1:], 1)
    sums = [np.bincount(ids[rows, cols], weights=v, minlength=n + 1)[1:] for v in (cols, rows)]
    return np.column_stack([origin[0] + (sums[0] / area + 0.5) * step,
                            origin[1] + (sums[1] / area + 0.5) * step])


def _polygon_raster(sdata, cells: str, origin, step: float, shape):
    from shapely import affinity
    from skimage.draw import polygon
    from spatialdata.transformations import get_transformation

    shapes = sdata.shapes[cells]
    matrix = get_transformation(shapes, "global").to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y"))
    # global um -> grid coordinates in which pixel (r, c) has its centre at (c, r)
    to_grid = np.array([[1 / step, 0, -origin[0] / step - 0.5],
                        [0, 1 / step, -origin[1] / step - 0.5], [0, 0, 1]]) @ matrix
    ids = np.zeros(shape, dtype=np.int32)
    names = []
    for name, geometry in zip(shapes.index.astype(str), shapes.geometry, strict=True):
        placed = affinity.affine_transform(geometry, [*to_grid[0, :2], *to_grid[1, :2],
                                                      to_grid[0, 2], to_grid[1, 2]])
        parts = getattr(placed, "geoms", [placed])
        filled = False
        for part in parts:
            xy = np.asarray(part.exterior.coords)
            rr, cc = polygon(xy[:, 1], xy[:, 0], shape)
            if rr.size:
                ids[rr, cc] = len(names) + 1
                filled = True
        if filled:
            names.append(name)
    if len(names) < len(shapes):
        logger.info("%d of %d cells cover no pixel of the %g um grid (outside it or too small).",
                    len(shapes) - len(names), len(shapes), step)
    return ids, np.asarray(names, dtype=object)


def _label_raster(sdata, cells: str, origin, step: float, shape):
    from .image import read_region

    height, width = shape
    bounds = (origin[0], origin[1], origin[0] + width * step, origin[1] + height * step)
    values = np.asarray(read_region(sdata, cells, bounds, mpp=step,
                                    outside="fill"))[:height, :width]
    values = integer_labels(values, f"label image sdata.labels[{cells!r}]")
    padded = np.zeros(shape, dtype=values.dtype)
    padded[: values.shape[0], : values.shape[1]] = values
    unique, inverse = np.unique(padded, return_inverse=True)
    ids = inverse.reshape(shape).astype(np.int32)
    if unique[0] != 0:
        ids += 1
    else:
        unique = unique[1:]
    return ids, unique.astype(str).astype(object)


def cell_means(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean of each channel of ``values`` (C, H, W) over each cell of ``ids``: (n cells, C)."""
    n = int(ids.max())
    inside = ids > 0
    area = np.maximum(np.bincount(ids[inside], minlength=n + 1)[1:], 1)
    return np.column_stack([np.bincount(ids[inside], weights=channel[inside],
                                        minlength=n + 1)[1:] / area for channel in values])


def smooth_over_cells(values: np.ndarray, centroids: np.ndarray, sigma_um: float) -> np.ndarray:
    """Each cell's values averaged with its neighbours', Gaussian-weighted by distance (um)."""
    from scipy.sparse import diags
    from scipy.spatial import cKDTree

    tree = cKDTree(centroids)
    distances = tree.sparse_distance_matrix(tree, 3 * sigma_um, output_type="coo_matrix")
    weights = distances.copy()
    weights.data = np.exp(-0.5 * (distances.data / sigma_um) ** 2)
    weights = weights.tocsr() + diags(np.ones(len(centroids)))  # the cell itself (distance 0)
    return (weights @ values) / np.asarray(weights.sum(axis=1))


def cell_features(sdata: SpatialData, cells: str, image_key: str,
                  bounds: tuple[float, float, float, float], *, mpp: float = 0.5,
                  sigmas_um: tuple[float, ...] = SIGMAS_UM,
                  context_um: tuple[float, ...] = CONTEXT_UM,
                  smooth_um: tuple[float, ...] = (15.0, 40.0),
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell intensity, shape and neighbourhood features of the cells in ``bounds``.

    For each channel of ``image_key`` read at ``mpp`` over ``bounds`` (x0, y0, x1, y1 in um):
    intensity (scaled to 0..1), Otsu foreground, and the gradient magnitude and Laplacian of
    Gaussian at each of ``sigmas_um``, plus the intensity and foreground averaged over squares
    of ``context_um`` (nuclei density and brightness around the cell). Each cell gets the mean
    and standard deviation of every map over its pixels and the log of its area; then the same
    features averaged over neighbouring cells (Gaussian of each of ``smooth_um``) are appended.
    Returns ``(features (n, F), names (n,), centroids (n, 2) in um)`` of the cells that cover a
    pixel of the grid. It holds about :func:`cell_features_bytes_per_px` bytes per pixel of
    ``bounds`` at ``mpp``: callers estimate that memory (``check_memory``) before calling it.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    from .image import read_region, to_unit_float

    pixels = to_unit_float(np.asarray(read_region(sdata, image_key, bounds, mpp=mpp)))
    maps = []
    for channel in pixels:
        smooth = ndimage.gaussian_filter(channel, 1)
        threshold = threshold_otsu(channel) if np.ptp(channel) > 0 else channel.max() + 1
        own = [channel, (smooth > threshold).astype(np.float32)]
        for sigma_um in sigmas_um:
            own.append(ndimage.gaussian_gradient_magnitude(channel, sigma_um / mpp))
            own.append(-ndimage.gaussian_laplace(channel, sigma_um / mpp))
        for size_um in context_um:
            own += [ndimage.uniform_filter(m, size=max(1, int(size_um / mpp))) for m in own[:2]]
        maps += own
    maps = np.stack(maps)
    ids, names = cell_raster(sdata, cells, (float(bounds[0]), float(bounds[1])), mpp,
                             maps.shape[1:])
    mean = cell_means(maps, ids)
    std = np.sqrt(np.maximum(cell_means(maps**2, ids) - mean**2, 0))
    area = np.bincount(ids.ravel(), minlength=int(ids.max()) + 1)[1:, None] * mpp**2
    own = np.column_stack([mean, std, np.log(area)])
    centroids = cell_centroids(ids, (float(bounds[0]), float(bounds[1])), mpp)
    smoothed = [smooth_over_cells(own, centroids, float(sigma)) for sigma in smooth_um]
    return np.column_stack([own, *smoothed]), names, centroids
