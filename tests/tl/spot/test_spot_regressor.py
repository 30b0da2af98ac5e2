"""The spot regressor learns the designed expression of synthetic sections and predicts tables
that scanpy and squidpy take as they are."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from _catalogue import bad_input
from spatialdata import SpatialData
from spatialdata.models import ShapesModel

import histoexpr as hx

PATCH = {"size_um": 40.0, "mpp": 1.0}
#: markers of the four cell types and a proliferation gene (designed to follow morphology)
GENES = ["EPCAM", "KRT8", "COL1A1", "DCN", "PTPRC", "CD3E", "CDH1", "PIGR", "MKI67"]


@pytest.fixture(scope="module")
def synthetic_trio(synthetic):
    """Three small sections with dense spots (about 100 each): a, b to train, c held out."""
    return {name: synthetic(seed=seed, size_um=500, spot_pitch_um=40,
                            spot_diameter_um=35)
            for seed, name in enumerate("abc")}


def spot_tiles(sdata, key: str = "spot_tiles"):
    if key not in sdata.shapes:
        hx.pp.tile(sdata, "he", size_um=PATCH["size_um"], mpp=PATCH["mpp"], centres="spots",
                   min_tissue=0, key_added=key)
    return key


def held_out_pearson(model, sdata) -> float:
    hx.tl.predict(model, sdata, tiles_key=spot_tiles(sdata), key_added="pred", overwrite=True)
    return float(hx.tl.evaluate(sdata, "pred", "table")["pearson"].mean())


def shuffled(sdata, seed: int = 0) -> SpatialData:
    """The section with its spots' counts permuted: the image no longer predicts them."""
    table = sdata.tables["table"].copy()
    order = np.random.default_rng(seed).permutation(table.n_obs)
    table.X = table.X[order]
    table.layers["counts"] = table.layers["counts"][order]
    return SpatialData(images={"he": sdata.images["he"]}, shapes={"spots": sdata.shapes["spots"]},
                       labels={"he_tissue": sdata.labels["he_tissue"]}, tables={"table": table})


@pytest.fixture(scope="module")
def control_pearson(synthetic_trio):
    spot_tiles(synthetic_trio["a"])  # tissue maps for the shuffled copies
    spot_tiles(synthetic_trio["b"])
    train = {n: shuffled(synthetic_trio[n]) for n in "ab"}
    model = hx.tl.fit(train, model="spot_regressor", genes=GENES, **PATCH)
    return held_out_pearson(model, synthetic_trio["c"])


def test_ridge_recovers_the_designed_expression(synthetic_trio, control_pearson):
    train = {n: synthetic_trio[n] for n in "ab"}
    model = hx.tl.fit(train, model="spot_regressor", genes=GENES, **PATCH)
    assert isinstance(model, hx.models.LinearHead)
    assert model.metadata["genes"] == GENES and model.metadata["alpha"] > 0
    pearson = held_out_pearson(model, synthetic_trio["c"])
    assert pearson > 0.5
    assert pearson > control_pearson + 0.35, (pearson, control_pearson)


@pytest.mark.parametrize(("route", "options", "margin"), [
    ("mlp", {"epochs": 20, "context_um": 60.0}, 0.35),
    ("cnn", {"epochs": 6, "lr": 2e-3}, 0.2),
])
def test_trained_routes_beat_the_shuffled_control(synthetic_trio, control_pearson, route,
                                                  options, margin, tmp_path):
    train = {n: synthetic_trio[n] for n in "ab"}
    model = hx.tl.fit(train, model="spot_regressor", genes=GENES, route=route, seed=0,
                      **PATCH, **options)
    pearson = held_out_pearson(model, synthetic_trio["c"])
    assert pearson > control_pearson + margin, (route, pearson, control_pearson)
    assert model.metadata["history"]["epochs_run"] >= 1
    # saved and loaded, it predicts the same
    loaded = hx.io.load_model(hx.io.save_model(model, tmp_path / f"{route}.pt"))
    first = synthetic_trio["c"].tables["pred"].X.copy()
    hx.tl.predict(loaded, synthetic_trio["c"], tiles_key="spot_tiles", key_added="pred",
                  overwrite=True)
    np.testing.assert_allclose(synthetic_trio["c"].tables["pred"].X, first, rtol=1e-4,
                               atol=1e-5)


def test_mlp_ensemble_averages_members_trained_alone(synthetic_trio):
    train = {n: synthetic_trio[n] for n in "ab"}
    options = {"genes": GENES, "route": "mlp", "epochs": 4, **PATCH}
    ensemble = hx.tl.fit(train, model="spot_regressor", n_members=2, seed=3, **options)
    assert list(ensemble.metadata["history"]) == ["seed 3", "seed 4"]
    features = torch.randn(5, ensemble.get_config()["n_features"])
    alone = [hx.tl.fit(train, model="spot_regressor", seed=seed, **options)
             for seed in (3, 4)]
    with torch.no_grad():
        expected = (alone[0](features) + alone[1](features)) / 2
        torch.testing.assert_close(ensemble(features), expected)


def test_predicted_table_is_ready_for_scanpy_and_squidpy(synthetic_trio):
    import scanpy as sc
    import squidpy as sq

    train = {n: synthetic_trio[n] for n in "ab"}
    model = hx.tl.fit(train, model="spot_regressor", genes=GENES, **PATCH)
    section = synthetic_trio["c"]
    table = hx.tl.predict(model, section, tiles_key="fine", stride_um=20.0)  # half the pitch
    assert table is section.tables["fine_expression"]
    assert table.n_obs > 1.5 * section.tables["table"].n_obs
    assert list(table.var_names) == GENES
    assert table.uns["spatialdata_attrs"]["region"] == "fine"
    np.testing.assert_array_equal(table.obs["tile_id"], section.tables["fine_table"].obs["tile_id"])
    # the map matches the ground truth: tumour marker high where tiles sit in tumour regions
    regions = hx.io.read_region(section, "regions", (0, 0, 500, 500), mpp=1.0)
    x, y = np.asarray(table.obsm["spatial"]).astype(int).T
    tumour = regions[y, x] == 1 + section.attrs["synthetic"]["cell_types"].index("tumour")
    epcam = table[:, "EPCAM"].X.ravel()
    assert np.corrcoef(epcam, tumour)[0, 1] > 0.5
    sc.pp.neighbors(table, use_rep="X", n_neighbors=8, method="gauss")
    sc.tl.leiden(table, resolution=0.5, flavor="igraph", n_iterations=2, directed=False)
    assert table.obs["leiden"].nunique() >= 2
    sq.pl.spatial_scatter(table, shape=None, color=["leiden", "EPCAM"], size=20)
    figure = plt.gcf()
    assert len(figure.axes) >= 2
    offsets = figure.axes[0].collections[0].get_offsets()
    assert len(offsets) == table.n_obs
    plt.close("all")


def test_prediction_maps_show_predicted_and_measured_values(synthetic_trio):
    section = synthetic_trio["c"]
    model = hx.tl.fit({n: synthetic_trio[n] for n in "ab"}, model="spot_regressor",
                      genes=GENES[:3], **PATCH)
    hx.tl.predict(model, section, tiles_key=spot_tiles(section), key_added="pred",
                  overwrite=True)
    figure = hx.pl.prediction(section, "pred", "table", genes=["EPCAM", "COL1A1"], image_key=None)
    maps = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in maps] == ["EPCAM: predicted", "EPCAM: measured",
                                               "COL1A1: predicted", "COL1A1: measured"]
    predicted = maps[0].collections[0].get_array()
    np.testing.assert_allclose(np.sort(predicted), np.sort(section.tables["pred"][:, "EPCAM"].X
                                                           .ravel()), rtol=1e-5)
    measured = maps[1].collections[0].get_array()
    assert len(measured) == section.tables["table"].n_obs
    with pytest.raises(KeyError, match="not both predicted"):
        hx.pl.prediction(section, "pred", "table", genes=["PTPRC"])
    plt.close("all")


def test_genes_absent_and_different_gene_sets(synthetic_trio, caplog):
    a, b = synthetic_trio["a"], synthetic_trio["b"]
    with pytest.raises(KeyError, match="not measured in every section"):
        hx.tl.fit([a, b], model="spot_regressor", genes=["EPCAM", "NOT_A_GENE"], **PATCH)
    fewer = SpatialData(images={"he": b.images["he"]}, shapes={"spots": b.shapes["spots"]},
                        labels=dict(b.labels),  # the tissue map, where an earlier fit made it
                        tables={"table": b.tables["table"][:, 6:].copy()})
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        model = hx.tl.fit([a, fewer], model="spot_regressor", genes=5, **PATCH)
    assert "share 40 of 46 genes" in caplog.text
    assert not set(model.metadata["genes"]) & set(a.tables["table"].var_names[:6])


def test_spots_off_the_image_are_dropped_with_a_count(synthetic_trio, caplog):
    a = synthetic_trio["a"]
    spots = a.shapes["spots"].copy()
    spots.loc[spots.index[0], "geometry"] = spots.geometry.iloc[0].__class__(-300.0, -300.0)
    moved = SpatialData(images={"he": a.images["he"]}, shapes={"spots": ShapesModel.parse(spots)},
                        labels=dict(a.labels),  # the tissue map, where an earlier fit made it
                        tables={"table": a.tables["table"]})
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        model = hx.tl.fit(moved, model="spot_regressor", genes=GENES[:3], **PATCH)
    assert "dropped 1 of" in caplog.text and "centres off the image" in caplog.text
    assert sum(model.metadata["trained_on"].values()) == a.tables["table"].n_obs - 1


def test_other_pixel_size_is_read_at_the_models_and_other_widths_refused(synthetic_trio,
                                                                        caplog):
    model = hx.tl.fit(synthetic_trio["a"], model="spot_regressor", genes=GENES[:3], **PATCH)
    coarse = hx.datasets.synthetic_section(seed=5, size_um=300, mpp=2.0, transcripts=False,
                                           spots=False)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        table = hx.tl.predict(model, coarse)
    assert "upsampled" in caplog.text
    assert table.n_obs > 0 and np.isfinite(table.X).all()
    hx.pp.tile(coarse, "he", size_um=80, key_added="wide")
    with pytest.raises(ValueError, match="trained on 40 um patches"):
        hx.tl.predict(model, coarse, tiles_key="wide")


def test_empty_tissue_and_wrong_inputs_are_refused(synthetic_trio):
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    model = hx.tl.fit(synthetic_trio["a"], model="spot_regressor", genes=GENES[:3], **PATCH)
    blank = np.full((3, 200, 200), 245, dtype=np.uint8)
    empty = SpatialData(images={"he": Image2DModel.parse(
        blank, dims=("c", "y", "x"), transformations={"global": Scale([1.0, 1.0], ("y", "x"))})})
    with pytest.raises(ValueError, match="is blank: every pixel is 245"):
        hx.tl.predict(model, empty)
    with pytest.raises(KeyError, match="spots and their counts"):
        hx.tl.fit(empty, model="spot_regressor", genes=3)
    with pytest.raises(ValueError, match="route must be one of"):
        hx.tl.fit(synthetic_trio["a"], model="spot_regressor", route="forest")


def test_cross_validate_runs_the_hest_protocol(synthetic_trio):
    frame = hx.tl.cross_validate(synthetic_trio, model="spot_regressor",
                                 groups={"a": "p1", "b": "p1", "c": "p2"},
                                 n_genes=8, gene_flavor="pearson_residuals", size_um=40,
                                 mpp=1.0)
    assert set(frame["fold"]) == {"p1", "p2"}
    assert set(frame["section"]) == {"a", "b", "c"}
    assert frame.groupby("section").size().tolist() == [8, 8, 8]  # 8 genes per held-out section
    assert {"pearson", "spearman", "pearson_libreg", "spearman_libreg"} <= set(frame.columns)
    assert frame.groupby("fold")["pearson"].mean().min() > 0.3
    with pytest.raises(ValueError, match="at least two groups"):
        hx.tl.cross_validate(synthetic_trio, model="spot_regressor",
                             groups=dict.fromkeys("abc", "p"))


@bad_input("obscure error", "`hx.tl.fit(sections, model='spot_regressor', route='cnn')` on more "
           "spots x patch pixels than the memory holds: every spot's patch read into memory",
           says="MemoryError: `The patches of ... spots (3 x 40 x 40 px, uint8, 3 copies while "
                "they are read, pooled and split) of 1 section(s) for route='cnn' would allocate "
                "... Train route='ridge' or route='mlp' ...`, before any patch is read",
           fix="route='ridge' or 'mlp' (embeddings read in batches), fewer sections, or smaller "
               "patches (size_um, mpp)")
def test_cnn_patches_are_estimated_before_they_are_read(synthetic, monkeypatch):
    from histoexpr.tl._spot import _spot_training

    section = synthetic(seed=7, size_um=300, spot_pitch_um=40, spot_diameter_um=35)
    n_spots = section.tables["table"].n_obs
    monkeypatch.setattr(_spot_training, "_read_patches", lambda *a, **k: pytest.fail("read"))
    hx.settings.max_memory = 3 * 40 * 40 * 3 * n_spots // 2  # half the patches' estimate
    with pytest.raises(MemoryError, match=r"The patches of [\d,]+ spots \(3 x 40 x 40 px, uint8"
                                          r".*1 section\(s\) for route='cnn'.*route='ridge'"):
        hx.tl.fit(section, model="spot_regressor", genes=GENES, route="cnn", epochs=1, **PATCH)
    # the fix: route="ridge" reads the patches in batches, as tile embeddings
    model = hx.tl.fit(section, model="spot_regressor", genes=GENES, route="ridge", **PATCH)
    assert model.metadata["route"] == "ridge"
