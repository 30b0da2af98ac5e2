"""Element builders every room uses: micrometre transformations, tile squares, tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .records import WRITER_KEY

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


#: the ``obs`` columns ``hx.pp.tile`` writes into a tile table
TILE_COLUMNS = frozenset({"tile_id", "tissue_fraction", "grid_row", "grid_col", "spot_id",
                          "region"})
#: the ``uns`` entries of a tile table that its tiling (and features' records) make
_TILE_UNS = frozenset({"tiles", "spatialdata_attrs", WRITER_KEY, "embeddings"})


def foreign_tile_entries(sdata, tiles_key: str, *, own_within: str | None = None) -> list[str]:
    """Entries of tiles and their table that remaking the tiles would lose, in words.

    Everything but the columns, centres and records ``hx.pp.tile`` writes and, with
    ``own_within``, the features embedded on behalf of that step (their record's ``within``):
    the user's columns and matrices, features of ``hx.tl.embed``, another step's outputs.
    """
    from collections.abc import Mapping

    from .records import EmbeddingRecord

    table = sdata.tables.get(f"{tiles_key}_table")
    if table is None:
        return []
    embeddings = table.uns.get("embeddings")
    embeddings = embeddings if isinstance(embeddings, Mapping) else {}

    def own_features(key: str) -> bool:
        record = embeddings.get(key)
        return (own_within is not None and isinstance(record, Mapping)
                and EmbeddingRecord.from_uns(record).within == own_within)

    out = [f"obs[{c!r}]" for c in table.obs.columns if c not in TILE_COLUMNS]
    out += [f"obsm[{k!r}]" for k in table.obsm.keys() if k != "spatial" and not own_features(k)]
    out += [f"uns[{k!r}]" for k in table.uns.keys() if k not in _TILE_UNS]
    out += [f"uns['embeddings'][{k!r}]" for k in embeddings
            if not own_features(k) and k not in table.obsm]
    if table.n_vars:
        out.append(f"X ({table.n_vars} columns)")
    for part in ("layers", "obsp", "varm", "varp"):
        out += [f"{part}[{k!r}]" for k in getattr(table, part).keys()]
    if tiles_key in sdata.shapes:
        shapes = sdata.shapes[tiles_key]
        out += [f"the column {c!r} of sdata.shapes[{tiles_key!r}]" for c in shapes.columns
                if c != shapes.geometry.name]
    return out

