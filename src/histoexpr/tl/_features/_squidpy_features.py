"""squidpy's hand-crafted image features per tile: the peer baseline, through our tile dataset."""

from __future__ import annotations

import functools

import numpy as np

from ..._core.logs import progress

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

    Each tile is read at the dataset's resolution and described by the features of
    :class:`squidpy.im.ImageContainer`'s ``features_<group>`` methods with their defaults
    (the features of ``squidpy.im.calculate_image_features``), by name and value. They are
    computed here with squidpy's own recipe (:func:`squidpy_tile_features`) rather than through
    an ``ImageContainer`` per tile: the texture properties of a grey-level co-occurrence matrix
    are all read from one normalised matrix (``skimage.feature.graycoprops`` normalises it
    again for each property), several times faster, equal to squidpy's values to rounding
    (``tests/test_embed.py`` checks them against squidpy's). Texture (grey-level
    co-occurrence) needs 8-bit pixels: other dtypes are rescaled to 0-255 per tile.

    Returns the features (tiles x features, float32) and their names.
    """
    rows, names = [], None
    for index in progress(range(len(dataset)), desc="squidpy features", total=len(dataset)):
        pixels = _as_uint8(_pixels(dataset, index))
        values = squidpy_tile_features(np.moveaxis(pixels, 0, -1), groups)
        names = names or list(values)
        rows.append([values[name] for name in names])
    return np.asarray(rows, dtype=np.float32), names or []


#: squidpy's defaults: summary quantiles, histogram bins, texture properties, distances, angles
_QUANTILES = (0.9, 0.5, 0.1)
_BINS = 10
_PROPS = ("contrast", "dissimilarity", "homogeneity", "correlation", "ASM")
_DISTANCES = (1,)
_ANGLES = (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def squidpy_tile_features(image: np.ndarray, groups: tuple[str, ...] = SQUIDPY_FEATURES
                          ) -> dict[str, float]:
    """Squidpy's ``features_summary``, ``features_histogram``, ``features_texture`` of one tile.

    ``image`` is ``(y, x, channels)`` uint8. Names and order are squidpy's
    (``"summary_ch-0_quantile-0.9"``, ``"texture_ch-2_ASM_dist-1_angle-2.36"``...).
    """
    from skimage.feature import graycomatrix

    channels = range(image.shape[-1])
    features: dict[str, float] = {}
    for group in groups:
        if group == "summary":
            for c in channels:
                values = image[..., c]
                # one call for every quantile: the same values as one call each, one sort
                for q, value in zip(_QUANTILES, np.quantile(values, _QUANTILES), strict=True):
                    features[f"summary_ch-{c}_quantile-{q}"] = value
                features[f"summary_ch-{c}_mean"] = np.mean(values)
                features[f"summary_ch-{c}_std"] = np.std(values)
        elif group == "histogram":
            v_range = np.min(image), np.max(image)
            for c in channels:
                counts, _ = np.histogram(image[..., c], bins=_BINS, range=v_range)
                for i, count in enumerate(counts):
                    features[f"histogram_ch-{c}_bin-{i}"] = count
        else:
            for c in channels:
                matrix = graycomatrix(image[..., c], distances=_DISTANCES, angles=_ANGLES,
                                      levels=256)
                for prop, values in _glcm_properties(matrix).items():
                    for d_idx, dist in enumerate(_DISTANCES):
                        for a_idx, angle in enumerate(_ANGLES):
                            features[f"texture_ch-{c}_{prop}_dist-{dist}_angle-{angle:.2f}"] = (
                                values[d_idx, a_idx])
    return features


def _glcm_properties(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """``skimage.feature.graycoprops`` of every property in ``_PROPS``, from one normalisation.

    ``matrix`` is ``(levels, levels, distances, angles)``; each result ``(distances, angles)``.
    The formulas are graycoprops' (correlation 1 where either standard deviation is below
    1e-15).
    """
    levels, _, n_dist, n_angle = matrix.shape
    p = matrix.astype(np.float64)
    # counts: their sum is exact in any order, and summing the leading axis first is fast
    sums = p.sum(axis=0).sum(axis=0, keepdims=True)[None]
    sums[sums == 0] = 1
    p /= sums
    flat = p.reshape(levels * levels, n_dist * n_angle)
    grey, squared, absolute, homogeneity = _grey_level_weights(levels)
    # each row's sum over j, added in the order of j as p.sum(axis=1) does, but over whole rows
    # of a transposed copy (numpy's inner loop would otherwise run over the few angles only)
    p_i = np.ascontiguousarray(p.transpose(1, 0, 2, 3)).sum(axis=0).reshape(levels, -1)
    p_j = p.sum(axis=0).reshape(levels, -1)
    diff_i, diff_j = grey[:, None] - grey @ p_i, grey[:, None] - grey @ p_j
    std_i = np.sqrt((p_i * diff_i**2).sum(axis=0))
    std_j = np.sqrt((p_j * diff_j**2).sum(axis=0))
    cov = np.einsum("ik,ik->k", np.einsum("ijk,jk->ik", p.reshape(levels, levels, -1), diff_j),
                    diff_i)
    flat_std = (std_i < 1e-15) | (std_j < 1e-15)
    correlation = np.where(flat_std, 1.0, cov / np.where(flat_std, 1.0, std_i * std_j))
    shape = (n_dist, n_angle)
    return {"contrast": (squared @ flat).reshape(shape),
            "dissimilarity": (absolute @ flat).reshape(shape),
            "homogeneity": (homogeneity @ flat).reshape(shape),
            "correlation": correlation.reshape(shape),
            "ASM": np.einsum("ij,ij->j", flat, flat).reshape(shape)}


@functools.lru_cache(maxsize=4)
def _grey_level_weights(levels: int) -> tuple[np.ndarray, ...]:
    """Grey levels and the weights of contrast, dissimilarity and homogeneity (read-only)."""
    i, j = np.indices((levels, levels)).reshape(2, -1)
    difference = (i - j).astype(np.float64)
    weights = (np.arange(levels, dtype=np.float64), difference**2, np.abs(difference),
               1.0 / (1.0 + difference**2))
    for array in weights:
        array.flags.writeable = False
    return weights


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
