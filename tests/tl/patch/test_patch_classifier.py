"""The patch classifier: training, dense maps, label-map metrics and the plot of maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _catalogue import bad_input
from conftest import without_pixel_size

import histoexpr as hx
from histoexpr.models import PatchClassifier, PatchEnsemble
from histoexpr.tl._patch._patch_data import _patch_dataset

GENES = ("PTPRC", "COL1A1")  # lymphocyte and stroma markers of the synthetic rule
CLASSES = {"background": 1, "tissue": 2, GENES[0]: 3, GENES[1]: 4}


@pytest.fixture(autouse=True)
def _one_thread():
    """The CPU is shared: one torch thread is faster than two competing ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def labelled_section(seed: int, size_um: float):
    sdata = hx.datasets.synthetic_section(seed=seed, size_um=size_um, spots=False)
    hx.pp.transcript_labels(sdata, genes=GENES, max_per_class=400, seed=seed)
    return sdata


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    hx.settings.progress_bar = False
    sdata = labelled_section(0, 400)
    model = hx.tl.fit(sdata, model="patch_classifier", size_um=(10, 20), mpp=0.5,
                      epochs=10, width=8, lr=3e-3, seed=0, device="cpu")
    return sdata, model


def intensity_baseline(train, test) -> np.ndarray:
    """Logistic regression on the windowed mean and spread of DAPI at each grid cell."""
    from scipy import ndimage
    from sklearn.linear_model import LogisticRegression

    def features(sdata):
        shape = sdata.labels["tx_labels"].shape
        image = hx.io.read_region(sdata, "dapi", (0, 0, shape[1] * 2, shape[0] * 2), mpp=2.0)
        image = image[0].astype(float)
        mean = ndimage.uniform_filter(image, 5)
        spread = np.sqrt(np.maximum(ndimage.uniform_filter(image**2, 5) - mean**2, 0))
        return np.stack([mean, spread], axis=-1).reshape(-1, 2)

    truth = train.labels["tx_labels"].values.ravel()
    model = LogisticRegression(class_weight="balanced", max_iter=500)
    model.fit(features(train)[truth > 0], truth[truth > 0])
    return model.predict(features(test)).reshape(test.labels["tx_labels"].shape)


def add_labels(sdata, key: str, values: np.ndarray, mpp: float) -> None:
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import Scale

    sdata.labels[key] = Labels2DModel.parse(values.astype(np.uint8), dims=("y", "x"),
                                            transformations={"global": Scale([mpp, mpp],
                                                                             axes=("y", "x"))})


def test_beats_an_intensity_baseline_on_a_held_out_section(trained):
    train, model = trained
    assert model.metadata["classes"] == CLASSES and model.metadata["genes"] == list(GENES)
    report = {r["name"]: r for r in model.metadata["report"]}
    assert {"10 um", "20 um", "ensemble"} <= set(report)
    assert all(0 <= r["mean_dice"] <= 1 for r in report.values())
    test = labelled_section(1, 400)
    written = hx.tl.predict(model, test, stride_um=4.0, device="cpu")
    assert written is test.labels["pred_labels"]  # predict returns what it wrote
    assert test.labels["pred_labels"].shape == (100, 100)
    probabilities = test.images["pred_labels_probabilities"]
    assert list(probabilities.coords["c"].values) == list(CLASSES)
    np.testing.assert_allclose(probabilities.values.sum(axis=0), 1, atol=1e-5)
    cnn = hx.tl.evaluate(test, "pred_labels", "tx_labels")
    add_labels(test, "baseline", intensity_baseline(train, test), 2.0)
    baseline = hx.tl.evaluate(test, "baseline", "tx_labels")
    assert list(cnn.index) == [*CLASSES, "mean"]
    dice = {"cnn": cnn["dice"].round(3).to_dict(), "baseline": baseline["dice"].round(3).to_dict()}
    assert cnn.loc["mean", "dice"] > baseline.loc["mean", "dice"] + 0.05, dice
    assert cnn.loc[GENES[0], "dice"] > max(0.6, baseline.loc[GENES[0], "dice"] + 0.1), dice


def cell_intensity_baseline(train, test, labels_key: str) -> np.ndarray:
    """Logistic regression on each cell's mean and spread of DAPI: a per-cell map of ``test``."""
    from sklearn.linear_model import LogisticRegression

    from histoexpr._core.cells import cell_means, cell_raster

    def features(sdata):
        image = hx.io.read_region(sdata, "dapi", (0, 0, 400, 400), mpp=1.0).astype(float)
        ids, names = cell_raster(sdata, "cells", (0.0, 0.0), 1.0, image.shape[1:])
        mean = cell_means(np.concatenate([image, image**2]), ids)
        return np.column_stack([mean[:, 0], np.sqrt(np.maximum(mean[:, 1] - mean[:, 0]**2, 0))]
                               ), ids, names

    x, _, names = features(train)
    truth = train.tables[f"{labels_key}_cells"].obs["label"].reindex(names).to_numpy()
    model = LogisticRegression(class_weight="balanced", max_iter=500).fit(x[truth > 0],
                                                                          truth[truth > 0])
    x, ids, _ = features(test)
    return np.where(ids > 0, np.append(0, model.predict(x))[ids], CLASSES["background"])


def test_per_cell_maps_beat_a_per_cell_baseline_on_a_held_out_section(trained):
    train, model = trained
    test = hx.datasets.synthetic_section(seed=1, size_um=400, spots=False)
    for sdata in (train, test):
        hx.pp.transcript_labels(sdata, genes=GENES, cells="cells", grid_um=1.0, min_counts=2,
                                key_added="cell_labels", overwrite=True)
    cells = hx.tl.predict(model, test, stride_um=2.0, cells="cells", smooth_um=10.0,
                          device="cpu", key_added="pred_cells")
    assert cells is test.tables["pred_cells_cells"]
    add_labels(test, "baseline_cells", cell_intensity_baseline(train, test, "cell_labels"), 1.0)
    cnn, baseline = (hx.tl.evaluate(test, key, "cell_labels")["dice"]
                     for key in ("pred_cells", "baseline_cells"))
    dice = {"cnn": cnn.round(3).to_dict(), "baseline": baseline.round(3).to_dict()}
    cell_classes = ["tissue", *GENES]
    assert cnn[cell_classes].mean() > baseline[cell_classes].mean() + 0.05, dice
    assert cnn[GENES[0]] > 0.6, dice


def test_dense_map_matches_patch_wise_prediction(synthetic):
    sdata = synthetic(seed=2, size_um=100, transcripts=False, spots=False)
    torch.manual_seed(0)
    members = [PatchClassifier(in_channels=1, n_classes=4, patch_px=px, width=4, depth=2)
               for px in (8, 16)]
    model = PatchEnsemble.of(members).eval()
    model.metadata = {"model": "patch_classifier", "classes": CLASSES, "mpp": 0.5,
                      "grid_um": 2.0, "image_key": "dapi"}
    region = (10.0, 20.0, 70.0, 60.0)
    hx.tl.predict(model, sdata, region=region, device="cpu", batch_size=7)
    dense = sdata.images["pred_labels_probabilities"].values  # (4, 20, 30)
    assert dense.shape == (4, 20, 30)
    rows, cols = np.array([0, 3, 19, 10]), np.array([0, 29, 5, 17])
    centres = np.column_stack([region[0] + (cols + 0.5) * 2.0, region[1] + (rows + 0.5) * 2.0])
    with torch.no_grad():
        patches = [torch.stack([item["image"] for item in _patch_dataset(
            sdata, "dapi", centres, np.zeros(len(centres), dtype=int), m.patch_px, 0.5)])
            for m in members]
        expected = model(patches).numpy()
    np.testing.assert_allclose(dense[:, rows, cols].T, expected, atol=1e-5)
    labels = sdata.labels["pred_labels"].values
    assert np.array_equal(labels, np.array(list(CLASSES.values()))[dense.argmax(axis=0)])


def test_dice_on_hand_made_masks():
    from spatialdata import SpatialData

    truth = np.zeros((10, 10), dtype=np.uint8)
    truth[:, :5], truth[:, 5:] = 1, 2
    truth[0, 0] = 0  # unassigned: not scored
    prediction = np.full((10, 10), 2, dtype=np.uint8)
    prediction[:, :6] = 1
    sdata = SpatialData()
    add_labels(sdata, "truth", truth, 1.0)
    add_labels(sdata, "pred", prediction, 1.0)
    table = hx.tl.evaluate(sdata, "pred", "truth", classes={"a": 1, "b": 2})
    # a: TP 49, FP 10, FN 0; b: TP 40, FP 0, FN 10
    assert table.loc["a", "dice"] == pytest.approx(98 / 108)
    assert table.loc["b", "dice"] == pytest.approx(80 / 90)
    assert table.loc["a", "iou"] == pytest.approx(49 / 59)
    assert table.loc["a", "precision"] == pytest.approx(49 / 59)
    assert table.loc["b", "recall"] == pytest.approx(0.8)
    assert table.loc["mean", "dice"] == pytest.approx((98 / 108 + 80 / 90) / 2)
    assert table.attrs["confusion"].to_numpy().tolist() == [[49, 0], [10, 40]]
    # a coarser prediction is scored on its own grid
    add_labels(sdata, "coarse", prediction[::2, ::2], 2.0)
    coarse = hx.tl.evaluate(sdata, "coarse", "truth", classes={"a": 1, "b": 2})
    assert coarse.loc["mean", "support"] == 25


def test_model_file_round_trip_and_bad_input(trained, tmp_path):
    sdata, model = trained
    region = (0.0, 0.0, 60.0, 40.0)
    hx.tl.predict(model, sdata, region=region, key_added="before", device="cpu")
    path = hx.io.save_model(model, tmp_path / "patches.pt")
    loaded = hx.io.load_model(path, device="cpu")
    hx.tl.predict(loaded, sdata, region=region, key_added="after", device="cpu")
    assert np.array_equal(sdata.labels["before"].values, sdata.labels["after"].values)
    with pytest.raises(ValueError, match="channel"):
        hx.tl.predict(model, sdata, image_key="he", key_added="he_pred")
    with pytest.raises(KeyError, match="overwrite=True"):
        hx.tl.predict(model, sdata, region=region, key_added="before")
    with pytest.raises(ValueError, match="larger than the image"):
        hx.tl.fit(sdata, model="patch_classifier", size_um=1000)
    with pytest.raises(KeyError, match="transcript_labels"):
        hx.tl.fit(sdata, model="patch_classifier", labels_key="cells")


@bad_input(
    "silently wrong",
    "`hx.tl.predict(patch_model, sdata)` or `hx.tl.fit(sdata, model='patch_classifier')` on an "
    "image parsed without a pixel size (the identity to 'global')",
    says="ValueError: sdata.images['bare'] does not state its pixel size ... State it (before: "
    "read as 1 um/px, patches of the wrong physical size)",
    fix="set a Scale([mpp, mpp]) transformation to 'global', or read the slide with "
    "hx.io.read_wsi(path, mpp=...)",
)
def test_patches_of_an_image_without_a_pixel_size_are_refused(trained):
    sdata, model = trained
    region = (0.0, 0.0, 60.0, 40.0)
    # the same pixels without a stated pixel size: patches of a size in um are refused, not
    # read as 1 um/px, before anything is written
    sdata.images["bare"] = without_pixel_size(sdata.images[model.metadata["image_key"]])
    try:
        elements = set(sdata.labels) | set(sdata.tables)
        with pytest.raises(ValueError, match=r"'bare'\] does not state its pixel size"):
            hx.tl.predict(model, sdata, image_key="bare", region=region, key_added="bare_pred")
        with pytest.raises(ValueError, match=r"'bare'\] does not state its pixel size"):
            hx.tl.fit(sdata, model="patch_classifier", image_key="bare", size_um=10, mpp=0.5)
        assert set(sdata.labels) | set(sdata.tables) == elements
    finally:
        del sdata.images["bare"]


def test_labels_plot_draws_both_maps_in_class_colours(trained):
    import matplotlib
    from matplotlib.colors import to_rgba

    matplotlib.use("Agg")
    sdata, model = trained
    region = (0.0, 0.0, 80.0, 80.0)
    hx.tl.predict(model, sdata, region=region, key_added="plotted", device="cpu",
                  overwrite=True)
    axes = hx.pl.labels(sdata, "tx_labels", "plotted", region=region, alpha=0.5)
    assert [ax.get_title() for ax in axes] == ["tx_labels", "plotted"]
    legend = [text.get_text() for text in axes[-1].get_legend().get_texts()]
    assert legend == list(CLASSES)
    truth = sdata.labels["tx_labels"].values
    overlay = np.asarray(axes[0].images[-1].get_array())
    row, col = np.argwhere(truth == 3)[0]
    expected = to_rgba(hx.pl._labels._PALETTE[2], 0.5)
    np.testing.assert_allclose(overlay[row, col], expected, atol=1e-6)
    assert (truth == 0).any() and overlay[truth == 0][:, 3].max() == 0  # unassigned: clear


def test_per_cell_maps_average_the_dense_map_over_each_cell(synthetic):
    sdata = synthetic(seed=2, size_um=100, transcripts=False, spots=False)
    torch.manual_seed(0)
    model = PatchEnsemble.of([PatchClassifier(in_channels=1, n_classes=4, patch_px=16, width=4,
                                              depth=2)]).eval()
    model.metadata = {"model": "patch_classifier", "classes": CLASSES, "mpp": 0.5,
                      "grid_um": 1.0, "image_key": "dapi"}
    hx.tl.predict(model, sdata, device="cpu")
    hx.tl.predict(model, sdata, device="cpu", cells="cells", key_added="per_cell")
    hx.tl.predict(model, sdata, device="cpu", cells="cells", smooth_um=1000.0,
                  key_added="smoothed")
    dense = sdata.images["pred_labels_probabilities"].values
    cells = sdata.images["per_cell_probabilities"].values
    smoothed = sdata.images["smoothed_probabilities"].values
    ids = hx.io.read_region(sdata, "cells", (0, 0, 100, 100), mpp=1.0)
    assert (cells[0][ids == 0] == 1).all() and (cells[0][ids > 0] == 0).all()
    for cell in np.unique(ids[ids > 0])[:10]:
        inside = ids == cell
        expected = dense[1:, inside].mean(axis=1)
        np.testing.assert_allclose(cells[1:, inside].T, np.tile(
            expected / expected.sum(), (inside.sum(), 1)), atol=1e-5)
    labels = sdata.labels["per_cell"].values
    assert np.array_equal(labels, np.array(list(CLASSES.values()))[cells.argmax(axis=0)])
    # a Gaussian far wider than the section: every cell gets (nearly) the same probabilities
    spread = np.ptp(smoothed[1:, ids > 0], axis=1).max()
    assert 0 < spread < 0.05 * np.ptp(cells[1:, ids > 0], axis=1).max()
    with pytest.raises(KeyError, match="read_cell_boundaries"):
        hx.tl.predict(model, sdata, device="cpu", cells="nope", key_added="bad")
    with pytest.raises(ValueError, match="smooth_um"):
        hx.tl.predict(model, sdata, device="cpu", smooth_um=0, key_added="bad")


def add_defocused_plane(sdata) -> None:
    """A second focal plane of the DAPI image: blurred and dimmed, as ``"dapi_z1"``."""
    from scipy.ndimage import gaussian_filter

    from histoexpr.io._elements import image_element

    dapi = hx.io.read_region(sdata, "dapi", (0, 0, 400, 400), mpp=0.5).astype(np.float32)
    plane = gaussian_filter(dapi, sigma=(0, 3, 3)) * 0.5
    sdata.images["dapi_z1"] = image_element(plane.astype(np.uint8), mpp=0.5, channels=["dapi"])


@bad_input(
    "obscure error",
    "`hx.tl.predict(patch_model, sdata, stride_um=...)` with a stride of one pixel over a whole "
    "slide (a map of GiB allocated, the process killed after hours of reading)",
    says="MemoryError: `A map of 800 x 800 grid cells (0.5 um apart over 400 x 400 um, 4 "
    "classes) would allocate ... Pass a larger stride_um (the model's grid is ... um) or a "
    "smaller region=...`, before any patch is read",
    fix="pass a larger stride_um or a smaller region",
)
def test_dense_map_memory_is_estimated_before_any_patch_is_read(trained, monkeypatch):
    from histoexpr.io import read_region

    sdata, model = trained
    reads = []
    monkeypatch.setattr("histoexpr.tl._patch._dense_map.read_region",
                        lambda *args, **kwargs: reads.append(args) or read_region(*args, **kwargs))
    elements = set(sdata.labels) | set(sdata.tables) | set(sdata.images)
    hx.settings.max_memory = "4 MiB"
    with pytest.raises(MemoryError, match=r"A map of 800 x 800 grid cells \(0\.5 um apart "
                                          r"over 400 x 400 um, 4 classes\).*larger stride_um"):
        hx.tl.predict(model, sdata, stride_um=0.5, key_added="fine", device="cpu")
    with pytest.raises(MemoryError, match="with the cells on a grid 4 times finer"):
        hx.tl.predict(model, sdata, stride_um=0.5, cells="cells", key_added="fine", device="cpu")
    assert reads == [] and set(sdata.labels) | set(sdata.tables) | set(sdata.images) == elements
    hx.tl.predict(model, sdata, stride_um=4.0, key_added="coarse", device="cpu")  # the fix
    assert reads and sdata.labels["coarse"].shape == (100, 100)


def test_patches_of_several_planes_train_a_model_that_reads_each():
    train = labelled_section(0, 400)
    test = labelled_section(1, 400)
    for sdata in (train, test):
        add_defocused_plane(sdata)
    options = {"model": "patch_classifier", "size_um": 10, "mpp": 0.5, "epochs": 6,
               "width": 8, "lr": 3e-3, "seed": 0, "device": "cpu"}
    models = {"z0": hx.tl.fit(train, **options),
              "z0_z1": hx.tl.fit(train, image_key=["dapi", "dapi_z1"], **options)}
    assert models["z0_z1"].metadata["image_keys"] == ["dapi", "dapi_z1"]
    dice = {}
    for name, model in models.items():
        hx.tl.predict(model, test, image_key="dapi_z1", stride_um=4.0, device="cpu",
                      key_added=name)
        dice[name] = hx.tl.evaluate(test, name, "tx_labels")["dice"].round(3).to_dict()
    # the defocused plane of a held-out section: read well only by the model that trained on it
    assert dice["z0_z1"]["mean"] > dice["z0"]["mean"] + 0.1, dice
    with pytest.raises(ValueError, match="channel count"):
        hx.tl.fit(train, image_key=["dapi", "he"], **options)


def test_calibrated_map_is_closer_to_the_truth_than_the_uncalibrated_one(trained):
    """The section's classes are unbalanced, the training patches balanced: the class-prior
    correction fitted on the validation patches moves the held-out map towards the truth."""
    train, model = trained
    calibration = model.metadata["calibration"]
    prior = calibration["prior"]
    assert max(prior.values()) > 3 * min(prior.values()), prior  # unbalanced classes
    assert calibration["val_mean_dice_after"] >= calibration["val_mean_dice_before"]
    test = labelled_section(1, 400)
    truth = test.labels["tx_labels"].values[::2, ::2]
    correct = {}
    for calibrate in (False, True):
        key = f"calibrated_{calibrate}"
        hx.tl.predict(model, test, stride_um=4.0, calibrate=calibrate, device="cpu",
                      key_added=key)
        predicted = test.labels[key].values
        correct[calibrate] = float((predicted == truth)[truth > 0].mean())
    assert correct[True] > correct[False] + 0.01, (correct, calibration)


def test_patches_read_in_order_before_training_give_the_same_model(monkeypatch):
    """With the cache on, the patches are read once, in order, before the first epoch.

    The patches kept are those the shuffled first epoch would read, so the model is the same
    to the last bit.
    """
    sdata = labelled_section(2, 200)
    options = {"model": "patch_classifier", "size_um": 10, "mpp": 0.5, "epochs": 2,
               "width": 8, "lr": 3e-3, "seed": 0, "device": "cpu"}
    filled = []
    fill = hx.pp.CachedDataset.fill

    def counted(self, **kwargs):
        filled.append(len(self))
        return fill(self, **kwargs)

    monkeypatch.setattr(hx.pp.CachedDataset, "fill", counted)
    in_order = hx.tl.fit(sdata, **options)
    assert len(filled) == 2  # the training and the validation patches
    monkeypatch.setattr(hx.pp.CachedDataset, "fill", lambda self, **kwargs: None)
    lazily = hx.tl.fit(sdata, **options)
    for (name, a), b in zip(in_order.state_dict().items(), lazily.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    timeless = [[{k: v for k, v in r.items() if k != "seconds"} for r in m.metadata["report"]]
                for m in (in_order, lazily)]
    assert timeless[0] == timeless[1]
