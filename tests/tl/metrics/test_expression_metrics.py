"""Expression metrics: per-gene correlations, library-size regression, the HEST protocol."""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _catalogue import bad_input
from shapely.geometry import Point
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel

import histoexpr as hx


def test_correlations_of_hand_made_numbers():
    truth = np.array([[1.0, 1.0, 5.0], [2.0, 2.0, 5.0], [3.0, 3.0, 5.0], [4.0, 4.0, 5.0]])
    pred = np.array([[2.0, 4.0, 1.0], [4.0, 3.0, 2.0], [6.0, 2.0, 3.0], [8.0, 1.0, 4.0]])
    frame = hx.tl.gene_correlations(pred, truth, genes=["up", "down", "flat"])
    assert frame.loc["up", "pearson"] == pytest.approx(1.0)
    assert frame.loc["down", "spearman"] == pytest.approx(-1.0)
    assert np.isnan(frame.loc["flat", "pearson"])  # constant truth: no correlation
    assert frame.mean()["pearson"] == pytest.approx(0.0)  # NaN left out of the mean
    # monotone but not linear: Spearman 1, Pearson below 1, equal to numpy's
    x = np.arange(1.0, 7.0)
    frame = hx.tl.gene_correlations(np.exp(x), x)
    assert frame["spearman"].iloc[0] == pytest.approx(1.0)
    assert frame["pearson"].iloc[0] == pytest.approx(np.corrcoef(np.exp(x), x)[0, 1])


def test_library_size_regression_removes_a_depth_only_prediction():
    rng = np.random.default_rng(0)
    library = rng.lognormal(8, 0.5, 300)
    biology = rng.normal(size=300)
    truth = 0.8 * np.log(library) + biology
    depth_only = np.log(library) + rng.normal(0, 0.05, 300)
    good = biology + 0.2 * np.log(library)
    frame = hx.tl.gene_correlations(np.column_stack([depth_only, good]),
                                    np.column_stack([truth, truth]), genes=["depth", "good"],
                                    library_size=library)
    assert frame.loc["depth", "pearson"] > 0.3  # looks good before regressing depth out
    assert abs(frame.loc["depth", "pearson_libreg"]) < 0.15
    assert frame.loc["good", "pearson_libreg"] > 0.95
    with pytest.raises(ValueError, match="one total count per row"):
        hx.tl.gene_correlations(depth_only, truth, library_size=library[:10])


def test_anndata_are_matched_by_names_and_genes_intersected(caplog):
    rng = np.random.default_rng(1)
    values = rng.normal(size=(20, 3))
    pred = ad.AnnData(values, obs=pd.DataFrame(index=[f"s{i}" for i in range(20)]),
                      var=pd.DataFrame(index=["A", "B", "C"]))
    order = rng.permutation(20)
    truth = ad.AnnData(values[order][:, :2] * 2 + 1,
                       obs=pd.DataFrame(index=[f"s{i}" for i in order]),
                       var=pd.DataFrame(index=["A", "B"]))
    with caplog.at_level("INFO", logger="histoexpr"):
        frame = hx.tl.gene_correlations(pred, truth)
    assert list(frame.index) == ["A", "B"]
    np.testing.assert_allclose(frame["pearson"], 1.0)
    assert "2 genes present in both (1 left out)" in caplog.text


def _hand_made_section():
    """Four spots with known counts and a prediction on spot-centred tiles."""
    counts = np.array([[10, 0, 90], [20, 10, 70], [30, 20, 50], [40, 40, 20]], dtype=np.float32)
    centres = np.array([[10.0, 10.0], [30.0, 10.0], [10.0, 30.0], [30.0, 30.0]])
    spots = ShapesModel.parse(gpd.GeoDataFrame({"radius": [5.0] * 4},
                                               geometry=[Point(*c) for c in centres],
                                               index=np.arange(4)))
    obs = pd.DataFrame({"spot_id": np.arange(4), "region": pd.Categorical(["spots"] * 4)},
                       index=[f"spot{i}" for i in range(4)])
    table = ad.AnnData(sp.csr_matrix(counts), obs=obs,
                       var=pd.DataFrame(index=["G1", "G2", "OTHER"]))
    table.layers["counts"] = table.X.copy()
    table.obsm["spatial"] = centres
    # the prediction annotates tiles in another order, matched through spot_id
    pred = ad.AnnData(np.array([[4.0, 1.0], [3.0, 2.0], [2.0, 3.0], [1.0, 4.0]], dtype=np.float32),
                      obs=pd.DataFrame({"tile_id": np.arange(4), "spot_id": [3, 2, 1, 0],
                                        "region": pd.Categorical(["tiles"] * 4)},
                                       index=[str(i) for i in range(4)]),
                      var=pd.DataFrame(index=["G1", "G2"]))
    pred.obsm["spatial"] = centres[[3, 2, 1, 0]]
    tiles = ShapesModel.parse(gpd.GeoDataFrame({"radius": [5.0] * 4},
                                               geometry=[Point(*c) for c in centres[[3, 2, 1, 0]]],
                                               index=np.arange(4)))
    return SpatialData(shapes={"spots": spots, "tiles": tiles}, tables={
        "table": TableModel.parse(table, region="spots", region_key="region",
                                  instance_key="spot_id"),
        "pred": TableModel.parse(pred, region="tiles", region_key="region",
                                 instance_key="tile_id")}), counts


def test_evaluate_scores_a_prediction_table_against_log_normalised_counts():
    sdata, counts = _hand_made_section()
    scores = hx.tl.evaluate(sdata, "pred", "table")
    # measured: log1p of counts scaled to 1e4 per spot (library = 100 for every spot)
    measured = np.log1p(counts[:, :2] * 100)
    predicted = np.array([[1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0]])  # spot order
    expected = [np.corrcoef(predicted[:, j], measured[:, j])[0, 1] for j in range(2)]
    np.testing.assert_allclose(scores["pearson"], expected, rtol=1e-6)
    assert scores.loc["G1", "spearman"] == pytest.approx(1.0)
    assert scores.loc["G2", "spearman"] == pytest.approx(-1.0)
    # equal libraries: regressing out log library size changes nothing
    np.testing.assert_allclose(scores["pearson_libreg"], scores["pearson"], atol=1e-6)


def test_evaluate_refuses_predictions_of_unmeasured_genes():
    sdata, _ = _hand_made_section()
    sdata.tables["pred"].var_names = ["X1", "X2"]
    with pytest.raises(ValueError, match="No predicted gene is measured"):
        hx.tl.evaluate(sdata, "pred", "table")


def test_gene_metric_bars_and_slide_scatter_draw_the_values():
    frame = pd.DataFrame({"pearson": [0.2, 0.8, np.nan, 0.5]}, index=["A", "B", "C", "D"])
    ax = hx.pl.gene_metrics(frame, n_top=2)
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == pytest.approx([0.8, 0.5])  # best first, NaN dropped, top 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["B", "D"]
    assert ax.lines[0].get_ydata()[0] == pytest.approx(0.5)  # mean over the 3 scored genes
    rng = np.random.default_rng(0)
    measured = ad.AnnData(rng.normal(size=(12, 2)), obs=pd.DataFrame(index=list("abcdefghijkl")),
                          var=pd.DataFrame(index=["G1", "G2"]))
    predicted = measured[::-1].copy()
    predicted.X = predicted.X * 0.5
    figure = hx.pl.prediction(predicted, "X", measured, genes=["G2"])
    (ax,) = figure.axes
    x, y = ax.collections[0].get_offsets().T
    np.testing.assert_allclose(y, 0.5 * x)  # rows matched by name, not by position
    assert "r = 1.00" in ax.get_title()
    plt.close("all")


@bad_input("obscure error", "`hx.tl.gene_correlations(pred, truth)` on two whole AnnData tables "
           "(100,000 spots x 36,601 genes: both made dense float64, ranked and centred, "
           "about 350 GB)",
           says="MemoryError: `Scoring 4,000 rows x 500 genes (both sides as float64, their "
                "ranks and centred copies) would allocate ... Score fewer genes at once "
                "(genes=[...]) or fewer rows.`, before either side is copied",
           fix="pass genes=[...] (the genes predicted) or fewer rows")
def test_scoring_memory_is_estimated_before_the_tables_are_made_dense():
    rng = np.random.default_rng(0)
    names = pd.Index([f"g{i}" for i in range(500)])
    rows = pd.Index([str(i) for i in range(4000)])
    truth = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (4000, 500)).astype(np.float32)),
                       obs=pd.DataFrame(index=rows), var=pd.DataFrame(index=names))
    pred = truth.copy()
    pred.X = truth.X + sp.csr_matrix(rng.normal(0, 1, (4000, 500)).astype(np.float32))
    hx.settings.max_memory = "64 MiB"  # 4,000 x 500 x 96 B = 183 MiB
    with pytest.raises(MemoryError, match=r"Scoring 4,000 rows x 500 genes.*fewer genes"):
        hx.tl.gene_correlations(pred, truth)
    with pytest.raises(MemoryError, match=r"Scoring 4,000 rows x 500 genes"):  # arrays too
        hx.tl.gene_correlations(pred.X.toarray(), truth.X.toarray())
    scored = hx.tl.gene_correlations(pred, truth, genes=list(names[:50]))  # the fix
    assert len(scored) == 50 and (scored["pearson"] > 0.5).all()
