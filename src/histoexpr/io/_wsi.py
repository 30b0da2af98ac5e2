"""Whole-slide images (SVS, NDPI, pyramidal TIFF / OME-TIFF), read lazily through tifffile."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from .._core.image_facts import record_source
from .._core.logs import log_added, logger
from .._core.slide_files import TiffLevel, close_slide_file
from .._core.validate import check_element_name, check_positive
from ._elements import (
    channel_names,
    check_mpp,
    check_pixel_scale,
    existing_file,
    image_element,
    image_element_from_levels,
    read_plain_image,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: pixel sizes above this (um/px) in generic TIFF resolution tags are placeholders (72 dpi...)
_PLACEHOLDER_MPP = 50.0
#: resolution tags in inches state a microscope's pixel size only up to this (2540 dpi and more)
_INCH_MAX_MPP = 10.0
#: pixels whose x and y sizes differ by more than this share are not square
_SQUARE_TOLERANCE = 1e-3
#: levels stored in thin strips (NDPI: 8 rows) are regrouped into chunks of at least this height
_MIN_CHUNK_ROWS = 256
_THIN_STRIP_ROWS = 64
_SVS_MPP = re.compile(r"\bMPP\s*=\s*([0-9.eE+-]+)")
_UNIT_TO_UM = {"pm": 1e-6, "nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "mm": 1e3, "cm": 1e4,
               "m": 1e6}


def read_wsi(path: str | Path, *, mpp: float | None = None, image_key: str = "he") -> SpatialData:
    """Read a whole-slide image lazily into a SpatialData with one multiscale image.

    SVS (Aperio), NDPI (Hamamatsu) and generic tiled, pyramidal TIFF / OME-TIFF files are read
    through :mod:`tifffile`'s zarr interface: every pyramid level stored in the file becomes one
    scale (``scale0``, ``scale1``, ...) of a dask-backed image, and no pixel is decoded until a
    region is read (e.g. with :func:`histoexpr.io.read_region`). The lazy image holds the
    file's path, size and modification time, not an open file: each process (a dask worker
    included) opens the file on its first read, so the slide can be computed on a
    ``distributed`` cluster and written with ``sdata.write`` while one is open; a file changed
    since it was read is refused (read it again). A plain JPEG or PNG image (an
    H&E photographed or exported without a pyramid) is read whole into memory instead, with
    its pyramid made as :func:`histoexpr.io.read_st` makes it (its memory, about ``2.3 x height
    x width x channels`` bytes for 8-bit pixels, is estimated from the file's header first and
    refused with a :class:`MemoryError` when it exceeds the limit); such files do not state
    their pixel size, so ``mpp`` must be given.

    Parameters
    ----------
    path
        The slide file (or a plain JPEG/PNG image).
    mpp
        Pixel size of the full-resolution level in um/px. Read from the file's metadata when
        ``None`` (SVS ``MPP =``, OME ``PhysicalSizeX``, TIFF ``XResolution``/``ResolutionUnit``;
        resolution tags in inches only where they state a microscope's scale, 2540 dpi or
        more: 72 or 600 dpi is a print resolution, and mpp must then be given); a value given
        here overrides the metadata. Pixels whose x and y sizes differ in the metadata are
        refused. Required for a JPEG or PNG image. Pixels off histoexpr's scale (float pixels
        outside 0..1, 16-bit pixels using 12 bits or fewer) are warned of, as
        :func:`histoexpr.io.read_st` does.
    image_key
        Key of the image in ``sdata.images``.

    Returns
    -------
    A SpatialData with the image ``image_key``, with a ``Scale(mpp)`` transformation to the
    ``"global"`` coordinate system in micrometres. Its channels are ``r, g, b`` for pixels
    stored as RGB (or YCbCr) only; other channels are named as the OME-XML names them (e.g.
    ``DAPI, CD3, CD8``: a fluorescence image of three stains is no H&E), else ``c0, c1, ...``,
    and one channel without a name ``"dapi"`` under the key ``"dapi"`` (``"c0"`` otherwise).

    """
    import tifffile
    from spatialdata import SpatialData

    check_element_name("image_key", image_key)
    if mpp is not None:  # a number: a string ('0.5', from a table or a command line) is refused
        mpp = check_positive("mpp", mpp, unit="um/px")
    path = existing_file(path, "slide")
    if path.is_file() and _plain_image_format(path) is not None:
        return _read_plain_slide(path, mpp=mpp, image_key=image_key)
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError) as error:
        raise ValueError(
            f"{str(path)!r} is not a slide histoexpr can read ({error}). read_wsi reads TIFF-based "
            "slides (SVS, NDPI, tiled/pyramidal TIFF and OME-TIFF) and plain JPEG/PNG images. "
            "Convert other formats (e.g. MRXS, CZI) to pyramidal OME-TIFF first (e.g. with "
            "bfconvert or vips tiffsave)."
        ) from error
    if hasattr(tif.filehandle, "set_lock"):
        tif.filehandle.set_lock(True)  # dask reads tiles from several threads
    _check_complete(tif, path)
    series = tif.series[0]
    if mpp is None:
        try:
            mpp = _mpp_from_metadata(tif)
        except ValueError:
            tif.close()
            raise
        if mpp is None:
            tif.close()
            raise ValueError(
                f"The pixel size of {path.name!r} is not in its metadata (no SVS 'MPP =', OME "
                "PhysicalSizeX or microscope-scale TIFF resolution tags"
                f"{_resolution_note(tif.pages[0])}). Pass it: read_wsi(path, mpp=0.5) for a "
                "slide at 0.5 um/px (about 20x)."
            )
        source = "metadata"
    else:
        source = "mpp="
    mpp = check_mpp(mpp)

    try:
        levels = [_level_array(tif, path, i) for i in range(len(series.levels))]
    except Exception:
        close_slide_file(TiffLevel.path_of(path))
        tif.close()
        raise
    page = series.levels[0].keyframe
    if (getattr(page.photometric, "name", "") == "RGB" and levels[0].shape[0] == 4
            and len(getattr(page, "extrasamples", ()) or ()) == 1):
        # RGB + alpha: the alpha is no stain; dropped (lazily) so the slide is RGB like others
        logger.info("Dropped the alpha channel of %s (RGB + alpha).", path.name)
        levels = [level[:3] for level in levels]
    if levels[0].dtype != "uint8":  # 8-bit pixels are on the scale: opening reads no tile
        check_pixel_scale(_sample(levels[-1]), "slide", path.name)
    channels = _slide_channels(tif, page, levels[0].shape[0], image_key)
    element = image_element_from_levels(levels, mpp=mpp, channels=channels)
    shapes = ", ".join(f"{level.shape[2]}x{level.shape[1]}" for level in levels)
    logger.info("Read %s: %d level(s) (%s px), %.4g um/px (from %s)", path.name, len(levels),
                shapes, mpp, source)
    log_added("images", image_key, f"{len(levels)} levels, {mpp:.4g} um/px")
    sdata = SpatialData(images={image_key: element})
    record_source(sdata, image_key, path)  # warnings about the slide name its file
    return sdata


def _slide_channels(tif, page, n_channels: int, image_key: str) -> list[str]:
    """The channels' names: ``r, g, b`` for RGB pixels, else the OME-XML's, else ``c0, c1...``.

    Only pixels stored as RGB (or YCbCr, as Aperio's JPEG tiles) are named ``r, g, b``: a
    fluorescence image of three stains is no H&E. One channel is ``"dapi"`` under the key
    ``"dapi"``, as :func:`histoexpr.io.read_transcripts` names it.
    """
    if getattr(page.photometric, "name", "") in ("RGB", "YCBCR") and n_channels in (3, 4):
        return channel_names(n_channels)
    names = _ome_channel_names(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else []
    if len(names) == n_channels and len(set(names)) == n_channels and all(names):
        return names
    if n_channels == 1:
        return ["dapi" if image_key == "dapi" else "c0"]
    return [f"c{i}" for i in range(n_channels)]


def _ome_channel_names(xml: str) -> list[str]:
    """The ``Name`` of each ``Channel`` of the first ``Pixels`` element (empty where unnamed)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return []
    return [str(c.get("Name") or "").strip() for c in pixels if c.tag.endswith("Channel")]


def _plain_image_format(path: Path) -> str | None:
    """``"JPEG"`` or ``"PNG"`` where the file is one (by its first bytes), else ``None``."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    return None


def _read_plain_slide(path: Path, *, mpp: float | None, image_key: str) -> SpatialData:
    """A JPEG or PNG image, read whole, as the one multiscale image of a SpatialData."""
    from spatialdata import SpatialData

    kind = _plain_image_format(path)
    if mpp is None:
        raise ValueError(
            f"{path.name!r} is a {kind} image, which does not state its pixel size. Pass it: "
            "read_wsi(path, mpp=0.5) for an image at 0.5 um/px (about 20x).")
    mpp = check_mpp(mpp)
    pixels = read_plain_image(path, "slide")
    single = "dapi" if image_key == "dapi" else "c0"
    element = image_element(pixels, mpp=mpp, channels=channel_names(pixels.shape[0], single))
    logger.info("Read %s (%s, %dx%d px, read whole into memory), %.4g um/px (from mpp=)",
                path.name, kind, pixels.shape[2], pixels.shape[1], mpp)
    log_added("images", image_key, f"{pixels.shape[2]}x{pixels.shape[1]} px, {mpp:.4g} um/px")
    sdata = SpatialData(images={image_key: element})
    record_source(sdata, image_key, path)
    return sdata


def _check_complete(tif, path: Path) -> None:
    """Refuse a slide whose image data lie (partly) past the end of the file: truncated.

    tifffile reads such files and returns black pixels where the data are missing.
    """
    size = path.stat().st_size
    problem = None
    try:
        series = tif.series[0] if tif.series and len(tif.pages) else None
        if series is None:
            problem = "it holds no image (its first image directory is missing)"
        else:
            for level in series.levels:
                for page in level.pages:
                    if page is None:
                        continue
                    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts,
                                                  strict=True) if n]
                    if not ends or max(ends) > size:
                        problem = (f"the pixel data of a {level.shape} level end past the file's "
                                   f"{size} bytes")
                        break
                if problem:
                    break
    except (IndexError, KeyError, ValueError, OSError) as error:
        problem = f"its image directories cannot be read ({error})"
    if problem:
        tif.close()
        raise ValueError(
            f"The slide {str(path)!r} is truncated or corrupt: {problem}. Copy or download it "
            "again (compare its size with the original's)."
        )


def _mpp_from_metadata(tif) -> float | None:
    """Micrometres per pixel of the first level, from SVS, OME or TIFF tags; None if absent."""
    page = tif.pages[0]
    if tif.is_svs:
        match = _SVS_MPP.search(page.description or "")
        if match:
            return float(match.group(1))
    if tif.is_ome and tif.ome_metadata:
        value = _ome_physical_size(tif.ome_metadata)
        if value is not None:
            return value
    return _tiff_resolution_mpp(page)


def _ome_physical_size(xml: str) -> float | None:
    """``PhysicalSizeX`` of the first ``Pixels`` element, converted to micrometres."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        logger.warning("The OME-XML metadata could not be parsed; ignoring it.")
        return None
    for element in root.iter():
        if element.tag.endswith("Pixels") and element.get("PhysicalSizeX"):
            unit = element.get("PhysicalSizeXUnit", "µm")
            factor = _UNIT_TO_UM.get(unit)
            if factor is None:
                logger.warning("Unknown OME PhysicalSizeXUnit %r; ignoring the pixel size.", unit)
                return None
            x_mpp = float(element.get("PhysicalSizeX")) * factor
            y_factor = _UNIT_TO_UM.get(element.get("PhysicalSizeYUnit", "µm"))
            if element.get("PhysicalSizeY") and y_factor is not None:
                _check_square(x_mpp, float(element.get("PhysicalSizeY")) * y_factor,
                              "OME PhysicalSizeX/PhysicalSizeY")
            return x_mpp
    return None


def _tiff_resolution_mpp(page) -> float | None:
    """Pixel size from ``XResolution``/``ResolutionUnit`` (None if absent or a placeholder).

    Tags in inches are a print or scan resolution (72, 300, 600 dpi: 353 to 42 um/px) unless
    they state a microscope's scale (at most :data:`_INCH_MAX_MPP`, i.e. 2540 dpi or more); the
    others are not taken as a pixel size. Pixels whose x and y sizes differ are refused.
    """
    import tifffile

    if "XResolution" not in page.tags or page.resolutionunit == tifffile.RESUNIT.NONE:
        return None
    px_per_um_x, px_per_um_y = page.get_resolution(tifffile.RESUNIT.MICROMETER)[:2]
    if not px_per_um_x or px_per_um_x <= 0:
        return None
    value = 1.0 / px_per_um_x
    inch = page.resolutionunit == tifffile.RESUNIT.INCH
    if value > _PLACEHOLDER_MPP or (inch and value > _INCH_MAX_MPP):
        logger.info("Ignoring the TIFF resolution tags (%s looks like a default or a print "
                    "resolution, not a microscope's pixel size).", _resolution_note(page)[2:])
        return None
    if px_per_um_y and px_per_um_y > 0:
        _check_square(value, 1.0 / px_per_um_y, "TIFF XResolution/YResolution")
    return value


def _resolution_note(page) -> str:
    """``", its resolution tag: 600 dpi (42.33 um/px)"`` where the page has one, else ``""``."""
    import tifffile

    if "XResolution" not in page.tags or page.resolutionunit == tifffile.RESUNIT.NONE:
        return ""
    px_per_um = page.get_resolution(tifffile.RESUNIT.MICROMETER)[0]
    if not px_per_um or px_per_um <= 0:
        return ""
    if page.resolutionunit == tifffile.RESUNIT.INCH:
        return f", its resolution tag: {px_per_um * 25400:.4g} dpi ({1 / px_per_um:.4g} um/px)"
    return f", its resolution tag: {1 / px_per_um:.4g} um/px"


def _check_square(x_mpp: float, y_mpp: float, where: str) -> None:
    if abs(x_mpp - y_mpp) > _SQUARE_TOLERANCE * max(x_mpp, y_mpp):
        raise ValueError(
            f"The slide's pixels are not square ({where}: x {x_mpp:.4g}, y {y_mpp:.4g} um/px); "
            "histoexpr reads square pixels only. Resample it to square pixels first (e.g. vips "
            "resize with hscale/vscale), or pass mpp= if these tags are wrong.")


def _sample(level, side: int = 1024):
    """At most ``side`` x ``side`` pixels from the middle of a level (a few chunks read)."""
    import numpy as np

    _, height, width = level.shape
    r0, c0 = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return np.asarray(level[:, r0 : r0 + side, c0 : c0 + side].compute(scheduler="synchronous"))


def _level_array(tif, path: Path, level: int):
    """One pyramid level as a lazy ``(c, y, x)`` dask array, read tile by tile (reopenable)."""
    array = TiffLevel(tif, path, series=0, level=level).as_dask()
    axes = tif.series[0].levels[level].axes
    # drop singleton axes other than Y, X and the channels (T, Z, Q, I...)
    index = []
    kept = []
    for name, size in zip(axes, array.shape, strict=True):
        if name in "YXSC":
            index.append(slice(None))
            kept.append(name)
        elif size == 1:
            index.append(0)
        else:
            raise ValueError(
                f"The slide has {size} planes along its {name!r} axis (axes {axes!r}); read_wsi "
                "reads 2-D slides. Extract one plane first (e.g. tifffile.imread(path, key=0))."
            )
    array = array[tuple(index)]
    if "S" in kept and "C" in kept:
        raise ValueError(f"The slide has both samples and channels (axes {axes!r}); not supported.")
    channel_axis = next((kept.index(a) for a in "SC" if a in kept), None)
    if channel_axis is None:
        array = array[None]
        kept.insert(0, "C")
        channel_axis = 0
    order = [channel_axis, kept.index("Y"), kept.index("X")]
    array = array.transpose(order)
    rows = array.chunks[1][0]
    if rows < _THIN_STRIP_ROWS:
        array = array.rechunk({1: rows * -(-_MIN_CHUNK_ROWS // rows)})
    return array
