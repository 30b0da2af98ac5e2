"""Visium reader: the micrometres of the spot array, Visium HD bins and the layouts of downloads."""

from __future__ import annotations

import gzip
import json
import logging
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input
from PIL import Image
from scipy import sparse

import histoexpr as hx

LOWRES = 0.1  # tissue_lowres_scalef of the runs written here


def _grid(n_rows: int, n_cols: int, hd: bool) -> tuple[np.ndarray, np.ndarray]:
    """(array_row, array_col): Visium's hexagonal array (a row holds every other column)."""
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    keep = np.ones_like(rows, bool) if hd else (rows + cols) % 2 == 0
    return rows[keep], cols[keep]


def _write_run(folder, *, mpp=0.8, angle=0.0, mirror=False, counts="h5",
               positions="tissue_positions.csv",
               genes=None, feature_types=None, diameter_um=65.0, factors=None, bin_um=None,
               n_rows=8, n_cols=16, off_tissue=0, prefix="", spatial="spatial", gz=False):
    """A Space Ranger output of a known pixel size ``mpp``; returns its positions and counts."""
    folder.mkdir(parents=True, exist_ok=True)
    where = folder / spatial if spatial else folder
    where.mkdir(exist_ok=True)
    rows, cols = _grid(n_rows, n_cols, hd=bin_um is not None)
    um = (np.column_stack([cols * (bin_um or 50.0), rows * (bin_um or 100 * np.sqrt(3) / 2)])
          * ([-1, 1] if mirror else [1, 1]))
    turn = np.deg2rad(angle)
    um = um @ np.array([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]])
    pixels = (um - um.min(axis=0)) / mpp + 40
    barcodes = [f"B{i:05d}-1" for i in range(len(rows))]
    table = pd.DataFrame({"barcode": barcodes, "in_tissue": (np.arange(len(rows)) >= off_tissue)
                          .astype(int), "array_row": rows, "array_col": cols,
                          "pxl_row_in_fullres": pixels[:, 1], "pxl_col_in_fullres": pixels[:, 0]})
    name = where / f"{prefix}{positions.removesuffix('.gz')}"
    if positions.startswith("tissue_positions.parquet"):
        table.to_parquet(name)
    else:
        table.to_csv(name, index=False, header=positions.startswith("tissue_positions.csv"))
    genes = genes or [f"G{j}" for j in range(5)]
    feature_types = feature_types or ["Gene Expression"] * len(genes)
    x = np.random.default_rng(0).integers(0, 9, (len(rows), len(genes)))
    _write_counts(folder, counts, prefix, barcodes, genes, feature_types, x)
    written = {"spot_diameter_fullres": (bin_um or diameter_um) / mpp,
               "tissue_hires_scalef": 0.3, "tissue_lowres_scalef": LOWRES,
               "fiducial_diameter_fullres": 105 / mpp, **(factors or {})}
    (where / f"{prefix}scalefactors_json.json").write_text(json.dumps(written))
    side = (pixels.max(axis=0) + 40) * LOWRES
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (int(side[1]) + 1,
                                                               int(side[0]) + 1, 3),
                                                      dtype=np.uint8)).save(
        where / f"{prefix}tissue_lowres_image.png")
    if gz:
        for path in [p for p in where.iterdir() if p.is_file() and p.suffix != ".h5"]:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
    return table.set_index("barcode"), pd.DataFrame(x, index=barcodes, columns=genes)


def _write_counts(folder, counts, prefix, barcodes, genes, feature_types, x):
    name = ("raw" if counts.startswith("raw") else "filtered") + "_feature_bc_matrix"
    ids = [f"ENSG{j:05d}" for j in range(len(genes))]
    matrix = sparse.csc_matrix(x.T)
    if counts.endswith("h5"):
        with h5py.File(folder / f"{prefix}{name}.h5", "w") as handle:
            group = handle.create_group("matrix")
            group["barcodes"] = np.array(barcodes, dtype="S")
            for key in ("data", "indices", "indptr"):
                group[key] = getattr(matrix, key).astype(np.int64)
            group["shape"] = np.array(matrix.shape, dtype=np.int32)
            features = group.create_group("features")
            features["id"] = np.array(ids, dtype="S")
            features["name"] = np.array(genes, dtype="S")
            features["feature_type"] = np.array(feature_types, dtype="S")
            features["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
        return
    mtx = folder / name
    mtx.mkdir()
    opener = open if counts == "mtx_plain" else gzip.open
    suffix = "" if counts == "mtx_plain" else ".gz"
    coo = matrix.tocoo()
    with opener(mtx / f"matrix.mtx{suffix}", "wt") as handle:
        handle.write("%%MatrixMarket matrix coordinate integer general\n"
                     f"{coo.shape[0]} {coo.shape[1]} {coo.nnz}\n")
        handle.writelines(f"{i + 1} {j + 1} {v}\n" for i, j, v in zip(coo.row, coo.col, coo.data,
                                                                       strict=True))
    with opener(mtx / f"barcodes.tsv{suffix}", "wt") as handle:
        handle.write("\n".join(barcodes) + "\n")
    with opener(mtx / f"features.tsv{suffix}", "wt") as handle:
        handle.writelines(f"{i}\t{g}\t{t}\n" for i, g, t in zip(ids, genes, feature_types,
                                                                 strict=True))


def _neighbour_distances(table) -> np.ndarray:
    """um between spots of one array row two array_col steps apart (100 um by design)."""
    frame = pd.DataFrame({"r": table.obs["array_row"].to_numpy(),
                          "c": table.obs["array_col"].to_numpy(),
                          "x": table.obsm["spatial"][:, 0], "y": table.obsm["spatial"][:, 1]})
    frame = frame.sort_values(["r", "c"])
    same = (frame["r"].diff() == 0) & (frame["c"].diff() == 2)
    return np.hypot(frame["x"].diff(), frame["y"].diff())[same].to_numpy()


# ------------------------------------------------------------------------- micrometres of the array
@pytest.mark.parametrize(("angle", "mirror"), [(0.0, False), (33.0, False), (-20.0, True),
                                               (90.0, True)])
def test_turned_or_mirrored_array_keeps_spots_100_um_apart(tmp_path, caplog, angle, mirror):
    positions, counts = _write_run(tmp_path, mpp=0.8, angle=angle, mirror=mirror)
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        sdata = hx.io.read_visium(tmp_path)
    table = sdata.tables["table"]
    assert "WARNING" not in caplog.text
    np.testing.assert_allclose(_neighbour_distances(table), 100.0, rtol=1e-9)
    np.testing.assert_allclose(table.obsm["spatial"], positions.loc[
        table.obs_names, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy() * 0.8)
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(0.8 / LOWRES)
    np.testing.assert_allclose(sdata.shapes["spots"]["radius"], 27.5)  # circles stay 55 um
    np.testing.assert_array_equal(table.X.toarray(), counts.loc[table.obs_names].to_numpy())


@bad_input("silently wrong", "a Visium output read at `55 / spot_diameter_fullres` um/px, while "
           "10x writes the pixels of a 65 um spot (70 um in CytAssist outputs): every distance "
           "15-21 % short",
           says="reads the pixel size from the spot array (neighbours 100 um apart); warning: "
                "spot_diameter_fullres ... spans ... um where Space Ranger writes the pixels of a "
                "65 or 70 um spot",
           fix="nothing; the warning names scale factors that disagree with the spot array")
@pytest.mark.parametrize("diameter_um", [65.0, 70.0, 55.0])
def test_spot_diameter_fullres_is_only_checked(tmp_path, caplog, diameter_um):
    _write_run(tmp_path, mpp=1.3, diameter_um=diameter_um)
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        sdata = hx.io.read_visium(tmp_path)
    np.testing.assert_allclose(_neighbour_distances(sdata.tables["table"]), 100.0, rtol=1e-9)
    warned = "spans 55.0 um at 1.3 um/px" in caplog.text
    assert warned == (diameter_um == 55.0), caplog.text


def test_microns_per_pixel_is_used_and_checked_against_the_array(tmp_path, caplog):
    _write_run(tmp_path / "same", mpp=0.5, factors={"microns_per_pixel": 0.5})
    _write_run(tmp_path / "other", mpp=0.5, factors={"microns_per_pixel": 0.55})
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        same = hx.io.read_visium(tmp_path / "same")
    assert "WARNING" not in caplog.text
    assert hx.io.get_pixel_size(same, "he") == pytest.approx(0.5 / LOWRES)
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        other = hx.io.read_visium(tmp_path / "other")
    assert "gives 0.5 um/px (50 um per array_col step): they differ by 9%" in caplog.text
    assert hx.io.get_pixel_size(other, "he") == pytest.approx(0.55 / LOWRES)


@bad_input("silently wrong", "a Visium output whose tissue positions are too few (or not on a "
           "grid) to measure the spot array, without microns_per_pixel",
           says="ValueError: Cannot tell the pixel size of this run: ... too few ... "
                "microns_per_pixel",
           fix="pass the complete tissue positions, or write microns_per_pixel into "
               "scalefactors_json.json")
def test_pixel_size_without_array_nor_microns_per_pixel_is_refused(tmp_path):
    _write_run(tmp_path / "few", n_rows=1, n_cols=4)
    with pytest.raises(ValueError, match=r"Cannot tell the pixel size of this run: .*too few.*"
                                         r"microns_per_pixel"):
        hx.io.read_visium(tmp_path / "few")
    _write_run(tmp_path / "given", n_rows=1, n_cols=4, factors={"microns_per_pixel": 0.8})
    sdata = hx.io.read_visium(tmp_path / "given")
    np.testing.assert_allclose(_neighbour_distances(sdata.tables["table"]), 100.0, rtol=1e-9)


# ------------------------------------------------------------------------------------ Visium HD
@bad_input("silently wrong", "a Visium HD bin folder (`binned_outputs/square_008um`, "
           "`tissue_positions.parquet`)",
           says="reads square bins bin_size_um wide at microns_per_pixel (before: spatialdata-io's "
                "'Cannot find tissue_positions file'; with a csv, 55 um circles at a pixel size "
                "6.9x too large)",
           fix="nothing")
@pytest.mark.parametrize("factors", [{"bin_size_um": 8.0, "microns_per_pixel": 0.5}, {}])
def test_visium_hd_bins_are_squares_along_the_array(tmp_path, caplog, factors):
    folder = tmp_path / "outs" / "binned_outputs" / "square_008um"
    positions, counts = _write_run(folder, mpp=0.5, angle=10.0, bin_um=8.0, counts="h5",
                                   positions="tissue_positions.parquet", factors=factors)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_visium(folder)
    assert "WARNING" not in caplog.text and "8 um bins" in caplog.text
    table, bins = sdata.tables["table"], sdata.shapes["spots"]
    np.testing.assert_allclose(table.obsm["spatial"], positions.loc[
        table.obs_names, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy() * 0.5)
    assert (bins.geom_type == "Polygon").all()
    np.testing.assert_allclose(bins.area, 64.0)
    np.testing.assert_allclose(np.column_stack([bins.centroid.x, bins.centroid.y]),
                               table.obsm["spatial"][table.obs["spot_id"].to_numpy()])
    corners = np.asarray(bins.geometry.iloc[0].exterior.coords)
    edge = corners[1] - corners[0]
    angle = np.rad2deg(np.arctan2(edge[1], edge[0])) % 90
    assert min(angle, 90 - angle) == pytest.approx(10.0)  # the array is turned by 10 degrees
    np.testing.assert_array_equal(table.X.toarray(), counts.loc[table.obs_names].to_numpy())


@bad_input("obscure error", "`hx.io.read_visium('outs')` of a Visium HD run (its bins lie in "
           "binned_outputs/square_*)",
           says="FileNotFoundError: '.../outs' is the output of a Visium HD run, whose spots are "
                "the bins of binned_outputs/ (it holds ['square_002um', 'square_008um', "
                "'square_016um']): pass one bin folder, e.g. hx.io.read_visium('"
                ".../binned_outputs/square_002um') (before: 'has no spatial/ folder')",
           fix="pass one bin folder")
def test_visium_hd_outs_names_the_bin_folders(tmp_path):
    outs = tmp_path / "outs"
    for size in (2, 8, 16):
        (outs / "binned_outputs" / f"square_{size:03d}um" / "spatial").mkdir(parents=True)
    (outs / "spatial").mkdir()
    with pytest.raises(FileNotFoundError, match=r"\['square_002um', 'square_008um', "
                                                r"'square_016um'\].*spatialdata_io\.visium_hd"):
        hx.io.read_visium(outs)


# ---------------------------------------------------------------------------- formats and layouts
@pytest.mark.parametrize(("counts", "positions"), [
    ("h5", "tissue_positions_list.csv"), ("h5", "tissue_positions.csv.gz"),
    ("mtx", "tissue_positions_list.csv.gz"), ("mtx_plain", "tissue_positions.csv"),
    ("mtx", "tissue_positions.parquet")])
def test_every_counts_and_positions_format_reads_alike(tmp_path, counts, positions):
    expected, values = _write_run(tmp_path, counts=counts, positions=positions, angle=5.0)
    table = hx.io.read_visium(tmp_path).tables["table"]
    np.testing.assert_array_equal(table.X.toarray(), values.loc[table.obs_names].to_numpy())
    np.testing.assert_allclose(_neighbour_distances(table), 100.0, rtol=1e-9)
    assert table.obs["in_tissue"].dtype.kind == "i"


@bad_input("obscure error", "a GEO download: every file of a sample in one folder, prefixed "
           "(`GSM1_tissue_positions_list.csv.gz`, `GSM1_scalefactors_json.json.gz`, ...)",
           says="reads it; where the folder holds several samples, ValueError: '...' holds 2 "
                "files named *scalefactors_json.json: ... Put each sample's files in a folder of "
                "their own (before: 'has no spatial/ folder')",
           fix="one folder per sample, or the layout named in the message")
def test_geo_download_in_one_folder(tmp_path):
    _write_run(tmp_path / "run", positions="tissue_positions_list.csv")
    _write_run(tmp_path / "geo", positions="tissue_positions_list.csv", prefix="GSM1_",
               spatial="", gz=True)
    assert (tmp_path / "geo" / "GSM1_tissue_lowres_image.png.gz").exists()
    run, geo = hx.io.read_visium(tmp_path / "run"), hx.io.read_visium(tmp_path / "geo")
    np.testing.assert_array_equal(geo.tables["table"].X.toarray(),
                                  run.tables["table"].X.toarray())
    np.testing.assert_allclose(geo.tables["table"].obsm["spatial"],
                               run.tables["table"].obsm["spatial"])
    np.testing.assert_array_equal(hx.io.image_levels(geo, "he")[0].data.values,
                                  hx.io.image_levels(run, "he")[0].data.values)
    for path in (tmp_path / "geo").iterdir():  # a second sample beside the first
        shutil.copy(path, tmp_path / "geo" / path.name.replace("GSM1_", "GSM2_"))
    with pytest.raises(ValueError, match=r"holds 2 files named \*scalefactors_json\.json: "
                                         r".*GSM1_.*GSM2_.*folder of their own"):
        hx.io.read_visium(tmp_path / "geo")


@bad_input("silently wrong", "Visium .h5 counts with a gene name twice, renamed `A-1` without a "
           "word (Matrix Market, ST and HEST counts: `A.1`, with a warning)",
           says="warning: the gene names of the counts hold 1 duplicated name(s): A (2x); "
                "renamed A -> A-1, as scanpy does, for every reader",
           fix="sum or drop the repeated genes before reading if they are one gene")
@pytest.mark.parametrize("counts", ["h5", "mtx"])
def test_repeated_gene_names_are_renamed_alike(tmp_path, caplog, counts):
    _write_run(tmp_path, counts=counts, genes=["A", "B", "A", "C"])
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        sdata = hx.io.read_visium(tmp_path)
    assert list(sdata.tables["table"].var_names) == ["A", "B", "A-1", "C"]
    assert caplog.text.count("duplicated name(s)") == 1
    assert "1 duplicated name(s): A (2x)" in caplog.text and "A -> A-1" in caplog.text


def test_left_out_features_and_spots_are_logged(tmp_path, caplog):
    positions, _ = _write_run(tmp_path, counts="raw_h5", off_tissue=5,
                              genes=["A", "B", "C", "CD3"],
                              feature_types=["Gene Expression"] * 3 + ["Antibody Capture"])
    kept = positions.iloc[3:].reset_index()  # 3 barcodes of the counts have no position
    kept.to_csv(tmp_path / "spatial" / "tissue_positions.csv", index=False)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        table = hx.io.read_visium(tmp_path, counts_file="raw_feature_bc_matrix.h5").tables[
            "table"]
    assert list(table.var_names) == ["A", "B", "C"]
    assert "Left out 1 features" in caplog.text and "Antibody Capture: 1" in caplog.text
    assert "Dropped 3 barcodes" in caplog.text
    assert "2 of " in caplog.text and "off the tissue (in_tissue = 0)" in caplog.text
    assert table.obs["in_tissue"].dtype.kind == "i"
    assert table.obs["in_tissue"].tolist() == [0, 0] + [1] * (table.n_obs - 2)


# ------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
@pytest.mark.parametrize("run", ["scanpy_visium_1.0.0", "perik_visium_cytassist_mouse"])
def test_real_runs_keep_neighbouring_spots_100_um_apart(data_dir, run):
    table = hx.io.read_visium(data_dir / "visium" / run).tables["table"]
    distances = _neighbour_distances(table)
    assert len(distances) >= 3  # the 100 spots of scanpy's fixture hold 3 such pairs
    assert np.median(distances) == pytest.approx(100.0, rel=0.02)  # 84.9 and 78.6 um before
    assert np.percentile(distances, [5, 95]) == pytest.approx([100.0, 100.0], rel=0.02)
