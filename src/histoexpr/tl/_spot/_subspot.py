"""Expression below the spot: a spot regressor trained on sub-tiles (``subspot_um=``).

Each training spot is cut into a ``k x k`` grid of sub-tiles of ``subspot_um``
(``k = size_um / subspot_um``). The model is additive: a spot's prediction is the mean of its
sub-tiles' predictions. With a linear head this is ridge regression of the spot's expression on
the mean features of its sub-tiles; the fitted head is then applied to single sub-tiles, so
``hx.tl.predict`` maps expression at the sub-tile size (a grid finer than the spots, or tiles
centred anywhere), and the mean of a spot's sub-tile predictions is its spot prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..._core.logs import logger
from ._spot_features import _radii, section_features

#: relative mismatch allowed between ``size_um`` and ``k * subspot_um``
_GRID_TOLERANCE = 0.05
#: key of the sub-tiles inside the light copies of the training sections
SUBTILES = "subspot_tiles"


def subspot_grid(size_um: float, subspot_um: float) -> int:
    """The number ``k`` of sub-tiles along a side of a spot tile, or an error naming the fix."""
    if not subspot_um > 0:
        raise ValueError(f"subspot_um must be a positive width in um, got {subspot_um!r}.")
    k = int(round(size_um / subspot_um))
    if k < 2 or abs(k * subspot_um - size_um) > _GRID_TOLERANCE * size_um:
        fits = ", ".join(f"{size_um / n:g}" for n in (2, 3, 4))
        raise ValueError(
            f"subspot_um={subspot_um:g} does not cut the {size_um:g} um spot tiles (size_um) "
            f"into a grid of at least 2 x 2 sub-tiles; give size_um divided by a whole number "
            f"(e.g. {fits}).")
    return k


def check_subspot_options(route: str, encoder: Any, size_um: float, subspot_um: float) -> None:
    """Refuse, before anything is written, options the sub-spot head does not take."""
    subspot_grid(size_um, subspot_um)
    if route != "ridge":
        raise ValueError(f"subspot_um trains an additive ridge head (a spot = the mean of its "
                         f"sub-tiles); route={route!r} is not additive. Pass route='ridge'.")
    if isinstance(encoder, str) and encoder in ("ssl", "random_cnn"):
        raise ValueError(f"subspot_um takes a named encoder or a model file; encoder={encoder!r}"
                         " is trained inside fit. Pretrain it with hx.tl.pretrain, save it with "
                         "hx.io.save_model and pass the file.")


def subtile_centres(centres: np.ndarray, size_um: float, k: int) -> np.ndarray:
    """Centres of the ``k x k`` sub-tiles of each spot tile, spot by spot (row-major)."""
    step = size_um / k
    offsets = (np.arange(k) - (k - 1) / 2) * step
    dx, dy = np.meshgrid(offsets, offsets, indexing="xy")
    grid = np.column_stack([dx.ravel(), dy.ravel()])
    return (np.asarray(centres, dtype=float)[:, None, :] + grid[None]).reshape(-1, 2)


def _subtile_section(sdata, centres: np.ndarray, *, image_key: str, subspot_um: float,
                     mpp: float):
    """A light copy of the section holding only the image, its tissue map and the sub-tiles."""
    import geopandas as gpd
    import pandas as pd
    from shapely import points as shapely_points
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel

    from ...pp import tile

    ids = np.arange(len(centres))
    circles = ShapesModel.parse(gpd.GeoDataFrame(
        {"radius": np.full(len(centres), subspot_um / 2)}, geometry=shapely_points(centres),
        index=pd.Index(ids)))
    tissue = f"{image_key}_tissue"
    labels = {tissue: sdata.labels[tissue]} if tissue in sdata.labels else {}
    light = SpatialData(images={image_key: sdata.images[image_key]}, labels=labels,
                        shapes={"subspot_centres": circles})
    tile(light, image_key, size_um=subspot_um, mpp=mpp, centres="subspot_centres",
         min_tissue=0, key_added=SUBTILES)
    return light


def fit_subspot(prepared: Sequence[Any], *, subspot_um: float, size_um: float, mpp: float,
                image_key: str, encoder: str | Sequence[str], standardise: bool,
                context_um: float | Sequence[float] | None,
                alphas: Sequence[float], n_components: int | None, batch_size: int,
                device: str | None) -> tuple[Any, dict[str, Any]]:
    """Ridge on the mean features of each spot's sub-tiles, as a head for single sub-tiles.

    ``prepared`` are the spot regressor's training sections (spot centres and targets). The
    sub-tiles live in light copies of the sections: nothing is written to them. Returns the
    network (a :class:`~histoexpr.models.LinearHead` taking one sub-tile's features) and what
    goes into its metadata (``size_um`` becomes ``subspot_um``: prediction tiles are
    sub-tiles).
    """
    from ._spot_training import fit_ridge

    k = subspot_grid(size_um, subspot_um)
    encoder = str(encoder) if isinstance(encoder, str) else [str(e) for e in encoder]
    name = encoder if isinstance(encoder, str) else "+".join(encoder)
    features_key = f"X_{name}"
    means, records, targets = [], [], []
    for p in prepared:
        light = _subtile_section(p.sdata, subtile_centres(p.centres, size_um, k),
                                 image_key=image_key, subspot_um=subspot_um, mpp=mpp)
        values, record = section_features(light, SUBTILES, encoder=encoder,
                                          features_key=features_key, standardise=standardise,
                                          context_um=context_um,
                                          image_key=image_key, batch_size=max(batch_size, 64),
                                          device=device)
        values = values.reshape(len(p.centres), k * k, -1)
        valid = np.isfinite(values).all(axis=2)  # sub-tiles wholly off the image have NaN
        summed = np.where(valid[..., None], values, 0).sum(axis=1)
        means.append((summed / np.maximum(valid.sum(axis=1), 1)[:, None]).astype(np.float32))
        records.append(record)
        targets.append(p.targets)
    if any(r != records[0] for r in records[1:]):
        raise ValueError(f"The sections' sub-tile features were made differently ({records}); "
                         "give sections whose images are of one kind.")
    network, extra = fit_ridge(means, targets, alphas=alphas, n_components=n_components)
    logger.info("Sub-spot head: each spot of %g um is the mean of %d x %d sub-tiles of %g um.",
                size_um, k, k, subspot_um)
    extra.update({"size_um": float(subspot_um), "encoder": encoder,
                  "features_key": features_key, "features": records[0],
                  "context_um": _radii(context_um),
                  "standardise_sections": standardise,
                  "subspot": {"spot_um": float(size_um), "subspot_um": float(subspot_um),
                              "grid": k, "additive": "mean of the sub-tiles' predictions "
                              "(log1p-normalised expression)"}})
    return network, extra
