"""Image geometry in micrometres: pixel size, pyramid levels and lazy region reads.

histoexpr's convention: the ``"global"`` coordinate system of every SpatialData it writes is in
micrometres. An image's transformation to ``"global"`` is therefore a scale by its pixel size
(um/px), possibly followed by a translation. Everything below derives from that transformation,
so the pixel size is never stored twice.

Label maps (``sdata.labels``, dims ``(y, x)``) are read the same way as images: every function
below accepts the key of an image or of a label map.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .memory import available_memory, check_memory
from .validate import check_choice, check_positive

if TYPE_CHECKING:
    import xarray as xr
    from spatialdata import SpatialData

COORDINATE_SYSTEM = "global"
_ISOTROPY_TOLERANCE = 1e-3
#: a region whose pixels at the level read (and their resampling) exceed this is read in blocks
STREAM_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ImageLevel:
    """One resolution level of an image or label map: its lazy array and where its pixels lie."""

    data: xr.DataArray
    mpp: float
    offset: tuple[float, float]  # (x, y) in um of the corner of pixel (0, 0)

    @property
    def shape_yx(self) -> tuple[int, int]:
        """Height and width in pixels."""
        return int(self.data.sizes["y"]), int(self.data.sizes["x"])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x_min, y_min, x_max, y_max)`` in um: the outer edges of the level's pixels."""
        (x0, y0), (height, width) = self.offset, self.shape_yx
        return float(x0), float(y0), float(x0 + width * self.mpp), float(y0 + height * self.mpp)


def _scale_and_offset(element) -> tuple[float, tuple[float, float]]:
    """Pixel size and offset of an element's transformation to the micrometre system."""
    from spatialdata.transformations import get_transformation

    transformations = get_transformation(element, get_all=True)
    if COORDINATE_SYSTEM not in transformations:
        raise ValueError(
            f"The image has no transformation to the {COORDINATE_SYSTEM!r} coordinate system "
            f"(it has {sorted(transformations)}). Read it with a histoexpr reader or set one with "
            "spatialdata.transformations.set_transformation(image, Scale([mpp, mpp], "
            "axes=('y', 'x')), 'global')."
        )
    matrix = transformations[COORDINATE_SYSTEM].to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")
    )
    sx, sy = float(matrix[0, 0]), float(matrix[1, 1])
    if abs(matrix[0, 1]) > 1e-9 or abs(matrix[1, 0]) > 1e-9:
        raise ValueError(
            "The image's transformation to 'global' rotates or shears it; histoexpr reads regions "
            "only from images aligned with the axes. Rasterise it first with spatialdata.transform."
        )
    if sx <= 0 or sy <= 0 or abs(sx - sy) > _ISOTROPY_TOLERANCE * max(sx, sy):
        raise ValueError(
            f"The image's pixels are not square in micrometres (x: {sx:g}, y: {sy:g} um/px). "
            "Resample it to square pixels before use."
        )
    return sx, (float(matrix[0, 2]), float(matrix[1, 2]))


def _raster_element(sdata: SpatialData, key: str):
    """The image or label map stored under ``key``."""
    if key in sdata.images:
        return sdata.images[key]
    if key in sdata.labels:
        return sdata.labels[key]
    images = ", ".join(repr(k) for k in sdata.images.keys()) or "none"
    labels = ", ".join(repr(k) for k in sdata.labels.keys()) or "none"
    raise KeyError(f"sdata has no image or label map {key!r}; images: {images}; labels: {labels}.")


def image_levels(sdata: SpatialData, image_key: str) -> list[ImageLevel]:
    """Resolution levels of an image, finest first, each with its pixel size in um/px.

    Parameters
    ----------
    sdata
        The section.
    image_key
        Key of the image in ``sdata.images``, or of a label map in ``sdata.labels``.

    Returns
    -------
    The levels: a single one for a plain image, one per scale for a multiscale image.
    """
    import xarray as xr

    element = _raster_element(sdata, image_key)
    if isinstance(element, xr.DataArray):
        arrays = [element]
    else:
        arrays = [next(iter(element[name].ds.data_vars.values()))
                  for name in sorted(element.children, key=_level_number)]
    if "z" in arrays[0].dims:
        raise ValueError(
            f"{image_key!r} is a 3D image (dims {', '.join(map(str, arrays[0].dims))}); histoexpr "
            "works on 2D sections. Store the plane to use as a 2D image, e.g. "
            "Image2DModel.parse(image.isel(z=k).data, dims=('c', 'y', 'x')), under another key.")
    mpp, offset = _scale_and_offset(element)
    if isinstance(element, xr.DataArray):
        return [ImageLevel(element, mpp, offset)]
    height0 = arrays[0].sizes["y"]
    levels = []
    for array in arrays:
        factor = height0 / array.sizes["y"]
        levels.append(ImageLevel(array, mpp * factor, offset))
    return levels


def pixel_size_stated(sdata: SpatialData, image_key: str) -> bool:
    """Whether an image (or label map) states its pixel size.

    SpatialData gives an element parsed without ``transformations=`` the identity to
    ``"global"``: its pixel size would be read as 1 um/px whatever the scan's resolution.
    """
    from spatialdata.transformations import Identity, get_transformation

    element = _raster_element(sdata, image_key)
    transformation = get_transformation(element, get_all=True).get(COORDINATE_SYSTEM)
    return not isinstance(transformation, Identity)


def unstated_pixel_size_message(sdata: SpatialData, image_key: str) -> str:
    """What is wrong with an image that does not state its pixel size, and how to state it."""
    kind = "images" if image_key in sdata.images else "labels"
    element = f"sdata.{kind}[{image_key!r}]"
    reader = ("read the slide with hx.io.read_wsi(path, mpp=...)" if kind == "images"
              else "parse it with transformations={'global': Scale(...)}")
    return (f"{element} does not state its pixel size: its transformation to "
            f"{COORDINATE_SYSTEM!r} is the identity, which would be read as 1 um/px whatever "
            "the scan's resolution. State it: spatialdata.transformations.set_transformation("
            f"{element}, Scale([mpp, mpp], axes=('y', 'x')), 'global'), or {reader}")


def check_pixel_size_stated(sdata: SpatialData, image_key: str) -> None:
    """Refuse an image that does not state its pixel size (:func:`pixel_size_stated`).

    Steps whose results depend on the physical scale (a model trained at a pixel size, tiles of
    a size in micrometres) call this before any work.
    """
    if not pixel_size_stated(sdata, image_key):
        raise ValueError(unstated_pixel_size_message(sdata, image_key) + ".")


def _level_number(name: str) -> int:
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 0


def get_pixel_size(sdata: SpatialData, image_key: str) -> float:
    """Pixel size (um/px) of the full-resolution level of an image.

    Parameters
    ----------
    sdata
        The section.
    image_key
        Key of the image in ``sdata.images``, or of a label map in ``sdata.labels``.

    Returns
    -------
    Micrometres per pixel.
    """
    return image_levels(sdata, image_key)[0].mpp


def choose_level(levels: list[ImageLevel], mpp: float) -> ImageLevel:
    """The coarsest level that is at least as fine as ``mpp`` (the finest one if none is)."""
    fine_enough = [level for level in levels if level.mpp <= mpp * (1 + 1e-6)]
    return fine_enough[-1] if fine_enough else levels[0]


def read_region(
    sdata: SpatialData,
    image_key: str,
    bounds: tuple[float, float, float, float],
    *,
    mpp: float | None = None,
    fill: float = 0,
    outside: Literal["warn", "fill", "raise"] = "warn",
) -> np.ndarray:
    """Read a rectangle of an image, at a chosen pixel size, computing only what it covers.

    The pyramid level closest to (and not coarser than) ``mpp`` is read and resampled, so a
    region costs memory in proportion to its own size, never to the slide's. Images are resampled
    by area averaging (downsampling) or linear interpolation (upsampling); label maps by nearest
    neighbour, so that they keep their label values.

    Parameters
    ----------
    sdata
        The section.
    image_key
        Key of the image in ``sdata.images``, or of a label map in ``sdata.labels``.
    bounds
        ``(x_min, y_min, x_max, y_max)`` in micrometres of the ``"global"`` coordinate system.
    mpp
        Pixel size of the result in um/px; defaults to the image's full resolution.
    fill
        Value of pixels that fall outside the image.
    outside
        What to do when the rectangle is not wholly on the image (by more than half a pixel):
        ``"warn"`` pads the part outside with ``fill`` and warns how much of the area that is;
        ``"fill"`` pads it silently (for callers that expect it, e.g. tiles at the edge);
        ``"raise"`` raises a ``ValueError``. A rectangle wholly outside the image raises a
        ``ValueError`` unless ``outside="fill"`` (then it is all ``fill``).

    Returns
    -------
    An array ``(channels, height, width)`` of the image's dtype (``(height, width)`` for a label
    map), with ``height = round((y_max - y_min) / mpp)`` and likewise for the width.

    Examples
    --------
    >>> import histoexpr as hx
    >>> sdata = hx.datasets.synthetic_section(size_um=200)
    >>> hx.io.read_region(sdata, "he", (0, 0, 50, 25), mpp=1.0).shape
    (3, 25, 50)
    """
    levels = image_levels(sdata, image_key)
    check_on_image(levels[0], bounds, outside=outside, what=repr(image_key))
    return read_levels(levels, bounds, mpp=mpp, fill=fill)


def fraction_on_image(level: ImageLevel, bounds: tuple[float, float, float, float]) -> float:
    """The fraction of the area of ``bounds`` (um) that lies on the image of ``level``."""
    x_min, y_min, x_max, y_max = (float(b) for b in bounds)
    left, top, right, bottom = level.bounds
    tolerance = 0.5 * level.mpp
    dx = min(x_max, right + tolerance) - max(x_min, left - tolerance)
    dy = min(y_max, bottom + tolerance) - max(y_min, top - tolerance)
    area = (x_max - x_min) * (y_max - y_min)
    if not area > 0:
        return 0.0
    return float(min(1.0, max(dx, 0.0) * max(dy, 0.0) / area))


def check_on_image(level: ImageLevel, bounds: tuple[float, float, float, float], *,
                   outside: str = "warn", what: str = "the image") -> float:
    """Apply :func:`read_region`'s ``outside`` rule to ``bounds``; returns the fraction on it."""
    import warnings

    check_choice("outside", outside, ("warn", "fill", "raise"))
    x_min, y_min, x_max, y_max = (float(b) for b in bounds)
    if not all(np.isfinite([x_min, y_min, x_max, y_max])):
        raise ValueError(f"bounds must be finite numbers (um), got {bounds}.")
    if not (x_max > x_min and y_max > y_min):
        raise ValueError(
            f"bounds must be (x_min, y_min, x_max, y_max) with max > min, got {bounds}.")
    fraction = fraction_on_image(level, bounds)
    if fraction >= 1.0 or outside == "fill":
        return fraction
    ox, oy = level.offset
    height, width = level.shape_yx
    extent = (f"x {ox:g}..{ox + width * level.mpp:g}, y {oy:g}..{oy + height * level.mpp:g} "
              "um")
    if fraction == 0.0:
        raise ValueError(
            f"The box {tuple(bounds)} lies wholly outside {what} ({extent}): there is nothing to "
            "read. Check that the box is in micrometres of the 'global' coordinate system (not "
            "pixels), or pass outside='fill' to get a box of fill values.")
    message = (f"{1 - fraction:.0%} of the box {tuple(bounds)} lies outside {what} ({extent})")
    if outside == "raise":
        raise ValueError(f"{message}. Pass a box on the image, or outside='warn'/'fill' to pad "
                         "the part outside with fill.")
    warnings.warn(f"{message}; that part is padded with the fill value. Pass outside='fill' to "
                  "pad silently, or outside='raise' to refuse.", UserWarning, stacklevel=3)
    return fraction


def read_levels(levels: list[ImageLevel], bounds: tuple[float, float, float, float], *,
                mpp: float | None = None, fill: float = 0) -> np.ndarray:
    """:func:`read_region` on levels from :func:`image_levels` (kept by repeated readers)."""
    x_min, y_min, x_max, y_max = (float(b) for b in bounds)
    if not (x_max > x_min and y_max > y_min):
        raise ValueError(
            f"bounds must be (x_min, y_min, x_max, y_max) with max > min, got {bounds}.")
    target_mpp = levels[0].mpp if mpp is None else check_positive("mpp", mpp, unit="um/px")
    out_h = max(1, round((y_max - y_min) / target_mpp))
    out_w = max(1, round((x_max - x_min) / target_mpp))
    level = choose_level(levels, target_mpp)
    pixel_bytes = level.data.dtype.itemsize * int(np.prod(level.data.shape[:-2]))
    check_memory(out_h * out_w * pixel_bytes,
                 f"Reading a region of {out_w:,} x {out_h:,} px at {target_mpp:g} um/px",
                 "Pass a coarser mpp= or a smaller box (read it in pieces).")
    # the level's pixels under the box, as float32 while resampling (~3 copies): read in blocks
    # of output pixels where they would exceed the streaming budget (an image without pyramid)
    factor = target_mpp / level.mpp
    level_bytes = (out_h * factor) * (out_w * factor) * (pixel_bytes + 3 * 4 * pixel_bytes)
    box = (x_min, y_min, x_max, y_max)
    key = REGIONS.key(level, box, (out_h, out_w), fill)
    if key is not None and (kept := REGIONS.get(key)) is not None:
        return kept
    pixels = None
    if factor > 1.5 and max(out_h, out_w) > 1:  # the memory available: asked only here
        budget = min(STREAM_BYTES, available_memory() // 4)
        if level_bytes > budget:
            pixels = _read_in_blocks(level, box, (out_h, out_w), fill,
                                     level_bytes / (out_h * out_w), budget)
    if pixels is None:
        pixels = _read_box(level, box, (out_h, out_w), fill)
    if key is not None:
        REGIONS.put(key, pixels, level.data.data)
    return pixels


def _read_box(level: ImageLevel, box: tuple[float, float, float, float],
              out_shape: tuple[int, int], fill: float) -> np.ndarray:
    """The pixels of ``level`` under ``box`` (um), resampled to ``out_shape``."""
    x_min, y_min, x_max, y_max = box
    # the window in the level's pixel grid (fractional), then the integer pixels that cover it
    ox, oy = level.offset
    c0, c1 = (x_min - ox) / level.mpp, (x_max - ox) / level.mpp
    r0, r1 = (y_min - oy) / level.mpp, (y_max - oy) / level.mpp
    ic0, ir0 = int(np.floor(c0 + 1e-6)), int(np.floor(r0 + 1e-6))
    ic1, ir1 = int(np.ceil(c1 - 1e-6)), int(np.ceil(r1 - 1e-6))
    height, width = level.shape_yx
    crop = _read_padded(level.data, ir0, ir1, ic0, ic1, height, width, fill)
    if crop.shape[-2:] == tuple(out_shape):
        return crop
    return _resample(crop, (r0 - ir0, c0 - ic0, r1 - ir0, c1 - ic0), tuple(out_shape))


def _read_in_blocks(level: ImageLevel, box: tuple[float, float, float, float],
                    out_shape: tuple[int, int], fill: float, bytes_per_pixel: float,
                    budget: float) -> np.ndarray:
    """:func:`_read_box` one block of output pixels at a time, each within ``budget`` bytes.

    Blocks are whole output pixels on the region's own grid, each read with a margin of 2
    output pixels (within the region) that the anti-aliasing filter sees as the whole region's
    read would, then cut off; memory stays at the result plus one block, whatever the level's
    size (an image without a pyramid read at a coarse pixel size).
    """
    margin = 2
    out_h, out_w = out_shape
    x_min, y_min, x_max, y_max = box
    step_x, step_y = (x_max - x_min) / out_w, (y_max - y_min) / out_h
    side = max(1, int((budget / bytes_per_pixel) ** 0.5) - 2 * margin)
    rows = min(out_h, side)
    cols = min(out_w, max(1, int(budget / bytes_per_pixel / (side + 2 * margin)) - 2 * margin))
    out = np.empty(level.data.shape[:-2] + (out_h, out_w), dtype=level.data.dtype)
    for r in range(0, out_h, rows):
        for c in range(0, out_w, cols):
            r1, c1 = min(out_h, r + rows), min(out_w, c + cols)
            rm0, cm0 = max(0, r - margin), max(0, c - margin)
            rm1, cm1 = min(out_h, r1 + margin), min(out_w, c1 + margin)
            sub = (x_min + cm0 * step_x, y_min + rm0 * step_y, x_min + cm1 * step_x,
                   y_min + rm1 * step_y)
            block = _read_box(level, sub, (rm1 - rm0, cm1 - cm0), fill)
            out[..., r:r1, c:c1] = block[..., r - rm0 : r1 - rm0, c - cm0 : c1 - cm0]
    return out


def _read_padded(data, r0: int, r1: int, c0: int, c1: int, height: int, width: int,
                 fill: float) -> np.ndarray:
    """Pixels ``[r0:r1, c0:c1]`` of a (c, y, x) or (y, x) array, padded with ``fill`` outside."""
    out = np.full(data.shape[:-2] + (r1 - r0, c1 - c0), fill, dtype=data.dtype)
    rr0, rr1 = max(r0, 0), min(r1, height)
    cc0, cc1 = max(c0, 0), min(c1, width)
    if rr1 > rr0 and cc1 > cc0:
        out[..., rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = CHUNKS.read(data.data, rr0, rr1,
                                                                        cc0, cc1)
    return out


class ArrayLRU:
    """Arrays under keys within a byte budget, the least recently used out first (thread-safe).

    The store behind :class:`ChunkCache` and :class:`RegionCache`.

    Parameters
    ----------
    max_bytes
        The budget; :meth:`put` evicts the oldest arrays while the total is above it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._arrays: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._arrays)

    def __contains__(self, key: tuple) -> bool:
        return key in self._arrays

    def get(self, key: tuple) -> np.ndarray | None:
        """The array under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            array = self._arrays.get(key)
            if array is not None:
                self._arrays.move_to_end(key)
            return array

    def put(self, arrays: dict[tuple, np.ndarray], *, keep_new: bool = False) -> None:
        """Store ``arrays``, then evict the oldest while over budget.

        ``keep_new``: never evict the arrays just stored (a read that needs them all).
        """
        with self._lock:
            for key, array in arrays.items():
                replaced = self._arrays.pop(key, None)
                if replaced is not None:
                    self.nbytes -= replaced.nbytes
                self._arrays[key] = array
                self.nbytes += array.nbytes
            floor = len(arrays) if keep_new else 0
            while self.nbytes > self.max_bytes and len(self._arrays) > floor:
                _, evicted = self._arrays.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def clear(self) -> None:
        """Forget every array."""
        with self._lock:
            self._arrays.clear()
            self.nbytes = 0


class ChunkCache:
    """Decoded chunks of lazy images, kept within a memory budget (least recently used out).

    Neighbouring tiles share chunks, so reading a tile becomes a numpy slice of chunks that are
    already decoded instead of a dask computation per tile. The budget bounds the memory, so it
    does not grow with the slide. Chunks larger than a quarter of the budget are not cached: the
    window is then computed directly.

    Parameters
    ----------
    max_bytes
        Memory budget of the decoded chunks.
    """

    def __init__(self, max_bytes: int = 128 * 2**20) -> None:
        self.store = ArrayLRU(max_bytes)

    @property
    def max_bytes(self) -> int:
        return self.store.max_bytes

    def read(self, array, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Pixels ``[..., r0:r1, c0:c1]`` of a dask array (all leading axes)."""
        if not hasattr(array, "blocks"):  # already in memory
            return np.asarray(array[..., r0:r1, c0:c1])
        chunk_bytes = array.dtype.itemsize * np.prod([max(c) for c in array.chunks])
        if chunk_bytes > self.max_bytes // 4:
            return np.asarray(array[..., r0:r1, c0:c1].compute(scheduler="synchronous"))
        row_edges = np.cumsum((0, *array.chunks[-2]))
        col_edges = np.cumsum((0, *array.chunks[-1]))
        rows = range(np.searchsorted(row_edges, r0, "right") - 1,
                     np.searchsorted(row_edges, r1 - 1, "right"))
        cols = range(np.searchsorted(col_edges, c0, "right") - 1,
                     np.searchsorted(col_edges, c1 - 1, "right"))
        blocks = self._blocks_of(array, [(bi, bj) for bi in rows for bj in cols])
        out = np.empty(array.shape[:-2] + (r1 - r0, c1 - c0), dtype=array.dtype)
        for (bi, bj), block in blocks.items():
            y0, y1 = max(r0, row_edges[bi]), min(r1, row_edges[bi + 1])
            x0, x1 = max(c0, col_edges[bj]), min(c1, col_edges[bj + 1])
            top, left = row_edges[bi], col_edges[bj]
            out[..., y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = block[
                ..., y0 - top : y1 - top, x0 - left : x1 - left]
        return out

    def _blocks_of(self, array, indices: list[tuple[int, int]]
                   ) -> dict[tuple[int, int], np.ndarray]:
        """The decoded blocks at ``indices``; the missing ones read together in one slice."""
        found: dict[tuple[int, int], np.ndarray] = {}
        for index in indices:
            block = self.store.get((array.name, *index))
            if block is not None:
                found[index] = block
        missing = [index for index in indices if index not in found]
        if missing:
            found.update(self._read_blocks(array, missing))
        return found

    def _read_blocks(self, array, missing: list[tuple[int, int]]
                     ) -> dict[tuple[int, int], np.ndarray]:
        """Compute the rectangle of blocks around ``missing`` as one slice, and cache its blocks.

        One block-aligned slice is one small dask graph, however many chunks the level has;
        indexing ``array.blocks`` once per block costs far more on levels of many chunks.
        """
        row_edges = np.cumsum((0, *array.chunks[-2]))
        col_edges = np.cumsum((0, *array.chunks[-1]))
        bi0, bi1 = min(i for i, _ in missing), max(i for i, _ in missing) + 1
        bj0, bj1 = min(j for _, j in missing), max(j for _, j in missing) + 1
        window = np.asarray(array[..., row_edges[bi0] : row_edges[bi1],
                                  col_edges[bj0] : col_edges[bj1]].compute(scheduler="synchronous"))
        blocks = {}
        for bi, bj in missing:
            blocks[bi, bj] = np.ascontiguousarray(window[
                ..., row_edges[bi] - row_edges[bi0] : row_edges[bi + 1] - row_edges[bi0],
                col_edges[bj] - col_edges[bj0] : col_edges[bj + 1] - col_edges[bj0]])
        self.store.put({(array.name, bi, bj): block for (bi, bj), block in blocks.items()},
                       keep_new=True)
        return blocks

    def clear(self) -> None:
        """Forget every cached chunk."""
        self.store.clear()


#: the cache every region read goes through (one per process)
CHUNKS = ChunkCache()


class RegionCache:
    """Regions read while a step re-reads them, kept within a memory budget (LRU).

    Off until :meth:`kept` opens it: a search that describes the same tiles with several
    encoders and stains reads each tile once instead of once per encoder. A region is known by
    the level's array (a dask array by its name, which follows its content and graph; an
    in-memory array by its identity, kept alive while it is cached), the level's pixel size and
    offset, the box, the output shape and the fill, so another image, level, box or pixel size
    is never taken for it. Every hit is a copy: a caller may change what it gets.
    """

    def __init__(self) -> None:
        self.store = ArrayLRU(0)
        self._arrays: dict[int, object] = {}
        self._depth = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def kept(self, max_bytes: int = 256 * 2**20) -> Iterator[None]:
        """Inside, regions read again come from memory (up to ``max_bytes``); dropped after."""
        with self._lock:
            self._depth += 1
            self.store.max_bytes = max(self.store.max_bytes, int(max_bytes))
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self.store.clear()
                    self.store.max_bytes = 0
                    self._arrays.clear()

    def key(self, level: ImageLevel, box: tuple, shape: tuple[int, int],
            fill: float) -> tuple | None:
        """What identifies a read of ``level`` (``None`` while the cache is off)."""
        if not self._depth:
            return None
        array = level.data.data
        name = getattr(array, "name", None)
        source = ("dask", name) if isinstance(name, str) else ("array", id(array))
        return (*source, float(level.mpp), tuple(map(float, level.offset)),
                tuple(map(float, box)), tuple(shape), float(fill))

    def get(self, key: tuple) -> np.ndarray | None:
        pixels = self.store.get(key)
        return None if pixels is None else pixels.copy()

    def put(self, key: tuple, pixels: np.ndarray, array: object) -> None:
        with self._lock:
            if (not self._depth or key in self.store
                    or pixels.nbytes > self.store.max_bytes // 8):
                return
            if key[0] == "array":
                self._arrays[key[1]] = array  # its identity stays its own while cached
            self.store.put({key: pixels.copy()})


#: the regions a step keeps while it re-reads them (off unless ``REGIONS.kept()`` is open)
REGIONS = RegionCache()


def _resample(crop: np.ndarray, box: tuple[float, float, float, float],
              out_shape: tuple[int, int], *, labels: bool = False) -> np.ndarray:
    """Resample the fractional ``box`` (r0, c0, r1, c1) of ``crop`` to ``out_shape``.

    For an image ``(c, y, x)``, downsampling averages over each output pixel's footprint (area
    interpolation), which is what pyramid levels do; upsampling interpolates linearly. A label
    map ``(y, x)`` is resampled by nearest neighbour.
    """
    from skimage.transform import resize

    if crop.ndim == 2:  # a label map: keep its values
        return _resample(crop[None], box, out_shape, labels=True)[0]
    r0, c0, r1, c1 = box
    scale = max((r1 - r0) / out_shape[0], (c1 - c0) / out_shape[1])
    dtype = crop.dtype
    image = np.moveaxis(crop, 0, -1)
    image = image if labels else image.astype(np.float32)
    # crop to whole pixels first (sub-pixel offsets are below a pixel of the level read)
    image = image[int(round(r0)) : max(int(round(r1)), int(round(r0)) + 1),
                  int(round(c0)) : max(int(round(c1)), int(round(c0)) + 1)]
    resized = resize(image, out_shape + (image.shape[-1],), order=0 if labels else 1,
                     anti_aliasing=scale > 1 and not labels, preserve_range=True)
    resized = np.moveaxis(resized, -1, 0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        resized = np.clip(np.rint(resized), info.min, info.max)
    return resized.astype(dtype)


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1]: integers divided by their type's maximum, floats unchanged."""
    if np.issubdtype(pixels.dtype, np.integer):
        return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    return pixels.astype(np.float32)
