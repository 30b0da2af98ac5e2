"""Tissue detection: a label map of the pieces of tissue on a slide."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._elements import scale_to_global
from .._image import image_levels, read_region
from .._utils import (
    check_key_free,
    check_key_writable,
    log_added,
    logger,
    require_element,
    store_element,
)
from .._validate import check_choice, check_positive

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: how the elements this step writes record their writer (see ``_utils.store_element``)
STEP = "hx.pp.detect_tissue"

_KINDS = ("auto", "brightfield", "fluorescence")
# Otsu's threshold on saturation is kept inside this range: below it, noise on a white glass
# would count as tissue; above it, an image filled with tissue would be split into its
# pale (eosin) and dark (haematoxylin) parts.
_SATURATION_RANGE = (0.05, 0.15)
# ... unless bare glass is in view: then Otsu's threshold between glass and stain may rise to this
_GLASS_SATURATION_MAX = 0.3
# Fluorescence: nuclei are sparse and the background dark. The threshold lies half-way between
# the background's upper edge (the triangle threshold, which follows the background's peak of the
# histogram) and the median intensity above it; Otsu's would split dense from sparse nuclei. The
# mask is then closed over about a cell's neighbourhood so that sparse nuclei join their tissue.
_FLUORESCENCE_SMOOTHING_UM = 4.0
_FLUORESCENCE_CLOSING_UM = 24.0


def detect_tissue(
    sdata: SpatialData,
    image_key: str = "he",
    *,
    mpp: float = 8.0,
    kind: Literal["auto", "brightfield", "fluorescence"] = "auto",
    min_area_um2: float = 5_000.0,
    fill_holes: bool = True,
    key_added: str | None = None,
    overwrite: bool = False,
) -> None:
    """Detect the tissue on an image and store it as a label map.

    The image is read at a low resolution (``mpp``) through :func:`histoexpr.io.read_region`.
    On a brightfield (H&E) image, tissue is what is stained: pixels whose colour saturation is
    above Otsu's threshold (kept between 0.05 and 0.15, so that neither a blank glass nor an image
    filled with tissue is split in two; up to 0.3 where at least a fifth of the image is bare
    glass, so that a faint smear of stain on the glass is not tissue). On a fluorescence image,
    tissue is where the intensity (the mean of the channels, slightly smoothed) is above half-way
    between the dark background (whose upper edge is found by the triangle method) and the
    median intensity of what is not background, and the mask is closed over 24 um so that sparse
    nuclei join. Then, for both kinds, the mask is closed over one pixel, pieces smaller than
    ``min_area_um2`` are removed (and counted in the log) and, with ``fill_holes``, holes
    enclosed by tissue are filled.

    Parameters
    ----------
    sdata
        The section.
    image_key
        Key of the image in ``sdata.images``.
    mpp
        Working pixel size in um/px. The label map has this pixel size, or the image's own where
        the image is coarser.
    kind
        ``"brightfield"`` (H&E and other stains on a white background), ``"fluorescence"``
        (signal on a dark background) or ``"auto"``: decided from the pixels, not the number
        of channels: brightfield where the commonest brightness (the background) is above half
        of full scale, fluorescence below; the decision is logged. A brightfield image in grey
        is thresholded on darkness, an RGBA one on the colour of its first 3 channels. A mask
        covering under 1 % or over 99 % of the image gives a warning.
    min_area_um2
        Pieces of tissue smaller than this area (um²) are removed as debris.
    fill_holes
        Fill holes that are completely enclosed by tissue.
    key_added
        Key of the label map in ``sdata.labels``; defaults to ``f"{image_key}_tissue"``.
    overwrite
        Replace an existing element named ``key_added`` that an earlier ``detect_tissue``
        wrote (never an element of another origin: an error suggests another key).

    Returns
    -------
    Nothing; adds ``sdata.labels[key_added]``, a label map with 0 on the background and
    1, ..., n on the n connected pieces of tissue, with a scale (and translation) to the
    ``"global"`` coordinate system in micrometres, aligned with the image.
    """
    from scipy import ndimage
    from skimage.measure import label
    from spatialdata.models import Labels2DModel

    require_element(sdata, image_key, "images")
    key_added = f"{image_key}_tissue" if key_added is None else key_added
    check_key_writable(sdata, key_added, overwrite=overwrite, step=STEP)
    check_choice("kind", kind, _KINDS)
    check_positive("mpp", mpp, unit="um/px")
    check_positive("min_area_um2", min_area_um2, allow_zero=True, unit="um2")

    level0 = image_levels(sdata, image_key)[0]
    work_mpp = float(mpp)
    if work_mpp < level0.mpp:
        logger.info("The image (%g um/px) is coarser than mpp=%g; detecting tissue at %g um/px.",
                    level0.mpp, mpp, level0.mpp)
        work_mpp = level0.mpp

    # read the whole image on a grid of exactly `work_mpp`, the last row/column padded with 0
    height_um, width_um = (n * level0.mpp for n in level0.shape_yx)
    out_h = max(1, math.ceil(height_um / work_mpp - 1e-6))
    out_w = max(1, math.ceil(width_um / work_mpp - 1e-6))
    _check_work_size(level0, (out_h, out_w), work_mpp)
    ox, oy = level0.offset
    pixels = read_region(sdata, image_key, (ox, oy, ox + out_w * work_mpp, oy + out_h * work_mpp),
                         mpp=work_mpp, fill=0, outside="fill")
    valid = np.zeros((out_h, out_w), dtype=bool)
    valid[: max(1, round(height_um / work_mpp)), : max(1, round(width_um / work_mpp))] = True

    if kind == "auto":
        kind, reason = _decide_kind(pixels, valid)
        logger.info("Detecting tissue on %r (%d channel(s)) as %s: %s. Pass kind= to override.",
                    image_key, pixels.shape[0], kind, reason)
    if kind == "brightfield":
        if pixels.shape[0] >= 3:
            if pixels.shape[0] > 3:
                logger.info("Using the first 3 of the %d channels of %r as RGB.",
                            pixels.shape[0], image_key)
            mask = _stained(pixels[:3], valid)
        else:
            looks, reason = _decide_kind(pixels, valid)
            if looks != "brightfield":
                raise ValueError(
                    f"kind='brightfield' on {image_key!r}, a {pixels.shape[0]}-channel image "
                    f"whose pixels look like fluorescence ({reason}). Pass kind='fluorescence' "
                    "(or kind='auto')."
                )
            mask = _darker(pixels[0], valid)
    else:
        mask = _fluorescent(pixels, valid, work_mpp)

    mask = _close(mask, 1) & valid
    pieces = label(mask, connectivity=2)
    min_area_px = min_area_um2 / work_mpp**2
    areas = np.bincount(pieces.ravel())
    small = np.flatnonzero(areas < min_area_px)
    small = small[small > 0]
    if small.size:
        logger.info("Removed %d piece(s) of tissue smaller than min_area_um2=%g um².",
                    small.size, min_area_um2)
        mask[np.isin(pieces, small)] = False
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    if not mask.any():
        raise ValueError(
            f"No tissue was found on {image_key!r} (kind={kind!r}, {len(small)} piece(s) "
            f"smaller than min_area_um2={min_area_um2:g} removed). Check kind, or lower "
            "min_area_um2 or mpp."
        )
    pieces = label(mask, connectivity=2)
    n_pieces = int(pieces.max())
    dtype = np.uint8 if n_pieces < 2**8 else np.uint16 if n_pieces < 2**16 else np.uint32

    element = Labels2DModel.parse(pieces.astype(dtype), dims=("y", "x"),
                                  transformations=scale_to_global(work_mpp, ox, oy))
    check_key_free(sdata, key_added, overwrite=overwrite, step=STEP)
    store_element(sdata, "labels", key_added, element, step=STEP)
    fraction = mask[valid].mean()
    log_added("labels", key_added, f"{n_pieces} piece(s) of tissue covering {fraction:.1%} of "
              f"the image, at {work_mpp:g} um/px, detected as {kind}")
    if not 0.01 <= fraction <= 0.99:
        import warnings

        warnings.warn(
            f"The tissue detected on {image_key!r} as {kind} covers {fraction:.1%} of the image, "
            "which is rarely right: check the map (hx.pl.labels) and pass kind='brightfield' or "
            "kind='fluorescence' if the kind is wrong (or tiles with min_tissue=0 if the image "
            "really is all tissue).", UserWarning, stacklevel=2)


#: the fewest pixels across an image at the working pixel size (fewer cannot tell tissue)
_MIN_WORK_SIDE_PX = 4
#: bytes per pixel of the working grid: the pixels read, float32 copies, masks and labels
_WORK_BYTES_PER_PX = 48


def _check_work_size(level0, shape: tuple[int, int], work_mpp: float) -> None:
    """Refuse a working grid too coarse to see tissue, or too large for the memory.

    The image itself is read in blocks when it is large (an image without a pyramid: see
    ``histoexpr._image.read_levels``), so only the working grid counts here.
    """
    from .._memory import check_memory

    height, width = level0.shape_yx
    if min(shape) < _MIN_WORK_SIDE_PX:
        finest = min(height, width) * level0.mpp / _MIN_WORK_SIDE_PX
        raise ValueError(
            f"mpp={work_mpp:g} um/px would see the whole image ({width} x {height} px at "
            f"{level0.mpp:g} um/px) as {shape[1]} x {shape[0]} pixels: tissue cannot be told "
            f"from glass. Pass a finer mpp, at most {finest:.3g} (e.g. the default 8).")
    channels = int(np.prod(level0.data.shape[:-2]))
    check_memory(shape[0] * shape[1] * (_WORK_BYTES_PER_PX + channels * 4),
                 f"detect_tissue at mpp={work_mpp:g} um/px ({shape[1]:,} x {shape[0]:,} px)",
                 "Pass a coarser mpp= (e.g. the default 8 um/px).")


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if np.ptp(values) > 0 else float(values.max())


def _brightness(pixels: np.ndarray) -> np.ndarray:
    """Mean of the (first 3) channels on a 0..1 scale.

    Scaled by the dtype's range for 8-bit images, else by the image's 99.9th percentile (16-bit
    and float images rarely fill their range).
    """
    channels = pixels[:3].astype(np.float32)
    if pixels.dtype == np.uint8:
        scale = 255.0
    else:
        scale = float(np.percentile(channels, 99.9)) or 1.0
    return np.clip(channels.mean(axis=0) / scale, 0, 1)


def _decide_kind(pixels: np.ndarray, valid: np.ndarray) -> tuple[str, str]:
    """Brightfield or fluorescence from the pixels: the brightness of the background.

    The background is the commonest brightness (the peak of the histogram): bright glass on a
    brightfield image, dark on a fluorescence one, whatever the number of channels (a DAPI scan
    stored as RGB, a grey or RGBA H&E).
    """
    values = _brightness(pixels)[valid]
    counts, edges = np.histogram(values, bins=32, range=(0.0, 1.0))
    peak = int(counts.argmax())
    background = float((edges[peak] + edges[peak + 1]) / 2)
    kind = "brightfield" if background > 0.5 else "fluorescence"
    return kind, (f"its background (the commonest brightness) is {background:.0%} of full "
                  f"scale, {'bright' if kind == 'brightfield' else 'dark'}")


def _darker(grey: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Brightfield in grey: pixels darker than the glass (relative darkness above Otsu's)."""
    from scipy import ndimage

    brightness = ndimage.gaussian_filter(_brightness(grey[None]), sigma=1.0)
    glass = float(np.percentile(brightness[valid], 95)) or 1.0
    darkness = np.clip(1 - brightness / glass, 0, 1)
    threshold = float(np.clip(_otsu(darkness[valid]), *_SATURATION_RANGE))
    logger.debug("Darkness threshold: %.3f", threshold)
    return (darkness > threshold) & valid


def _stained(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Brightfield: pixels whose (slightly smoothed) colour saturation marks a stain.

    Where bare glass is in view (at least a fifth of the pixels bright and unstained), the
    threshold may rise to 0.3, so that a faint smear of stain on the glass is not tissue.
    """
    from scipy import ndimage

    rgb = rgb.astype(np.float32)
    high, low = rgb.max(axis=0), rgb.min(axis=0)
    saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    saturation = ndimage.gaussian_filter(saturation, sigma=1.0)
    glass = (_brightness(rgb) > 0.8) & (saturation < _SATURATION_RANGE[0]) & valid
    upper = _GLASS_SATURATION_MAX if glass.sum() >= 0.2 * valid.sum() else _SATURATION_RANGE[1]
    threshold = float(np.clip(_otsu(saturation[valid]), _SATURATION_RANGE[0], upper))
    logger.debug("Saturation threshold: %.3f", threshold)
    return (saturation > threshold) & valid


def _fluorescent(pixels: np.ndarray, valid: np.ndarray, mpp: float) -> np.ndarray:
    """Fluorescence: pixels whose smoothed intensity stands out of the dark background."""
    from scipy import ndimage
    from skimage.filters import threshold_triangle

    sigma = max(0.5, _FLUORESCENCE_SMOOTHING_UM / mpp)
    intensity = ndimage.gaussian_filter(pixels.astype(np.float32).mean(axis=0), sigma=sigma)
    values = intensity[valid]
    if np.ptp(values) == 0:
        return np.zeros_like(valid)
    background = float(threshold_triangle(values))
    above = values[values > background]
    threshold = (background + float(np.median(above))) / 2 if above.size else background
    logger.debug("Intensity threshold: %.3f (background up to %.3f)", threshold, background)
    mask = (intensity > threshold) & valid
    return _close(mask, max(1, round(_FLUORESCENCE_CLOSING_UM / mpp)))


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological closing by a disk, without eroding tissue that touches the border."""
    from scipy import ndimage
    from skimage.morphology import disk

    padded = np.pad(mask, radius, mode="edge")
    closed = ndimage.binary_closing(padded, structure=disk(radius).astype(bool))
    return closed[radius:-radius, radius:-radius]
