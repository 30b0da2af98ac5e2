"""SpatialData elements of a synthetic section: transcripts, spots, cells, images, labels."""

from __future__ import annotations

import numpy as np

from . import _rule


def _transcripts(rng, cells, counts, width_um, height_um):
    """One point per count, scattered around its nucleus."""
    import pandas as pd

    per_cell = counts.sum(axis=1)
    cell_index = np.repeat(np.arange(len(per_cell)), per_cell)
    cell_rows, gene_index = np.nonzero(counts)
    # genes in cell-major order: for each cell, each gene repeated by its count
    gene = np.repeat(gene_index, counts[cell_rows, gene_index])
    sd = 1.2 * cells["radius_um"][cell_index]
    x = cells["xy"][cell_index, 0] + sd * rng.standard_normal(len(cell_index))
    y = cells["xy"][cell_index, 1] + sd * rng.standard_normal(len(cell_index))
    x = np.clip(x, 0, np.nextafter(width_um, 0))
    y = np.clip(y, 0, np.nextafter(height_um, 0))
    return pd.DataFrame({
        "x": x, "y": y,
        "gene": pd.Categorical.from_codes(gene, categories=list(_rule.GENES)),
        "cell_id": cells["cell_id"][cell_index].astype(np.int64),
    })


def _points(frame):
    from spatialdata.models import PointsModel

    return PointsModel.parse(frame, coordinates={"x": "x", "y": "y"}, feature_key="gene",
                             instance_key="cell_id")


def _spots(points, cells, regions, mpp, width_um, height_um, diameter, pitch):
    """Hexagonal capture spots over the tissue and the transcripts each one catches."""
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    from scipy import sparse
    from scipy.spatial import cKDTree
    from shapely import points as shapely_points
    from spatialdata.models import ShapesModel, TableModel

    radius = diameter / 2
    dy = pitch * np.sqrt(3) / 2
    rows = np.arange(int(np.floor((height_um - 2 * radius) / dy)) + 1)
    cols = np.arange(int(np.floor((width_um - 2 * radius - pitch / 2) / pitch)) + 1)
    grid_r, grid_c = np.meshgrid(rows, cols, indexing="ij")
    cx = radius + grid_c * pitch + (grid_r % 2) * pitch / 2
    cy = radius + grid_r * dy
    # centre the grid on the section
    cx = cx + (width_um - (cx.max() + radius)) / 2 if cx.size else cx
    cy = cy + (height_um - (cy.max() + radius)) / 2 if cy.size else cy
    centres = np.column_stack([cx.ravel(), cy.ravel()])
    array_row, array_col = grid_r.ravel(), 2 * grid_c.ravel() + grid_r.ravel() % 2
    pr = np.minimum((centres[:, 1] / mpp).astype(int), regions.shape[0] - 1)
    pc = np.minimum((centres[:, 0] / mpp).astype(int), regions.shape[1] - 1)
    keep = regions[pr, pc] > 0
    centres, array_row, array_col = centres[keep], array_row[keep], array_col[keep]
    n_spots, n_genes = len(centres), len(_rule.GENES)
    if n_spots == 0:
        raise ValueError(
            f"No spot of the {diameter:g} um spots {pitch:g} um apart lies on the tissue of "
            f"this {width_um:g} x {height_um:g} um section. Pass a larger size_um (a few "
            "spot_pitch_um), a smaller spot_pitch_um, or spots=False.")

    def assign(xy):
        if n_spots == 0 or len(xy) == 0:
            return np.full(len(xy), -1)
        dist, index = cKDTree(centres).query(xy, distance_upper_bound=radius)
        return np.where(np.isfinite(dist), index, -1)

    spot_of = assign(points[["x", "y"]].to_numpy())
    inside = spot_of >= 0
    counts = sparse.coo_matrix(
        (np.ones(int(inside.sum()), dtype=np.float32),
         (spot_of[inside], points["gene"].cat.codes.to_numpy()[inside])),
        shape=(n_spots, n_genes)).tocsr()
    counts.sum_duplicates()
    cell_spot = assign(cells["xy"])
    cell_type_counts = np.zeros((n_spots, len(_rule.CELL_TYPES)), dtype=np.int64)
    np.add.at(cell_type_counts, (cell_spot[cell_spot >= 0], cells["cell_type"][cell_spot >= 0]),
              1)

    spot_id = np.arange(n_spots)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame({"radius": np.full(n_spots, radius)},
                         geometry=shapely_points(centres), index=pd.Index(spot_id)))
    obs = pd.DataFrame({
        "spot_id": spot_id,
        "region": pd.Categorical(["spots"] * n_spots),
        "array_row": array_row.astype(np.int64),
        "array_col": array_col.astype(np.int64),
    }, index=pd.Index(spot_id.astype(str)))
    table = ad.AnnData(X=counts.astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=pd.Index(list(_rule.GENES))))
    table.layers["counts"] = table.X.copy()
    table.obsm["spatial"] = centres.astype(np.float64)
    table.obsm["cell_type_counts"] = pd.DataFrame(cell_type_counts, index=obs.index,
                                                  columns=list(_rule.CELL_TYPES))
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
    return shapes, table


def _cell_table(cells, counts):
    import anndata as ad
    import pandas as pd
    from scipy import sparse
    from spatialdata.models import TableModel

    n = len(cells["cell_id"])
    types = list(_rule.CELL_TYPES)
    obs = pd.DataFrame({
        "cell_id": cells["cell_id"].astype(np.int64),
        "region": pd.Categorical(["cells"] * n),
        "cell_type": pd.Categorical.from_codes(cells["cell_type"], categories=types),
        "region_type": pd.Categorical.from_codes(cells["region_type"], categories=types),
        "nucleus_area_um2": cells["nucleus_area_um2"].astype(np.float64),
        "elongation": cells["elongation"].astype(np.float64),
        "local_density": cells["local_density"].astype(np.float64),
        "x": cells["xy"][:, 0], "y": cells["xy"][:, 1],
    }, index=pd.Index(cells["cell_id"].astype(str)))
    X = sparse.csr_matrix(counts.astype(np.float32))
    table = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(list(_rule.GENES))))
    table.layers["counts"] = X.copy()
    table.obsm["spatial"] = cells["xy"].astype(np.float64)
    return TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")


def _scale_factors(shape) -> list[int]:
    factors, side = [], max(shape)
    while side > 512 and min(shape) / 2 ** (len(factors) + 1) >= 64:
        factors.append(2)
        side //= 2
    return factors


def _transform(mpp):
    from spatialdata.transformations import Scale

    return {"global": Scale([mpp, mpp], axes=("y", "x"))}


def _image(array, channels, mpp, factors):
    from spatialdata.models import Image2DModel

    return Image2DModel.parse(array, dims=("c", "y", "x"), c_coords=channels,
                              transformations=_transform(mpp), scale_factors=factors or None,
                              chunks=(len(channels), 1024, 1024))


def _labels(array, mpp, factors):
    from spatialdata.models import Labels2DModel

    return Labels2DModel.parse(array, dims=("y", "x"), transformations=_transform(mpp),
                               scale_factors=factors or None, chunks=(1024, 1024))
