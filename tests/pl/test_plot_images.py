"""Plots look as they did: each is drawn small and compared with a baseline in tests/_images.

How to add one and how to remake the baselines: see tests/_baseline.py.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from _baseline import baseline_axes, check_same_image
from anndata import AnnData
from conftest import make_disk_section
from shapely.geometry import Point
from spatialdata.models import ShapesModel, TableModel

import histoexpr as hx

#: a training run that stopped early: validation loss lowest at epoch 4 (index 3)
HISTORY = {"train_loss": [1.0, 0.7, 0.5, 0.4, 0.35, 0.3],
           "val_loss": [1.1, 0.8, 0.65, 0.6, 0.62, 0.66], "best_epoch": 3, "epochs_run": 6}


@pytest.fixture(scope="module")
def baseline_section():
    """The disk section, tiled, with three spots of known expression."""
    sdata = make_disk_section()
    hx.pp.detect_tissue(sdata, "he", mpp=2.0)
    hx.pp.tile(sdata, "he", size_px=40, mpp=0.5, min_tissue=0.1)
    centres = [(50.0, 100.0), (100.0, 100.0), (150.0, 100.0)]
    sdata.shapes["spots"] = ShapesModel.parse(gpd.GeoDataFrame(
        {"radius": [15.0] * 3}, geometry=[Point(x, y) for x, y in centres], index=[0, 1, 2]))
    table = AnnData(np.array([[0.0], [5.0], [10.0]], dtype=np.float32),
                    obs=pd.DataFrame({"spot_id": [0, 1, 2],
                                      "region": pd.Categorical(["spots"] * 3)},
                                     index=["s0", "s1", "s2"]),
                    var=pd.DataFrame(index=["GENE1"]))
    sdata.tables["table"] = TableModel.parse(table, region="spots", region_key="region",
                                             instance_key="spot_id")
    return sdata


def test_tiles_image(tmp_path, baseline_section):
    ax = baseline_axes()
    hx.pl.tiles(baseline_section, "he_tiles", color="tissue_fraction", ax=ax)
    check_same_image(ax, "tiles", tmp_path)


def test_spots_image(tmp_path, baseline_section):
    ax = baseline_axes()
    hx.pl.spots(baseline_section, "spots", color="GENE1", ax=ax)
    check_same_image(ax, "spots", tmp_path)


def test_history_image(tmp_path):
    ax = baseline_axes()
    hx.pl.history(HISTORY, ax=ax)
    check_same_image(ax, "history", tmp_path)


def test_history_image_per_member(tmp_path):
    ax = baseline_axes()
    hx.pl.history({"56 um": HISTORY, "112 um": {**HISTORY, "val_loss": [0.9, 0.7, 0.75, 0.8],
                                                 "train_loss": [0.9, 0.6, 0.5, 0.45],
                                                 "best_epoch": 1}}, ax=ax)
    check_same_image(ax, "history_members", tmp_path)


def test_history_marks_the_best_epoch(tmp_path):
    class Trained:
        metadata = {"model": "spot_regressor", "history": HISTORY}

    path = tmp_path / "history.png"
    ax = hx.pl.history(Trained(), save=path)
    assert path.stat().st_size > 0
    assert ax.get_title() == "spot_regressor: best epoch 4"
    train, val, best = ax.lines[:3]
    np.testing.assert_allclose(train.get_xdata(), np.arange(1, 7))
    np.testing.assert_allclose(val.get_ydata(), HISTORY["val_loss"])
    assert (best.get_xdata()[0], best.get_ydata()[0]) == (4, 0.6)
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "best: epoch 4"


def test_history_without_a_history_is_a_clear_error():
    class Untrained:
        metadata = {"model": "x"}

    with pytest.raises(ValueError, match="No training history"):
        hx.pl.history(Untrained())


def test_a_changed_plot_fails_its_baseline(tmp_path, baseline_section):
    ax = baseline_axes()
    hx.pl.spots(baseline_section, "spots", color="GENE1", cmap="magma", ax=ax)
    with pytest.raises(pytest.fail.Exception, match="differs from its baseline"):
        check_same_image(ax, "spots", tmp_path)


def test_labels_image(tmp_path, baseline_section):
    import matplotlib.pyplot as plt

    from histoexpr._core.image import image_levels

    level = image_levels(baseline_section, "he_tissue")[0]
    truth = np.asarray(level.data)
    predicted = np.roll(truth, 5, axis=1)  # the same disk, shifted right by 5 pixels
    add_label_map(baseline_section, "shifted", predicted, level.mpp)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    hx.pl.labels(baseline_section, "he_tissue", "shifted", classes={"tissue": 1}, ax=axes)
    check_same_image(axes[0], "labels", tmp_path)


def test_attention_image(tmp_path, baseline_section):
    table = baseline_section.tables["he_tiles_table"]
    x = table.obsm["spatial"][:, 0]
    table.obs["abmil_attention"] = (x - x.min()) / (x.max() - x.min())  # rising left to right
    ax = baseline_axes()
    hx.pl.attention(baseline_section, "he_tiles", pred_key="abmil", ax=ax)
    check_same_image(ax, "attention", tmp_path)


def test_gene_metrics_image(tmp_path):
    metrics = pd.DataFrame({"pearson": [0.8, 0.55, 0.3, -0.1]},
                           index=["EPCAM", "KRT8", "PTPRC", "VIM"])
    ax = baseline_axes()
    hx.pl.gene_metrics(metrics, ax=ax)
    check_same_image(ax, "gene_metrics", tmp_path)


def test_slide_prediction_image(tmp_path):
    rng = np.random.default_rng(0)
    measured = rng.normal(size=(20, 2))
    predicted = AnnData(measured + rng.normal(scale=0.3, size=(20, 2)),
                        obs=pd.DataFrame(index=[f"slide{i}" for i in range(20)]),
                        var=pd.DataFrame(index=["EPCAM", "PTPRC"]))
    predicted.layers["measured"] = measured
    figure = hx.pl.prediction(predicted, "X", "measured", panel_size=2.0)
    check_same_image(figure.axes[0], "slide_prediction", tmp_path)


def add_label_map(sdata, key, values, mpp):
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import Scale

    sdata.labels[key] = Labels2DModel.parse(
        values, dims=("y", "x"), transformations={"global": Scale([mpp, mpp], axes=("y", "x"))})


def test_top_tiles_image(tmp_path):
    """Attention and expression set by hand, so the picture depends on no training run."""
    cohort = hx.datasets.synthetic_cohort(4, seed=0, size_um=200)
    for sdata in cohort.values():
        hx.pp.tile(sdata, "he", size_px=16, mpp=2.0, min_tissue=0.5)
        hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
    model = hx.tl.fit(cohort, model="abmil", genes=["EPCAM"], epochs=1, val_fraction=0,
                      seed=0, device="cpu")
    predictions = hx.tl.predict(model, cohort, key_added="abmil")
    predictions.layers["measured"] = np.arange(4, dtype=float).reshape(4, 1)
    for sdata in cohort.values():  # attention rising with the tile's x position
        table = sdata.tables["he_tiles_table"]
        x = table.obsm["spatial"][:, 0]
        table.obsm["abmil_attention"].iloc[:, 0] = (x - x.min() + 1) / (x.max() - x.min() + 1)
    figure = hx.pl.top_tiles(cohort, predictions, gene="EPCAM", n_bins=2, n_tiles=3)
    check_same_image(figure, "top_tiles", tmp_path)
