"""Element builders every room uses: micrometre transformations, tile squares, tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:

    from .records import TileRecord


COORDINATE_SYSTEM = "global"


def scale_to_global(mpp: float, offset_x: float = 0.0, offset_y: float = 0.0) -> dict:
    """The transformation to ``"global"`` of a raster at ``mpp`` um/px with its corner at an offset.

    ``{"global": Scale([mpp, mpp])}``, followed by a translation by the offset (um) if not zero.
    """
    from spatialdata import transformations

    scale = transformations.Scale([mpp, mpp], axes=("y", "x"))
    if offset_x == 0 and offset_y == 0:
        return {COORDINATE_SYSTEM: scale}
    shift = transformations.Translation([offset_x, offset_y], axes=("x", "y"))
    return {COORDINATE_SYSTEM: transformations.Sequence([scale, shift])}


def square_shapes(boxes: np.ndarray, tile_ids: np.ndarray):
    """Square polygons (um, identity to ``"global"``) indexed by tile id."""
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    geometry = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])
    frame = gpd.GeoDataFrame(geometry=geometry, index=tile_ids)
    return ShapesModel.parse(frame, transformations={COORDINATE_SYSTEM: Identity()})


def tile_table(obs, centres: np.ndarray, region: str, record: TileRecord):
    """The AnnData annotating the tiles, with ``uns["tiles"]`` from their record."""
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    obs = obs.copy()
    obs["region"] = pd.Categorical([region] * len(obs))
    table = ad.AnnData(obs=obs, obsm={"spatial": np.asarray(centres, dtype=float)},
                       uns={"tiles": record.to_uns()})
    return TableModel.parse(table, region=region, region_key="region", instance_key="tile_id")
