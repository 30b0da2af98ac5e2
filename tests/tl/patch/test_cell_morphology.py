"""The per-cell morphology model, per-cell scores in evaluate and the calibration of patch maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input
from conftest import without_pixel_size

import histoexpr as hx

GENES = ("PTPRC", "COL1A1")
CLASSES = {"background": 1, "tissue": 2, GENES[0]: 3, GENES[1]: 4}


@pytest.fixture(scope="module")
def sections():
    """Two synthetic sections (train, test) with each cell labelled by its transcripts."""
    out = []
    for seed in (0, 1):
        sdata = hx.datasets.synthetic_section(seed=seed, size_um=300, spots=False)
        hx.pp.transcript_labels(sdata, genes=GENES, cells="cells", grid_um=1.0, min_counts=2,
                                max_per_class=400, seed=seed)
        out.append(sdata)
    return out


@pytest.fixture(scope="module")
def nuclear_model(sections):
    """The cell-morphology model on the nuclear image alone (the default), trained once."""
    return hx.tl.fit(sections[0], model="cell_morphology", seed=0)


def intensity_baseline(train, test) -> pd.Series:
    """Logistic regression on each cell's mean DAPI alone: the predicted label of each cell."""
    from sklearn.linear_model import LogisticRegression

    from histoexpr._core.cells import cell_means, cell_raster

    def features(sdata):
        image = hx.io.read_region(sdata, "dapi", (0, 0, 300, 300), mpp=0.5).astype(float)
        ids, names = cell_raster(sdata, "cells", (0.0, 0.0), 0.5, image.shape[1:])
        return cell_means(image, ids), names

    x, names = features(train)
    truth = train.tables["tx_labels_cells"].obs["label"].reindex(names).to_numpy()
    model = LogisticRegression(class_weight="balanced", max_iter=500).fit(x[truth > 0],
                                                                          truth[truth > 0])
    x, names = features(test)
    return pd.Series(model.predict(x), index=names.astype(str))


def macro_f1(truth: pd.Series, pred: pd.Series) -> float:
    from sklearn.metrics import f1_score

    both = truth.index.intersection(pred.index)
    truth, pred = truth[both], pred[both]
    keep = truth > 0
    return f1_score(truth[keep], pred[keep], average="macro")


def test_cell_morphology_beats_a_cell_intensity_baseline_and_round_trips(sections, tmp_path,
                                                                         nuclear_model):
    train, test = sections
    model = nuclear_model
    assert model.metadata["classes"] == CLASSES and model.metadata["cells"] == "cells"
    written = hx.tl.predict(model, test, key_added="morphology")
    assert written is test.tables["morphology_cells"]  # predict returns what it wrote
    scores = hx.tl.evaluate(test, "morphology", "tx_labels")
    truth = test.tables["tx_labels_cells"].obs["label"]
    baseline = macro_f1(truth, intensity_baseline(train, test))
    ours = scores.attrs["cells"]["macro_f1"]
    cells = test.tables["morphology_cells"]
    assert macro_f1(truth, cells.obs["label"]) == pytest.approx(ours)
    assert ours > baseline + 0.1, (ours, baseline)
    np.testing.assert_allclose(cells.X.sum(axis=1), 1, atol=1e-5)
    # the same map format as the patch classifier's per-cell maps: background outside cells
    ids = hx.io.read_region(test, "cells", (0, 0, 300, 300), mpp=1.0)
    labels = test.labels["morphology"].values
    assert (labels[ids == 0] == CLASSES["background"]).mean() > 0.95
    path = hx.io.save_model(model, tmp_path / "cells.pt")
    hx.tl.predict(hx.io.load_model(path, device="cpu"), test, key_added="loaded")
    assert np.array_equal(test.labels["loaded"].values, labels)


@bad_input("obscure error", "`hx.tl.fit(sdata, model='cell_morphology')` on labels made without "
           "cells", says="KeyError: no per-cell labels", fix="label the cells with "
           "`hx.pp.transcript_labels(..., cells=...)`")
def test_cell_morphology_needs_per_cell_labels(sections):
    sdata = hx.datasets.synthetic_section(seed=3, size_um=100, spots=False)
    hx.pp.transcript_labels(sdata, genes=GENES, min_counts=1, min_per_class=1, key_added="win")
    with pytest.raises(KeyError, match="cells="):
        hx.tl.fit(sdata, model="cell_morphology", labels_key="win")
    with pytest.raises(TypeError, match="patch_classifier"):
        hx.tl.fit(sections[0], model="cell_morphology", patch_classifier="model.pt")


def cell_section():
    """Five square cells on a 10 x 10 um grid with hand-made truth and prediction tables."""
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import Labels2DModel, TableModel
    from spatialdata.transformations import Scale

    ids = np.zeros((10, 10), dtype=np.int32)
    for i, (r, c) in enumerate([(0, 0), (0, 5), (5, 0), (5, 5), (8, 8)]):
        ids[r : r + 2, c : c + 2] = i + 1
    scale = {"global": Scale([1.0, 1.0], axes=("y", "x"))}
    sdata = SpatialData(labels={"cells": Labels2DModel.parse(ids, dims=("y", "x"),
                                                             transformations=scale)})

    def table(labels):
        names = [str(i) for i in range(1, 6)]
        centres = np.array([[1, 1], [6, 1], [1, 6], [6, 6], [9, 9]], dtype=float)
        obs = pd.DataFrame({"label": labels}, index=pd.Index(names))
        return TableModel.parse(ad.AnnData(obs=obs, obsm={"spatial": centres}))

    # cells 1..5: truth tissue, A, A, B, unassigned; prediction tissue, A, tissue, B, B
    sdata.tables["truth_cells"] = table([2, 3, 3, 4, 0])
    sdata.tables["pred_cells"] = table([2, 3, 2, 4, 4])
    for key, labels in (("truth", [2, 3, 3, 4, 0]), ("pred", [2, 3, 2, 4, 4])):
        values = np.append(0, labels)[ids]
        values[ids == 0] = 1
        element = Labels2DModel.parse(values.astype(np.uint8), dims=("y", "x"),
                                      transformations=scale)
        element.attrs["classes"] = {"background": 1, "tissue": 2, "A": 3, "B": 4}
        sdata.labels[key] = element
    return sdata


def test_cell_scores_count_each_cell_once_and_say_which_were_left_out():
    sdata = cell_section()
    scores = hx.tl.evaluate(sdata, "pred", "truth")
    cells = scores.attrs["cells"]
    # 4 scored cells (cell 5 is unassigned in the truth): tissue 1/1, A 1/2 (one called tissue)
    assert cells["scored"] == 4 and cells["total"] == 5
    assert cells["accuracy"] == pytest.approx(3 / 4)
    assert scores.loc["A", "cell_recall"] == pytest.approx(0.5)
    assert scores.loc["tissue", "cell_precision"] == pytest.approx(0.5)
    f1 = {"tissue": 2 / 3, "A": 2 / 3, "B": 1.0}
    for name, value in f1.items():
        assert scores.loc[name, "cell_f1"] == pytest.approx(value)
    assert cells["macro_f1"] == pytest.approx(np.mean(list(f1.values())))
    assert np.isnan(scores.loc["background", "cell_f1"])  # no cell is background
    assert cells["unscored_cells"].to_dict() == {
        "5": "unassigned in the truth (e.g. both genes, neither enriched)"}
    # a region holding the first two cells' centroids only
    region = hx.tl.evaluate(sdata, "pred", "truth", region=(0, 0, 10, 4)).attrs["cells"]
    assert region["scored"] == 2 and region["unscored"]["centroid outside the region"] == 3
    # without the tables, cells= scores the maps by each cell's most common value: the same
    for key in ("truth_cells", "pred_cells"):
        del sdata.tables[key]
    assert "cells" not in hx.tl.evaluate(sdata, "pred", "truth").attrs
    again = hx.tl.evaluate(sdata, "pred", "truth", cells="cells")
    assert again.attrs["cells"]["accuracy"] == pytest.approx(3 / 4)
    pd.testing.assert_series_equal(again["cell_f1"], scores["cell_f1"])


@bad_input("obscure error", "`hx.tl.evaluate(sdata, pred, truth, cells=...)` of whole-slide "
           "maps without per-cell tables: both maps and the cells' raster at half the map's "
           "pixel size (four times its pixels) held at once",
           says="MemoryError: `Scoring the cells of 'cells' on sdata.labels['pred'] at 0.5 um/px "
                "(half the map's pixel size: 20 x 20 px) would allocate ... Pass region=...`, "
                "before the map is read again",
           fix="pass region=(x_min, y_min, x_max, y_max) to score part of the section at a time")
def test_cell_scores_from_the_maps_are_estimated_before_they_are_made():
    sdata = cell_section()
    for key in ("truth_cells", "pred_cells"):
        del sdata.tables[key]
    hx.settings.max_memory = "16 KiB"  # the maps (100 B each) fit; the cells' votes do not
    with pytest.raises(MemoryError, match=r"Scoring the cells of 'cells' on sdata.labels\['pred'\] "
                                          r"at 0\.5 um/px .*20 x 20 px.*Pass region="):
        hx.tl.evaluate(sdata, "pred", "truth", cells="cells")
    part = hx.tl.evaluate(sdata, "pred", "truth", cells="cells", region=(0, 0, 7, 7))
    assert part.attrs["cells"]["scored"] == 4  # the fix: the four cells of that region


def test_calibration_undoes_the_balanced_training_prior():
    """A classifier of balanced classes applied where one class is rare: the correction fitted
    on weighted validation samples makes its decisions closer to the truth."""
    from histoexpr.tl._patch._calibration import fit_calibration
    from histoexpr.tl._patch._dense_map import calibrated

    rng = np.random.default_rng(0)
    names = {"background": 1, "tissue": 2, "a": 3}
    prior = np.array([0.75, 0.2, 0.05])
    means = np.array([0.0, 1.0, 2.0])

    def sample(n, shares):
        y = rng.choice(3, size=n, p=shares)
        x = rng.normal(means[y], 0.8)
        likelihood = np.exp(-0.5 * ((x[:, None] - means) / 0.8) ** 2)
        return likelihood / likelihood.sum(axis=1, keepdims=True), y  # the balanced posterior

    val_p, val_y = sample(3000, np.full(3, 1 / 3))  # validation patches: balanced
    calibration = fit_calibration(val_p, val_y, names, dict(zip(names, prior, strict=True)))
    assert calibration["exponent"] > 0.2  # a correction towards the prior
    assert calibration["val_mean_dice_after"] > calibration["val_mean_dice_before"]
    test_p, test_y = sample(20000, prior)  # the section: unbalanced

    def mean_dice(predicted):
        return np.mean([2 * np.sum((predicted == k) & (test_y == k))
                        / (np.sum(predicted == k) + np.sum(test_y == k)) for k in range(3)])

    before, after = test_p.argmax(axis=1), calibrated(test_p, calibration, names).argmax(axis=1)
    assert mean_dice(after) > mean_dice(before) + 0.02, (mean_dice(before), mean_dice(after))
    assert (after == test_y).mean() > (before == test_y).mean() + 0.05
    np.testing.assert_allclose(calibrated(test_p, calibration, names).sum(axis=1), 1, atol=1e-6)
    assert calibrated(test_p, None, names) is test_p


@pytest.mark.slow
def test_stacked_model_uses_only_cells_the_cnn_never_trained_on(sections, tmp_path):
    """A CNN on per-cell labels is calibrated on its validation cells and stacked with the cell
    features on the training cells outside its training region; the stacked model beats the
    intensity baseline on the held-out section and survives a file round trip."""
    import torch

    torch.set_num_threads(1)
    train, test = sections
    cnn = hx.tl.fit(train, model="patch_classifier", size_um=10, mpp=1.0, epochs=2,
                    width=8, region=(0, 0, 300, 200), seed=0, device="cpu")
    calibration = cnn.metadata["calibration"]
    assert calibration["classes_scored"] == ["tissue", *GENES]  # per cell: no background
    assert 10 < calibration["n_val"] < cnn.metadata["n_val"]  # cells, not patches
    model = hx.tl.fit(train, model="cell_morphology", patch_classifier=cnn, seed=0)
    stack = model.metadata["stack"]
    # cells below y = 200 um were never in a training patch, nor those of the validation stripe
    centres = train.tables["tx_labels_cells"].obs.assign(
        y=train.tables["tx_labels_cells"].obsm["spatial"][:, 1])
    assert stack["n_cells"] >= int(((centres["y"] > 200) & (centres["label"] > 0)).sum())
    assert stack["n_cells"] < model.metadata["n_train_cells"]
    hx.tl.predict(model, test, key_added="stacked", device="cpu")
    truth = test.tables["tx_labels_cells"].obs["label"]
    ours = hx.tl.evaluate(test, "stacked", "tx_labels").attrs["cells"]["macro_f1"]
    assert ours > macro_f1(truth, intensity_baseline(train, test)) + 0.05  # 0.48 vs 0.38
    path = hx.io.save_model(model, tmp_path / "stacked.pt")
    hx.tl.predict(hx.io.load_model(path, device="cpu"), test, key_added="stacked_loaded",
               device="cpu")
    assert np.array_equal(test.labels["stacked_loaded"].values, test.labels["stacked"].values)


def add_class_stain(sdata, seed: int) -> None:
    """A second stain ("PolyT" of ``sdata.images["stains"]``) that carries each cell's class: a
    class-dependent brightness (plus per-cell and pixel noise), strong in a ring around the
    cell and weak inside it, as poly-T marks cytoplasm around a nucleus."""
    from skimage.segmentation import expand_labels

    from histoexpr._core.cells import cell_raster
    from histoexpr.io._elements import image_element

    rng = np.random.default_rng(seed)
    ids, names = cell_raster(sdata, "cells", (0.0, 0.0), 0.5, (600, 600))
    truth = sdata.tables["tx_labels_cells"].obs["label"].reindex(names.astype(str))
    truth = truth.fillna(0).to_numpy().astype(int)
    level = {CLASSES["tissue"]: 0.3, CLASSES[GENES[0]]: 0.55, CLASSES[GENES[1]]: 0.8}
    value = np.array([level.get(t, rng.choice(list(level.values()))) for t in truth])
    value = np.append(0.05, value + rng.normal(0, 0.06, len(value)))
    ring = expand_labels(ids, distance=4)
    pixels = np.where(ids > 0, 0.3 * value[ids], value[ring])
    pixels = np.clip(pixels + rng.normal(0, 0.05, pixels.shape), 0, 1)
    sdata.images["stains"] = image_element((255 * pixels)[None].astype(np.uint8), mpp=0.5,
                                           channels=["PolyT"])


def test_a_second_stain_that_carries_the_class_improves_held_out_cells(sections, tmp_path,
                                                                       nuclear_model):
    """Held-out cell accuracy and macro-F1 rise by more than 0.1 with the second stain (about
    0.60 -> 0.95 and 0.49 -> 0.91 here); the default model has no stain features."""
    train, test = sections
    for seed, sdata in enumerate(sections):
        if "stains" not in sdata.images:
            add_class_stain(sdata, seed)
    nuclear = nuclear_model
    assert nuclear.metadata["stains"] is None  # the default is the nuclear image alone
    both = hx.tl.fit(train, model="cell_morphology", stains_key="stains", stains=["PolyT"],
                     seed=0)
    assert both.metadata["stains"] == ["PolyT"] and both.n_features > nuclear.n_features
    scores = {}
    for key, model in (("nuclear", nuclear), ("both", both)):
        hx.tl.predict(model, test, key_added=key)
        scores[key] = hx.tl.evaluate(test, key, "tx_labels").attrs["cells"]
    assert scores["both"]["accuracy"] > scores["nuclear"]["accuracy"] + 0.1, scores
    assert scores["both"]["macro_f1"] > scores["nuclear"]["macro_f1"] + 0.1, scores
    path = hx.io.save_model(both, tmp_path / "stains.pt")
    hx.tl.predict(hx.io.load_model(path, device="cpu"), test, key_added="both_loaded")
    assert np.array_equal(test.labels["both_loaded"].values, test.labels["both"].values)


@bad_input("obscure error", "`hx.tl.fit(sdata, model='cell_morphology', stains_key=...)` with a "
           "stain channel the image lacks", says="ValueError: Stain channel(s) ['polyT'] not "
           "in sdata.images['stains'], whose channels are ['PolyT']; pass stains= some of those "
           "names",
           fix="pass `stains=` some of those names, or `stains=None` for all")
def test_cell_morphology_names_the_stain_channels_it_has(sections):
    train = sections[0]
    if "stains" not in train.images:
        add_class_stain(train, 0)
    with pytest.raises(ValueError, match=r"channels are \['PolyT'\].*stains="):
        hx.tl.fit(train, model="cell_morphology", stains_key="stains", stains=["polyT"])
    with pytest.raises(KeyError, match="stains_key=None"):
        hx.tl.fit(train, model="cell_morphology", stains_key="other_stains")
    with pytest.raises(ValueError, match="stains_key"):
        hx.tl.CellMorphologyOptions(stains=["PolyT"])
    with pytest.raises(TypeError, match="list of channel names"):
        hx.tl.CellMorphologyOptions(stains_key="stains", stains="PolyT")
    with pytest.raises(ValueError, match="ring_um"):
        hx.tl.CellMorphologyOptions(ring_um=0)


@bad_input(
    "silently wrong",
    "`hx.tl.predict(cell_model, sdata, image_key=...)` on an image parsed without a pixel size "
    "(the identity to 'global')",
    says="ValueError: sdata.images['dapi_bare'] does not state its pixel size ... State it "
    "(before: per-cell features read as if the image were at 1 um/px)",
    fix="set a Scale([mpp, mpp]) transformation to 'global', or read the data with the "
    "platform's reader",
)
def test_cells_on_an_image_without_a_pixel_size_are_refused(sections, nuclear_model):
    test = sections[1]
    test.images["dapi_bare"] = without_pixel_size(test.images["dapi"])
    try:
        with pytest.raises(ValueError, match=r"'dapi_bare'\] does not state its pixel size"):
            hx.tl.predict(nuclear_model, test, image_key="dapi_bare", key_added="bare_cells")
        assert not any(key.startswith("bare_cells") for key in [*test.labels, *test.tables])
    finally:
        del test.images["dapi_bare"]


def _element_keys(sdata) -> set:
    return {(kind, key) for kind in ("images", "labels", "points", "shapes", "tables")
            for key in getattr(sdata, kind)}


@bad_input(
    "obscure error",
    "`hx.tl.fit(sdata, model='cell_morphology')` or `hx.tl.predict` with it on a whole large "
    "section (`region=None`): ~180 B per pixel at `feature_mpp=0.5` (67 GiB for a 1 x 1 cm "
    "section), the process killed mid-way",
    says="MemoryError: `Cell features over 600 x 600 px (300 x 300 um at 0.5 um/px; 1 "
         "channel(s) of 'dapi', ~180 B/px) would allocate 61.8 MiB, more than ... Pass "
         "region=(x_min, y_min, x_max, y_max) to train on part of the section, or a coarser "
         "feature_mpp (now 0.5 um/px).`, before any pixel is read",
    fix="pass `region=(x_min, y_min, x_max, y_max)` (to fit, or a coarser `feature_mpp`); a "
        "larger `stride_um` where predict names the map",
)
def test_cell_features_memory_is_estimated_before_any_pixel_is_read(sections, nuclear_model,
                                                                    monkeypatch):
    from histoexpr._core import cells as _cells

    train, test = sections
    calls = []
    real = _cells.cell_features
    monkeypatch.setattr(_cells, "cell_features",
                        lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs))
    before = [_element_keys(train), _element_keys(test)]
    hx.settings.max_memory = "24 MiB"
    whole = (r"Cell features over 600 x 600 px \(300 x 300 um at 0\.5 um/px; 1 channel\(s\) of "
             r"'dapi', ~180 B/px\) would allocate 61\.8 MiB")
    with pytest.raises(MemoryError, match=whole + r".*coarser feature_mpp \(now 0\.5 um/px\)"):
        hx.tl.fit(train, model="cell_morphology", seed=0)
    with pytest.raises(MemoryError, match=whole + r".*region=\(x_min, y_min, x_max, y_max\) to "
                                                  r"map part of the section"):
        hx.tl.predict(nuclear_model, test, key_added="whole")
    corner = (0, 0, 150, 150)  # features of 300 x 300 px: 15.4 MiB
    with pytest.raises(MemoryError, match=r"A map of 1,500 x 1,500 grid cells \(0\.1 um apart "
                                          r"over 150 x 150 um.*larger stride_um"):
        hx.tl.predict(nuclear_model, test, region=corner, stride_um=0.1, key_added="whole")
    assert calls == [] and [_element_keys(train), _element_keys(test)] == before
    # the fixes: a coarser feature_mpp to fit (15.4 MiB), a region to map (a quarter)
    coarse = hx.tl.fit(train, model="cell_morphology", feature_mpp=1.0, n_folds=2, seed=0)
    assert coarse.metadata["feature_mpp"] == 1.0
    try:
        hx.tl.predict(nuclear_model, test, region=corner, key_added="corner")  # map: 16.1 MiB
        assert test.labels["corner"].shape == (150, 150) and len(calls) == 2
    finally:
        for kind, key in _element_keys(test) - before[1]:
            del getattr(test, kind)[key]


@bad_input(
    "data lost",
    "`hx.tl.predict(cell_model, sdata, key_added='morph', overwrite=True)` where "
    "`images['morph_probabilities']` is the user's (their own image under that name): the label "
    "map `morph` of the earlier call was deleted, then the call refused",
    says="KeyError: sdata.images['morph_probabilities'] already exists and it was not written "
         "by histoexpr, not by hx.tl.predict (a cell_morphology model, key_added='morph'): it "
         "is not replaced, even with overwrite=True ... (before: labels['morph'] deleted first)",
    fix="choose another key_added; every key is checked before the map is made, and nothing "
        "is replaced until it is",
)
def test_a_refused_map_rerun_replaces_nothing(sections, nuclear_model):
    from spatialdata.models import Image2DModel

    test = sections[1]
    corner = (0, 0, 80, 80)
    hx.tl.predict(nuclear_model, test, region=corner, key_added="morph")
    try:
        label_map, cells = test.labels["morph"], test.tables["morph_cells"]
        del test.images["morph_probabilities"]
        mine = Image2DModel.parse(np.zeros((1, 10, 10), np.float32), dims=("c", "y", "x"))
        test.images["morph_probabilities"] = mine
        before = _element_keys(test)
        with pytest.raises(KeyError, match=r"'morph_probabilities'\] already exists and it was "
                           "not written by histoexpr"):
            hx.tl.predict(nuclear_model, test, region=corner, key_added="morph",
                          overwrite=True)
        assert _element_keys(test) == before
        assert test.labels["morph"] is label_map and test.tables["morph_cells"] is cells
        assert test.images["morph_probabilities"] is mine
        # without the user's image, the call's own map is replaced as a whole
        del test.images["morph_probabilities"]
        with pytest.raises(KeyError, match="Pass overwrite=True"):
            hx.tl.predict(nuclear_model, test, region=corner, key_added="morph")
        hx.tl.predict(nuclear_model, test, region=corner, key_added="morph", overwrite=True)
        assert test.labels["morph"] is not label_map and "morph_probabilities" in test.images
    finally:
        for kind, key in (("labels", "morph"), ("images", "morph_probabilities"),
                          ("tables", "morph_cells")):
            if key in getattr(test, kind):
                del getattr(test, kind)[key]
