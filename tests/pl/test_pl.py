"""Plots draw the right things in the right places (micrometre coordinates, values, legends)."""

from __future__ import annotations

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from conftest import make_disk_section
from shapely.geometry import Point
from spatialdata.models import ShapesModel, TableModel

import histoexpr as hx


@pytest.fixture
def tiled():
    sdata = make_disk_section()
    hx.pp.detect_tissue(sdata, "he", mpp=2.0)
    hx.pp.tile(sdata, "he", size_px=40, mpp=0.5, min_tissue=0.1)
    return sdata


def add_spots(sdata, values):
    centres = np.array([[50.0, 100.0], [100.0, 100.0], [150.0, 100.0]])
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame({"radius": [10.0] * 3},
                         geometry=[Point(x, y) for x, y in centres], index=[0, 1, 2])
    )
    table = AnnData(np.asarray(values, dtype=np.float32).reshape(3, 1),
                    obs=pd.DataFrame({"spot_id": [0, 1, 2], "region": "spots",
                                      "kind": pd.Categorical(["a", "b", "a"])},
                                     index=["s0", "s1", "s2"]),
                    var=pd.DataFrame(index=["GENE1"]))
    table.obs["region"] = table.obs["region"].astype("category")
    sdata.shapes["spots"] = shapes
    sdata.tables["table"] = TableModel.parse(table, region="spots", region_key="region",
                                             instance_key="spot_id")
    return sdata


def test_tiles_are_drawn_in_micrometres_over_the_image(tiled, tmp_path):
    path = tmp_path / "tiles.png"
    ax = hx.pl.tiles(tiled, "he_tiles", color="tissue_fraction", save=path)
    assert path.stat().st_size > 0
    # the 400 px image at 0.5 um/px spans 200 um, drawn with y downwards
    assert ax.images[0].get_extent() == pytest.approx((0, 200, 200, 0))
    collection = ax.collections[0]
    n_tiles = tiled.tables["he_tiles_table"].n_obs
    assert len(collection.get_paths()) == n_tiles
    np.testing.assert_allclose(np.sort(collection.get_array()),
                               np.sort(tiled.tables["he_tiles_table"].obs["tissue_fraction"]))
    plt.close("all")


def test_tile_outlines_without_colour(tiled):
    ax = hx.pl.tiles(tiled, "he_tiles")
    assert ax.collections[0].get_array() is None
    plt.close("all")


def test_spots_coloured_by_gene_follow_the_values():
    sdata = add_spots(make_disk_section(), [0.0, 5.0, 10.0])
    ax = hx.pl.spots(sdata, "spots", color="GENE1")
    collection = ax.collections[0]
    np.testing.assert_allclose(collection.get_array(), [0.0, 5.0, 10.0])
    # the largest value is drawn in the top colour of the colormap
    ax.figure.canvas.draw()
    colours = collection.get_facecolors()
    assert np.allclose(colours[2][:3], plt.get_cmap("viridis")(1.0)[:3], atol=0.01)
    plt.close("all")


def test_spots_coloured_by_category_get_a_legend():
    sdata = add_spots(make_disk_section(), [1, 2, 3])
    ax = hx.pl.spots(sdata, "spots", color="kind")
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["a", "b"]
    faces = ax.collections[0].get_facecolors()
    assert np.allclose(faces[0], faces[2]) and not np.allclose(faces[0], faces[1])
    plt.close("all")


def test_unknown_colour_is_a_clear_error():
    sdata = add_spots(make_disk_section(), [1, 2, 3])
    with pytest.raises(KeyError, match="neither a column"):
        hx.pl.spots(sdata, "spots", color="NOPE")
    with pytest.raises(KeyError, match="no element 'spots2'"):
        hx.pl.spots(sdata, "spots2")


def test_outlines_are_white_over_fluorescence():
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    sdata = add_spots(make_disk_section(), [1, 2, 3])
    dapi = np.zeros((1, 400, 400), dtype=np.uint16)
    dapi[0, 100:300, 100:300] = 4000
    sdata.images["dapi"] = Image2DModel.parse(
        dapi, dims=("c", "y", "x"), transformations={"global": Scale([0.5, 0.5], axes=("y", "x"))})
    ax = hx.pl.spots(sdata, "spots", image_key="dapi")
    assert ax.images[0].get_array().ndim == 2  # drawn in grey
    assert np.allclose(ax.collections[0].get_edgecolor()[0], (1, 1, 1, 1))
    plt.close("all")
