"""Facts about an image that other steps record or check: tile coverage and a cheap fingerprint."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .image import image_levels

if TYPE_CHECKING:
    from spatialdata import SpatialData


def stain_of(n_channels: int) -> str:
    """The augmentation family of an image: ``"he"`` for 3 channels (RGB), else fluorescence."""
    return "he" if n_channels == 3 else "fluorescence"


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


def image_fingerprint(sdata: SpatialData, image_key: str) -> str:
    """A short digest that tells one image from another, cheaply.

    It covers the image's shape, pixel size and offset, and a 6 x 6 grid of pixels sampled from
    its coarsest level (reading a few chunks, never the whole image).
    """
    import hashlib

    levels = image_levels(sdata, image_key)
    coarse = levels[-1]
    height, width = coarse.shape_yx
    rows = np.unique(np.linspace(0, height - 1, 6).round().astype(int))
    cols = np.unique(np.linspace(0, width - 1, 6).round().astype(int))
    samples = np.asarray(coarse.data.isel(y=rows, x=cols).values)
    digest = hashlib.sha256()
    for level in levels:
        digest.update(repr((level.shape_yx, round(level.mpp, 9),
                            tuple(round(v, 6) for v in level.offset))).encode())
    digest.update(np.ascontiguousarray(samples).tobytes())
    return digest.hexdigest()[:16]


