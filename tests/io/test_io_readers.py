"""Readers: whole-slide images, legacy ST, Visium and transcript tables (real data + bad input)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import tifffile

import histoexpr as hx

realdata = pytest.mark.realdata


def _grey(image: np.ndarray) -> np.ndarray:
    return image[:3].astype(np.float32).mean(axis=0)


def _values_at(grey: np.ndarray, xy_um: np.ndarray, mpp: float) -> np.ndarray:
    cols = np.clip((xy_um[:, 0] / mpp).astype(int), 0, grey.shape[1] - 1)
    rows = np.clip((xy_um[:, 1] / mpp).astype(int), 0, grey.shape[0] - 1)
    return grey[rows, cols]


def _whole(sdata, key: str = "he") -> tuple[np.ndarray, float]:
    """The coarsest level of an image, completely, with its um/px."""
    level = hx.io.image_levels(sdata, key)[-1]
    return np.asarray(level.data.data), level.mpp


def _border_mean(grey: np.ndarray, frac: float = 0.04) -> float:
    k = max(1, int(frac * min(grey.shape)))
    return float(np.concatenate([grey[:k].ravel(), grey[-k:].ravel(), grey[:, :k].ravel(),
                                 grey[:, -k:].ravel()]).mean())


# ----------------------------------------------------------------------------- whole-slide images
@realdata
def test_read_wsi_svs(data_dir):
    path = data_dir / "wsi" / "CMU-1-Small-Region.svs"
    sdata = hx.io.read_wsi(path)
    levels = hx.io.image_levels(sdata, "he")
    assert len(levels) == 1
    assert levels[0].shape_yx == (2967, 2220)
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(0.499)
    assert list(levels[0].data.coords["c"].values) == ["r", "g", "b"]
    # a region read through histoexpr equals tifffile's direct read of the same pixels
    mpp = 0.499
    region = hx.io.read_region(sdata, "he", (1000 * mpp, 700 * mpp, 1224 * mpp, 924 * mpp))
    direct = tifffile.imread(path)[700:924, 1000:1224]
    np.testing.assert_array_equal(region, np.moveaxis(direct, -1, 0))
    # mpp= overrides the metadata
    assert hx.io.get_pixel_size(hx.io.read_wsi(path, mpp=0.25), "he") == 0.25


@realdata
def test_read_wsi_ndpi_pyramid(data_dir):
    path = data_dir / "wsi" / "test3-DAPI-2-387.ndpi"
    sdata = hx.io.read_wsi(path, image_key="slide")
    levels = hx.io.image_levels(sdata, "slide")
    assert [lv.shape_yx for lv in levels] == [(4864, 3968), (2432, 1984), (1216, 992), (608, 496)]
    mpp0 = 1e4 / 43826  # XResolution 43826 px/cm
    assert levels[0].mpp == pytest.approx(mpp0)
    np.testing.assert_allclose([lv.mpp for lv in levels], mpp0 * np.array([1, 2, 4, 8]))
    # a coarse read comes from the coarsest level, pixel for pixel
    with tifffile.TiffFile(path) as tif:
        coarse = tif.series[0].levels[3].asarray()
        fine = tif.series[0].levels[0].asarray()[1000:1224, 2000:2224]
    whole = hx.io.read_region(sdata, "slide", (0, 0, 496 * 8 * mpp0, 608 * 8 * mpp0), mpp=8 * mpp0)
    np.testing.assert_array_equal(whole, np.moveaxis(coarse, -1, 0))
    region = hx.io.read_region(sdata, "slide",
                               (2000 * mpp0, 1000 * mpp0, 2224 * mpp0, 1224 * mpp0))
    np.testing.assert_array_equal(region, np.moveaxis(fine, -1, 0))


@realdata
def test_read_wsi_is_lazy(data_dir, monkeypatch):
    from tifffile.zarr import ZarrTiffStore

    calls = []
    original = ZarrTiffStore._parse_key

    def counting(self, key, /):
        calls.append(key)
        return original(self, key)

    monkeypatch.setattr(ZarrTiffStore, "_parse_key", counting)
    sdata = hx.io.read_wsi(data_dir / "wsi" / "test3-DAPI-2-387.ndpi")
    assert calls == []  # opening read no tile
    hx.io.read_region(sdata, "he", (0, 0, 50, 50))
    # a small region reads a few of the 608 strips (8 rows each) of the level, not the slide
    assert 0 < len(calls) <= 64


def test_read_wsi_ome_tiff_pyramid(tmp_path):
    path = tmp_path / "slide.ome.tif"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (512, 384, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        options = {"tile": (128, 128), "photometric": "rgb"}
        tif.write(image, subifds=1, metadata={"axes": "YXS", "PhysicalSizeX": 0.25,
                                              "PhysicalSizeY": 0.25}, **options)
        tif.write(image[::2, ::2], subfiletype=1, **options)
    sdata = hx.io.read_wsi(path)
    levels = hx.io.image_levels(sdata, "he")
    assert [lv.shape_yx for lv in levels] == [(512, 384), (256, 192)]
    assert levels[0].mpp == pytest.approx(0.25)
    np.testing.assert_array_equal(
        hx.io.read_region(sdata, "he", (0, 0, 384 * 0.25, 512 * 0.25)), np.moveaxis(image, -1, 0))


def test_read_wsi_resolution_tags(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb",
                     resolution=(20000, 20000), resolutionunit="CENTIMETER")  # 0.5 um/px
    assert hx.io.get_pixel_size(hx.io.read_wsi(path), "he") == pytest.approx(0.5)


def test_read_wsi_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hx.io.read_wsi(tmp_path / "missing.svs")
    not_a_slide = tmp_path / "notes.svs"
    not_a_slide.write_text("not a slide")
    with pytest.raises(ValueError, match="not a slide histoexpr can read.*OME-TIFF"):
        hx.io.read_wsi(not_a_slide)
    no_mpp = tmp_path / "no_mpp.tif"
    tifffile.imwrite(no_mpp, np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"not in its metadata.*mpp="):
        hx.io.read_wsi(no_mpp)
    assert hx.io.get_pixel_size(hx.io.read_wsi(no_mpp, mpp=1.5), "he") == 1.5
    with pytest.raises(ValueError, match="positive"):
        hx.io.read_wsi(no_mpp, mpp=-1)


# ----------------------------------------------------------------------------------- legacy ST
def _her2st(data_dir, section: str):
    root = data_dir / "her2st"
    image = next((root / "images").glob(f"{section}_*.jpg"))
    return hx.io.read_st(root / "counts" / f"{section}.tsv.gz",
                         root / "spots" / f"{section}_selection.tsv", image)


@pytest.fixture(scope="module")
def her2st_c2(data_dir):
    if not data_dir.is_dir():
        pytest.skip("real data absent")
    return _her2st(data_dir, "C2")


@realdata
def test_read_st_her2st(her2st_c2):
    sdata = her2st_c2
    table = sdata.tables["table"]
    assert table.n_obs == 187 and table.n_vars == 15706
    assert table.X.dtype == np.float32 and table.X.format == "csr"
    assert (table.X != table.layers["counts"]).nnz == 0
    assert table.obs_names[0] == "25x13"
    assert {"array_x", "array_y", "spot_id"} <= set(table.obs.columns)
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (
        "spots", "region", "spot_id")
    # ~290 px between spots 200 um apart
    mpp = hx.io.get_pixel_size(sdata, "he")
    assert mpp == pytest.approx(200 / 289.8, rel=0.01)
    levels = hx.io.image_levels(sdata, "he")
    assert levels[0].shape_yx == (9911, 9274) and max(levels[-1].shape_yx) <= 2048
    spots = sdata.shapes["spots"]
    np.testing.assert_allclose(spots["radius"], 50.0)
    np.testing.assert_allclose(np.c_[spots.geometry.x, spots.geometry.y],
                               table.obsm["spatial"])
    np.testing.assert_allclose(table.obsm["spatial"][0], np.array([6930.58, 3510.24]) * mpp)
    # spots sit on the tissue: darker (stained) than the white border of the slide
    image, coarse_mpp = _whole(sdata)
    grey = _grey(image)
    under_spots = _values_at(grey, table.obsm["spatial"], coarse_mpp).mean()
    assert under_spots < _border_mean(grey) - 30


@realdata
@pytest.mark.parametrize(("section", "n_spots"), [("C3", 180), ("C4", 184)])
def test_read_st_her2st_sections_drop_spots_without_counts(data_dir, section, n_spots, caplog):
    # C3 and C4 hold 182 and 187 spots, of which 2 and 3 have no counts
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = _her2st(data_dir, section)
    assert sdata.tables["table"].n_obs == n_spots == len(sdata.shapes["spots"])
    assert "that have no counts" in caplog.text


@realdata
@pytest.mark.parametrize("section", [1, 2, 3, 4])
def test_read_st_mob(data_dir, section):
    root = data_dir / "mob_st"
    args = (root / f"MOB{section}.tsv.gz", root / f"alignment_table_MOB{section}.tsv",
            root / f"MOB{section}.jpg")
    everything = hx.io.read_st(*args, selected_only=False)
    selected = hx.io.read_st(*args)
    alignment = pd.read_csv(args[1], sep="\t")
    assert selected.tables["table"].n_obs < everything.tables["table"].n_obs
    assert selected.tables["table"].n_obs <= int(alignment["selected"].sum())
    assert selected.tables["table"].var_names[0].startswith("ENSMUSG")
    # 2k array: neighbours of a row are 2 array steps (~43 px) apart
    assert hx.io.get_pixel_size(selected, "he") == pytest.approx(200 / 43.2, rel=0.02)
    image, mpp = _whole(selected)
    grey = _grey(image)
    on = _values_at(grey, selected.tables["table"].obsm["spatial"], mpp).mean()
    table = everything.tables["table"]
    off = table.obs_names.difference(selected.tables["table"].obs_names)
    off_xy = table.obsm["spatial"][table.obs_names.get_indexer(off)]
    assert on < _values_at(grey, off_xy, mpp).mean() - 20  # selected spots lie on tissue


def _write_st(tmp_path, counts: pd.DataFrame, spot_ids=("1x1", "2x1", "1x2", "2x2")):
    from PIL import Image

    xy = np.array([[int(v) for v in s.split("x")] for s in spot_ids])
    spots = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "pixel_x": xy[:, 0] * 20.0,
                          "pixel_y": xy[:, 1] * 20.0, "selected": 1})
    counts_path, spots_path = tmp_path / "counts.tsv", tmp_path / "spots.tsv"
    counts.to_csv(counts_path, sep="\t")
    spots.to_csv(spots_path, sep="\t", index=False)
    image = tmp_path / "he.png"
    Image.fromarray(np.full((80, 80, 3), 200, np.uint8)).save(image)
    return counts_path, spots_path, image


def _counts(ids=("1x1", "2x1", "1x2", "2x2"), values=None) -> pd.DataFrame:
    values = np.arange(8).reshape(4, 2) if values is None else values
    return pd.DataFrame(values, index=list(ids), columns=["GENE1", "GENE2"])


def test_read_st_small(tmp_path, caplog):
    files = _write_st(tmp_path, _counts(ids=("1x1", "2x1", "1x2", "9x9")))
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_st(*files)
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(10.0)  # 20 px = 200 um
    assert list(sdata.tables["table"].obs_names) == ["1x1", "2x1", "1x2"]
    assert "Dropped 1 of 4 spots of spots.tsv that have no counts" in caplog.text
    assert "Dropped 1 of 4 spots of counts.tsv that are not in" in caplog.text
    np.testing.assert_allclose(sdata.tables["table"].obsm["spatial"][1], [400.0, 200.0])
    assert hx.io.get_pixel_size(hx.io.read_st(*files, mpp=0.5), "he") == 0.5


def test_read_st_errors(tmp_path):
    files = _write_st(tmp_path, _counts(ids=("7x7", "8x8", "9x9", "9x8")))
    with pytest.raises(ValueError, match="has counts in.*same section"):
        hx.io.read_st(*files)
    with pytest.raises(FileNotFoundError, match="counts file .* does not exist"):
        hx.io.read_st(tmp_path / "nope.tsv", files[1], files[2])
    bad = np.array([[1.0, np.nan], [0, 1], [2, 2], [3, 3]])
    with pytest.raises(ValueError, match="NaN"):
        hx.io.read_st(*_write_st(tmp_path, _counts(values=bad)))
    with pytest.raises(ValueError, match="negative.*raw"):
        hx.io.read_st(*_write_st(tmp_path, _counts(values=-np.ones((4, 2)))))
    spots = pd.read_csv(files[1], sep="\t").drop(columns=["pixel_x"])
    spots.to_csv(files[1], sep="\t", index=False)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['pixel_x'\]"):
        hx.io.read_st(*files)


# --------------------------------------------------------------------------------------- Visium
def _visium_grid_mpp(array_col, array_row, pixels) -> float:
    """um/px by Visium's design: one array_col step is 50 um (neighbours in a row, 100 um)."""
    design = np.column_stack([array_col, array_row, np.ones(len(array_col))])
    coef = np.linalg.lstsq(design, np.asarray(pixels, dtype=float), rcond=None)[0]
    return 50 / float(np.linalg.norm(coef[0]))


@realdata
def test_read_visium_spaceranger_1(data_dir, caplog):
    root = data_dir / "visium" / "scanpy_visium_1.0.0"
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_visium(root)
    table = sdata.tables["table"]
    assert table.shape == (100, 100)
    assert table.X.dtype == np.float32 and (table.X != table.layers["counts"]).nnz == 0
    assert "blank" in caplog.text  # the hires image of this fixture is a placeholder
    factors = json.loads((root / "spatial" / "scalefactors_json.json").read_text())
    every = pd.read_csv(root / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    mpp_full = _visium_grid_mpp(every[3], every[2], every[[5, 4]])
    assert mpp_full == pytest.approx(0.7268, abs=0.0005)
    # spot_diameter_fullres is the pixels of a 65 um spot (10x's definition), not of 55 um
    assert 65 / factors["spot_diameter_fullres"] == pytest.approx(mpp_full, rel=0.001)
    levels = hx.io.image_levels(sdata, "he")
    assert len(levels) == 1  # lowres only
    assert levels[0].mpp == pytest.approx(mpp_full / factors["tissue_lowres_scalef"])
    positions = every.loc[table.obs_names]
    np.testing.assert_allclose(table.obsm["spatial"], positions[[5, 4]].to_numpy() * mpp_full)
    np.testing.assert_array_equal(table.obs["array_row"], positions[2])
    np.testing.assert_allclose(sdata.shapes["spots"]["radius"], 27.5)
    image, mpp = _whole(sdata)
    grey = _grey(image)
    assert _values_at(grey, table.obsm["spatial"], mpp).mean() < _border_mean(grey) - 15


@realdata
def test_read_visium_spaceranger_3_mtx(data_dir):
    root = data_dir / "visium" / "perik_visium_cytassist_mouse"
    sdata = hx.io.read_visium(root)
    table = sdata.tables["table"]
    assert table.shape == (2898, 19465)
    assert np.array_equal(table.X.data, np.round(table.X.data))  # raw counts
    factors = json.loads((root / "spatial" / "scalefactors_json.json").read_text())
    every = pd.read_csv(root / "spatial" / "tissue_positions.csv", index_col=0)
    mpp_full = _visium_grid_mpp(every["array_col"], every["array_row"],
                                every[["pxl_col_in_fullres", "pxl_row_in_fullres"]])
    assert mpp_full == pytest.approx(4.6776, abs=0.0005)
    # a CytAssist run: spot_diameter_fullres spans 70 um (65 um in other runs, never 55 um)
    assert 70 / factors["spot_diameter_fullres"] == pytest.approx(mpp_full, rel=0.001)
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(mpp_full / 0.2)
    positions = every.loc[table.obs_names]
    assert (positions["in_tissue"] == 1).all()
    np.testing.assert_allclose(
        table.obsm["spatial"],
        positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy() * mpp_full)
    image, mpp = _whole(sdata)
    grey = _grey(image)
    # the eosin-only CytAssist image is dark around the tissue: spots are brighter
    assert _values_at(grey, table.obsm["spatial"], mpp).mean() > _border_mean(grey) + 30


@realdata
def test_read_visium_rejects_squidpy_fixture(data_dir):
    # squidpy's fixture is an AnnData with log-normalised values and an image crop, not a
    # Space Ranger output: there are no raw counts to read
    with pytest.raises(FileNotFoundError, match="no 'spatial/' folder"):
        hx.io.read_visium(data_dir / "visium" / "squidpy")


def test_read_visium_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hx.io.read_visium(tmp_path / "nope")


# ---------------------------------------------------------------------------------- transcripts
MERFISH_MPP = 0.108627
MERFISH_OFFSET = (6400.029, 4699.967)


@realdata
def test_read_transcripts_merfish(data_dir, caplog):
    root = data_dir / "merfish_mouse_brain"
    dapi = root / "images" / "mini_dataset_dapi_z0.jpg"
    sdata = hx.io.read_transcripts(root / "vizgen_transcripts.csv.gz", x="global_x",
                                   y="global_y", offset=MERFISH_OFFSET, image=dapi,
                                   image_mpp=MERFISH_MPP)
    points = sdata.points["transcripts"].compute()
    assert len(points) == 80343 and points["gene"].nunique() == 559
    assert sdata.points["transcripts"].attrs["spatialdata_attrs"]["feature_key"] == "gene"
    level = hx.io.image_levels(sdata, "dapi")[0]
    assert level.shape_yx == (4143, 4603) and level.mpp == MERFISH_MPP
    width, height = 4603 * MERFISH_MPP, 4143 * MERFISH_MPP
    assert points["x"].between(0, width).all() and points["y"].between(0, height).all()
    # transcripts crowd on (bright) nuclei: more of them on bright pixels than pixels are bright
    grey = np.asarray(level.data.data)[0].astype(np.float32)
    bright = grey > np.quantile(grey, 0.75)
    on_bright = _values_at(bright.astype(np.float32), points[["x", "y"]].to_numpy(), MERFISH_MPP)
    assert on_bright.mean() > 0.25 * 1.2
    # a wrong offset puts transcripts outside the image
    table = pd.read_csv(root / "vizgen_transcripts.csv.gz").iloc[:2000]
    with pytest.raises(ValueError, match="outside the image.*outside='drop'"):
        hx.io.read_transcripts(table, x="global_x", y="global_y", offset=(6450.0, 4699.967),
                               image=grey.astype(np.uint8), image_mpp=MERFISH_MPP)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        dropped = hx.io.read_transcripts(table, x="global_x", y="global_y",
                                         offset=(6450.0, 4699.967), image=grey.astype(np.uint8),
                                         image_mpp=MERFISH_MPP, outside="drop")
    n_kept = len(dropped.points["transcripts"])
    expected = int(((table["global_x"] - 6450.0) >= 0).sum())
    assert n_kept == expected
    assert f"Dropped {2000 - expected} of 2000 transcripts outside the image" in caplog.text


@realdata
def test_read_transcripts_iss_with_nuclei(data_dir):
    root = data_dir / "iss_mouse_ca1"
    reads = pd.read_csv(root / "spots.csv")
    n_invalid = int((reads["x"] < 0).sum())
    assert n_invalid > 0
    sdata = hx.io.read_transcripts(reads, gene="Gene", labels=root / "label_image.coo.npz",
                                   outside="drop")
    points = sdata.points["transcripts"].compute()
    assert len(points) == len(reads) - n_invalid  # the x = -1 reads are dropped
    labels = np.asarray(sdata.labels["nuclei"].data)
    assert labels.shape == (5471, 7602) and len(np.unique(labels)) - 1 == 3481
    on_nuclei = _values_at(labels, points[["x", "y"]].to_numpy(), 1.0) > 0
    assert on_nuclei.mean() == pytest.approx(0.61, abs=0.03)
    assert (labels > 0).mean() < 0.12  # nuclei cover ~9 % of the pixels


def test_read_transcripts_errors(tmp_path):
    table = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "gene": ["A", "B"]})
    with pytest.raises(KeyError, match=r"no column\(s\) \['global_x'\].*x="):
        hx.io.read_transcripts(table, x="global_x")
    with pytest.raises(FileNotFoundError, match="transcript table"):
        hx.io.read_transcripts(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="outside must be"):
        hx.io.read_transcripts(table, outside="ignore")
    with pytest.raises(ValueError, match="outside the image"):
        hx.io.read_transcripts(table, image=np.zeros((3, 3), np.uint8))
    sdata = hx.io.read_transcripts(table, pixel_size=0.5, offset=(1.0, 1.0),
                                   image=np.zeros((10, 10), np.uint8))
    points = sdata.points["transcripts"].compute()
    np.testing.assert_allclose(points[["x", "y"]].to_numpy(), [[0.0, 1.0], [0.5, 1.5]])
    assert hx.io.get_pixel_size(sdata, "dapi") == 0.5
