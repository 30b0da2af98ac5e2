"""Tissue detection: a label map of the pieces of tissue on a slide."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._core.elements import scale_to_global
from .._core.image import (
    image_levels,
    pixel_size_stated,
    read_region,
    unstated_pixel_size_message,
)
from .._core.image_facts import (
    channel_kind,
    check_pixel_type,
    check_pixels,
    image_channels,
    image_fingerprint,
)
from .._core.logs import log_added, logged_step, logger
from .._core.ownership import check_key_writable, replace_elements, require_element
from .._core.validate import check_bool, check_choice, check_positive

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: how the elements this step writes record their writer (see ``_core.ownership.store_element``)
STEP = "hx.pp.detect_tissue"
#: key of the map's ``attrs`` that records how it was made (the image, its fingerprint, options)
RECORD_KEY = "tissue"

_KINDS = ("auto", "brightfield", "fluorescence")
# Brightfield: a pixel's optical density (OD = -log10 of the light it transmits, relative to the
# glass, averaged over the channels) is what the stains absorb (Beer-Lambert). Tissue is what
# absorbs more than Li's minimum cross-entropy threshold of the OD histogram, kept inside this
# range: below it, the glass's own noise (OD about 0.01, JPEG and uneven light up to 0.025)
# would count; above it, pale tissue would be lost on an image filled with tissue. A faint halo
# of eosin smeared on the glass absorbs little (OD about 0.03-0.05) and stays out.
_OD_RANGE = (0.03, 0.1)
# The glass's colour: the median colour of the brightest 5 % of the image, unless that is darker
# than half of full scale (no glass in view: as for the choice of kind): then white.
_GLASS_PERCENTILE = 95.0
_GLASS_MIN = 0.5
# Haematoxylin and eosin both absorb green at least as much as red or blue; ink that absorbs red
# or blue clearly more than green (blue, green, cyan pens) is not a stain.
_INK_GREEN_RATIO = 0.8
# Nor is a grey absorber (black ink, dust, out-of-focus debris, the edge of a bubble): the OD
# colour of H&E lies 8-20 degrees from grey; this close to grey (and well above the
# threshold, where the colour is measured without noise) it is not a stain.
_GREY_DEGREES = 4.0
# A whole piece is grey when its summed OD colour lies within this angle of grey (the
# haematoxylin of Ruifrok and Johnston lies 18 degrees away, tissue pieces 11-27 degrees):
# fiducial marks, out-of-focus bands, bubbles' rims.
_GREY_PIECE_DEGREES = 8.0
# Tissue has structure (cells, fibres, lumens): its unsmoothed OD varies from pixel to pixel (by
# 15-50 % of its local mean on the sections seen); a piece less than this share as textured as
# the piece that holds the most stain is a blur, a smear or a halo (they reach 10-25 %).
_MIN_RELATIVE_TEXTURE = 1 / 3
# A fluorescence image has a dark background: at least this share of its pixels darker than
# this share of full scale. An image without bright glass and without such a background is a
# brightfield image, under-exposed or filled with tissue (the squidpy mouse-brain H&E crop: glass
# at ~40 % of full scale, its darkest pixels at 20-35 %; fluorescence scans: 60-85 % near black).
_DARK_BRIGHTNESS = 0.15
_DARK_SHARE = 0.1
# Beyond the slide: a scanner's or CytAssist's dark frame passes under a tenth of the glass's light
# (optical density above 1; H&E tissue at the working resolution passes 20 % or more).
_FRAME_OD = 1.0
# Lines thinner than this (bubble edges, pen strokes, fibres on the glass) are opened away.
_OPENING_UM = 8.0
# Both kinds are read slightly smoothed (a Gaussian of this sigma), against noise and JPEG blocks.
_SMOOTHING_UM = 4.0
# Fluorescence: nuclei are sparse and the background dark. The threshold lies half-way between
# the background's upper edge (the triangle threshold, which follows the background's peak of the
# histogram) and the median intensity above it; Otsu's would split dense from sparse nuclei. The
# mask is then closed over about a cell's neighbourhood so that sparse nuclei join their tissue.
_FLUORESCENCE_CLOSING_UM = 24.0


@logged_step("detecting tissue")
def detect_tissue(
    sdata: SpatialData,
    image_key: str = "he",
    *,
    mpp: float = 8.0,
    kind: Literal["auto", "brightfield", "fluorescence"] = "auto",
    min_area_um2: float = 5_000.0,
    fill_holes: bool = True,
    min_od: float | None = None,
    key_added: str | None = None,
    overwrite: bool = False,
) -> None:
    """Detect the tissue on an image and store it as a label map.

    The image is read at a low resolution (``mpp``) through :func:`histoexpr.io.read_region`.
    On a brightfield (H&E) image, tissue is what absorbs light as a stain does: each pixel's
    optical density (OD, ``-log10`` of the light it lets through relative to the glass, whose
    colour is the median of the brightest 5 % of the image) is averaged over the channels and
    thresholded at Li's minimum cross-entropy threshold of the OD histogram, kept between 0.03
    (the glass's own noise stays out) and 0.1 (pale tissue stays in on an image filled with
    tissue; the glass is taken as white where even the brightest pixels are below half of full
    scale). A faint eosin halo smeared on the glass beside the section absorbs little (OD
    0.03-0.05) and stays out. On a colour image, what absorbs unlike H&E is left out: ink that
    absorbs red or blue more than green (blue, green pens), and grey absorbers (black ink, dust,
    debris, fiducial marks, bubble rims: dense pixels whose OD colour lies within 4 degrees of
    grey, pieces whose summed OD lies within 8 degrees; tissue pieces lie 11-27 degrees away).
    Pieces less than a third as textured (the local spread of OD over its mean) as the piece
    holding the most stain are blurs or smears (out-of-focus bands, smudges) and are left out.
    Lines and specks narrower than about 2 x 8 um (bubble edges, pen strokes, fibres) are opened
    away. Where glass is in view, near-opaque regions (OD above 1, a tenth of the glass's light)
    that reach the image's edge lie beyond the slide (a scanner's or CytAssist image's dark
    frame, the slide holder): they and the blur around them are neither tissue nor counted in
    the threshold. On a fluorescence image, tissue is where the
    intensity (the mean of the channels, slightly smoothed) is above half-way
    between the dark background (whose upper edge is found by the triangle method) and the
    median intensity of what is not background, and the mask is closed over 24 um so that sparse
    nuclei join. Then, for both kinds, the mask is closed over one pixel, pieces smaller than
    ``min_area_um2`` are removed (and counted in the log) and, with ``fill_holes``, holes
    enclosed by tissue are filled.

    Every length and area above is physical: on an image that does not state its pixel size
    (its transformation to ``"global"`` is the identity) they would be read in pixels, as if the
    image were at 1 um/px. Such an image gets a warning that names how to state its size.

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
        (signal on a dark background) or ``"auto"``: fluorescence where the channels are named
        after stains (e.g. ``DAPI, CD3, CD8``, as :func:`histoexpr.io.read_wsi` names them from
        an OME-TIFF); else (channels ``r, g, b``, or unnamed: ``c0, c1...``) decided from the
        pixels, not the number of channels: brightfield where the commonest brightness (the
        background) is above half of full scale; below, fluorescence if at least 10 % of the
        pixels are near black (under 15 % of full scale: a dark background), else brightfield
        (an under-exposed H&E, or one filled with tissue); the decision is logged. A brightfield
        image in grey is thresholded on its optical density alone, an RGBA one on its first 3
        channels. A mask covering under 1 % or over 99 % of the image gives a warning.
    min_area_um2
        Pieces of tissue smaller than this area (um²) are removed as debris.
    fill_holes
        Fill holes that are completely enclosed by tissue.
    min_od
        Brightfield only: the optical density (mean over the channels, relative to the glass)
        above which a pixel is tissue, in place of the threshold found from the image (Li's,
        between 0.03 and 0.1; logged at debug level). Lower it for a very faintly stained
        section, raise it to leave out a dense smear.
    key_added
        Key of the label map in ``sdata.labels``; defaults to ``f"{image_key}_tissue"``.
    overwrite
        Replace an existing element named ``key_added`` that an earlier ``detect_tissue``
        wrote (never an element of another origin: an error suggests another key).

    Returns
    -------
    Nothing; adds ``sdata.labels[key_added]``, a label map with 0 on the background and
    1, ..., n on the n connected pieces of tissue, with a scale (and translation) to the
    ``"global"`` coordinate system in micrometres, aligned with the image. Its
    ``attrs["tissue"]`` records how it was made: ``image_key``, ``image_fingerprint`` (the
    image's shape, pixel size and a sample of its pixels), ``mpp`` (the working pixel size),
    ``kind`` (as decided), ``min_area_um2``, ``fill_holes`` and ``min_od``;
    :func:`histoexpr.pp.tile` refuses the map once the image holds other pixels.
    """
    check_bool("overwrite", overwrite)
    from scipy import ndimage
    from skimage.measure import label
    from spatialdata.models import Labels2DModel

    require_element(sdata, image_key, "images")
    key_added = f"{image_key}_tissue" if key_added is None else key_added
    check_key_writable(sdata, key_added, overwrite=overwrite, step=STEP)
    check_choice("kind", kind, _KINDS)
    check_positive("mpp", mpp, unit="um/px")
    check_positive("min_area_um2", min_area_um2, allow_zero=True, unit="um2")
    if min_od is not None:
        check_positive("min_od", min_od)
    check_bool("fill_holes", fill_holes)

    level0 = image_levels(sdata, image_key)[0]
    check_pixel_type(level0.data.dtype, image_key)
    if not pixel_size_stated(sdata, image_key):
        import warnings

        warnings.warn(
            f"{unstated_pixel_size_message(sdata, image_key)}. detect_tissue reads it as 1 um/px: "
            f"mpp={mpp:g}, min_area_um2={min_area_um2:g} and its other lengths are taken in "
            "pixels.", UserWarning, stacklevel=2)
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
    # recorded with the map; taken before the pixels are read, so that the chunks it reads are
    # not held on top of them (an image without pyramid: one chunk of the whole)
    fingerprint = image_fingerprint(sdata, image_key)
    ox, oy = level0.offset
    pixels = read_region(sdata, image_key, (ox, oy, ox + out_w * work_mpp, oy + out_h * work_mpp),
                         mpp=work_mpp, fill=0, outside="fill")
    valid = np.zeros((out_h, out_w), dtype=bool)
    valid[: max(1, round(height_um / work_mpp)), : max(1, round(width_um / work_mpp))] = True
    check_pixels(pixels, image_key, valid)  # NaN, negative, blank: refused, not 0 tissue

    if kind == "auto":
        kind, reason = _decide_kind(pixels, valid, image_channels(sdata, image_key))
        logger.info("Detecting tissue on %r (%d channel(s)) as %s: %s. Pass kind= to override.",
                    image_key, pixels.shape[0], kind, reason)
    if kind == "brightfield":
        if pixels.shape[0] > 3:
            logger.info("Using the first 3 of the %d channels of %r as RGB.",
                        pixels.shape[0], image_key)
        elif pixels.shape[0] < 3:
            looks, reason = _decide_kind(pixels, valid)
            if looks != "brightfield":
                raise ValueError(
                    f"kind='brightfield' on {image_key!r}, a {pixels.shape[0]}-channel image "
                    f"whose pixels look like fluorescence ({reason}). Pass kind='fluorescence' "
                    "(or kind='auto')."
                )
        mask = _stained(pixels[:3] if pixels.shape[0] >= 3 else pixels[:1], valid, work_mpp,
                        min_od)
    else:
        if min_od is not None:
            raise ValueError(
                f"min_od={min_od:g} thresholds the optical density of a brightfield image, but "
                f"{image_key!r} is detected as fluorescence. Pass kind='brightfield' if it is a "
                "stained (H&E) image, or drop min_od.")
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
            "min_area_um2 or mpp"
            + ("." if min_od is None else f", or lower min_od (given {min_od:g}).")
        )
    pieces = label(mask, connectivity=2)
    n_pieces = int(pieces.max())
    dtype = np.uint8 if n_pieces < 2**8 else np.uint16 if n_pieces < 2**16 else np.uint32

    element = Labels2DModel.parse(pieces.astype(dtype), dims=("y", "x"),
                                  transformations=scale_to_global(work_mpp, ox, oy))
    # how the map was made, checked before it is reused (hx.pp.tile: the image's pixels)
    element.attrs[RECORD_KEY] = {
        "image_key": image_key, "image_fingerprint": fingerprint,
        "mpp": work_mpp, "kind": kind, "min_area_um2": float(min_area_um2),
        "fill_holes": bool(fill_holes), "min_od": None if min_od is None else float(min_od)}
    replace_elements(sdata, [("labels", key_added, element)], overwrite=overwrite, step=STEP)
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


def _decide_kind(pixels: np.ndarray, valid: np.ndarray,
                 channels: list[str] | None = None) -> tuple[str, str]:
    """Brightfield or fluorescence: from the channels' names where they name stains, else pixels.

    Channels named after stains (``DAPI, CD3, CD8``: :func:`histoexpr._core.image_facts.
    channel_kind`) are fluorescence, whatever the pixels; ``r, g, b`` and unnamed channels are
    decided from the brightness of the background.

    The background is the commonest brightness (the peak of the histogram): bright glass on a
    brightfield image, dark on a fluorescence one, whatever the number of channels (a DAPI scan
    stored as RGB, a grey or RGBA H&E). An image with no bright glass is fluorescence only if
    it has a dark background too (``_DARK_SHARE`` of its pixels near black); one without (an
    under-exposed H&E, or a crop filled with tissue) is brightfield.
    """
    if channels and channel_kind(channels) == "fluorescence":
        return "fluorescence", f"its channels are named after stains ({', '.join(channels)})"
    values = _brightness(pixels)[valid]
    counts, edges = np.histogram(values, bins=32, range=(0.0, 1.0))
    peak = int(counts.argmax())
    background = float((edges[peak] + edges[peak + 1]) / 2)
    said = f"its background (the commonest brightness) is {background:.0%} of full scale"
    if background > 0.5:
        return "brightfield", f"{said}, bright"
    dark = float((values < _DARK_BRIGHTNESS).mean()) if values.size else 0.0
    if dark < _DARK_SHARE:
        return "brightfield", (f"{said} but only {dark:.0%} of its pixels are near black (below "
                               f"{_DARK_BRIGHTNESS:.0%}): no dark background, so a brightfield "
                               "image with dim glass or filled with tissue")
    return "fluorescence", f"{said}, dark ({dark:.0%} of its pixels near black)"


def _stained(pixels: np.ndarray, valid: np.ndarray, mpp: float,
             min_od: float | None = None) -> np.ndarray:
    """Brightfield: pixels that absorb light as a stain does (optical density above a threshold).

    The optical density of each channel is taken relative to the glass (the median colour of
    the brightest 5 % of the image, slightly smoothed), averaged over the channels and
    thresholded (``min_od``, or Li's threshold kept within ``_OD_RANGE``). On a colour image,
    absorbers of another colour than H&E are left out: ink (more absorbed in red or blue than
    in green), and pieces (or dense pixels) of a grey absorber.
    """
    from scipy import ndimage

    sigma = _SMOOTHING_UM / mpp
    smooth = ndimage.gaussian_filter(pixels.astype(np.float32), sigma=(0, sigma, sigma))
    values = smooth[:, valid]
    brightness = values.mean(axis=0)
    bright = brightness >= np.percentile(brightness, _GLASS_PERCENTILE)
    glass = np.median(values[:, bright], axis=1)
    full = 255.0 if pixels.dtype == np.uint8 else float(np.percentile(values, 99.9)) or 1.0
    has_glass = glass.mean() >= _GLASS_MIN * full
    if not has_glass:
        logger.info("No bare glass in view (the brightest pixels are at %s of full scale): "
                    "optical density is measured against white.", f"{glass.mean() / full:.0%}")
        glass = np.full_like(glass, full)
    glass = np.maximum(glass, 1e-6)[:, None, None]
    od_channels = np.log10(glass / np.maximum(smooth, 1e-3 * glass)).clip(0, None)
    od = od_channels.mean(axis=0)
    raw = pixels.astype(np.float32)
    raw_od = np.log10(glass / np.maximum(raw, 1e-3 * glass)).clip(0, None).mean(axis=0)
    if has_glass:  # beyond the slide, with the blur the smoothing spreads around it: not
        # tissue, and not counted in the threshold (only where a slide's glass is in view)
        valid = valid & ~_outside_slide(raw_od, valid, reach=math.ceil(3 * sigma))
    if min_od is None:
        threshold = float(np.clip(_li(od[valid]), *_OD_RANGE))
    else:
        threshold = float(min_od)
    logger.debug("Glass colour %s; optical density threshold: %.3f",
                 np.round(glass.ravel(), 1).tolist(), threshold)
    mask = (od > threshold) & valid
    od_rgb = None
    if pixels.shape[0] >= 3:
        od_rgb = od_channels[:3]
        red, green, blue = od_rgb
        ink = green < _INK_GREEN_RATIO * np.maximum(red, blue)
        grey = _grey_degrees(od_rgb) < _GREY_DEGREES
        mask &= ~(ink | (grey & (od > 2 * threshold)))
    mask = _drop_unstained_pieces(mask, od, od_rgb, raw_od)
    return _open(mask, max(1, round(_OPENING_UM / mpp)))


#: the fewest pixels across an image at the working pixel size (fewer cannot tell tissue)
_MIN_WORK_SIDE_PX = 4
#: bytes per pixel of the working grid: the pixels read, float32 copies, masks and labels
_WORK_BYTES_PER_PX = 48


def _check_work_size(level0, shape: tuple[int, int], work_mpp: float) -> None:
    """Refuse a working grid too coarse to see tissue, or too large for the memory.

    The image itself is read in blocks when it is large (an image without a pyramid: see
    ``histoexpr._core.image.read_levels``), so only the working grid counts here.
    """
    from .._core.memory import check_memory

    height, width = level0.shape_yx
    if min(height, width) < _MIN_WORK_SIDE_PX:
        raise ValueError(
            f"The image is {width} x {height} px: too small to tell tissue from glass (at least "
            f"{_MIN_WORK_SIDE_PX} px across). Give the section's image, or tiles without a "
            "tissue map (hx.pp.tile(..., min_tissue=0)).")
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


def _li(values: np.ndarray) -> float:
    from skimage.filters import threshold_li

    return float(threshold_li(values)) if np.ptp(values) > 0 else float(values.max())


def _outside_slide(od: np.ndarray, valid: np.ndarray, *, reach: int = 0) -> np.ndarray:
    """The near-opaque regions that reach the image's edge: what lies beyond the slide.

    A scanner's or a CytAssist image's dark frame, the slide holder, a label's shadow: pixels
    passing under a tenth of the glass's light (optical density above ``_FRAME_OD``) connected
    to the edge of the image, grown by ``reach`` pixels (the blur of the smoothing around them).
    Stained tissue, even dense, lets through more light at the working resolution; dark tissue
    inside the image is left alone. Called only where glass is in view (an image of dark pixels
    alone is not a slide in a frame).
    """
    from scipy import ndimage

    opaque = (od > _FRAME_OD) & valid
    if not opaque.any():
        return opaque
    pieces, _ = ndimage.label(opaque, structure=np.ones((3, 3), dtype=bool))
    rows, cols = np.nonzero(valid)
    bottom, right = rows.max(), cols.max()
    edge = np.concatenate([pieces[0, : right + 1], pieces[bottom, : right + 1],
                           pieces[: bottom + 1, 0], pieces[: bottom + 1, right]])
    touching = np.unique(edge[edge > 0])
    outside = np.isin(pieces, touching)
    if outside.any() and reach > 0:
        outside = ndimage.binary_dilation(outside, iterations=reach) & valid
    if outside.any():
        logger.info("Left out %.1f%% of the image: near-opaque regions at its edge (a frame or "
                    "holder beyond the slide, not tissue).", 100 * outside[valid].mean())
    return outside


def _grey_degrees(od_rgb: np.ndarray) -> np.ndarray:
    """Angle (degrees) between each pixel's RGB optical density and grey (equal in R, G, B)."""
    norm = np.sqrt((od_rgb**2).sum(axis=0))
    cosine = np.divide(od_rgb.sum(axis=0), norm * math.sqrt(3), out=np.ones_like(norm),
                       where=norm > 0)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def _drop_unstained_pieces(mask: np.ndarray, od: np.ndarray, od_rgb: np.ndarray | None,
                           raw_od: np.ndarray) -> np.ndarray:
    """Remove the pieces that are smooth (blur, smears) or, on a colour image, grey.

    Grey (dust, debris, black ink, fiducial marks): the summed optical density of the piece
    lies within ``_GREY_PIECE_DEGREES`` of grey. Smooth: the median of the piece's texture (the
    local spread of the unsmoothed optical density over its local mean, in 5 x 5 pixels) is
    below ``_MIN_RELATIVE_TEXTURE`` times that of the piece holding the most optical density.
    """
    from scipy import ndimage
    from skimage.measure import label

    pieces = label(mask, connectivity=2)
    if pieces.max() == 0:
        return mask
    index = np.arange(1, pieces.max() + 1)
    mean = ndimage.uniform_filter(raw_od, 5)
    spread = np.sqrt(np.clip(ndimage.uniform_filter(raw_od**2, 5) - mean**2, 0, None))
    texture = spread / np.maximum(mean, 1e-3)
    textures = np.asarray(ndimage.median(texture, pieces, index))
    main = int(np.argmax(ndimage.sum(od, pieces, index)))
    smooth = textures < _MIN_RELATIVE_TEXTURE * textures[main]
    grey = np.zeros_like(smooth)
    if od_rgb is not None:
        summed = np.stack([ndimage.sum(channel, pieces, index) for channel in od_rgb])
        grey = _grey_degrees(summed[:, :, None])[:, 0] < _GREY_PIECE_DEGREES
    drop = smooth | grey
    if drop.any():
        logger.info("Left out %d smooth or grey piece(s) (blur, smears, dust, ink, marks: not "
                    "stained tissue).", int(drop.sum()))
        mask = mask & ~np.isin(pieces, index[drop])
    return mask


def _fluorescent(pixels: np.ndarray, valid: np.ndarray, mpp: float) -> np.ndarray:
    """Fluorescence: pixels whose smoothed intensity stands out of the dark background."""
    from scipy import ndimage
    from skimage.filters import threshold_triangle

    sigma = max(0.5, _SMOOTHING_UM / mpp)
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


def _open(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological opening by a disk: removes lines and specks thinner than its diameter."""
    from scipy import ndimage
    from skimage.morphology import disk

    padded = np.pad(mask, radius, mode="edge")
    opened = ndimage.binary_opening(padded, structure=disk(radius).astype(bool))
    return opened[radius:-radius, radius:-radius]
