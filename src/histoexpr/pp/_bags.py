"""Pseudo-bulk bags: regions of spot-centred tiles with the summed counts of their spots.

On spot-resolved data, a bag's expression is the sum of its spots' counts and the expression
under each of its tiles is known, so a slide-level (bag-level) model can be checked tile by tile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._core.logs import log_added, logger
from .._core.ownership import check_keys_writable, replace_elements, require_element
from .._core.validate import check_bool, check_positive

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: how the elements this step writes record their writer (see ``_core.ownership.store_element``)
STEP = "hx.pp.pseudobulk"


def pseudobulk(
    sdata: SpatialData,
    tiles_key: str = "he_tiles",
    *,
    table_key: str = "table",
    size_um: float = 1000.0,
    stride_um: float | None = None,
    min_spots: int = 4,
    layer: str | None = "counts",
    key_added: str = "bags",
    overwrite: bool = False,
) -> None:
    """Group the spot-centred tiles of a section into square bags with their summed counts.

    A bag is a square window of ``size_um``; windows are laid every ``stride_um`` (overlapping
    bags when the stride is smaller than the size). A tile belongs to every window that holds its
    centre, and the bag's expression is the sum of the counts of its tiles' spots: pseudo-bulk
    expression whose make-up, spot by spot, is known. Windows with fewer than ``min_spots``
    tiles and windows holding exactly the tiles of another window are dropped (with a logged
    count).

    Parameters
    ----------
    sdata
        The section, with spot-centred tiles (``hx.pp.tile(sdata, centres="spots")``) and the
        spot expression table.
    tiles_key
        Key of the spot-centred tiles; their table ``f"{tiles_key}_table"`` must have
        ``obs["spot_id"]``.
    table_key
        Key of the spot expression table (spots x genes) annotating the spots.
    size_um
        Side of a bag in micrometres.
    stride_um
        Distance between neighbouring windows in micrometres; defaults to ``size_um``
        (non-overlapping bags that partition the tiles).
    min_spots
        Fewest tiles (spots) a bag must hold.
    layer
        Layer of the spot table holding raw counts; ``X`` when ``None`` or when the layer is
        absent.
    key_added
        Key of the bag squares in ``sdata.shapes``; their table is ``f"{key_added}_table"``.
    overwrite
        Replace existing elements with those keys that an earlier ``pseudobulk`` wrote (never
        an element of another origin).

    Returns
    -------
    Nothing; adds ``sdata.shapes[key_added]`` (the windows, squares in um) and
    ``sdata.tables[f"{key_added}_table"]``: bags x genes with the summed counts in ``X`` and
    ``layers["counts"]``, ``obs["n_spots"]``, ``obsm["spatial"]`` (window centres),
    ``obsm["tiles"]`` (bags x tiles membership, sparse, in the order of the tile table) and
    ``uns["bags"]`` (``tiles_key``, ``size_um``, ``stride_um``).

    Examples
    --------
    >>> hx.pp.tile(sdata, "he", size_um=200, mpp=2.0, centres="spots")
    >>> hx.pp.pseudobulk(sdata, "he_tiles", size_um=1000, stride_um=400)
    >>> sdata.tables["bags_table"]

    """
    check_bool("overwrite", overwrite)
    from scipy import sparse

    require_element(sdata, tiles_key, "shapes")
    require_element(sdata, f"{tiles_key}_table", "tables")
    require_element(sdata, table_key, "tables")
    tiles = sdata.tables[f"{tiles_key}_table"]
    if "spot_id" not in tiles.obs.columns:
        raise ValueError(f"The tiles {tiles_key!r} are not centred on spots (no obs['spot_id']); "
                         "make them with hx.pp.tile(sdata, centres='spots').")
    check_positive("size_um", size_um, unit="um")
    stride_um = float(size_um) if stride_um is None else float(stride_um)
    if not 0 < stride_um <= size_um:
        raise ValueError(f"stride_um must lie in (0, size_um={size_um:g}], got {stride_um!r}.")
    if min_spots < 1:
        raise ValueError(f"min_spots must be at least 1, got {min_spots!r}.")
    shapes_key, table_out = key_added, f"{key_added}_table"
    # both keys are checked before any work; what an earlier call wrote is replaced at the end
    check_keys_writable(sdata, (shapes_key, table_out), overwrite=overwrite, step=STEP)

    counts = _spot_counts_of_tiles(sdata.tables[table_key], tiles, layer, table_key)
    membership, origins = _windows(np.asarray(tiles.obsm["spatial"], dtype=float),
                                   float(size_um), stride_um, min_spots)
    summed = sparse.csr_matrix(membership @ counts, dtype=np.float32)
    boxes = np.column_stack([origins, origins + size_um])
    _store(sdata, shapes_key, table_out, summed, membership, boxes, spots_table=sdata.tables[
        table_key], uns={"tiles_key": tiles_key, "size_um": float(size_um),
                         "stride_um": stride_um, "spots_table": table_key}, overwrite=overwrite)


def _spot_counts_of_tiles(spots, tiles, layer: str | None, table_key: str):
    """Counts (tiles x genes, sparse) of the spot under each tile, in the tile table's order."""
    from scipy import sparse

    instance_key = spots.uns.get("spatialdata_attrs", {}).get("instance_key", "spot_id")
    row_of_spot = {spot: i for i, spot in enumerate(spots.obs[instance_key].to_numpy())}
    rows = np.array([row_of_spot.get(spot, -1) for spot in tiles.obs["spot_id"].to_numpy()])
    if (rows < 0).any():
        raise ValueError(f"{int((rows < 0).sum())} tiles sit on spots that are not in "
                         f"sdata.tables[{table_key!r}]; tile the spots of that table.")
    matrix = spots.layers[layer] if layer is not None and layer in spots.layers else spots.X
    return sparse.csr_matrix(matrix, dtype=np.float32)[rows]


def _windows(centres: np.ndarray, size_um: float, stride_um: float, min_spots: int):
    """Membership (bags x tiles, sparse) and origins (x, y) of the windows kept as bags."""
    from scipy import sparse

    low = centres.min(axis=0) - size_um + stride_um  # edge tiles fall in as many windows
    xs = np.arange(low[0], centres[:, 0].max() + 1e-9, stride_um)
    ys = np.arange(low[1], centres[:, 1].max() + 1e-9, stride_um)
    origins, members, seen = [], [], set()
    n_small = n_duplicated = 0
    for y0 in ys:
        for x0 in xs:
            inside = np.flatnonzero((centres[:, 0] >= x0) & (centres[:, 0] < x0 + size_um)
                                    & (centres[:, 1] >= y0) & (centres[:, 1] < y0 + size_um))
            if len(inside) == 0:
                continue
            if len(inside) < min_spots:
                n_small += 1
                continue
            if tuple(inside) in seen:
                n_duplicated += 1
                continue
            seen.add(tuple(inside))
            origins.append((x0, y0))
            members.append(inside)
    if n_small or n_duplicated:
        logger.info("Dropped %d windows with fewer than min_spots=%d tiles and %d holding the "
                    "same tiles as another window.", n_small, min_spots, n_duplicated)
    if not members:
        raise ValueError(f"No window of {size_um:g} um holds min_spots={min_spots} tiles; use "
                         "larger bags (size_um) or a smaller min_spots.")
    rows = np.repeat(np.arange(len(members)), [len(m) for m in members])
    membership = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32),
                                    (rows, np.concatenate(members))),
                                   shape=(len(members), len(centres)))
    return membership, np.asarray(origins, dtype=float)


def _store(sdata, shapes_key: str, table_key: str, summed, membership, boxes: np.ndarray, *,
           spots_table, uns: dict, overwrite: bool) -> None:
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    from .._core.elements import square_shapes

    n_bags = summed.shape[0]
    ids = np.arange(n_bags)
    obs = pd.DataFrame({"bag_id": ids, "n_spots": np.asarray(membership.sum(1)).ravel()
                        .astype(np.int64), "region": pd.Categorical([shapes_key] * n_bags)},
                       index=pd.Index([f"bag_{i}" for i in ids]))
    table = ad.AnnData(X=summed, obs=obs, var=pd.DataFrame(index=spots_table.var_names.copy()),
                       obsm={"spatial": (boxes[:, :2] + boxes[:, 2:]) / 2, "tiles": membership},
                       uns={"bags": uns})
    table.layers["counts"] = summed.copy()
    parsed = TableModel.parse(table, region=shapes_key, region_key="region",
                              instance_key="bag_id")
    replace_elements(sdata, [("shapes", shapes_key, square_shapes(boxes, ids)),
                             ("tables", table_key, parsed)], overwrite=overwrite, step=STEP)
    log_added("shapes", shapes_key, f"{n_bags} bags of {uns['size_um']:g} um")
    log_added("tables", table_key, f"{n_bags} bags x {summed.shape[1]} genes, "
              f"{float(table.obs['n_spots'].mean()):.1f} spots per bag")
