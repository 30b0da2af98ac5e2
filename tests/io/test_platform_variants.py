"""Platform outputs as current software writes them, and the controls the readers set apart.

CosMx AtoMx exports (gzipped tables, ``cell_id`` beside ``cell_ID``); the control probes and
low-quality transcripts of Xenium, MERSCOPE and CosMx; a Xenium GEO bundle without
``transcripts.parquet``; the channel names of fluorescence OME-TIFFs; HEST metadata with NaN and
h5ad files with their own ``region``; TRIDENT attributes stored as one-element arrays. The
folders are written with the writers of ``test_platform_readers.py`` and changed as the
software in question writes them.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import tempfile

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from _catalogue import bad_input
from test_interop import _hest_sample
from test_platform_readers import (
    XENIUM_STAINS,
    _listing,
    write_cosmx,
    write_merscope,
    write_xenium,
)

import histoexpr as hx

COSMX_GENES = ["Gfap", "Slc17a7"]


def _as_atomx(root) -> None:
    """Make a legacy export (write_cosmx) an AtoMx 1.3 one: controls, cell_id, gzipped tables."""
    expr = pd.read_csv(root / "Run1_exprMat_file.csv")
    expr["NegPrb1"] = [2, 0, 1, 0, 3, 0]
    expr["SystemControl1"] = 1
    meta = pd.read_csv(root / "Run1_metadata_file.csv")
    meta["cell_id"] = [f"c_1_{f}_{c}" for f, c in zip(meta["fov"], meta["cell_ID"], strict=True)]
    tx = pd.read_csv(root / "Run1_tx_file.csv")
    control = tx.iloc[:2].assign(target="NegPrb1")
    tx = pd.concat([tx, control], ignore_index=True)
    tx["cell"] = [f"c_1_{f}_{c}" for f, c in zip(tx["fov"], tx["cell_ID"], strict=True)]
    positions = pd.read_csv(root / "Run1_fov_positions_file.csv").rename(columns={"fov": "FOV"})
    for name, frame in (("exprMat", expr), ("metadata", meta), ("tx", tx),
                        ("fov_positions", positions)):
        (root / f"Run1_{name}_file.csv").unlink()
        frame.to_csv(root / f"Run1_{name}_file.csv.gz", index=False)


@bad_input("obscure error", "`hx.io.read_cosmx` of an AtoMx (1.3 and later) flat-file export: "
           "gzipped tables (`*_exprMat_file.csv.gz`...) and a metadata holding both `cell_ID` "
           "and `cell_id`",
           says="reads it: the tables decompressed into a temporary folder removed after "
                "reading, `cell_id` renamed `cell_id_atomx` (logged) (before: FileNotFoundError: "
                "holds 0 CosMx counts files; then spatialdata's ValidationError about "
                "case-variant keys)",
           fix="nothing: the export is read as it comes")
def test_read_cosmx_atomx_export(tmp_path, monkeypatch, caplog):
    write_cosmx(tmp_path / "legacy")
    shutil.copytree(tmp_path / "legacy", tmp_path / "atomx")
    _as_atomx(tmp_path / "atomx")
    before = _listing(tmp_path / "atomx")
    (tmp_path / "temporary").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temporary"))
    legacy = hx.io.read_cosmx(tmp_path / "legacy", mpp=0.12)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        atomx = hx.io.read_cosmx(tmp_path / "atomx", mpp=0.12)

    assert _listing(tmp_path / "atomx") == before  # nothing written into the export
    assert not any((tmp_path / "temporary").iterdir())  # the temporary folder is gone
    assert "'cell_id' to 'cell_id_atomx' of Run1_metadata_file.csv.gz" in caplog.text
    table = atomx.tables["table"]
    assert list(table.var_names) == COSMX_GENES  # the control probes out of X...
    assert list(table.obsm["controls"].columns) == ["NegPrb1", "SystemControl1"]  # ...kept here
    order = [int(i.split("_")[0]) - 1 + 3 * (int(i.split("_")[1]) - 1) for i in table.obs_names]
    np.testing.assert_array_equal(table.obsm["controls"]["NegPrb1"], np.array([2, 0, 1, 0, 3,
                                                                               0])[order])
    assert table.obs["cell_id_atomx"].tolist() == [
        f"c_1_{i.split('_')[1]}_{i.split('_')[0]}" for i in table.obs_names]
    np.testing.assert_array_equal(table.X.toarray(), legacy.tables["table"].X.toarray())
    # the transcripts: the same genes' transcripts at the same places, the controls dropped
    points = atomx.points["transcripts"].compute()
    expected = legacy.points["transcripts"].compute()
    assert list(points["gene"].cat.categories) == COSMX_GENES
    np.testing.assert_allclose(points.sort_values(["x", "y"])[["x", "y"]],
                               expected.sort_values(["x", "y"])[["x", "y"]])
    # the images, read lazily from the export folder, after the temporary folder went
    for key in ("1_image", "2_image", "1_labels"):
        kind = "labels" if key.endswith("labels") else "images"
        mine = getattr(atomx, kind)[key].compute().values
        np.testing.assert_array_equal(mine, getattr(legacy, kind)[key].compute().values)


def test_read_cosmx_keep_controls(tmp_path):
    write_cosmx(tmp_path / "run")
    _as_atomx(tmp_path / "run")
    sdata = hx.io.read_cosmx(tmp_path / "run", keep_controls=True)
    table = sdata.tables["table"]
    assert list(table.var_names) == [*COSMX_GENES, "NegPrb1", "SystemControl1"]
    assert "controls" not in table.obsm
    points = sdata.points["transcripts"].compute()
    assert (points["gene"] == "NegPrb1").sum() == 2 and len(points) == 8


def _xenium_transcripts(root) -> pd.DataFrame:
    """Rewrite a Xenium folder's transcripts: 2 genes, 4 control names, qv 5 to 40."""
    frame = pd.read_parquet(root / "transcripts.parquet")
    names = ["Gfap", "Slc17a7", "NegControlProbe_00001", "BLANK_0001", "UnassignedCodeword_0002",
             "Intergenic_Region_7"]
    rows = pd.concat([frame.iloc[[i % len(frame)]] for i in range(12)], ignore_index=True)
    rows["transcript_id"] = np.arange(12)
    rows["feature_name"] = [names[i % 6] for i in range(12)]
    rows["qv"] = [40.0, 40.0, 40.0, 40.0, 40.0, 40.0, 19.9, 20.0, 40.0, 40.0, 5.0, 40.0]
    rows.to_parquet(root / "transcripts.parquet")
    return rows


@bad_input("silently wrong", "`hx.io.read_xenium` / `read_merscope` / `read_cosmx`: control "
           "probes and codewords (NegControlProbe_*, BLANK_*, Blank-*, NegPrb*...) and Xenium "
           "transcripts of qv < 20 kept as genes",
           says="log: `Dropped ... of ... transcripts of the ... output: ... of control probes and "
                "codewords ... Pass keep_controls=True ... to keep them` (CosMx: the table's "
                "control probes moved to obsm['controls']) (before: kept as genes)",
           fix="keep_controls=True (and min_qv=None for Xenium) to keep them")
def test_read_xenium_drops_controls_and_low_quality(tmp_path, caplog):
    from spatialdata.transformations import Identity, get_transformation

    write_xenium(tmp_path / "outs")
    rows = _xenium_transcripts(tmp_path / "outs")
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_xenium(tmp_path / "outs", cells=False, image=False)
    points = sdata.points["transcripts"].compute()
    genes = rows["feature_name"].isin(["Gfap", "Slc17a7"])
    kept = rows[genes & (rows["qv"] >= 20)]
    assert sorted(points["transcript_id"]) == sorted(kept["transcript_id"])
    assert list(points["gene"].cat.categories) == ["Gfap", "Slc17a7"]
    element = sdata.points["transcripts"]  # still the points histoexpr reads: in um, by gene
    assert element.attrs["spatialdata_attrs"]["feature_key"] == "gene"
    assert get_transformation(element, "global") == Identity()
    np.testing.assert_allclose(points.set_index("transcript_id").loc[kept["transcript_id"],
                                                                       ["x", "y"]],
                               kept[["x_location", "y_location"]])
    assert ("Dropped 9 of 12 transcripts of the Xenium output: 8 of control probes and codewords "
            "(4 names: NegControlProbe_*, UnassignedCodeword_*, Intergenic_Region_*, BLANK_*) "
            "and 1 of quality below qv 20") in caplog.text
    assert "Pass keep_controls=True and min_qv=None to keep them" in caplog.text
    everything = hx.io.read_xenium(tmp_path / "outs", cells=False, image=False,
                                   keep_controls=True, min_qv=None)
    assert len(everything.points["transcripts"]) == 12
    below_30 = hx.io.read_xenium(tmp_path / "outs", cells=False, image=False, keep_controls=True,
                                 min_qv=30)
    assert sorted(below_30.points["transcripts"].compute()["transcript_id"]) == sorted(
        rows.loc[rows["qv"] >= 30, "transcript_id"])
    with pytest.raises(ValueError, match="min_qv"):
        hx.io.read_xenium(tmp_path / "outs", cells=False, image=False, min_qv=-1)


def test_read_merscope_drops_blank_barcodes(tmp_path, caplog):
    write_merscope(tmp_path / "region_0")
    path = tmp_path / "region_0" / "detected_transcripts.csv"
    frame = pd.read_csv(path, index_col=0)
    frame = pd.concat([frame, frame.iloc[[0]].assign(gene="Blank-1", transcript_id="d")])
    frame.reset_index(drop=True).to_csv(path)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_merscope(tmp_path / "region_0", cells=False)
    points = sdata.points["transcripts"].compute()
    assert list(points["gene"]) == ["Gfap", "Slc17a7", "Gfap"]
    assert sdata.points["transcripts"]["gene"].cat.known
    assert "Dropped 1 of 4 transcripts of the MERSCOPE output" in caplog.text
    kept = hx.io.read_merscope(tmp_path / "region_0", cells=False, keep_controls=True)
    assert list(kept.points["transcripts"].compute()["gene"]) == ["Gfap", "Slc17a7", "Gfap",
                                                                  "Blank-1"]


def _merscope_as_saved_elsewhere(folder) -> None:
    """The transform saved with commas (a spreadsheet) and the transcripts gzipped (GEO)."""
    transform = folder / "images" / "micron_to_mosaic_pixel_transform.csv"
    np.savetxt(transform, np.loadtxt(transform), delimiter=",")
    plain = folder / "detected_transcripts.csv"
    with open(plain, "rb") as source, gzip.open(f"{plain}.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    plain.unlink()


@bad_input("obscure error", "`hx.io.read_merscope` of a region whose "
           "`micron_to_mosaic_pixel_transform.csv` is separated by commas (saved from a "
           "spreadsheet) or whose transcripts are gzipped (`detected_transcripts.csv.gz`)",
           says="reads them (before: ValueError: is not a 3x3 table of numbers; "
                "FileNotFoundError: has no 'detected_transcripts.csv')",
           fix="nothing: both are read as they come")
def test_read_merscope_comma_transform_and_gzipped_transcripts(tmp_path):
    write_merscope(tmp_path / "plain" / "region_0")
    shutil.copytree(tmp_path / "plain", tmp_path / "saved")
    _merscope_as_saved_elsewhere(tmp_path / "saved" / "region_0")
    before = _listing(tmp_path / "saved")
    plain = hx.io.read_merscope(tmp_path / "plain" / "region_0")
    saved = hx.io.read_merscope(tmp_path / "saved" / "region_0")

    assert _listing(tmp_path / "saved") == before  # nothing written into the output
    for key in ("dapi", "stains"):
        assert hx.io.image_levels(saved, key)[0].offset == pytest.approx((100.0, 200.0))
        assert hx.io.get_pixel_size(saved, key) == pytest.approx(0.5)
        np.testing.assert_array_equal(saved.images[key]["scale0"]["image"].values,
                                      plain.images[key]["scale0"]["image"].values)
    points = saved.points["transcripts"].compute()
    expected = plain.points["transcripts"].compute()
    np.testing.assert_allclose(points[["x", "y"]], expected[["x", "y"]])
    assert list(points["gene"]) == list(expected["gene"]) == ["Gfap", "Slc17a7", "Gfap"]
    assert list(saved.shapes) == ["saved_region_0_polygons"]  # spatialdata-io's names kept
    (shapes,) = saved.shapes.values()
    (expected_shapes,) = plain.shapes.values()
    np.testing.assert_allclose(shapes.centroid.x, expected_shapes.centroid.x)
    np.testing.assert_allclose(shapes.centroid.y, expected_shapes.centroid.y)
    assert saved.tables["table"].n_obs == 2


@bad_input("obscure error", "`hx.io.read_merscope(path)` of an output that kept only some z "
           "planes (e.g. only `mosaic_*_z0.tif`), without `z_layer=`",
           says="log: `Reading the mosaics of z plane 0 (the middle one of the planes [0])` "
                "(before: FileNotFoundError: no mosaic image of z_layer=3)",
           fix="nothing; z_layer= reads another plane (one the folder lacks is refused, naming "
               "the planes it has)")
def test_read_merscope_reads_the_middle_plane_it_has(tmp_path, caplog):
    folder = tmp_path / "region_0"
    write_merscope(folder)
    for z in (1, 5):  # planes z1, z3, z5, each its own DAPI value
        for stain in ("DAPI", "PolyT"):
            shutil.copy(folder / "images" / f"mosaic_{stain}_z3.tif",
                        folder / "images" / f"mosaic_{stain}_z{z}.tif")
        tifffile.imwrite(folder / "images" / f"mosaic_DAPI_z{z}.tif",
                         np.full((48, 64), 10 * z, np.uint16))
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_merscope(folder, cells=False, transcripts=False)
    assert "z plane 3 (the middle one of the planes [1, 3, 5])" in caplog.text
    assert sdata.images["dapi"]["scale0"]["image"].values.max() == 1000  # z3's square
    first = hx.io.read_merscope(folder, cells=False, transcripts=False, z_layer=1)
    assert np.unique(first.images["dapi"]["scale0"]["image"].values).tolist() == [10]
    with pytest.raises(FileNotFoundError, match=r"z_layer=2.*z plane\(s\) \[1, 3, 5\]"):
        hx.io.read_merscope(folder, cells=False, transcripts=False, z_layer=2)
    for path in (folder / "images").glob("mosaic_*_z[35].tif"):
        path.unlink()
    only = hx.io.read_merscope(folder, cells=False, transcripts=False)
    assert np.unique(only.images["dapi"]["scale0"]["image"].values).tolist() == [10]


@bad_input("silently wrong", "`hx.io.read_merscope` of cell polygons that are invalid (a ring "
           "that crosses itself), which spatialdata-io leaves out",
           says="log (warning): `1 of the 2 cell polygons of cell_boundaries.parquet were left "
                "out by spatialdata-io as invalid ... cells 2` (before: left out without a word)",
           fix="repair the file's polygons (shapely.make_valid) to keep them")
def test_read_merscope_counts_the_polygons_left_out(tmp_path, caplog):
    from shapely import MultiPolygon, Polygon
    from test_platform_readers import _write_boundaries

    folder = tmp_path / "region_0"
    _, um = write_merscope(folder)
    (x0, y0), (x1, y1) = um[:2]
    square = Polygon([(x0 - 2, y0 - 2), (x0 + 2, y0 - 2), (x0 + 2, y0 + 2), (x0 - 2, y0 + 2)])
    bowtie = Polygon([(x1 - 2, y1 - 2), (x1 + 2, y1 + 2), (x1 + 2, y1 - 2), (x1 - 2, y1 + 2)])
    assert not bowtie.is_valid
    _write_boundaries(folder / "cell_boundaries.parquet", [1, 2],
                      [MultiPolygon([square]), MultiPolygon([bowtie])])
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_merscope(folder)
    (shapes,) = sdata.shapes.values()
    assert list(shapes.index) == ["1"] and sdata.tables["table"].n_obs == 2
    assert ("1 of the 2 cell polygons of cell_boundaries.parquet were left out by spatialdata-io "
            "as invalid (a ring that crosses itself): cells 2.") in caplog.text


@bad_input("obscure error", "`hx.io.read_xenium` of a Xenium GEO bundle whose transcripts are "
           "only `transcripts.csv.gz`",
           says="FileNotFoundError: `... holds transcripts.csv.gz but no 'transcripts.parquet' "
                "... hx.io.read_transcripts('transcripts.csv.gz', x='x_location', "
                "y='y_location', gene='feature_name')`",
           fix="read the transcripts with read_transcripts and the rest with transcripts=False")
def test_read_xenium_geo_bundle_names_read_transcripts(tmp_path):
    write_xenium(tmp_path / "outs")
    frame = pd.read_parquet(tmp_path / "outs" / "transcripts.parquet")
    (tmp_path / "outs" / "transcripts.parquet").unlink()
    frame.to_csv(tmp_path / "outs" / "transcripts.csv.gz", index=False)
    with pytest.raises(FileNotFoundError, match=r"holds transcripts\.csv\.gz but no "
                       r"'transcripts\.parquet'.*hx\.io\.read_transcripts\('transcripts\.csv\.gz"
                       r"', x='x_location', y='y_location', gene='feature_name'\)"):
        hx.io.read_xenium(tmp_path / "outs")
    sdata = hx.io.read_transcripts(tmp_path / "outs" / "transcripts.csv.gz", x="x_location",
                                   y="y_location", gene="feature_name")
    assert list(sdata.points["transcripts"].compute()["gene"]) == ["Gfap", "Slc17a7", "Gfap"]


def _focus_files_apart(folder, *, named: bool, pyramid: bool, shapes=None) -> None:
    """Rewrite XOA 2's morphology_focus/ as files that each describe their own channel only."""
    focus = folder / "morphology_focus"
    with tifffile.TiffFile(focus / "morphology_focus_0000.ome.tif") as tif:
        stains = tif.series[0].asarray()
    for i, plane in enumerate(stains):
        if shapes is not None:
            plane = np.resize(plane, shapes[i])
        metadata = {"axes": "YX", "PhysicalSizeX": 0.2125, "PhysicalSizeY": 0.2125}
        if named:
            metadata["Channel"] = {"Name": XENIUM_STAINS[i]}
        with tifffile.TiffWriter(focus / f"morphology_focus_{i:04}.ome.tif", ome=True) as tif:
            tif.write(plane, metadata=metadata, subifds=1 if pyramid else 0)
            if pyramid:
                tif.write(plane[::2, ::2], subfiletype=1)


@bad_input("obscure error", "`hx.io.read_xenium` of an XOA 2 `morphology_focus/` folder whose 4 "
           "files (`morphology_focus_0000.ome.tif` to `_0003`) each describe only their own "
           "channel (rewritten or converted one by one, not XOA's multi-file OME-TIFF)",
           says="reads them as the 4 channels of one image, named from each file's OME-XML (else "
                "as 10x names the stains), DAPI apart (before: ValueError: The number of channel "
                "names `4` does not match the length of dimension 'c' with length 1)",
           fix="nothing (files of different shapes: ValueError naming each file's shape)")
@pytest.mark.parametrize(("named", "pyramid"), [(True, False), (False, True)])
def test_read_xenium_xoa2_focus_files_one_channel_each(tmp_path, caplog, named, pyramid):
    from test_platform_readers import _channels, _value_at

    pixels = write_xenium(tmp_path / "outs", mpp=0.2125, version="2.0.0")
    _focus_files_apart(tmp_path / "outs", named=named, pyramid=pyramid)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_xenium(tmp_path / "outs", cells=False)
    assert "Read the 4 channels of the morphology focus image from their own files" in caplog.text
    assert _channels(sdata, "dapi") == ["DAPI"]
    assert _channels(sdata, "stains") == XENIUM_STAINS[1:]
    x, y = pixels[0] * 0.2125
    assert _value_at(sdata, "dapi", x, y).max() == 800
    assert list(_value_at(sdata, "stains", x, y)[:, 0, 0]) == [407, 3, 5]
    assert hx.io.get_pixel_size(sdata, "stains") == pytest.approx(0.2125)
    assert len(hx.io.image_levels(sdata, "dapi")) == (2 if pyramid else 1)
    coarse = hx.io.read_region(sdata, "dapi", (0, 0, 56 * 0.2125, 40 * 0.2125), mpp=0.425)
    assert coarse.shape == (1, 20, 28) and coarse.max() == 800


def test_read_xenium_focus_files_of_different_shapes_are_named(tmp_path):
    write_xenium(tmp_path / "outs", version="2.0.0")
    _focus_files_apart(tmp_path / "outs", named=True, pyramid=False,
                       shapes=[(40, 56), (40, 56), (40, 56), (20, 56)])
    with pytest.raises(ValueError, match=r"differ in shape.*morphology_focus_0003\.ome\.tif: "
                       r"\(1, 20, 56\).*image=False"):
        hx.io.read_xenium(tmp_path / "outs", cells=False)


# ----------------------------------------------------------------------------- slides


@bad_input("silently wrong", "`hx.io.read_wsi` of a fluorescence OME-TIFF of 3 (or 4) named "
           "channels (DAPI, CD3, CD8)",
           says="channels named as the OME-XML names them, c0, c1... without names; r, g, b "
                "only for RGB pixels (before: r, g, b (then treated as H&E), or r, g, b, a)",
           fix="nothing")
@pytest.mark.parametrize(("names", "expected"), [
    (["DAPI", "CD3", "CD8"], ["DAPI", "CD3", "CD8"]),
    (["DAPI", "CD3", "CD8", "PanCK"], ["DAPI", "CD3", "CD8", "PanCK"]),
    (None, ["c0", "c1", "c2"]),
    (["DAPI", "DAPI", "CD8"], ["c0", "c1", "c2"]),  # names that do not tell channels apart
])
def test_read_wsi_names_fluorescence_channels(tmp_path, names, expected):
    pixels = np.random.default_rng(0).integers(0, 4000, (len(expected), 64, 64)).astype(np.uint16)
    metadata = {"axes": "CYX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325}
    if names:
        metadata["Channel"] = {"Name": names}
    tifffile.imwrite(tmp_path / "if.ome.tif", pixels, photometric="minisblack",
                     metadata=metadata)
    sdata = hx.io.read_wsi(tmp_path / "if.ome.tif", image_key="if")
    image = sdata.images["if"]["scale0"]["image"]
    assert [str(c) for c in image.coords["c"].values] == expected
    np.testing.assert_array_equal(image.values, pixels)


def test_read_wsi_rgb_stays_rgb(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "he.ome.tif", pixels, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    tifffile.imwrite(tmp_path / "dapi.tif", pixels[..., 0], resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")
    he = hx.io.read_wsi(tmp_path / "he.ome.tif")
    assert [str(c) for c in he.images["he"]["scale0"]["image"].coords["c"].values] == [
        "r", "g", "b"]
    dapi = hx.io.read_wsi(tmp_path / "dapi.tif", image_key="dapi")
    assert [str(c) for c in dapi.images["dapi"]["scale0"]["image"].coords["c"].values] == [
        "dapi"]


# ----------------------------------------------------------------------------- HEST, TRIDENT


@bad_input("silently wrong", "`hx.io.read_hest` of metadata whose pixel_size_um_estimated or "
           "spot_diameter is NaN, or an h5ad whose obs has its own `region` / `spot_id`",
           says="NaN taken as missing: pixel_size_um_embedded used, a NaN spot_diameter refused "
                "(ValueError: `... has no spot_diameter (um; missing or NaN)`); the h5ad's "
                "columns kept as region_hest and spot_id_hest (logged) (before: NaN circles; "
                "ValueError about mpp; the columns overwritten)",
           fix="pass mpp= for another pixel size")
def test_read_hest_nan_metadata_and_own_columns(tmp_path, caplog):
    import anndata as ad

    counts, spots_px = _hest_sample(tmp_path)
    meta_path = tmp_path / "metadata" / "TENX00.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "pixel_size_um_estimated": float("nan")}))
    st_path = tmp_path / "st" / "TENX00.h5ad"
    adata = ad.read_h5ad(st_path)
    adata.obs["region"] = "tumour"
    adata.obs["spot_id"] = ["s1", "s2", "s3"]
    adata.write_h5ad(st_path)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_hest(tmp_path, "TENX00")
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(0.4)  # the embedded one
    table = sdata.tables["table"]
    np.testing.assert_allclose(table.obsm["spatial"], spots_px * 0.4)
    assert table.obs["region_hest"].tolist() == ["tumour"] * 3
    assert table.obs["spot_id_hest"].tolist() == ["s1", "s2", "s3"]
    assert table.obs["region"].astype(str).tolist() == ["spots"] * 3
    assert table.obs["spot_id"].tolist() == [0, 1, 2]
    assert "Renamed the obs column(s) ['region', 'spot_id'] of TENX00.h5ad" in caplog.text
    meta_path.write_text(json.dumps({**meta, "spot_diameter": float("nan")}))
    with pytest.raises(ValueError, match=r"has no spot_diameter \(um; missing or NaN\)"):
        hx.io.read_hest(tmp_path, "TENX00")


def test_read_trident_one_element_array_attributes(tmp_path):
    features = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    with h5py.File(tmp_path / "slide.h5", "w") as handle:
        handle["features"] = features
        coords = handle.create_dataset("coords", data=np.array([[0, 0], [512, 0]]))
        coords.attrs["patch_size"] = np.array([256])
        coords.attrs["patch_size_level0"] = np.array([512])
        coords.attrs["level0_magnification"] = np.array([40.0])
    table = hx.io.read_trident_h5(tmp_path / "slide.h5").tables["tiles_table"]
    assert table.uns["tiles"]["size_um"] == pytest.approx(128.0)  # 512 px at 0.25 um/px
    np.testing.assert_allclose(table.obsm["spatial"], [[64.0, 64.0], [192.0, 64.0]])


def test_cosmx_case_variant_columns_are_found(tmp_path):
    """The header of a gzipped CosMx table is read alone; its case variants are renamed."""
    from histoexpr.io._platform_tables import _case_variants, _header

    path = tmp_path / "Run1_metadata_file.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write('"fov","cell_ID","cell_id","Area"\n1,1,c_1_1_1,30\n')
    assert _header(path) == ["fov", "cell_ID", "cell_id", "Area"]
    assert _case_variants(_header(path)) == {"cell_id": "cell_id_atomx"}
    assert _case_variants(["FOV", "fov", "x"]) == {"FOV": "FOV_atomx"}
