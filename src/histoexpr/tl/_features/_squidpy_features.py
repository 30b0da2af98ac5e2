"""squidpy's hand-crafted image features per tile: the peer baseline, through our tile dataset."""

from __future__ import annotations

import warnings

import numpy as np

from ..._utils import progress

SQUIDPY_FEATURES = ("summary", "histogram", "texture")


def parse_squidpy_encoder(encoder: str) -> tuple[str, ...]:
    """Feature groups of ``"squidpy"`` (all three) or ``"squidpy:summary+histogram"``."""
    _, _, groups = encoder.partition(":")
    names = tuple(groups.split("+")) if groups else SQUIDPY_FEATURES
    unknown = [name for name in names if name not in SQUIDPY_FEATURES]
    if unknown:
        raise ValueError(f"Unknown squidpy feature group(s) {unknown}; choose from "
                         f"{SQUIDPY_FEATURES}, joined with '+', e.g. 'squidpy:summary+texture'.")
    return names


def squidpy_features(dataset, groups: tuple[str, ...] = SQUIDPY_FEATURES
                     ) -> tuple[np.ndarray, list[str]]:
    """Compute squidpy's features of every tile of a :class:`histoexpr.pp.TileDataset`.

    Each tile is read at the dataset's resolution and handed to
    :class:`squidpy.im.ImageContainer`'s ``features_<group>`` methods with their defaults
    (the features of ``squidpy.im.calculate_image_features``). Texture (grey-level
    co-occurrence) needs 8-bit pixels: other dtypes are rescaled to 0-255 per tile.

    Returns the features (tiles x features, float32) and their names.
    """
    try:
        import squidpy as sq
    except ImportError as error:
        raise ImportError("encoder='squidpy' needs squidpy: pip install 'histoexpr[squidpy]'."
                          ) from error
    rows, names = [], None
    for index in progress(range(len(dataset)), desc="squidpy features", total=len(dataset)):
        pixels = _as_uint8(_pixels(dataset, index))
        container = sq.im.ImageContainer(np.moveaxis(pixels, 0, -1), layer="image")
        values: dict[str, float] = {}
        with warnings.catch_warnings():  # squidpy warns about its own docstrings at first use
            warnings.simplefilter("ignore", SyntaxWarning)
            for group in groups:
                values.update(getattr(container, f"features_{group}")("image"))
        names = names or list(values)
        rows.append([values[name] for name in names])
    return np.asarray(rows, dtype=np.float32), names or []


def _pixels(dataset, index: int) -> np.ndarray:
    """A tile's pixels, through the dataset's transform (e.g. stain normalisation) if any."""
    if getattr(dataset, "transform", None) is None:
        return dataset.pixels(index)
    image = dataset[index]["image"]  # in [0, 1], transformed
    return (image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def _as_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels.astype(np.float32) - low) / max(high - low, 1e-6) * 255
    return scaled.round().astype(np.uint8)
