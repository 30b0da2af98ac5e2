"""Facts about an image that other steps record or check: tile coverage and a cheap fingerprint."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .image import image_levels

if TYPE_CHECKING:
    from spatialdata import SpatialData


#: the channel names of a colour (RGB) image, as histoexpr's readers give them (any case)
RGB_NAMES = (("r", "g", "b"), ("red", "green", "blue"))
#: names that say nothing of a channel's stain: none, ``c0``, ``0``, ``Channel 0``, ``C:0``; and
#: the names of a brightfield scan's planes (``Brightfield``, ``BF``, ``Transmitted light``),
#: which say nothing of their colour either
_UNNAMED = re.compile(r"(?:c|ch|channel)?[\s:_-]*\d+(?:[:_]\d+)*|bf|.*bright[\s_-]*field.*"
                      r"|.*transmitted.*", re.IGNORECASE)


def image_channels(sdata: SpatialData, image_key: str) -> list[str]:
    """The names of an image's channels (its ``c`` coordinate), as strings."""
    data = image_levels(sdata, image_key)[0].data
    return [str(c) for c in data.coords["c"].values] if "c" in data.coords else []


def channel_kind(channels: Sequence[str]) -> str | None:
    """What an image's channel names say it is: ``"brightfield"``, ``"fluorescence"`` or ``None``.

    Parameters
    ----------
    channels
        The names of the image's channels, in order.

    Returns
    -------
    ``"brightfield"`` where the names are exactly ``r, g, b`` (or ``red, green, blue``, any
    case): the colour channels of an H&E or other stain on white; ``"fluorescence"`` where the
    channels name stains (e.g. ``DAPI, CD3, CD8``), whatever their number; ``None`` where the
    names say nothing (no names, numbers such as ``c0, c1``, ``0, 1``, ``Channel 0``, or a
    brightfield scan's ``Brightfield`` planes, or ``r, g, b, a``: colours with an alpha
    channel, left to the rule by count or to the pixels).
    """
    names = [str(c).strip() for c in channels]
    if not names or all(not name or _UNNAMED.fullmatch(name) for name in names):
        return None
    lowered = tuple(name.lower() for name in names)
    if lowered in RGB_NAMES:
        return "brightfield"
    if lowered[:3] in RGB_NAMES and lowered[3:] in (("a",), ("alpha",)):
        return None  # RGB + alpha: colours, but what they show is for the pixels to say
    return "fluorescence"


def is_brightfield(channels: Sequence[str] | int) -> bool:
    """Whether an image is a brightfield (H&E) RGB image: the one rule of histoexpr's steps.

    Parameters
    ----------
    channels
        The names of the image's channels, or only their number.

    Returns
    -------
    ``True`` where the names are ``r, g, b`` (:func:`channel_kind`); ``False`` where they name
    stains: a fluorescence image of three stains (``DAPI, CD3, CD8``) is no H&E. Where the
    names say nothing (or only a number is given), 3 channels are taken for RGB, as before
    channels were named.
    """
    if isinstance(channels, int | np.integer):
        return int(channels) == 3
    kind = channel_kind(channels)
    return kind == "brightfield" if kind is not None else len(channels) == 3


def stain_of(channels: Sequence[str] | int) -> str:
    """The augmentation family of an image: ``"he"`` for RGB, else ``"fluorescence"``.

    Parameters
    ----------
    channels
        The image's channel names (or their number, where no names are known): RGB as
        :func:`is_brightfield` decides.

    Returns
    -------
    ``"he"`` or ``"fluorescence"``.
    """
    return "he" if is_brightfield(channels) else "fluorescence"


def image_coverage(sdata: SpatialData, image_key: str, centres: np.ndarray,
                   size_um: float) -> np.ndarray:
    """Fraction (0 to 1) of each square tile's area that lies on the image's pixels.

    Computed from the image's bounds at full resolution; ``centres`` are tile centres in um.
    """
    level = image_levels(sdata, image_key)[0]
    x_min, y_min, x_max, y_max = level.bounds
    half = float(size_um) / 2
    centres = np.asarray(centres, dtype=float).reshape(-1, 2)
    x, y = centres[:, 0], centres[:, 1]
    across = np.minimum(x + half, x_max) - np.maximum(x - half, x_min)
    down = np.minimum(y + half, y_max) - np.maximum(y - half, y_min)
    return np.clip(across, 0, None) * np.clip(down, 0, None) / (2 * half) ** 2


#: an image's coarsest level up to this many pixels is hashed whole by :func:`image_fingerprint`
FINGERPRINT_WHOLE_PX = 4_000_000
#: a larger coarsest level (a slide stored without a pyramid) is sampled on a grid this wide
_FINGERPRINT_GRID = 16


def image_fingerprint(sdata: SpatialData, image_key: str) -> str:
    """A short digest that tells one image from another, cheaply.

    It covers the image's shape, pixel size and offset of every level, and the pixels of its
    coarsest level: all of them where that level has at most :data:`FINGERPRINT_WHOLE_PX`
    pixels (a slide's pyramid, an image of a few megapixels: an edit of a few cells' width
    changes the digest), else a 16 x 16 grid of them (a large image stored without a pyramid:
    a few hundred chunks read, never the whole image).
    """
    import hashlib

    levels = image_levels(sdata, image_key)
    coarse = levels[-1]
    height, width = coarse.shape_yx
    # read here, as every pixel read of histoexpr: never by a dask.distributed Client's cluster,
    # which cannot ship the open slide file
    if height * width <= FINGERPRINT_WHOLE_PX:
        samples = np.asarray(coarse.data.compute(scheduler="synchronous").values)
    else:
        rows = np.unique(np.linspace(0, height - 1, _FINGERPRINT_GRID).round().astype(int))
        cols = np.unique(np.linspace(0, width - 1, _FINGERPRINT_GRID).round().astype(int))
        samples = np.asarray(
            coarse.data.isel(y=rows, x=cols).compute(scheduler="synchronous").values)
    digest = hashlib.sha256()
    for level in levels:
        digest.update(repr((level.shape_yx, round(level.mpp, 9),
                            tuple(round(v, 6) for v in level.offset))).encode())
    digest.update(repr((samples.dtype.str, samples.shape)).encode())
    digest.update(np.ascontiguousarray(samples).tobytes())
    return digest.hexdigest()[:16]


def pixels_changed(sdata: SpatialData, record: Mapping[str, Any]) -> bool:
    """Whether the image something was made from holds other pixels now.

    ``record`` is how it was made (e.g. ``uns["embeddings"][key]``), with the ``image_key`` and
    ``image_fingerprint`` (:func:`image_fingerprint`) of then; records without them (made by
    an older histoexpr, or the user's own) and images no longer in ``sdata`` count as unchanged.
    """
    recorded, key = record.get("image_fingerprint"), record.get("image_key")
    if recorded is None or key is None or key not in sdata.images:
        return False
    return image_fingerprint(sdata, str(key)) != recorded


def check_same_pixels(sdata: SpatialData, record: Mapping[str, Any], *, what: str,
                      fix: str) -> None:
    """Refuse something made from an image whose pixels have changed (:func:`pixels_changed`)."""
    if pixels_changed(sdata, record):
        key = record.get("image_key")
        raise ValueError(
            f"{what} were made from other pixels than sdata.images[{key!r}] holds now (the "
            f"image was replaced or edited since), so they are not used. {fix}")


def check_pixel_type(dtype: np.dtype, image_key: str) -> None:
    """Refuse an image whose pixels are not numbers of intensity (booleans, complex numbers)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        mask = ""
        if dtype.kind == "b":
            mask = " (a mask? store it as a label map, sdata.labels)"
        raise TypeError(
            f"sdata.images[{image_key!r}] holds {dtype} pixels, not intensities{mask}. Store "
            "the image as 8- or 16-bit integers, or as floats from 0 to 1.")


def check_pixels(pixels: np.ndarray, image_key: str, valid: np.ndarray | None = None) -> None:
    """Refuse pixels that are not an image's intensities, before a step works on them.

    ``pixels`` (channels first) are the image or a read of it; ``valid`` marks the pixels that
    lie on the image (a read's padding is left out). Refused: a boolean or complex type (a mask
    or a transform stored as an image), NaN or infinite values, negative values, and an image
    whose every pixel has one value (blank: an empty level, a placeholder, an image read wrong).
    """
    where = f"sdata.images[{image_key!r}]"
    check_pixel_type(pixels.dtype, image_key)
    values = pixels[:, valid] if valid is not None else pixels.reshape(pixels.shape[0], -1)
    if not values.size:
        return
    if pixels.dtype.kind == "f":
        bad = ~np.isfinite(values).all(axis=0)
        if bad.any():
            raise ValueError(
                f"{where} holds NaN or infinite pixels ({bad.mean():.1%} of the image as read): "
                "every step would carry them into its results. Replace them by a value (e.g. "
                "the glass colour, 1.0 on a 0..1 image: np.nan_to_num) or crop them away.")
    low, high = values.min(), values.max()
    if low < 0:
        raise ValueError(
            f"{where} holds negative pixels (down to {low:g}), which no intensity is (a signed "
            "image shifted around 0, a difference of images?). Give the image as read from its "
            "file: integers from 0, or floats from 0 to 1.")
    if low == high:
        raise ValueError(
            f"{where} is blank: every pixel is {low:g} (as read), so there is nothing on it to "
            "find: bare glass, an empty pyramid level, a placeholder or a file read wrong. "
            "Check the image (e.g. hx.pl.spatial(sdata, image_key=...)) and give the slide's "
            "image.")


#: where a reader records the file each image was read from: ``sdata.attrs[_SOURCE_KEY]``
_SOURCE_KEY = "histoexpr_sources"


def _pixels_identity(sdata: SpatialData, image_key: str) -> str:
    """The name of the lazy array behind an image's finest level (another array: another name)."""
    data = image_levels(sdata, image_key)[0].data
    return str(getattr(getattr(data, "data", None), "name", None) or id(data))


def record_source(sdata: SpatialData, image_key: str, path: Any) -> None:
    """Record that ``sdata.images[image_key]`` was read from the file ``path``."""
    sources = dict(sdata.attrs.get(_SOURCE_KEY) or {})
    sources[image_key] = {"path": str(path), "pixels": _pixels_identity(sdata, image_key)}
    sdata.attrs[_SOURCE_KEY] = sources


def recorded_sources(sdata: SpatialData) -> list[str]:
    """Every file a reader recorded for ``sdata``'s images (replaced images' files included)."""
    records = (getattr(sdata, "attrs", None) or {}).get(_SOURCE_KEY) or {}
    return sorted({str(r["path"]) for r in records.values()
                   if isinstance(r, Mapping) and r.get("path")})


def source_of(sdata: SpatialData, image_key: str) -> str | None:
    """The file ``sdata.images[image_key]`` was read from, while it holds those pixels.

    ``None`` where no reader recorded one, or the image was replaced (or written and read back)
    since: its lazy array is another.
    """
    record = (getattr(sdata, "attrs", None) or {}).get(_SOURCE_KEY, {}).get(image_key)
    if not isinstance(record, Mapping) or image_key not in sdata.images:
        return None
    same = record.get("pixels") == _pixels_identity(sdata, image_key)
    return str(record["path"]) if same else None
