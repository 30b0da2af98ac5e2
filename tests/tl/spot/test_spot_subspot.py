"""Expression below the spot (``subspot_um=``): maps finer than the measured spots.

Synthetic sections know the expression at every point (their transcripts), so coarse square
spots can be measured and the truth kept at a finer grid inside them.
"""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import torch
from _catalogue import bad_input
from scipy import sparse
from shapely import points as shapely_points
from spatialdata.models import ShapesModel, TableModel

import histoexpr as hx

SPOT, SUB = 120.0, 40.0  # coarse square spots, 3 x 3 sub-tiles of truth each
WIDTH = 720.0
GENES = ["EPCAM", "KRT8", "COL1A1", "DCN", "PTPRC", "CD3E", "CDH1", "PIGR", "MKI67"]


def square_counts(transcripts: pd.DataFrame, width: float, side: float, genes: list[str]):
    """Counts of every square of ``side`` um tiling the section, and the squares' centres."""
    n = int(width // side)
    col = np.floor(transcripts["x"].to_numpy() / side).astype(int)
    row = np.floor(transcripts["y"].to_numpy() / side).astype(int)
    inside = (col < n) & (row < n)
    codes = pd.Categorical(transcripts["gene"], categories=genes).codes
    keep = inside & (codes >= 0)
    counts = sparse.coo_matrix((np.ones(keep.sum()), (row[keep] * n + col[keep], codes[keep])),
                               shape=(n * n, len(genes))).toarray()
    r, c = np.divmod(np.arange(n * n), n)
    return counts, np.column_stack([(c + 0.5) * side, (r + 0.5) * side])


def add_squares(sdata, key: str, centres: np.ndarray, counts: np.ndarray | None, side: float):
    ids = np.arange(len(centres))
    sdata.shapes[key] = ShapesModel.parse(gpd.GeoDataFrame(
        {"radius": np.full(len(ids), side / 2)}, geometry=shapely_points(centres),
        index=pd.Index(ids)))
    if counts is not None:
        table = ad.AnnData(X=counts.astype(np.float32),
                           obs=pd.DataFrame({"spot_id": ids, "region": pd.Categorical(
                               [key] * len(ids))}, index=pd.Index(ids.astype(str))),
                           var=pd.DataFrame(index=pd.Index(GENES)))
        sdata.tables[f"{key}_counts"] = TableModel.parse(table, region=key, region_key="region",
                                                         instance_key="spot_id")


def coarse_section(seed: int):
    """A section measured by square spots of 120 um; truth kept at 40 um squares."""
    sdata = hx.datasets.synthetic_section(seed=seed, size_um=WIDTH, mpp=1.0, spots=False)
    transcripts = sdata.points["transcripts"].compute()
    fine, fine_xy = square_counts(transcripts, WIDTH, SUB, GENES)
    coarse, coarse_xy = square_counts(transcripts, WIDTH, SPOT, GENES)
    spots = coarse.sum(axis=1) > np.quantile(coarse.sum(axis=1), 0.3)  # on tissue
    add_squares(sdata, "spots", coarse_xy[spots], coarse[spots], SPOT)
    truth = fine.sum(axis=1) > 50
    add_squares(sdata, "fine", fine_xy[truth], fine[truth], SUB)
    return sdata


def log1p_normalised(counts: np.ndarray) -> np.ndarray:
    return np.log1p(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * 1e4)


def mean_pearson(prediction: np.ndarray, truth: np.ndarray) -> float:
    return float(np.nanmean([np.corrcoef(prediction[:, g], truth[:, g])[0, 1]
                             for g in range(truth.shape[1])]))


@pytest.fixture(scope="module")
def sections():
    return {name: coarse_section(seed) for seed, name in enumerate("abc")}


def test_subspot_map_beats_the_spot_prediction_copied_down(sections):
    """Held-out section: the 40 um map of a model trained on 120 um spots correlates better with
    the 40 um truth than the 120 um predictions copied to the 40 um squares inside each spot;
    and the mean of a spot's sub-tile predictions is its spot prediction (additive)."""
    train = {n: sections[n] for n in "ab"}
    held = sections["c"]
    options = {"genes": GENES, "size_um": SPOT, "mpp": 1.0, "table_key": "spots_counts"}
    coarse_model = hx.tl.fit(train, model="spot_regressor", **options)
    fine_model = hx.tl.fit(train, model="spot_regressor", subspot_um=SUB, **options)
    assert fine_model.metadata["size_um"] == SUB
    assert fine_model.metadata["subspot"]["grid"] == 3

    fine_xy = np.column_stack([held.shapes["fine"].geometry.x, held.shapes["fine"].geometry.y])
    truth = log1p_normalised(np.asarray(held.tables["fine_counts"].X))
    hx.pp.tile(held, "he", size_um=SUB, mpp=1.0, centres="fine", min_tissue=0,
               key_added="fine_tiles")
    super_resolved = hx.tl.predict(fine_model, held, tiles_key="fine_tiles")
    assert super_resolved.n_obs == len(truth)  # one row per 40 um tile, with tile shapes
    assert super_resolved.uns["spatialdata_attrs"]["region"] == "fine_tiles"

    hx.pp.tile(held, "he", size_um=SPOT, mpp=1.0, centres="spots", min_tissue=0,
               key_added="spot_tiles")
    spot_prediction = hx.tl.predict(coarse_model, held, tiles_key="spot_tiles")
    spot_xy = np.column_stack([held.shapes["spots"].geometry.x, held.shapes["spots"].geometry.y])
    # each 40 um square lies in exactly one 120 um square: copy that spot's prediction down
    spot_of = {tuple(np.floor(xy / SPOT).astype(int)): i for i, xy in enumerate(spot_xy)}
    inside = np.array([tuple(np.floor(xy / SPOT).astype(int)) in spot_of for xy in fine_xy])
    rows = [spot_of[tuple(np.floor(xy / SPOT).astype(int))] for xy in fine_xy[inside]]
    copied = np.asarray(spot_prediction.X)[rows]
    ours = np.asarray(super_resolved.X)[inside]
    gain = mean_pearson(ours, truth[inside]) - mean_pearson(copied, truth[inside])
    assert gain > 0.05, gain  # measured: +0.09

    # additive: a spot's sub-tile predictions average to the model's prediction of the spot
    from histoexpr.tl._spot._subspot import subtile_centres

    add_squares(held, "one_spot_subtiles", subtile_centres(spot_xy[:1], SPOT, 3), None, SUB)
    hx.pp.tile(held, "he", size_um=SUB, mpp=1.0, centres="one_spot_subtiles", min_tissue=0,
               key_added="one_spot_tiles")
    parts = hx.tl.predict(fine_model, held, tiles_key="one_spot_tiles")
    hx.tl.embed(held, "one_spot_tiles", encoder="handcrafted", key_added="X_check")
    mean_features = np.asarray(held.tables["one_spot_tiles_table"].obsm["X_check"]).mean(axis=0)
    with torch.inference_mode():
        whole = fine_model.to("cpu")(torch.from_numpy(mean_features[None]).float()).numpy()[0]
    np.testing.assert_allclose(np.asarray(parts.X).mean(axis=0), whole, rtol=1e-4, atol=1e-4)


@bad_input("silently wrong", "`subspot_um=` that does not cut `size_um` into a whole grid, or "
           "with a non-additive route (`'mlp'`, `'cnn'`, `'auto'`)",
           says="ValueError before anything is written: the sizes that fit, or that the "
                "sub-spot head is an additive ridge",
           fix="give `size_um` divided by a whole number; `route='ridge'`")
@pytest.mark.parametrize("options, message", [
    ({"subspot_um": 50.0}, "whole number"),
    ({"subspot_um": 40.0, "route": "mlp"}, "route='ridge'"),
])
def test_subspot_refuses_options_it_cannot_honour_before_writing(sections, options, message):
    sdata = sections["a"]
    before = set(sdata.shapes) | set(sdata.tables)
    with pytest.raises(ValueError, match=message):
        hx.tl.fit({"a": sdata}, model="spot_regressor", genes=GENES, size_um=SPOT, mpp=1.0,
                  table_key="spots_counts", tiles_key="refused_tiles", **options)
    assert set(sdata.shapes) | set(sdata.tables) == before
