"""Tissue detection, tiling and the tile dataset, checked against the disk section's geometry."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import pickle

import numpy as np
import pytest
import torch
from _catalogue import bad_input
from conftest import make_disk_section, without_pixel_size

import histoexpr as hx

# make_disk_section(): 400 x 400 px at 0.5 um/px; the disk's centre is the image centre, its
# radius 0.35 * 400 px. In micrometres (pixel i covers [i * mpp, (i + 1) * mpp]):
MPP = 0.5
SIZE_PX = 400
CENTRE_UM = ((SIZE_PX - 1) / 2 + 0.5) * MPP  # 100 um, on both axes
RADIUS_UM = 0.35 * SIZE_PX * MPP  # 70 um


def true_disk(shape: tuple[int, int], mpp: float, offset=(0.0, 0.0)) -> np.ndarray:
    """Pixels of a raster (pixel size ``mpp``) whose centre lies in the disk."""
    ys = offset[1] + (np.arange(shape[0]) + 0.5) * mpp
    xs = offset[0] + (np.arange(shape[1]) + 0.5) * mpp
    return (ys[:, None] - CENTRE_UM) ** 2 + (xs[None, :] - CENTRE_UM) ** 2 <= RADIUS_UM**2


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def add_exact_tissue(sdata, key: str = "he_tissue") -> np.ndarray:
    """The disk itself as the tissue map, on the image's pixel grid; returns the mask."""
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import Scale

    mask = true_disk((SIZE_PX, SIZE_PX), MPP)
    sdata.labels[key] = Labels2DModel.parse(
        mask.astype(np.uint8), dims=("y", "x"),
        transformations={"global": Scale([MPP, MPP], axes=("y", "x"))},
    )
    return mask


def fluorescence_section(dtype=np.uint16):
    """One channel: bright where the H&E disk is stained, dark elsewhere (like DAPI)."""
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    rgb = np.asarray(make_disk_section().images["he"].data)
    signal = 255 - rgb[1].astype(np.float64)  # about 105 on tissue, 10 on glass
    if dtype == np.uint16:
        signal = signal * 200
    image = Image2DModel.parse(signal.astype(dtype)[None], dims=("c", "y", "x"),
                               transformations={"global": Scale([MPP, MPP], axes=("y", "x"))})
    return SpatialData(images={"dapi": image})


def tiles_frame(sdata, key="he_tiles"):
    table = sdata.tables[f"{key}_table"]
    return sdata.shapes[key], table


# --------------------------------------------------------------------------------------------
# label maps through read_region
# --------------------------------------------------------------------------------------------


def test_read_region_reads_label_maps_by_nearest_neighbour(disk_section):
    mask = add_exact_tissue(disk_section)
    levels = hx.io.image_levels(disk_section, "he_tissue")
    assert len(levels) == 1 and levels[0].mpp == MPP
    assert hx.io.get_pixel_size(disk_section, "he_tissue") == MPP
    full = hx.io.read_region(disk_section, "he_tissue", (0, 0, 200, 200))
    assert full.shape == (SIZE_PX, SIZE_PX) and full.dtype == np.uint8
    np.testing.assert_array_equal(full, mask)
    coarse = hx.io.read_region(disk_section, "he_tissue", (0, 0, 200, 200), mpp=2.0)
    assert coarse.shape == (100, 100)
    assert set(np.unique(coarse)) == {0, 1}  # no interpolated values
    assert iou(coarse > 0, true_disk((100, 100), 2.0)) > 0.97
    # outside the map: refused, or the fill value where asked for (outside="fill")
    with pytest.raises(ValueError, match="wholly outside"):
        hx.io.read_region(disk_section, "he_tissue", (-20, -20, -10, -10), fill=0)
    outside = hx.io.read_region(disk_section, "he_tissue", (-20, -20, -10, -10), fill=0,
                                outside="fill")
    assert outside.shape == (20, 20) and not outside.any()
    with pytest.raises(KeyError, match="no image or label map 'nope'"):
        hx.io.read_region(disk_section, "nope", (0, 0, 10, 10))


# --------------------------------------------------------------------------------------------
# detect_tissue
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mpp", [2.0, 8.0])
def test_detect_tissue_brightfield_matches_disk(disk_section, mpp, caplog):
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        assert hx.pp.detect_tissue(disk_section, mpp=mpp) is None
    assert "Adding `sdata.labels['he_tissue']`" in caplog.text
    assert "brightfield" in caplog.text
    labels = disk_section.labels["he_tissue"]
    assert labels.dims == ("y", "x")
    assert hx.io.get_pixel_size(disk_section, "he_tissue") == pytest.approx(mpp)
    mask = np.asarray(labels)
    assert set(np.unique(mask)) == {0, 1}  # one piece
    assert iou(mask > 0, true_disk(mask.shape, mpp)) > 0.9


def test_detect_tissue_keeps_the_image_offset():
    from spatialdata.transformations import Scale, Sequence, Translation, set_transformation

    sdata = make_disk_section()
    set_transformation(sdata.images["he"], Sequence([
        Scale([MPP, MPP], axes=("y", "x")), Translation([1000.0, -50.0], axes=("x", "y"))
    ]), "global")
    hx.pp.detect_tissue(sdata, mpp=2.0)
    level = hx.io.image_levels(sdata, "he_tissue")[0]
    assert level.offset == pytest.approx((1000.0, -50.0))
    mask = np.asarray(sdata.labels["he_tissue"]) > 0
    # the disk sits at the same place relative to the image
    assert iou(mask, true_disk(mask.shape, 2.0)) > 0.9


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_detect_tissue_fluorescence_matches_disk(dtype, caplog):
    sdata = fluorescence_section(dtype)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        hx.pp.detect_tissue(sdata, "dapi", mpp=2.0)
    assert "fluorescence" in caplog.text
    mask = np.asarray(sdata.labels["dapi_tissue"]) > 0
    assert iou(mask, true_disk(mask.shape, 2.0)) > 0.9


def test_detect_tissue_dim_brightfield_is_not_taken_for_fluorescence(disk_section, caplog):
    # an under-exposed H&E (glass at ~40 % of full scale, as the squidpy mouse-brain crop): its
    # background is not bright, but it has no near-black background either: brightfield
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    rgb = np.asarray(disk_section.images["he"].data).astype(np.float64)
    disk_section.images["dim"] = Image2DModel.parse(
        (rgb * 0.42).astype(np.uint8), dims=("c", "y", "x"),
        transformations={"global": Scale([MPP, MPP], axes=("y", "x"))})
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        hx.pp.detect_tissue(disk_section, "dim", mpp=2.0)
    assert "as brightfield" in caplog.text and "near black" in caplog.text
    mask = np.asarray(disk_section.labels["dim_tissue"]) > 0
    assert iou(mask, true_disk(mask.shape, 2.0)) > 0.9


def test_detect_tissue_leaves_out_the_dark_frame_beyond_the_slide(disk_section, caplog):
    # a scanner's or CytAssist image's dark brown frame around the slide (not grey, so not
    # taken for ink), 30 px wide: never tissue, even though it absorbs more than any stain
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    rgb = np.array(disk_section.images["he"].data)
    frame = np.ones(rgb.shape[1:], dtype=bool)
    frame[30:-30, 30:-30] = False
    rgb[:, frame] = np.array([26, 17, 14], dtype=rgb.dtype)[:, None]
    disk_section.images["framed"] = Image2DModel.parse(
        rgb, dims=("c", "y", "x"), transformations={"global": Scale([MPP, MPP], axes=("y", "x"))})
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        hx.pp.detect_tissue(disk_section, "framed", mpp=2.0)
    assert "beyond the slide" in caplog.text
    mask = np.asarray(disk_section.labels["framed_tissue"]) > 0
    assert iou(mask, true_disk(mask.shape, 2.0)) > 0.9
    assert not mask[:7].any() and not mask[-7:].any()  # the frame (30 px = 7.5 px at 2 um/px)


def test_detect_tissue_explicit_kind_and_clean_up(disk_section, caplog):
    # an RGB fluorescence image read as such: the dark glass is background
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    rgb = np.asarray(disk_section.images["he"].data)
    disk_section.images["dark"] = Image2DModel.parse(
        255 - rgb, dims=("c", "y", "x"),
        transformations={"global": Scale([MPP, MPP], axes=("y", "x"))})
    hx.pp.detect_tissue(disk_section, "dark", kind="fluorescence", mpp=2.0)
    mask = np.asarray(disk_section.labels["dark_tissue"]) > 0
    assert iou(mask, true_disk(mask.shape, 2.0)) > 0.9
    # the disk (15,400 um²) is removed as debris by a larger min_area_um2, with a clear error
    with caplog.at_level(logging.INFO, logger="histoexpr"), \
            pytest.raises(ValueError, match="No tissue was found"):
        hx.pp.detect_tissue(disk_section, mpp=2.0, min_area_um2=20_000)
    assert "Removed 1 piece(s)" in caplog.text


def test_detect_tissue_fills_holes_and_counts_pieces():
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    image = np.full((3, 200, 300), 240, np.uint8)
    yy, xx = np.mgrid[:200, :300]
    ring = ((yy - 100) ** 2 + (xx - 80) ** 2 <= 60**2) & ((yy - 100) ** 2 + (xx - 80) ** 2 > 20**2)
    square = (yy >= 60) & (yy < 140) & (xx >= 190) & (xx < 270)
    image[:, ring | square] = np.array([200, 100, 170], np.uint8)[:, None]
    sdata = SpatialData(images={"he": Image2DModel.parse(
        image, dims=("c", "y", "x"), transformations={"global": Scale([1.0, 1.0], ("y", "x"))})})
    hx.pp.detect_tissue(sdata, mpp=2.0)
    labels = np.asarray(sdata.labels["he_tissue"])
    assert labels.max() == 2  # two pieces, numbered 1 and 2
    assert labels[50, 40] > 0  # the ring's hole (centre at x=80, y=100 um) is filled
    hx.pp.detect_tissue(sdata, mpp=2.0, fill_holes=False, key_added="holes")
    assert sdata.labels["holes"][50, 40] == 0


def test_detect_tissue_errors(disk_section):
    with pytest.raises(KeyError, match="sdata.images has no element 'nope'"):
        hx.pp.detect_tissue(disk_section, "nope")
    with pytest.raises(ValueError, match="kind must be one of"):
        hx.pp.detect_tissue(disk_section, kind="he")
    with pytest.raises(ValueError, match="mpp must be a positive"):
        hx.pp.detect_tissue(disk_section, mpp=0)
    with pytest.raises(ValueError, match="Pass kind='fluorescence'"):
        hx.pp.detect_tissue(fluorescence_section(), "dapi", kind="brightfield")
    blank = make_disk_section(radius_frac=0.0)  # glass and noise: every pixel 245 at 8 um/px
    with pytest.raises(ValueError, match="is blank: every pixel is 245"):
        hx.pp.detect_tissue(blank)
    hx.pp.detect_tissue(disk_section)
    with pytest.raises(KeyError, match="overwrite=True"):
        hx.pp.detect_tissue(disk_section)
    hx.pp.detect_tissue(disk_section, mpp=4.0, overwrite=True)
    assert hx.io.get_pixel_size(disk_section, "he_tissue") == 4.0


# --------------------------------------------------------------------------------------------
# tile: grid
# --------------------------------------------------------------------------------------------


def expected_fractions(mask: np.ndarray, size_px: int, stride_px: int) -> np.ndarray:
    """Tissue fraction of every grid tile (row-major), from the exact mask on the tile grid."""
    n = (mask.shape[0] - size_px) // stride_px + 1
    return np.array([[mask[r * stride_px: r * stride_px + size_px,
                           c * stride_px: c * stride_px + size_px].mean()
                      for c in range(n)] for r in range(n)])


def test_tile_grid_matches_disk_geometry(disk_section):
    mask = add_exact_tissue(disk_section)
    hx.pp.tile(disk_section, size_px=20, min_tissue=0.5)
    shapes, table = tiles_frame(disk_section)
    obs = table.obs
    size_um = 20 * MPP
    # every tile the exact geometry keeps, and only those, with its exact tissue fraction
    expected = expected_fractions(mask, 20, 20)
    kept = np.argwhere(expected >= 0.5)
    assert len(obs) == len(kept) == len(shapes)
    np.testing.assert_array_equal(obs[["grid_row", "grid_col"]].to_numpy(), kept)
    np.testing.assert_allclose(obs["tissue_fraction"], expected[kept[:, 0], kept[:, 1]], atol=1e-6)
    assert (obs["tissue_fraction"] == 1).sum() == (expected == 1).sum() > 0
    # centres: the grid's, and within the disk enlarged by half a tile diagonal
    centres = table.obsm["spatial"]
    np.testing.assert_allclose(centres, (kept[:, ::-1] + 0.5) * size_um)
    distance = np.hypot(*(centres - CENTRE_UM).T)
    assert (distance <= RADIUS_UM + size_um * np.sqrt(2) / 2).all()
    # the shapes: squares of size_um around the centres, indexed by tile_id
    np.testing.assert_array_equal(shapes.index, obs["tile_id"])
    np.testing.assert_array_equal(obs.index, obs["tile_id"].astype(str))
    bounds = shapes.geometry.bounds.to_numpy()
    np.testing.assert_allclose(bounds, np.column_stack([centres - size_um / 2,
                                                        centres + size_um / 2]))
    assert table.uns["tiles"] == {"image_key": "he", "size_px": 20, "mpp": MPP,
                                  "size_um": size_um, "stride_um": size_um, "centres": None,
                                  "min_tissue": 0.5}
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "he_tiles" and attrs["instance_key"] == "tile_id"


def test_tile_fraction_threshold_and_overlap(disk_section):
    mask = add_exact_tissue(disk_section)
    # a stride of half a tile: (400 - 20) / 10 + 1 = 39 tiles a side
    hx.pp.tile(disk_section, size_px=20, stride_px=10, min_tissue=0.0, key_added="all")
    assert len(disk_section.shapes["all"]) == 39 * 39
    assert disk_section.tables["all_table"].uns["tiles"]["stride_um"] == 5.0
    hx.pp.tile(disk_section, size_px=20, stride_px=10, min_tissue=1.0, key_added="full")
    expected = expected_fractions(mask, 20, 10)
    assert len(disk_section.shapes["full"]) == (expected == 1).sum()
    # size_um with stride in um: the same tiles
    hx.pp.tile(disk_section, size_um=10.0, stride_um=5.0, min_tissue=1.0, key_added="full_um")
    np.testing.assert_allclose(disk_section.tables["full_um_table"].obsm["spatial"],
                               disk_section.tables["full_table"].obsm["spatial"])


def test_tile_old_names_still_work_with_a_future_warning(disk_section):
    add_exact_tissue(disk_section)
    hx.pp.tile(disk_section, size_px=20, stride_px=10, min_tissue=1.0, key_added="new")
    with (pytest.warns(FutureWarning, match="'size' is deprecated.*use 'size_px'"),
          pytest.warns(FutureWarning, match="'stride' is deprecated.*use 'stride_px'")):
        hx.pp.tile(disk_section, size=20, stride=10, min_tissue=1.0, key_added="old")
    np.testing.assert_array_equal(disk_section.tables["old_table"].obsm["spatial"],
                                  disk_section.tables["new_table"].obsm["spatial"])
    # the old stride was in the unit of the size: um with size_um
    with pytest.warns(FutureWarning, match="use 'stride_um'"):
        hx.pp.tile(disk_section, size_um=10.0, stride=5.0, min_tissue=1.0, key_added="old_um")
    np.testing.assert_allclose(disk_section.tables["old_um_table"].obsm["spatial"],
                               disk_section.tables["new_table"].obsm["spatial"])
    assert "centers" not in inspect.signature(hx.pp.tile).parameters


@bad_input("obscure error", "a renamed option given twice, under its old and its new name "
           "(`hx.pp.tile(sdata, size=20, size_px=32)`), or a stride in pixels and in um",
           says="TypeError: ... got both 'size' (deprecated) and 'size_px'; pass only 'size_px' "
                "— before anything is written",
           fix="pass only the new name (docs/design.md, Names)")
def test_tile_refuses_an_option_given_twice(disk_section):
    add_exact_tissue(disk_section)
    with pytest.raises(TypeError, match="got both 'size'.*and 'size_px'; pass only 'size_px'"):
        hx.pp.tile(disk_section, size=20, size_px=32, key_added="both")
    with pytest.raises(ValueError, match="either in pixels .stride_px. or in um .stride_um."):
        hx.pp.tile(disk_section, size_px=20, stride_px=10, stride_um=5.0, key_added="both")
    assert "both" not in disk_section.shapes and "both_table" not in disk_section.tables


def test_tile_size_um_is_size_times_mpp(disk_section):
    add_exact_tissue(disk_section)
    hx.pp.tile(disk_section, size_px=16, mpp=2.0, key_added="px")
    hx.pp.tile(disk_section, size_um=32.0, mpp=2.0, key_added="um")
    a, b = disk_section.tables["px_table"], disk_section.tables["um_table"]
    assert a.uns["tiles"] == {**b.uns["tiles"]}
    assert a.uns["tiles"]["size_px"] == 16 and a.uns["tiles"]["size_um"] == 32.0
    np.testing.assert_allclose(a.obsm["spatial"], b.obsm["spatial"])
    np.testing.assert_allclose(a.obs["tissue_fraction"], b.obs["tissue_fraction"])
    # size_um at the image's own pixel size: 40 px of 0.5 um
    hx.pp.tile(disk_section, size_um=20.0, key_added="native")
    assert disk_section.tables["native_table"].uns["tiles"]["size_px"] == 40
    # a size_um that is not a whole number of pixels: pixel size adjusted to cover it exactly
    hx.pp.tile(disk_section, size_um=30.0, mpp=4.0, key_added="odd")
    info = disk_section.tables["odd_table"].uns["tiles"]
    assert info["size_px"] == 8 and info["mpp"] * info["size_px"] == pytest.approx(30.0)


def test_tile_detects_tissue_when_no_map_exists(disk_section, caplog):
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        hx.pp.tile(disk_section, size_px=40, min_tissue=0.9)
    assert "detecting tissue" in caplog.text
    assert "he_tissue" in disk_section.labels
    assert "Dropped" in caplog.text and "Adding `sdata.shapes['he_tiles']`" in caplog.text
    centres = disk_section.tables["he_tiles_table"].obsm["spatial"]
    # 90 % tissue: the centre lies in the disk, up to the detection's pixel (8 um)
    assert (np.hypot(*(centres - CENTRE_UM).T) <= RADIUS_UM + 8).all()


def test_tile_at_coarser_mpp_reads_pyramid_level():
    sdata = make_disk_section(multiscale=True)
    add_exact_tissue(sdata)
    levels = hx.io.image_levels(sdata, "he")
    assert [level.mpp for level in levels] == [0.5, 1.0, 2.0]
    hx.pp.tile(sdata, size_px=10, mpp=2.0, min_tissue=0.0)
    table = sdata.tables["he_tiles_table"]
    assert len(table) == 10 * 10  # 200 um / 20 um
    dataset = hx.pp.TileDataset(sdata, "he_tiles")
    item = dataset[23]  # row 2, column 3
    assert table.obs["grid_row"].iloc[23] == 2 and table.obs["grid_col"].iloc[23] == 3
    level2 = np.asarray(levels[2].data)
    np.testing.assert_allclose(item["image"].numpy(),
                               level2[:, 20:30, 30:40] / 255, atol=1e-6)


# --------------------------------------------------------------------------------------------
# tile: centred on spots
# --------------------------------------------------------------------------------------------


def add_spots(sdata, xy_um: np.ndarray, *, in_pixels: bool = False, key: str = "spots"):
    import geopandas as gpd
    from shapely import points
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity, Scale

    coords = xy_um / MPP if in_pixels else xy_um
    frame = gpd.GeoDataFrame({"radius": np.full(len(xy_um), 5.0 / (MPP if in_pixels else 1))},
                             geometry=points(coords),
                             index=[f"spot{i}" for i in range(len(xy_um))])
    transform = Scale([MPP, MPP], axes=("x", "y")) if in_pixels else Identity()
    sdata.shapes[key] = ShapesModel.parse(frame, transformations={"global": transform})


@pytest.mark.parametrize("in_pixels", [False, True])
def test_tile_centred_on_spots(disk_section, in_pixels):
    add_exact_tissue(disk_section)
    xy = np.array([[100.0, 100.0], [60.0, 90.0], [150.0, 120.0], [10.0, 10.0], [190.0, 100.0]])
    add_spots(disk_section, xy, in_pixels=in_pixels)
    hx.pp.tile(disk_section, size_px=20, centres="spots", min_tissue=0.5)
    shapes, table = tiles_frame(disk_section)
    # spots 3 (a corner) and 4 (at x = 190 um, outside the disk of radius 70) are dropped
    assert list(table.obs["spot_id"]) == ["spot0", "spot1", "spot2"]
    np.testing.assert_allclose(table.obsm["spatial"], xy[:3])
    np.testing.assert_allclose(np.column_stack([shapes.centroid.x, shapes.centroid.y]), xy[:3])
    np.testing.assert_allclose(table.obs["tissue_fraction"], 1.0)
    assert "grid_row" not in table.obs
    assert table.uns["tiles"]["stride_um"] is None
    # a spot tile over the image's edge: read padded, at full size
    hx.pp.tile(disk_section, size_px=20, centres="spots", min_tissue=0.0, key_added="edge")
    item = hx.pp.TileDataset(disk_section, "edge")[3]
    assert item["image"].shape == (3, 20, 20)


# --------------------------------------------------------------------------------------------
# tile: errors
# --------------------------------------------------------------------------------------------


def test_tile_errors(disk_section):
    add_exact_tissue(disk_section)
    with pytest.raises(KeyError, match="sdata.images has no element 'nope'"):
        hx.pp.tile(disk_section, "nope")
    with pytest.raises(KeyError, match="sdata.labels has no element 'nope'"):
        hx.pp.tile(disk_section, tissue_key="nope")
    with pytest.raises(KeyError, match="sdata.shapes has no element 'nope'"):
        hx.pp.tile(disk_section, centres="nope")
    with pytest.raises(ValueError, match="not both"):
        hx.pp.tile(disk_section, size_px=20, size_um=10)
    with pytest.raises(ValueError, match="larger than the image"):
        hx.pp.tile(disk_section, size_px=500)
    with pytest.raises(ValueError, match=r"size_px must be an integer in \[1, inf\]"):
        hx.pp.tile(disk_section, size_px=0)
    with pytest.raises(ValueError, match="less than one pixel"):
        hx.pp.tile(disk_section, size_um=0.1)
    with pytest.raises(ValueError, match="stride_px must be a positive"):
        hx.pp.tile(disk_section, size_px=20, stride_px=0)
    with pytest.raises(ValueError, match="min_tissue must be a fraction"):
        hx.pp.tile(disk_section, min_tissue=1.5)
    # tiles of 180 um: none is half on tissue; the message gives the best fraction
    with pytest.raises(ValueError, match=r"the best tile has 0\.4\d\d"):
        hx.pp.tile(disk_section, size_px=360, min_tissue=0.5)
    add_spots(disk_section, np.array([[100.0, 100.0]]))
    with pytest.raises(ValueError, match="with centres, leave stride_px=None"):
        hx.pp.tile(disk_section, centres="spots", stride_px=10)
    hx.pp.tile(disk_section, size_px=40)
    with pytest.raises(KeyError, match="overwrite=True"):
        hx.pp.tile(disk_section, size_px=40)
    hx.pp.tile(disk_section, size_px=80, overwrite=True)
    assert disk_section.tables["he_tiles_table"].uns["tiles"]["size_px"] == 80


# --------------------------------------------------------------------------------------------
# TileDataset
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tiled(disk_section):
    add_exact_tissue(disk_section)
    hx.pp.tile(disk_section, size_px=32, mpp=1.0, min_tissue=0.2)
    table = disk_section.tables["he_tiles_table"]
    table.obs["label"] = np.where(table.obs["tissue_fraction"] == 1, "core", "edge")
    table.obs["is_full"] = table.obs["tissue_fraction"] == 1
    return disk_section


def test_tile_dataset_items_equal_read_region(tiled):
    table = tiled.tables["he_tiles_table"]
    dataset = hx.pp.TileDataset(tiled, "he_tiles",
                                obs_keys=["tissue_fraction", "grid_row", "label", "is_full"])
    assert len(dataset) == len(table) > 4
    assert "TileDataset(" in repr(dataset)
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        item = dataset[index]
        x, y = table.obsm["spatial"][index]
        expected = hx.io.read_region(tiled, "he", (x - 16, y - 16, x + 16, y + 16), mpp=1.0)
        assert item["image"].dtype == hx.pp._dataset.torch.float32
        assert tuple(item["image"].shape) == (3, 32, 32)
        np.testing.assert_allclose(item["image"].numpy(), expected / 255, atol=1e-7)
        assert item["index"] == index
        fraction = table.obs["tissue_fraction"].iloc[index]
        assert float(item["tissue_fraction"]) == pytest.approx(fraction)
        assert item["grid_row"].dtype == hx.pp._dataset.torch.int64
        assert item["label"] in ("core", "edge")
        assert bool(item["is_full"]) == (item["label"] == "core")
    assert dataset[-1]["index"] == len(dataset) - 1
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_tile_dataset_scales_uint16_and_applies_transform():
    sdata = fluorescence_section(np.uint16)
    hx.pp.tile(sdata, "dapi", size_px=20, min_tissue=0.5)
    dataset = hx.pp.TileDataset(sdata, "dapi_tiles", transform=lambda image: image * 2)
    table = sdata.tables["dapi_tiles_table"]
    x, y = table.obsm["spatial"][0]
    raw = hx.io.read_region(sdata, "dapi", (x - 5, y - 5, x + 5, y + 5))
    expected = 2 * raw.astype(np.float64) / 65535
    np.testing.assert_allclose(dataset[0]["image"].numpy(), expected, rtol=1e-6)
    assert dataset[0]["image"].shape == (1, 20, 20)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_tile_dataset_in_a_data_loader(tiled, num_workers):
    from torch.utils.data import DataLoader

    dataset = hx.pp.TileDataset(tiled, "he_tiles", obs_keys=["tissue_fraction", "label"])
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[1]["image"].numpy(), dataset[1]["image"].numpy())
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers)
    batches = list(loader)
    assert len(batches) == -(-len(dataset) // 4)
    first = batches[0]
    assert tuple(first["image"].shape) == (4, 3, 32, 32)
    assert first["image"].min() >= 0 and first["image"].max() <= 1
    assert first["index"].tolist() == [0, 1, 2, 3]
    assert tuple(first["tissue_fraction"].shape) == (4,)
    assert len(first["label"]) == 4
    np.testing.assert_allclose(first["image"][2].numpy(), dataset[2]["image"].numpy())


def test_tiles_survive_zarr_and_read_lazily(tiled, tmp_path):
    from spatialdata import read_zarr
    from torch.utils.data import DataLoader

    tiled.write(tmp_path / "section.zarr")
    back = read_zarr(tmp_path / "section.zarr")
    table = back.tables["he_tiles_table"]
    assert table.uns["tiles"]["size_px"] == 32 and table.uns["tiles"]["mpp"] == 1.0
    np.testing.assert_array_equal(back.labels["he_tissue"], tiled.labels["he_tissue"])
    dataset = pickle.loads(pickle.dumps(hx.pp.TileDataset(back, "he_tiles")))
    batch = next(iter(DataLoader(dataset, batch_size=3, num_workers=2)))
    expected = hx.pp.TileDataset(tiled, "he_tiles")[1]["image"]
    np.testing.assert_array_equal(batch["image"][1].numpy(), expected.numpy())


def test_tile_dataset_errors(tiled):
    with pytest.raises(KeyError, match="sdata.shapes has no element 'nope'"):
        hx.pp.TileDataset(tiled, "nope")
    with pytest.raises(KeyError, match="are not columns"):
        hx.pp.TileDataset(tiled, "he_tiles", obs_keys=["nope"])
    tiled.tables["he_tiles_table"].obs["image"] = 1.0
    with pytest.raises(ValueError, match="clash with the item's"):
        hx.pp.TileDataset(tiled, "he_tiles", obs_keys=["image"])
    with pytest.raises(TypeError, match="transform must be callable"):
        hx.pp.TileDataset(tiled, "he_tiles", transform="flip")
    del tiled.tables["he_tiles_table"].uns["tiles"]
    with pytest.raises(ValueError, match="make the tiles with hx.pp.tile"):
        hx.pp.TileDataset(tiled, "he_tiles")
    del tiled.tables["he_tiles_table"]
    with pytest.raises(KeyError, match="sdata.tables has no element 'he_tiles_table'"):
        hx.pp.TileDataset(tiled, "he_tiles")


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------


def read_cmu_small_region(path):
    """The slide via hx.io.read_wsi when it exists, else through tifffile."""
    if importlib.util.find_spec("histoexpr.io._wsi") is not None:
        sdata = hx.io.read_wsi(path)
        return sdata, next(iter(sdata.images.keys()))
    import tifffile
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    rgb = tifffile.imread(path)  # (2967, 2220, 3) uint8, 0.499 um/px
    image = Image2DModel.parse(np.moveaxis(rgb, -1, 0), dims=("c", "y", "x"),
                               transformations={"global": Scale([0.499, 0.499], ("y", "x"))})
    return SpatialData(images={"he": image}), "he"


@pytest.mark.realdata
def test_real_slide_tissue_and_tiles(data_dir):
    sdata, key = read_cmu_small_region(data_dir / "wsi" / "CMU-1-Small-Region.svs")
    hx.pp.detect_tissue(sdata, key)
    mask = np.asarray(sdata.labels[f"{key}_tissue"]) > 0
    # a strip of skin down the middle of the slide: about 40 % of it, seen on the thumbnail
    assert 0.3 < mask.mean() < 0.5
    # the left and right fifths are glass (but for a thin strand on the left and loose strands
    # of dermis reaching into the right one), the bottom centre tissue
    width = mask.shape[1]
    assert mask[:, : width // 5].mean() < 0.05 and mask[:, -width // 5:].mean() < 0.08
    assert mask[-12:-2, width // 3: width // 2].all()  # (the last row is half outside)
    hx.pp.tile(sdata, key, size_px=128, mpp=1.0, min_tissue=0.5)
    table = sdata.tables[f"{key}_tiles_table"]
    # the tiles hold about as much area as the tissue (half-covered tiles at its edge in or out)
    tissue_um2 = mask.mean() * np.prod(hx.io.image_levels(sdata, key)[0].shape_yx) * 0.499**2
    assert 0.7 < len(table) * 128**2 / tissue_um2 < 1.2
    # tiles on tissue are stained: darker than the white glass, and not blank
    dataset = hx.pp.TileDataset(sdata, f"{key}_tiles")
    for index in range(0, len(dataset), 7):
        image = dataset[index]["image"]
        assert tuple(image.shape) == (3, 128, 128)
        assert image.mean() < 0.85 and image.std() > 0.05


class _Counting(torch.utils.data.Dataset):
    """``n`` items whose reads are listed in ``reads``."""

    def __init__(self, n: int, reads: list) -> None:
        self.n, self.reads = n, reads

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        self.reads.append(index)
        return {"image": torch.full((1, 2, 2), index / 7), "index": index}


def test_cached_dataset_reads_each_item_once():
    reads = []
    cached = hx.pp.CachedDataset(_Counting(3, reads))
    first = [cached[i] for i in range(3)]
    second = [cached[i] for i in (2, 1, 0, 2)]
    assert reads == [0, 1, 2] and len(cached) == 3
    assert second[0]["image"].dtype == torch.float32 and second[0]["index"] == 2
    torch.testing.assert_close(second[0]["image"], first[2]["image"], atol=1e-3, rtol=0)


def test_cached_dataset_fill_reads_the_missing_items_in_order_once():
    reads = []
    cached = hx.pp.CachedDataset(_Counting(5, reads))
    lazily = [cached[i] for i in (3, 1)]
    cached.fill()
    cached.fill()  # nothing left to read
    assert reads == [3, 1, 0, 2, 4]
    again = [cached[i] for i in range(5)]
    assert reads == [3, 1, 0, 2, 4]
    assert torch.equal(again[3]["image"], lazily[0]["image"])
    assert [item["index"] for item in again] == list(range(5))
    assert all(torch.equal(item["image"], torch.full((1, 2, 2), i / 7).half().float())
               for i, item in enumerate(again))


@bad_input(
    "obscure error",
    "`hx.pp.CachedDataset` (the `cache=True` of `hx.tl.pretrain` and the patch classifier) over "
    "more tiles than the memory holds (the process swapped or was killed mid-epoch)",
    says="MemoryError: `Keeping 1000 tiles of shape (1, 2, 2) in memory (float16) would allocate "
    "507.8 KiB, more than the 100.0 KiB allowed (hx.settings.max_memory). Pass cache=False, "
    "...`, after one item is read, before the others",
    fix="pass cache=False (the tiles are read again every epoch) or train on fewer tiles",
)
def test_cached_dataset_estimates_its_memory_before_keeping_the_tiles():
    reads = []
    cached = hx.pp.CachedDataset(_Counting(1000, reads))
    hx.settings.max_memory = 100 * 1024  # 1000 items of 8 + 512 bytes do not fit
    with pytest.raises(MemoryError, match=r"Keeping 1000 tiles .* 507\.8 KiB.*cache=False"):
        cached.fill()
    assert reads == [0]  # the first item told the size; no other was read
    with pytest.raises(MemoryError, match="Keeping 999 tiles"):  # read lazily: the same check
        cached[5]
    assert reads == [0, 5]
    hx.settings.max_memory = 2**20
    cached.fill()  # fits now; what was kept is not read again
    assert reads == [0, 5, *(i for i in range(1, 1000) if i != 5)]
    assert [cached[i]["index"] for i in (0, 5, 999)] == [0, 5, 999]


@bad_input(
    "obscure error",
    "`hx.pp.tile` (or `hx.tl.predict`) with a tissue map that holds no tissue (empty, or made "
    "for another image)",
    says="ValueError: The tissue map 'he_tissue' has no tissue under any of the ... tiles: it is "
    "empty, or was made for another image or region (before: 'Lower min_tissue or use smaller "
    "tiles', which cannot help)",
    fix="detect the tissue again, or pass min_tissue=0",
)
def test_tile_names_an_empty_tissue_map(disk_section):
    from spatialdata.models import Labels2DModel

    hx.pp.detect_tissue(disk_section)
    tissue = disk_section.labels["he_tissue"]
    disk_section.labels["he_tissue"] = Labels2DModel.parse(
        np.zeros(tissue.shape, np.uint8), dims=("y", "x"), transformations=tissue.attrs["transform"]
    )
    with pytest.raises(ValueError, match="no tissue under any of the [0-9]+ tiles.*min_tissue=0"):
        hx.pp.tile(disk_section, size_px=32)
    assert "he_tiles" not in disk_section.shapes
    hx.pp.tile(disk_section, size_px=32, min_tissue=0)
    assert len(disk_section.shapes["he_tiles"]) > 0


@bad_input(
    "silently wrong",
    "`hx.pp.tile(sdata, 'he', mpp=0.5, size_um=...)` on an image parsed without a pixel size "
    "(the identity to 'global')",
    says="ValueError: sdata.images['he'] does not state its pixel size ... State it (before: "
    "read as 1 um/px, tiles of the wrong physical size)",
    fix="set a Scale([mpp, mpp]) transformation to 'global', or read the slide with "
    "hx.io.read_wsi(path, mpp=...)",
)
def test_a_physical_tile_size_on_an_image_without_a_pixel_size_is_refused():
    bare = _section_without_pixel_size()
    for options in ({"mpp": 0.5}, {"size_um": 20.0}, {"size_px": 16, "stride_um": 10.0}):
        with pytest.raises(ValueError, match=r"does not state its pixel size.*Scale\(\[mpp, mpp\]"):
            hx.pp.tile(bare, "he", min_tissue=0, **options)
    assert not bare.shapes and not bare.tables and not bare.labels
    # in pixels, as before; the tissue detection inside says that it reads the image as 1 um/px
    with pytest.warns(UserWarning, match=r"does not state its pixel size.*detect_tissue reads it "
                                         r"as 1 um/px: mpp=8, min_area_um2=5000"):
        hx.pp.tile(bare, "he", size_px=16, min_tissue=0)
    height, width = bare.images["he"].shape[-2:]
    assert len(bare.shapes["he_tiles"]) == (height // 16) * (width // 16)


def _section_without_pixel_size():
    """A synthetic H&E section (0.5 um/px) whose image was parsed without a pixel size."""
    from spatialdata import SpatialData

    image = hx.datasets.synthetic_section(seed=0, size_um=200, transcripts=False,
                                          spots=False).images["he"]
    return SpatialData(images={"he": without_pixel_size(image)})


@bad_input(
    "silently wrong",
    "`hx.pp.detect_tissue(sdata, 'he')` on an image parsed without a pixel size (the identity "
    "to 'global')",
    says="UserWarning: sdata.images['he'] does not state its pixel size ... detect_tissue reads "
    "it as 1 um/px (before: mpp=8 and min_area_um2 silently taken in pixels)",
    fix="set a Scale([mpp, mpp]) transformation to 'global', or read the slide with "
    "hx.io.read_wsi(path, mpp=...)",
)
def test_tissue_detection_on_an_image_without_a_pixel_size_says_it_reads_pixels():
    from spatialdata.transformations import Scale, set_transformation

    bare = _section_without_pixel_size()
    with pytest.warns(UserWarning, match=r"does not state its pixel size.*reads it as 1 um/px: "
                                         r"mpp=4, min_area_um2=100"):
        hx.pp.detect_tissue(bare, "he", mpp=4, min_area_um2=100)
    unstated = np.asarray(bare.labels["he_tissue"].values)
    assert 0 < (unstated > 0).mean() < 1
    # what the warning says: the same map as the same pixels stated at 1 um/px, without a
    # warning then (warnings are errors here)
    set_transformation(bare.images["he"], Scale([1.0, 1.0], axes=("y", "x")), "global")
    hx.pp.detect_tissue(bare, "he", mpp=4, min_area_um2=100, key_added="stated")
    np.testing.assert_array_equal(unstated, np.asarray(bare.labels["stated"].values))


@bad_input(
    "silently wrong",
    "`hx.pp.tile` after the image was replaced (another scan or section under the same key) "
    "while the tissue map detected on the old image stays under `f'{image_key}_tissue'`",
    says="ValueError: The tissue map 'he_tissue' was detected on other pixels than "
    "sdata.images['he'] holds now ... Detect the tissue again (hx.pp.detect_tissue(sdata, 'he', "
    "key_added='he_tissue', overwrite=True)), or pass tissue_key= of a map made from this image "
    "(before: the old image's tissue tiled, silently)",
    fix="detect the tissue again with overwrite=True, or pass tissue_key= of a map made from "
    "this image",
)
def test_tile_refuses_a_tissue_map_detected_on_other_pixels(disk_section):
    from histoexpr._core.image_facts import image_fingerprint

    hx.pp.detect_tissue(disk_section, min_area_um2=100.0)
    assert disk_section.labels["he_tissue"].attrs["tissue"] == {
        "image_key": "he", "image_fingerprint": image_fingerprint(disk_section, "he"),
        "mpp": 8.0, "kind": "brightfield", "min_area_um2": 100.0, "fill_holes": True,
        "min_od": None}
    hx.pp.tile(disk_section, size_px=20)  # the map of this image's pixels: used
    tiles = disk_section.tables["he_tiles_table"].obsm["spatial"].copy()
    disk_section.images["he"] = make_disk_section(radius_frac=0.25).images["he"]  # replaced
    with pytest.raises(ValueError, match=r"The tissue map 'he_tissue' was detected on other "
                       r"pixels than sdata.images\['he'\] holds now.*hx\.pp\.detect_tissue\("
                       r"sdata, 'he', key_added='he_tissue', overwrite=True\)"):
        hx.pp.tile(disk_section, size_px=20, overwrite=True)
    np.testing.assert_array_equal(disk_section.tables["he_tiles_table"].obsm["spatial"], tiles)
    hx.pp.detect_tissue(disk_section, overwrite=True)  # the new image's tissue: a smaller disk
    hx.pp.tile(disk_section, size_px=20, overwrite=True)
    assert 0 < disk_section.tables["he_tiles_table"].n_obs < len(tiles)
    # a map of the user's own (no record of how it was made) is used as it is
    mask = add_exact_tissue(disk_section, "mine")
    hx.pp.tile(disk_section, size_px=20, tissue_key="mine", key_added="mine_tiles")
    assert disk_section.tables["mine_tiles_table"].n_obs == (
        expected_fractions(mask, 20, 20) >= 0.5).sum()


@bad_input(
    "silently wrong",
    "`hx.pp.tile` on a section read back from .zarr after its image was replaced, the tissue map "
    "detected on the old image still under `f'{image_key}_tissue'` (the map's own record is "
    "lost on write)",
    says="ValueError: The tissue map 'he_tissue' was detected on other pixels than "
    "sdata.images['he'] holds now ... (before: the old image's tissue tiled, silently)",
    fix="detect the tissue again with overwrite=True, or pass tissue_key= of a map made from "
    "this image",
)
def test_a_tissue_map_read_back_from_zarr_keeps_its_record(disk_section, tmp_path):
    from spatialdata import read_zarr

    from histoexpr._core.ownership import element_record

    hx.pp.detect_tissue(disk_section, min_area_um2=100.0)
    made = dict(disk_section.labels["he_tissue"].attrs["tissue"])
    disk_section.write(tmp_path / "section.zarr")
    back = read_zarr(tmp_path / "section.zarr")
    assert "tissue" not in back.labels["he_tissue"].attrs  # spatialdata keeps no label attrs
    assert element_record(back, "he_tissue", "tissue") == made  # the copy kept in sdata.attrs
    hx.pp.tile(back, size_px=20)  # the map of this image's pixels: used
    tiles = back.tables["he_tiles_table"].obsm["spatial"].copy()
    back.images["he"] = make_disk_section(radius_frac=0.25).images["he"]  # replaced
    with pytest.raises(ValueError, match=r"The tissue map 'he_tissue' was detected on other "
                       r"pixels than sdata.images\['he'\] holds now"):
        hx.pp.tile(back, size_px=20, overwrite=True)
    np.testing.assert_array_equal(back.tables["he_tiles_table"].obsm["spatial"], tiles)
    # a map of the user's own put under that key since has no record: used as it is
    user = make_disk_section(radius_frac=0.25)
    hx.pp.detect_tissue(user, min_area_um2=100.0, key_added="theirs")
    del back.labels["he_tissue"]
    back.labels["he_tissue"] = user.labels["theirs"].copy()
    back.labels["he_tissue"].attrs.clear()
    assert element_record(back, "he_tissue", "tissue") is None
