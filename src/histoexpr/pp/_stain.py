"""Stain normalisation of H&E tiles (Macenko), one stain estimate per section.

torchstain estimates the stain vectors and concentrations (Macenko et al. 2009) of a mosaic of a
section's tiles; the normalisation of a tile is then one 3 x 3 linear map in optical density, the
same for every tile of the section: unmix with the section's stain vectors, rescale the
concentrations to the reference's, remix with the reference's vectors. Estimating once per
section (instead of once per tile, as torchstain's ``normalize`` does) keeps tiles with little
tissue or one dominant stain from getting their own, unstable, colours.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: transmitted light intensity and the optical density below which a pixel is background
#: (torchstain's defaults)
_IO, _BETA, _ALPHA = 240, 0.15, 1
StainMethod = Literal["macenko"]
STAIN_METHODS = get_args(StainMethod)
#: memory of one pooled pixel while the stain is estimated: its 3 bytes in the mosaic, and
#: torchstain's float64 optical densities, their stained subset, projections and the
#: concentrations of every pixel (83 B measured by tracemalloc; 91 B for the whole call)
_BYTES_PER_PIXEL = 96


def stain_reference(
    data: SpatialData | Sequence[SpatialData] | Mapping[str, SpatialData],
    tiles_key: str = "he_tiles",
    *,
    method: StainMethod = "macenko",
    n_tiles: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Estimate the reference stain of H&E sections (Macenko, through torchstain).

    A random sample of ``n_tiles`` tiles from each section is put into one mosaic whose stain
    vectors and 99th-percentile concentrations (Macenko et al. 2009) become the reference that
    :func:`stain_normaliser` maps other sections onto.

    Parameters
    ----------
    data
        One tiled section, or several (their tiles are pooled).
    tiles_key
        Key of the tiles (from :func:`histoexpr.pp.tile`) in every section.
    method
        ``"macenko"``.
    n_tiles
        Tiles read per section. Estimating the stain takes about 96 bytes a pooled pixel
        (about 300 MiB a section for 64 tiles of 224 px); that memory is estimated before any
        tile is read, and a pool larger than the memory limit is refused with a
        ``MemoryError`` naming the fix.
    seed
        Seed of the sample of tiles.

    Returns
    -------
    The reference as plain values: ``{"method", "stain_matrix" (3 x 2: RGB optical density of
    haematoxylin and eosin), "max_concentrations" (2)}``; store it with a model.

    Examples
    --------
    >>> reference = hx.pp.stain_reference([sdata_a, sdata_b], "spot_tiles")
    >>> normalise = hx.pp.stain_normaliser(sdata_c, "spot_tiles", reference=reference)
    >>> hx.tl.embed(sdata_c, "spot_tiles", encoder="handcrafted", transform=normalise)
    """
    from spatialdata import SpatialData

    if method not in STAIN_METHODS:
        raise ValueError(f"Unknown stain normalisation {method!r}; choose one of "
                         f"{STAIN_METHODS}.")
    if isinstance(data, SpatialData):
        sections = [data]
    else:
        sections = list(data.values()) if isinstance(data, Mapping) else list(data)
    if n_tiles < 1:
        raise ValueError(f"n_tiles must be at least 1, got {n_tiles}.")
    from ._dataset import TileDataset

    datasets = [TileDataset(s, tiles_key) for s in sections]  # nothing read yet
    _check_mosaic_memory(datasets, n_tiles)
    mosaic = np.concatenate([_mosaic(d, tiles_key, n_tiles, seed) for d in datasets])
    matrix, concentrations = _macenko(mosaic)
    return {"method": method, "stain_matrix": matrix.tolist(),
            "max_concentrations": concentrations.tolist()}


def stain_normaliser(
    sdata: SpatialData,
    tiles_key: str = "he_tiles",
    *,
    reference: Mapping[str, Any],
    n_tiles: int = 64,
    seed: int = 0,
) -> StainNormaliser:
    """The stain normalisation of one section onto a reference, as a tile transform.

    The section's own stain is estimated as :func:`stain_reference` does (on ``n_tiles`` of its
    tiles), so every tile of the section gets the same colour map.

    Parameters
    ----------
    sdata
        The tiled section to normalise.
    tiles_key
        Key of its tiles.
    reference
        A reference from :func:`stain_reference` (or a spot regressor's ``metadata["stain"]``).
    n_tiles
        Tiles read to estimate the section's stain.
    seed
        Seed of the sample of tiles.

    Returns
    -------
    A :class:`StainNormaliser`: call it on a tile ``(3, H, W)`` or a batch ``(N, 3, H, W)`` with
    values in [0, 1]; give it as ``transform=`` to :func:`histoexpr.tl.embed` or
    :class:`histoexpr.pp.TileDataset`.
    """
    _check_stain(reference, "reference")  # before any tile is read
    source = stain_reference(sdata, tiles_key, method=reference.get("method", "macenko"),
                             n_tiles=n_tiles, seed=seed)
    return StainNormaliser(reference=reference, source=source)


class StainNormaliser:
    """Map tiles of one section onto a reference stain: one 3 x 3 matrix in optical density.

    Parameters
    ----------
    reference
        The target stain (:func:`stain_reference`).
    source
        The section's own stain, estimated the same way.
    """

    def __init__(self, *, reference: Mapping[str, Any], source: Mapping[str, Any]) -> None:
        _check_stain(reference, "reference")
        _check_stain(source, "source")
        ref_matrix = np.asarray(reference["stain_matrix"], dtype=np.float64)
        src_matrix = np.asarray(source["stain_matrix"], dtype=np.float64)
        ratio = (np.asarray(reference["max_concentrations"], dtype=np.float64)
                 / np.asarray(source["max_concentrations"], dtype=np.float64))
        self.matrix = torch.as_tensor(ref_matrix @ np.diag(ratio) @ np.linalg.pinv(src_matrix),
                                      dtype=torch.float32)
        self.spec = {"method": reference.get("method", "macenko"),
                     "reference": {k: reference[k] for k in ("stain_matrix", "max_concentrations")},
                     "source": {k: source[k] for k in ("stain_matrix", "max_concentrations")}}

    @property
    def digest(self) -> str:
        """A short hash of the reference and source stains (names features made with it)."""
        text = json.dumps(self.spec, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        single = tiles.ndim == 3
        x = tiles[None] if single else tiles
        if x.shape[1] != 3:
            raise ValueError(f"Stain normalisation needs RGB tiles, got {x.shape[1]} channels.")
        density = -torch.log((x.float() * 255 + 1) / _IO)
        mapped = torch.einsum("dc,nchw->ndhw", self.matrix.to(x.device), density)
        out = (_IO * torch.exp(-mapped) / 255).clamp(0, 1)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"StainNormaliser(method={self.spec['method']!r}, digest={self.digest!r})"


def _check_stain(stain: Any, name: str) -> None:
    """Refuse a stain that is not one :func:`stain_reference` makes, naming what is wrong.

    A stain is a mapping with ``"stain_matrix"`` (3 x 2 finite numbers) and
    ``"max_concentrations"`` (2 finite positive numbers), and optionally ``"method"`` (one of
    :data:`STAIN_METHODS`). Nothing is changed in ``stain``.
    """
    what = (f"{name} must be a stain from hx.pp.stain_reference: a dict with 'stain_matrix' "
            "(3 x 2 numbers: the RGB optical density of haematoxylin and eosin) and "
            "'max_concentrations' (2 positive numbers)")
    fix = ("Make one with hx.pp.stain_reference(sections, tiles_key) (or pass a spot "
           "regressor's metadata['stain']).")
    if not isinstance(stain, Mapping):
        raise TypeError(f"{what}; got {type(stain).__name__} {_shown(stain)}. {fix}")
    missing = [k for k in ("stain_matrix", "max_concentrations") if k not in stain]
    if missing:
        raise ValueError(f"{what}; it has no {' or '.join(repr(k) for k in missing)} (keys: "
                         f"{sorted(map(str, stain))}). {fix}")
    if stain.get("method", "macenko") not in STAIN_METHODS:
        raise ValueError(f"{what}; its 'method' is {stain['method']!r}, not one of "
                         f"{STAIN_METHODS}. {fix}")
    for key, shape in (("stain_matrix", (3, 2)), ("max_concentrations", (2,))):
        try:
            values = np.asarray(stain[key], dtype=np.float64)
        except (TypeError, ValueError):
            values = None
        if values is None or values.shape != shape or not np.isfinite(values).all() or (
                key == "max_concentrations" and not (values > 0).all()):
            raise ValueError(f"{what}; its {key!r} is {_shown(stain[key])}, not "
                             f"{' x '.join(map(str, shape))} finite "
                             f"{'positive ' if key == 'max_concentrations' else ''}numbers. "
                             f"{fix}")


def _shown(value: Any) -> str:
    """``repr(value)``, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_mosaic_memory(datasets, n_tiles: int) -> None:
    """Refuse, before any tile is read, a mosaic whose stain estimate exceeds the memory limit.

    torchstain holds float64 arrays for every pooled pixel, so the memory grows with the
    sections pooled and ``n_tiles``: ``_BYTES_PER_PIXEL`` a pixel.
    """
    from .._core.memory import check_memory

    n_pixels = sum(float(min(n_tiles, len(d))) * d.size_px**2 for d in datasets)
    check_memory(
        n_pixels * _BYTES_PER_PIXEL,
        f"Estimating the stain of {n_pixels:,.0f} pixels ({len(datasets)} section(s), up to "
        f"n_tiles={n_tiles} tiles each)",
        "Pass a smaller n_tiles= (tiles read per section; a few million pixels in all are "
        "plenty for the stain) or fewer sections.")


def _mosaic(dataset, tiles_key: str, n_tiles: int, seed: int) -> np.ndarray:
    """Pixels (n, 3) uint8 of a random sample of the section's tiles (a ``TileDataset``)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(dataset), size=min(n_tiles, len(dataset)), replace=False)
    pixels = []
    for index in sorted(chosen):
        tile = dataset[int(index)]["image"].numpy()
        if tile.shape[0] != 3:
            raise ValueError(f"Stain normalisation needs RGB (H&E) images; the tiles "
                             f"{tiles_key!r} have {tile.shape[0]} channel(s).")
        pixels.append((np.moveaxis(tile, 0, -1).reshape(-1, 3) * 255).round().astype(np.uint8))
    return np.concatenate(pixels)


@functools.lru_cache(maxsize=1)
def _stained_levels() -> np.ndarray:
    """Whether each 8-bit value's optical density reaches torchstain's threshold ``_BETA``."""
    return -np.log((np.arange(256).astype(float) + 1) / _IO) >= _BETA


def _macenko(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stain matrix (3 x 2) and 99th-percentile concentrations of RGB pixels, by torchstain."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    if _stained_levels()[pixels].all(axis=1).sum() < 100:
        raise ValueError("Too few stained pixels to estimate the stain (the tiles are mostly "
                         "background); tile the tissue (min_tissue=) or read more tiles.")
    normaliser = NumpyMacenkoNormalizer()
    normaliser.fit(pixels.reshape(-1, 1, 3), Io=_IO, alpha=_ALPHA, beta=_BETA)
    return np.asarray(normaliser.HERef, dtype=np.float64), np.asarray(normaliser.maxCRef,
                                                                       dtype=np.float64)
