"""scanpy and squidpy habits: predicted tables draw with sc.pl.spatial and sq.pl.spatial_scatter
where the truth is, hx.pl takes them too, maps share a colour scale, show a scale bar in um, crop
to a region and name what their colourbars show."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from _catalogue import bad_input
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

import histoexpr as hx
from histoexpr._core.spatial_uns import add_spatial_uns

GENES = ["EPCAM", "COL1A1"]
SIZE_UM = 300.0
TILE_UM = 40.0


@pytest.fixture(scope="module")
def predicted(synthetic):
    """A ridge spot regressor trained on one synthetic section, predicting another."""
    sections = [synthetic(seed=seed, size_um=SIZE_UM, spot_pitch_um=40,
                          spot_diameter_um=35) for seed in (0, 1)]
    for sdata in sections:
        hx.pp.tile(sdata, "he", size_um=TILE_UM, mpp=1.0, centres="spots", min_tissue=0,
                   key_added="spot_tiles")
    model = hx.tl.fit({"a": sections[0]}, model="spot_regressor", genes=GENES,
                      size_um=TILE_UM, mpp=1.0, route="ridge")
    hx.tl.predict(model, sections[1], tiles_key="spot_tiles", key_added="pred")
    yield sections[1]
    plt.close("all")


def _record(table):
    (library_id, record), = table.uns["spatial"].items()
    return library_id, record


def _patch_centres(collection) -> np.ndarray:
    return np.array([path.get_extents().get_points().mean(axis=0)
                     for path in collection.get_paths()])


def _colourbar_label(collection) -> str:
    return collection.colorbar.ax.get_ylabel()


def test_predicted_table_carries_the_visium_layout(predicted):
    table = predicted.tables["pred"]
    library_id, record = _record(table)
    assert library_id == "he"
    image = record["images"]["hires"]
    scale = record["scalefactors"]["tissue_hires_scalef"]
    # the section is 300 um at 0.5 um/px: 600 px, under the 2000 px cap, kept at full size
    assert image.shape == (600, 600, 3) and image.dtype == np.uint8
    assert scale == pytest.approx(2.0)
    assert record["scalefactors"]["spot_diameter_fullres"] == pytest.approx(TILE_UM)
    # the stored image is the section's image: pixel (row, col) is at (col, row) / scale um
    np.testing.assert_array_equal(
        image, np.moveaxis(hx.io.read_region(predicted, "he", (0, 0, SIZE_UM, SIZE_UM)), 0, -1))
    # a larger image is downsampled to the cap, and the scale factor follows
    copy = table.copy()
    add_spatial_uns(copy, predicted, "he", spot_diameter_um=TILE_UM, max_side=100)
    small = _record(copy)[1]
    assert small["images"]["hires"].shape == (100, 100, 3)
    assert small["scalefactors"]["tissue_hires_scalef"] == pytest.approx(100 / SIZE_UM)


@pytest.mark.filterwarnings(  # the scanpy habit, on purpose: scanpy says to use squidpy
    "ignore:Use `squidpy.pl.spatial_scatter` instead:FutureWarning")
def test_scanpy_draws_the_predictions_where_the_tiles_are(predicted):
    import scanpy as sc

    table = predicted.tables["pred"]
    _, record = _record(table)
    scale = record["scalefactors"]["tissue_hires_scalef"]
    ax = sc.pl.spatial(table, color="EPCAM", show=False)[0]
    assert ax.images[0].get_array().shape[:2] == record["images"]["hires"].shape[:2]
    circles = ax.collections[0]
    centres = _patch_centres(circles)
    expected = np.asarray(table.obsm["spatial"]) * scale
    np.testing.assert_allclose(centres[np.lexsort(centres.T)],
                               expected[np.lexsort(expected.T)], atol=0.5)
    widths = np.array([np.ptp(path.vertices[:, 0]) for path in circles.get_paths()])
    np.testing.assert_allclose(widths, TILE_UM * scale, rtol=0.02)  # spot_diameter_fullres
    np.testing.assert_allclose(np.sort(circles.get_array()),
                               np.sort(table[:, "EPCAM"].X.ravel()), rtol=1e-5)
    plt.close("all")


def test_squidpy_draws_the_predictions_where_the_tiles_are(predicted):
    import squidpy as sq

    table = predicted.tables["pred"]
    _, record = _record(table)
    scale = record["scalefactors"]["tissue_hires_scalef"]
    sq.pl.spatial_scatter(table, color="EPCAM")
    ax = plt.gcf().axes[0]
    assert ax.images[0].get_array().shape[:2] == record["images"]["hires"].shape[:2]
    scatter = ax.collections[0]  # circles spot_diameter_fullres wide, in the table's order
    np.testing.assert_allclose(_patch_centres(scatter),
                               np.asarray(table.obsm["spatial"]) * scale, atol=0.5)
    np.testing.assert_allclose(scatter.get_array(), table[:, "EPCAM"].X.ravel(), rtol=1e-5)
    plt.close("all")


def test_spots_takes_a_predicted_table_and_draws_it_over_its_image(predicted):
    table = predicted.tables["pred"]
    ax = hx.pl.spots(table, color="EPCAM")
    # the stored image in um: 600 px at 2 px/um span 300 um
    assert ax.images[0].get_extent() == pytest.approx((0, SIZE_UM, SIZE_UM, 0))
    squares = ax.collections[0]
    assert len(squares.get_paths()) == table.n_obs
    centres = np.array([path.vertices[:4].mean(axis=0) for path in squares.get_paths()])
    np.testing.assert_allclose(centres, np.asarray(table.obsm["spatial"]), atol=1e-6)
    np.testing.assert_allclose(squares.get_array(), table[:, "EPCAM"].X.ravel(), rtol=1e-6)
    assert _colourbar_label(squares) == "EPCAM (log1p)"
    plt.close("all")


def test_colourbars_name_what_they_show(predicted):
    ax = hx.pl.spots(predicted, "spots", color="EPCAM")  # X holds the raw counts
    assert _colourbar_label(ax.collections[0]) == "EPCAM (counts)"
    ax = hx.pl.spots(predicted, "spots", color="EPCAM", layer="counts")
    assert _colourbar_label(ax.collections[0]) == "EPCAM (counts)"
    ax = hx.pl.spots(predicted, "spots", color="array_row")
    assert _colourbar_label(ax.collections[0]) == "array_row"
    plt.close("all")


def test_spots_region_crops_image_spots_and_axes(predicted):
    region = (50.0, 60.0, 200.0, 160.0)
    ax = hx.pl.spots(predicted, "spots", color="EPCAM", region=region)
    assert ax.get_xlim() == pytest.approx((50, 200))
    assert ax.get_ylim() == pytest.approx((160, 60))  # y downwards
    assert ax.images[0].get_extent() == pytest.approx((50, 200, 160, 60))
    shapes = predicted.shapes["spots"]
    inside = shapes.cx[50:200, 60:160]
    assert 0 < len(inside) < len(shapes)
    assert len(ax.collections[0].get_paths()) == len(inside)
    # a predicted table is cropped the same way
    table = predicted.tables["pred"]
    ax = hx.pl.spots(table, color="EPCAM", region=region)
    assert ax.get_xlim() == pytest.approx((50, 200))
    x, y = np.asarray(table.obsm["spatial"]).T
    half = TILE_UM / 2
    touching = (x + half >= 50) & (x - half <= 200) & (y + half >= 60) & (y - half <= 160)
    assert len(ax.collections[0].get_paths()) == int(touching.sum())
    plt.close("all")


@bad_input("obscure error", "`hx.pl.spots(..., region=(x_max, y_min, x_min, y_max))` (corners "
           "swapped or not four numbers)", says="ValueError: region must be (x_min, y_min, "
           "x_max, y_max) in um with x_min < x_max", fix="give the crop's corners in that order")
def test_a_bad_region_is_named(predicted):
    for region in [(200, 0, 50, 100), (0, 0, 100), "all"]:
        with pytest.raises(ValueError, match="x_min < x_max"):
            hx.pl.spots(predicted, "spots", region=region)
    plt.close("all")


def _maps(figure):
    return [ax for ax in figure.axes if ax.get_title()]


def test_prediction_shares_one_colour_scale_and_shows_a_scale_bar(predicted):
    figure = hx.pl.prediction(predicted, "pred", "table", genes=GENES, scale_bar_um=50)
    maps = _maps(figure)
    assert [ax.get_title() for ax in maps] == ["EPCAM: predicted", "EPCAM: measured",
                                               "COL1A1: predicted", "COL1A1: measured"]
    for pred_ax, truth_ax in (maps[:2], maps[2:]):
        pred_values = pred_ax.collections[0].get_array()
        truth_values = truth_ax.collections[0].get_array()
        both = np.concatenate([pred_values.compressed(), truth_values.compressed()])
        assert pred_ax.collections[0].get_clim() == truth_ax.collections[0].get_clim()
        assert pred_ax.collections[0].get_clim() == pytest.approx((both.min(), both.max()))
        assert _colourbar_label(pred_ax.collections[0]).endswith("(log1p)")
        assert _colourbar_label(truth_ax.collections[0]).endswith("(log1p)")
    assert _colourbar_label(maps[0].collections[0]) == "EPCAM (log1p)"
    for ax in maps:
        bars = [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
        assert len(bars) == 1
        bar = bars[0].size_bar.get_children()[0]
        # axes are in um: 50 um is 50 data units, i.e. 50 / mpp pixels of the image shown
        image = ax.images[0]
        x0, x1 = image.get_extent()[:2]
        shown_mpp = (x1 - x0) / image.get_array().shape[1]
        assert bar.get_width() / shown_mpp == pytest.approx(50 / shown_mpp)
        assert bar.get_width() == pytest.approx(50)
        assert bars[0].txt_label.get_text() == "50 um"
    separate = _maps(hx.pl.prediction(predicted, "pred", "table", genes="EPCAM",
                                      shared_scale=False, scale_bar=False))
    assert separate[0].collections[0].get_clim() != separate[1].collections[0].get_clim()
    assert not any(isinstance(a, AnchoredSizeBar) for ax in separate for a in ax.artists)
    plt.close("all")


def test_prediction_of_a_table_on_its_own_draws_maps_over_its_image(predicted):
    table, spots = predicted.tables["pred"], predicted.tables["table"]
    figure = hx.pl.prediction(table, "X", spots, genes="EPCAM")
    pred_ax, truth_ax = _maps(figure)
    assert pred_ax.images[0].get_extent() == pytest.approx((0, SIZE_UM, SIZE_UM, 0))
    assert len(pred_ax.collections[0].get_paths()) == table.n_obs
    assert len(truth_ax.collections[0].get_paths()) == spots.n_obs
    np.testing.assert_allclose(pred_ax.collections[0].get_array(), table[:, "EPCAM"].X.ravel(),
                               rtol=1e-6)
    assert pred_ax.collections[0].get_clim() == truth_ax.collections[0].get_clim()
    assert _colourbar_label(truth_ax.collections[0]) == "EPCAM (log1p)"
    # default length: a round number near a fifth of the 300 um width
    bar = [a for a in pred_ax.artists if isinstance(a, AnchoredSizeBar)][0]
    assert bar.txt_label.get_text() == "50 um"
    plt.close("all")


def test_per_cell_predictions_carry_the_layout_and_draw_where_the_cells_are(synthetic):
    import squidpy as sq

    from histoexpr.models import PatchClassifier, PatchEnsemble

    sdata = synthetic(seed=2, size_um=100, transcripts=False, spots=False)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = PatchEnsemble.of([PatchClassifier(in_channels=1, n_classes=3, patch_px=16, width=4,
                                              depth=2)]).eval()
    model.metadata = {"model": "patch_classifier", "mpp": 0.5, "grid_um": 1.0,
                      "image_key": "dapi", "classes": {"background": 1, "a": 2, "b": 3}}
    hx.tl.predict(model, sdata, device="cpu", cells="cells", key_added="per_cell")
    table = sdata.tables["per_cell_cells"]
    library_id, record = _record(table)
    assert library_id == "dapi"
    assert record["images"]["hires"].shape == (200, 200, 3)  # 100 um at 0.5 um/px, grey as RGB
    scale = record["scalefactors"]["tissue_hires_scalef"]
    assert scale == pytest.approx(2.0)
    assert 1 < record["scalefactors"]["spot_diameter_fullres"] < 20  # cells, in um
    sq.pl.spatial_scatter(table, color="a")
    centres = _patch_centres(plt.gcf().axes[0].collections[0])
    np.testing.assert_allclose(centres, np.asarray(table.obsm["spatial"]) * scale, atol=0.5)
    plt.close("all")


def test_spots_takes_a_table_without_an_image(predicted):
    table = predicted.tables["table"]  # spots: obsm["spatial"] in um, no uns["spatial"]
    ax = hx.pl.spots(table, color="EPCAM")
    assert not ax.images
    circles = ax.collections[0]
    np.testing.assert_allclose(_patch_centres(circles), np.asarray(table.obsm["spatial"]),
                               atol=1e-6)
    # circles a little smaller than the spacing (40 um pitch): they do not overlap
    widths = np.array([np.ptp(path.vertices[:, 0]) for path in circles.get_paths()])
    assert 20 < widths.min() and widths.max() < 40
    assert _colourbar_label(circles) == "EPCAM (counts)"
    plt.close("all")
