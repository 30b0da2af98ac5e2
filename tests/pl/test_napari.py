"""The napari view: layers in micrometres with the right data, an overlay drawn where the data
says, the plugin's reader and colour widget. Runs headless under Xvfb (``xvfb-run -a pytest``)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and sys.platform.startswith(
        "linux"):
    pytest.skip("no display: run the napari tests under a virtual one (xvfb-run -a pytest)",
                allow_module_level=True)
napari = pytest.importorskip("napari",
                             reason="napari is not installed (pip install 'histoexpr[napari]')")
pytest.importorskip("napari_spatialdata", reason="napari-spatialdata is not installed")

from conftest import make_disk_section  # noqa: E402

import histoexpr as hx  # noqa: E402
from histoexpr.pl._napari_plugin import ColorWidget, get_reader  # noqa: E402

VIRIDIS_LOW, VIRIDIS_HIGH = (68, 1, 84), (253, 231, 37)


@pytest.fixture(scope="module")
def section():
    """A 400 um synthetic section with tissue, grid tiles and one marked spot (index 7)."""
    sdata = hx.datasets.synthetic_section(size_um=400, seed=1)
    hx.pp.tile(sdata, "he", size_um=56.0, mpp=0.5)
    table = sdata.tables["table"]
    table.obs["marked"] = (table.obs["spot_id"].to_numpy() == 7).astype(float)
    return sdata


@pytest.fixture
def viewers():
    opened = []
    yield opened
    for viewer in opened:
        viewer.close()


def test_layers_are_in_micrometres_with_the_sections_data(section, viewers):
    gene = str(section.tables["table"].var_names[0])
    viewer = hx.pl.napari(section, "spots", color=gene, show=False)
    viewers.append(viewer)
    names = {layer.name for layer in viewer.layers}
    assert names == {*section.images, *section.labels, *section.points, *section.shapes}

    he = viewer.layers["he"]
    assert he.rgb and he.data.shape == (800, 800, 3)
    # the centre of pixel (row 100, col 200) of the 0.5 um/px image lies at y = 50.25, x = 100.25
    np.testing.assert_allclose(he.data_to_world((100, 200)), (50.25, 100.25))
    tissue = viewer.layers["he_tissue"]  # a coarser label map lies on the same micrometres
    mpp = hx.io.get_pixel_size(section, "he_tissue")
    np.testing.assert_allclose(tissue.data_to_world((10, 20)), (10.5 * mpp, 20.5 * mpp))

    spots, shapes = viewer.layers["spots"], section.shapes["spots"]
    np.testing.assert_allclose(spots.data, np.c_[shapes.geometry.y, shapes.geometry.x])
    np.testing.assert_allclose(spots.size, 2 * shapes["radius"])  # diameters in um
    expression = section.tables["table"][:, gene].X
    expression = np.asarray(expression.todense() if hasattr(expression, "todense") else expression)
    np.testing.assert_allclose(spots.features[gene], expression.ravel())
    top, bottom = int(np.argmax(expression)), int(np.argmin(expression))
    np.testing.assert_allclose(spots.face_color[top][:3], np.array(VIRIDIS_HIGH) / 255, atol=0.01)
    np.testing.assert_allclose(spots.face_color[bottom][:3], np.array(VIRIDIS_LOW) / 255, atol=0.01)

    tiles = viewer.layers["he_tiles"]
    assert len(tiles.data) == section.tables["he_tiles_table"].n_obs
    corners = np.concatenate([np.asarray(polygon) for polygon in tiles.data])
    assert corners.min() >= 0 and corners.max() <= 400  # tile corners in um, inside the section
    transcripts = viewer.layers["transcripts"]
    assert len(transcripts.data) == len(section.points["transcripts"])
    assert set(transcripts.features["gene"]) <= set(section.tables["table"].var_names)


def test_pyramids_are_shown_as_multiscale_images(viewers):
    sdata = make_disk_section(multiscale=True)
    viewer = hx.pl.napari(sdata, show=False)
    viewers.append(viewer)
    he = viewer.layers["he"]
    assert he.multiscale and [level.shape[:2] for level in he.data] == [(400, 400), (200, 200),
                                                                        (100, 100)]
    np.testing.assert_allclose(he.data_to_world((399, 399)), (199.75, 199.75))


def test_screenshot_shows_the_marked_spot_where_it_is(section, viewers):
    viewer = hx.pl.napari(section, "spots", color="marked", images=["he"], labels=[], points=[],
                          show=True)
    viewers.append(viewer)
    viewer.layers["he_tiles"].visible = False
    viewer.layers["spots"].opacity = 1.0
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    centres = section.shapes["spots"].geometry
    marked = int(np.flatnonzero(section.shapes["spots"].index == 7)[0])

    def pixel(x_um, y_um):
        """The screenshot pixel at a world position in um, through the camera."""
        centre_y, centre_x = viewer.scene.camera.center[-2:]
        row = (y_um - centre_y) * viewer.scene.camera.zoom + shot.shape[0] / 2
        col = (x_um - centre_x) * viewer.scene.camera.zoom + shot.shape[1] / 2
        return shot[int(round(row)), int(round(col))]

    for i, point in enumerate(centres):
        expected = VIRIDIS_HIGH if i == marked else VIRIDIS_LOW
        np.testing.assert_allclose(pixel(point.x, point.y), expected, atol=12)
    # between the spots the H&E shows through: not the overlay's colours
    gap = pixel(centres.iloc[marked].x + 40, centres.iloc[marked].y)
    assert np.abs(gap - VIRIDIS_HIGH).max() > 60 and np.abs(gap - VIRIDIS_LOW).max() > 60


def test_reader_opens_a_written_store(section, tmp_path, viewers):
    path = tmp_path / "section.zarr"
    section.write(path)
    assert get_reader(str(path)) is not None
    assert get_reader(str(tmp_path / "slide.svs")) is None
    assert get_reader(str(tmp_path)) is None  # a folder that is no .zarr store
    viewer = napari.Viewer(show=False)
    viewers.append(viewer)
    viewer.open(str(path), plugin="histoexpr")
    names = {layer.name for layer in viewer.layers}
    assert {"he", "dapi", "he_tissue", "spots", "he_tiles", "transcripts"} <= names
    np.testing.assert_allclose(viewer.layers["he"].data_to_world((100, 200)), (50.25, 100.25))
    assert viewer.layers["he_tiles"].metadata["histoexpr_choices"][:1] == ["tissue_fraction"]


def test_widget_switches_the_colour_and_its_range(section, viewers):
    viewer = hx.pl.napari(section, show=False)
    viewers.append(viewer)
    # the manifest's widget opens from the Plugins menu, with the viewer passed in
    _, widget = viewer.window.add_plugin_dock_widget("histoexpr", "Colour spots and tiles")
    assert isinstance(widget, ColorWidget)  # napari passes its viewer behind a proxy
    assert set(widget.layer.choices) == {"spots", "he_tiles"}
    widget.layer.value = "spots"
    assert "marked" in widget.color.choices and section.tables["table"].var_names[0] in \
        widget.color.choices
    widget.color.value = "marked"
    spots = viewer.layers["spots"]
    np.testing.assert_allclose(spots.features["marked"], section.tables["table"].obs["marked"])
    assert (widget.low.value, widget.high.value) == (0.0, 1.0)
    marked = int(np.flatnonzero(section.shapes["spots"].index == 7)[0])
    np.testing.assert_allclose(spots.face_color[marked][:3], np.array(VIRIDIS_HIGH) / 255,
                               atol=0.01)
    widget.high.value = 2.0  # the marked spot is now mid-range: no longer the top colour
    assert spots.face_contrast_limits == (0.0, 2.0)
    assert not np.allclose(spots.face_color[marked][:3], np.array(VIRIDIS_HIGH) / 255, atol=0.05)

    widget.layer.value = "he_tiles"
    widget.color.value = "tissue_fraction"
    fractions = section.tables["he_tiles_table"].obs["tissue_fraction"].to_numpy()
    np.testing.assert_allclose(viewer.layers["he_tiles"].features["tissue_fraction"], fractions)
    assert viewer.layers["he_tiles"].face_contrast_limits == pytest.approx(
        (fractions.min(), fractions.max()))
    assert widget.low.value == pytest.approx(fractions.min(), abs=0.01)  # shown to 2 decimals


def test_unknown_colour_fails_before_a_window_opens(section):
    with pytest.raises(KeyError, match="NOPE"):
        hx.pl.napari(section, "spots", color="NOPE", show=False)
    with pytest.raises(KeyError, match="No table annotating"):
        hx.pl.napari(section, color="NOPE", show=False)
