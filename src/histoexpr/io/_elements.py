"""Building blocks of the readers: files, images in micrometres, spots and their table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._core.elements import COORDINATE_SYSTEM, scale_to_global
from .._core.logs import logger
from .._core.validate import check_positive

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr
    from anndata import AnnData
    from geopandas import GeoDataFrame



#: readers build pyramid levels until the coarsest side is at most this many pixels
PYRAMID_MIN_SIDE = 2048


CHUNK_PX = 1024


RGB_CHANNELS = ("r", "g", "b")


def existing_file(path: str | Path, what: str, hint: str = "") -> Path:
    """``path`` as a Path, or a clear ``FileNotFoundError`` that names what was expected."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"The {what} file {str(path)!r} does not exist. Check the path"
            + (f"; {hint}" if hint else ".")
        )
    return path


def check_mpp(mpp: float, what: str = "mpp") -> float:
    """Return ``mpp`` as a positive, finite float, or raise a clear error."""
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        value = mpp  # check_positive names the parameter and the type
    return check_positive(what, value, unit="um/px")


def channel_names(n_channels: int, single_name: str = "c0") -> list[str]:
    """``r, g, b`` for RGB, ``single_name`` for one channel, ``c0, c1, ...`` otherwise."""
    if n_channels == 3:
        return list(RGB_CHANNELS)
    if n_channels == 4:
        return [*RGB_CHANNELS, "a"]
    if n_channels == 1:
        return [single_name]
    return [f"c{i}" for i in range(n_channels)]


def to_cyx(array: np.ndarray, layout: str | None = None) -> np.ndarray:
    """Return a ``(y, x)``, ``(y, x, c)`` or ``(c, y, x)`` array as ``(c, y, x)``.

    ``layout`` (``"yxc"`` or ``"cyx"``) says which a 3-D array is, where the source knows it
    (PIL always gives ``(y, x, c)``); otherwise it is guessed from the axis sizes, and an array
    whose first and last axes could both be the channels (e.g. ``(3, 4, 3)``) is refused.
    """
    if array.ndim == 2:
        return array[np.newaxis]
    if array.ndim == 3:
        first, last = array.shape[0], array.shape[-1]
        if layout is None:
            if last <= 4 < first:
                layout = "yxc"
            elif first <= 4 < last:
                layout = "cyx"
            elif last <= 4 and first <= 4:
                raise ValueError(
                    f"The image of shape {array.shape} is too small to tell its channel axis: "
                    "pass it as (channels, height, width), or a larger image."
                )
        if layout == "yxc" and last <= 4:
            return np.moveaxis(array, -1, 0)
        if layout == "cyx" and first <= 4:
            return array
    raise ValueError(
        f"Expected an image of shape (y, x), (y, x, c) or (c, y, x) with at most 4 channels, "
        f"got shape {array.shape}. Pass a 2-D grey or a 3-D RGB array."
    )


#: memory of the coarser pyramid levels that readers build from a whole image, as its share
_PYRAMID_SHARE = 1 / 3

#: PIL modes whose values are not intensities of the colours seen: converted to these modes
_PIL_CONVERT = {"P": "RGBA", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB",
                "HSV": "RGB", "RGBX": "RGB", "RGBa": "RGBA", "La": "LA", "1": "L"}


def read_plain_image(path: str | Path, what: str = "image", *, colours: bool = True) -> np.ndarray:
    """Read a JPEG/PNG/TIFF image completely into memory as ``(c, y, x)``.

    Used for the images that come beside spatial transcriptomics data (at most ~100 Mpx);
    whole-slide images go through :func:`histoexpr.io.read_wsi`, which reads lazily.

    With ``colours`` (an image, not a label map) the pixels are the colours seen: a palette
    image (PNG ``P``) is expanded to its colours, CMYK or YCbCr to RGB, and an alpha channel
    (RGBA, grey + alpha) is dropped, with a log line (a warning where some pixels are not
    opaque), so that an H&E saved with transparency has the 3 channels of any other H&E.
    ``colours=False`` keeps the stored values (a label map saved as a palette PNG).

    The memory of the read is estimated from the file's header before any pixel is decoded
    (``height x width x channels x bytes per value``, twice through PIL, which decodes into an
    image of its own before the array, plus a third for the pyramid levels the readers build)
    and refused with a :class:`MemoryError` when it exceeds the limit.
    """
    path = existing_file(path, what)
    suffix = path.suffix.lower()
    unsupported = None
    try:
        if suffix in {".tif", ".tiff"}:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise ValueError("it holds no image (an empty or truncated file)")
                axes = tif.series[0].axes
                _check_whole_read(path, what, tif.series[0].shape, axes,
                                  np.dtype(tif.series[0].dtype), copies=1, colours=colours)
                array = tif.series[0].asarray()
                page = tif.pages[0]
                photometric = getattr(page.photometric, "name", str(page.photometric))
                extra = len(getattr(page, "extrasamples", ()) or ())
            if colours and photometric not in {"MINISBLACK", "RGB"}:
                unsupported = photometric
            squeezed = "".join(a for a, n in zip(axes, array.shape, strict=True)
                               if n > 1 or a in "YX")
            array = array.reshape([n for a, n in zip(axes, array.shape, strict=True)
                                   if n > 1 or a in "YX"])
            layout = {"YXS": "yxc", "YXC": "yxc", "SYX": "cyx", "CYX": "cyx"}.get(squeezed)
            if colours and extra == 1 and squeezed in {"YXS", "SYX"}:
                samples = array if squeezed == "YXS" else np.moveaxis(array, 0, -1)
                if samples.shape[-1] in (2, 4):  # grey or RGB + one extra sample: its alpha
                    array, layout = _drop_alpha(samples, path.name), "yxc"
        else:
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = None  # ST images are ~100 Mpx; they are trusted local files
            with Image.open(path) as image:
                mode = image.mode
                bands, dtype = _decoded_values(
                    _PIL_CONVERT.get(mode, mode) if colours else mode, image)
                _check_whole_read(path, what, (image.size[1], image.size[0], bands), "YXS",
                                  dtype, copies=2, colours=colours)
                orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation; 1 is upright
                if orientation not in (1, None):
                    logger.warning(
                        "%s carries EXIF orientation %s: image viewers show it turned or "
                        "mirrored, but it is read as stored (coordinates of spots or "
                        "transcripts usually refer to the stored pixels). If they sit off the "
                        "tissue, save it upright first: PIL.ImageOps.exif_transpose(image).",
                        path.name, orientation)
                if colours and mode in _PIL_CONVERT:
                    logger.info("Converted %s from PIL mode %s to %s (its stored values are not "
                                "the colours).", path.name, mode, _PIL_CONVERT[mode])
                    image = image.convert(_PIL_CONVERT[mode])
                array = None
                if image.format == "JPEG" and image.mode in ("RGB", "L"):
                    array = _decode_jpeg(path, image.size[::-1])
                if array is None:
                    array = np.asarray(image)
            layout = "yxc"
            if colours and array.ndim == 3 and array.shape[-1] in (2, 4):
                array = _drop_alpha(array, path.name)
    except (OSError, ValueError, IndexError, EOFError) as error:
        raise ValueError(
            f"Could not read the {what} {str(path)!r} ({error}). "
            "Pass a JPEG, PNG or TIFF image (a complete, not truncated, file)."
        ) from error
    if unsupported is not None:
        raise ValueError(
            f"The {what} {str(path)!r} stores its pixels as {unsupported} (not grey or RGB), "
            "which histoexpr does not convert. Save it as an RGB or grey image first, e.g. "
            "PIL.Image.open(path).convert('RGB').save('he.png').")
    if colours:
        check_pixel_scale(array, what, path.name)
    return to_cyx(array, layout)


def _decoded_values(mode: str, image) -> tuple[int, np.dtype]:
    """Bands and value type of a PIL image decoded in ``mode``, from its header alone."""
    from PIL import ImageMode

    try:
        decoded = ImageMode.getmode(mode)
        return len(decoded.bands), np.dtype(decoded.typestr)
    except (KeyError, TypeError, ValueError):  # a mode numpy has no type for: one byte a band
        return len(image.getbands()), np.dtype(np.uint8)


def _check_whole_read(path: Path, what: str, shape: Sequence[int], axes: str, dtype: np.dtype,
                      *, copies: int, colours: bool) -> None:
    """Refuse, from the file's header, a whole read of an image larger than the memory limit."""
    from .._core.memory import check_memory

    sizes = dict(zip(axes, (int(n) for n in shape), strict=False))
    height, width = sizes.get("Y", 1), sizes.get("X", 1)
    values = float(np.prod([int(n) for n in shape], dtype=float))
    channels = round(values / max(height * width, 1))
    check_memory(
        values * dtype.itemsize * (copies + _PYRAMID_SHARE),
        f"Reading the {what} {path.name} whole ({width:,} x {height:,} px, {channels} "
        f"channel(s) of {dtype.name})",
        ("Convert it to a pyramidal (OME-)TIFF (e.g. `vips tiffsave in.png out.ome.tif --tile "
         "--pyramid`, or tifffile with subifds) and read it with hx.io.read_wsi(path, mpp=...), "
         "which reads it lazily, tile by tile." if colours else
         f"Crop the {what} (and the image with them) to the region you need, or leave them out."))


def check_pixel_scale(pixels: np.ndarray, what: str, name: str) -> None:
    """Warn where pixels are not on the scale histoexpr reads them on (the one rule for images).

    The rule: integer pixels are intensities scaled by their type's maximum (255, 65535), float
    pixels are intensities from 0 to 1. Float pixels outside 0..1 (0..255, -0.5..0.5) and
    16-bit pixels that use 12 bits or fewer (a camera's 12-bit data, at most 4095 of 65535) break
    it: their tiles would not look like other images' to a model. ``pixels`` is the image or a
    sample of it.
    """
    pixels = np.asarray(pixels)
    if not pixels.size:
        return
    if pixels.dtype.kind == "f":
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if low < 0 or high > 1:
            logger.warning(
                "The %s %s holds floating-point pixels from %.4g to %.4g, but histoexpr reads "
                "float pixels as intensities from 0 to 1 (integers are scaled by their type's "
                "maximum), so its tiles would not look like other images' to a model. Save it "
                "as 8- or 16-bit integers (or scaled to 0..1).", what, name, low, high)
    elif pixels.dtype.itemsize >= 2 and pixels.dtype.kind == "u":
        high = int(pixels.max())
        full = int(np.iinfo(pixels.dtype).max)
        if 0 < high < 2**12:
            logger.warning(
                "The %s %s holds %d-bit pixels that reach only %d of %d (%d-bit data, e.g. a "
                "12-bit camera's), but histoexpr scales integer pixels by their type's maximum, "
                "so its tiles would be %d times darker than other images' to a model. Rescale "
                "it to the full range (e.g. pixels * 16 for 12-bit data) or save it as 8-bit.",
                what, name, 8 * pixels.dtype.itemsize, high, full,
                max(1, high.bit_length()), full // (2 ** max(1, high.bit_length()) - 1))


def _decode_jpeg(path: Path, shape_yx: tuple[int, int]) -> np.ndarray | None:
    """A JPEG's pixels decoded by imagecodecs, or ``None`` where it cannot (PIL then does).

    libjpeg-turbo, as PIL's: the same pixels, in half the time.
    """
    try:
        import imagecodecs

        array = imagecodecs.jpeg8_decode(path.read_bytes())
    except Exception:  # noqa: BLE001 - any failure falls back to PIL, which names the problem
        return None
    return array if array.shape[:2] == tuple(shape_yx) else None


def _drop_alpha(array: np.ndarray, name: str) -> np.ndarray:
    """``(y, x, c)`` with grey + alpha or RGBA -> grey or RGB, saying whether it was opaque."""
    alpha = array[..., -1]
    opaque = np.iinfo(array.dtype).max if array.dtype.kind in "ui" else 1.0
    transparent = float(np.mean(alpha < opaque))
    if transparent:
        logger.warning("Dropped the alpha channel of %s: %.1f%% of its pixels are not opaque, "
                       "and keep the colour stored under them. Flatten the image onto its "
                       "background first if that colour is not the background.", name,
                       100 * transparent)
    else:
        logger.info("Dropped the alpha channel of %s (every pixel opaque).", name)
    return array[..., :-1]


def read_text_table(path: str | Path, what: str, **options):
    """``pandas.read_csv`` of ``path``, with errors that name the file and what to do.

    A truncated ``.gz``, a text file named ``.gz``, an empty file or one that is not a table
    raise a ``ValueError`` naming ``path`` (pandas, gzip and zlib name none of them).
    """
    import gzip
    import zlib

    import pandas as pd

    path = Path(path)
    options.setdefault("float_precision", "round_trip")  # the numbers as written, to the last bit
    try:
        return pd.read_csv(path, **options)
    except pd.errors.EmptyDataError as error:
        raise ValueError(f"The {what} file {str(path)!r} is empty. Pass the complete file "
                         "(was it cut short while copying?).") from error
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        problem = ("is not gzip-compressed although its name ends in .gz"
                   if isinstance(error, gzip.BadGzipFile) else "is truncated or corrupt")
        raise ValueError(f"The {what} file {str(path)!r} {problem} ({error}). Copy or download "
                         "it again, or name it after what it holds (e.g. drop '.gz' from a plain "
                         "text file).") from error
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ValueError(f"The {what} file {str(path)!r} is not a readable text table "
                         f"({error}). Pass a tab- or comma-separated table.") from error


def numeric_table(frame, what: str):
    """``frame`` as float64, or a ``ValueError`` naming the columns that hold text."""
    import pandas as pd

    if not len(frame.columns):
        raise ValueError(f"The {what} hold no columns. Pass the complete table.")
    # by the dtypes, not column by column: a counts table has ~20k columns
    bad = [c for c, dtype in zip(frame.columns, frame.dtypes, strict=True)
           if not pd.api.types.is_numeric_dtype(dtype)]
    if bad:
        column = frame[bad[0]]
        values = pd.to_numeric(column, errors="coerce")
        row = column.index[values.isna() & column.notna()]
        example = ""
        if len(row):
            first = row[0].item() if hasattr(row[0], "item") else row[0]
            example = f" (e.g. {column.loc[row[0]]!r} in row {first!r})"
        raise ValueError(
            f"The {what} hold text in {len(bad)} column(s): {[str(c) for c in bad[:5]]}"
            f"{example}. Counts must be numbers: fix or remove those entries.")
    return frame.astype(np.float64)


def unique_names(names, what: str) -> list[str]:
    """``names`` made unique as scanpy does (``IGKC``, ``IGKC-1``...), with one warning.

    The convention of ``AnnData.var_names_make_unique`` (what scanpy and spatialdata-io give
    for 10x files), for every reader; the warning names how many names repeat, and which.
    """
    import pandas as pd

    index = pd.Index([str(n) for n in names])
    if index.is_unique:
        return list(index)
    duplicated = sorted(set(index[index.duplicated()]))
    from anndata.utils import make_index_unique

    counts = index.value_counts()
    result = list(make_index_unique(index.copy(), join="-"))
    shown = ", ".join(f"{n} ({counts[n]}x)" for n in duplicated[:10])
    renamed = ", ".join(f"{old} -> {new}" for old, new in zip(index, result, strict=True)
                        if old != new)
    logger.warning(
        "The %s hold %d duplicated name(s): %s%s. The repeats were renamed to make them unique "
        "(%s); sum or drop them before reading if they are one feature.",
        what, len(duplicated), shown, ", ..." if len(duplicated) > 10 else "",
        renamed if len(renamed) < 300 else renamed[:300] + ", ...")
    return result


def pyramid_factors(height: int, width: int, min_side: int = PYRAMID_MIN_SIDE) -> list[int]:
    """Factors of 2 that bring the longest side of an image down to at most ``min_side``."""
    factors = []
    side = max(height, width)
    while side > min_side:
        factors.append(2)
        side //= 2
    return factors


def image_element(data, *, mpp: float, channels: Sequence[str] | None = None) -> xr.DataTree:
    """Build a multiscale image element (``scale0``, ``scale1``...) with ``Scale(mpp)``.

    ``data`` is a ``(c, y, x)`` numpy or dask array; levels are halved until the longest side is
    at most :data:`PYRAMID_MIN_SIDE` pixels (a single ``scale0`` for small images).
    """
    from spatialdata.models import Image2DModel

    height, width = data.shape[1:]
    chunks = (data.shape[0], min(CHUNK_PX, height), min(CHUNK_PX, width))
    element = Image2DModel.parse(
        dask_view(data, chunks) if isinstance(data, np.ndarray) else data,
        dims=("c", "y", "x"),
        c_coords=list(channels) if channels is not None else channel_names(data.shape[0]),
        scale_factors=pyramid_factors(height, width),
        transformations=scale_to_global(mpp), chunks=chunks,
    )
    if isinstance(data, np.ndarray) and len(element) > 1:
        # The coarser levels are lazy reductions of the whole in-memory image: left lazy, every
        # read of one (tissue detection, fingerprints, plots) would redo them (about 10 s for a
        # her2st image). They cost a third of the image's memory: compute them once, here, in
        # integers for 8- and 16-bit images (0.3 s instead of 6 s for a her2st image).
        import dask

        names = [name for name in element if name != "scale0"]
        if data.dtype.kind == "u" and data.dtype.itemsize <= 2:
            levels, level = [], data
            for _ in names:
                level = halve(level)
                levels.append(level)
        else:
            levels = dask.compute(*(element[name]["image"].data for name in names))
        for name, level in zip(names, levels, strict=True):
            node = element[name]["image"]
            node.data = dask_view(level, node.data.chunksize)
    return element


def dask_view(array: np.ndarray, chunks: tuple[int, ...]):
    """A dask array whose chunks are views of ``array``, which the caller hands over.

    ``dask.array.from_array`` copies the whole array (and hashes it to name it): for the
    images a reader has just decoded, which nothing else holds, that is 0.8 s and a second
    copy in memory for nothing.
    """
    import uuid
    from itertools import product

    import dask.array as da
    from dask.array.core import normalize_chunks, slices_from_chunks

    chunks = normalize_chunks(chunks, array.shape, dtype=array.dtype)
    name = f"array-{uuid.uuid4().hex}"
    keys = product([name], *(range(len(sizes)) for sizes in chunks))
    graph = dict(zip(keys, (array[part] for part in slices_from_chunks(chunks)), strict=True))
    return da.Array(graph, name, chunks, dtype=array.dtype, meta=array[(slice(0, 0),) * array.ndim])


def halve(level: np.ndarray) -> np.ndarray:
    """The next pyramid level of an 8- or 16-bit ``(c, y, x)`` image, as spatialdata builds it.

    The same pixels as ``xarray``'s ``coarsen(boundary="trim", side="right").mean()`` cast back
    to the image's type (spatialdata's default pyramid): the first row or column of an odd side
    is dropped, and the mean of each 2 x 2 block is truncated. Summed in integers, without the
    float64 copy of the image.
    """
    _, height, width = level.shape
    part = level[:, height % 2:, width % 2:]
    total = part[:, 0::2, 0::2].astype(np.uint16 if level.itemsize == 1 else np.uint32)
    total += part[:, 1::2, 0::2]
    total += part[:, 0::2, 1::2]
    total += part[:, 1::2, 1::2]
    total >>= 2
    return total.astype(level.dtype)


def image_element_from_levels(levels: Sequence, *, mpp: float,
                              channels: Sequence[str]) -> xr.DataTree:
    """Build a multiscale image element from ready-made ``(c, y, x)`` levels, finest first.

    Used where the file already holds a pyramid (whole-slide images, Visium hires/lowres): no
    pixel is read or resampled. Each level gets the scale to ``scale0`` that spatialdata derives
    from the shapes, composed with ``Scale(mpp)`` to global.
    """
    import xarray as xr
    from spatialdata.models import Image2DModel
    from spatialdata.models._utils import TRANSFORM_KEY
    from spatialdata.transformations import set_transformation
    from spatialdata.transformations._utils import compute_coordinates

    nodes = {}
    for i, level in enumerate(levels):
        array = Image2DModel.parse(level, dims=("c", "y", "x"), c_coords=list(channels))
        array.attrs.pop(TRANSFORM_KEY, None)
        nodes[f"scale{i}"] = xr.Dataset({"image": array})
    tree = xr.DataTree.from_dict(nodes)
    set_transformation(tree, scale_to_global(mpp), set_all=True)
    tree = compute_coordinates(tree)
    Image2DModel.validate(tree)
    return tree


def check_counts(matrix, what: str):
    """Raw counts as float32 CSR; NaN or negative values raise a clear error."""
    from scipy import sparse

    csr = sparse.csr_matrix(matrix, dtype=np.float32)
    values = csr.data
    if values.size and not np.isfinite(values).all():
        raise ValueError(
            f"The {what} hold {int((~np.isfinite(values)).sum())} NaN or infinite values; raw "
            "counts must be finite. Fill or remove them (e.g. df.fillna(0)) before reading."
        )
    if values.size and (values < 0).any():
        raise ValueError(
            f"The {what} hold {int((values < 0).sum())} negative values; expected raw counts "
            "(non-negative integers). Pass the raw, not the normalised or scaled, counts."
        )
    if values.size and not np.allclose(values, np.round(values)):
        logger.warning("The %s are not all integers; are they raw counts?", what)
    csr.eliminate_zeros()
    return csr


def spot_elements(
    centres_um: np.ndarray, counts, *, obs: pd.DataFrame, var: pd.DataFrame,
    radius_um: float, shapes_key: str = "spots", corners_um: np.ndarray | None = None,
) -> tuple[GeoDataFrame, AnnData]:
    """Build the circles ``shapes_key`` and their table (raw counts, centres in um).

    ``obs`` is indexed by the spot names (``obs_names``); its rows, those of ``counts`` and of
    ``centres_um`` are the same spots in the same order. ``corners_um`` (``(n, k, 2)``, e.g.
    the 4 corners of square bins) makes the shapes these polygons instead of circles.
    """
    import anndata as ad
    import pandas as pd
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    centres_um = np.asarray(centres_um, dtype=np.float64)
    spot_id = np.arange(len(obs))
    index = pd.Index(spot_id, name="spot_id")
    if corners_um is None:
        shapes = ShapesModel.parse(
            centres_um, geometry=0, radius=np.full(len(obs), radius_um / 1.0), index=index,
            transformations={COORDINATE_SYSTEM: Identity()},
        )
    else:
        import geopandas as gpd
        import shapely

        polygons = shapely.polygons(np.asarray(corners_um, dtype=np.float64))
        shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=polygons, index=index),
                                   transformations={COORDINATE_SYSTEM: Identity()})
    obs = obs.copy()
    obs.index = obs.index.astype(str)
    obs["spot_id"] = spot_id
    obs["region"] = pd.Categorical([shapes_key] * len(obs))
    x = check_counts(counts, "counts")
    if not var.index.is_unique:
        var = var.copy()
        var.index = unique_names(var.index, "gene names of the counts")
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.layers["counts"] = x.copy()
    adata.obsm["spatial"] = centres_um
    table = TableModel.parse(adata, region=shapes_key, region_key="region", instance_key="spot_id")
    return shapes, table
