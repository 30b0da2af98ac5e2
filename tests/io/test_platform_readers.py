"""Xenium, CosMx and MERSCOPE outputs read through spatialdata-io into histoexpr's conventions.

The tests write tiny output folders in each platform's layout (the files spatialdata-io 0.7
reads, a few cells and transcripts on a small image) and check where everything lands: the
pixel size, the transcripts on the image pixels (and cells) they were written on, the cells.
The MERFISH crop of ``../shared/data`` is laid out as a MERSCOPE region folder in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import tifffile
from _catalogue import bad_input
from shapely import MultiPolygon, Polygon

import histoexpr as hx

realdata = pytest.mark.realdata

MERFISH_MPP = 0.108627
MERFISH_ORIGIN = (6400.029, 4699.967)


# ----------------------------------------------------------------------------- writers


def write_merscope(root: Path, *, mpp: float = 0.5, origin=(100.0, 200.0), size=(48, 64)):
    """A MERSCOPE region folder: 2 stains of z3, 3 transcripts, 2 cells (square polygons)."""
    (root / "images").mkdir(parents=True)
    matrix = np.array([[1 / mpp, 0, -origin[0] / mpp], [0, 1 / mpp, -origin[1] / mpp], [0, 0, 1]])
    np.savetxt(root / "images" / "micron_to_mosaic_pixel_transform.csv", matrix)
    dapi = np.zeros(size, np.uint16)
    dapi[10:20, 30:40] = 1000
    tifffile.imwrite(root / "images" / "mosaic_PolyT_z3.tif", (dapi // 2).astype(np.uint16))
    tifffile.imwrite(root / "images" / "mosaic_DAPI_z3.tif", dapi)
    pixels = np.array([[35, 15], [5, 40], [60, 2]], float)  # (col, row) of the mosaic
    um = pixels * mpp + origin
    pd.DataFrame({"barcode_id": [0, 1, 2], "global_x": um[:, 0], "global_y": um[:, 1],
                  "global_z": 3.0, "x": pixels[:, 0], "y": pixels[:, 1], "fov": 0,
                  "gene": ["Gfap", "Slc17a7", "Gfap"], "transcript_id": ["a", "b", "c"]}
                 ).to_csv(root / "detected_transcripts.csv")
    cells = ["1", "2"]
    pd.DataFrame({"cell": cells, "Gfap": [1, 1], "Slc17a7": [0, 1], "Blank-1": [0, 0]}
                 ).set_index("cell").to_csv(root / "cell_by_gene.csv")
    pd.DataFrame({"EntityID": cells, "fov": 0, "volume": [10.0, 12.0], "center_x": um[:2, 0],
                  "center_y": um[:2, 1]}).set_index("EntityID").to_csv(root / "cell_metadata.csv")
    squares = [MultiPolygon([Polygon([(x - 2, y - 2), (x + 2, y - 2), (x + 2, y + 2),
                                      (x - 2, y + 2)])]) for x, y in um[:2]]
    _write_boundaries(root / "cell_boundaries.parquet", [1, 2], squares)
    return pixels, um


def _write_boundaries(path: Path, ids, polygons) -> None:
    """Vizgen's cell_boundaries.parquet: geometry column ``Geometry``, one row per z plane."""
    frame = gpd.GeoDataFrame({"ID": np.arange(len(ids)), "EntityID": ids, "ZIndex": 0,
                              "Type": "cell", "ZLevel": 1.5}, geometry=gpd.GeoSeries(polygons))
    frame.rename_geometry("Geometry").to_parquet(path)


def _write_10x_h5(path: Path, matrix, barcodes, genes) -> None:
    import h5py
    from scipy import sparse

    csc = sparse.csc_matrix(np.asarray(matrix).T)  # genes x cells, as Cell Ranger stores it
    with h5py.File(path, "w") as f:
        group = f.create_group("matrix")
        group["barcodes"] = np.array(barcodes, dtype="S")
        group["data"] = csc.data.astype(np.int32)
        group["indices"] = csc.indices.astype(np.int64)
        group["indptr"] = csc.indptr.astype(np.int64)
        group["shape"] = np.array(csc.shape, dtype=np.int32)
        features = group.create_group("features")
        features["id"] = np.array(genes, dtype="S")
        features["name"] = np.array(genes, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        features["genome"] = np.array(["mm10"] * len(genes), dtype="S")
        features["_all_tag_keys"] = np.array([b"genome"])


XENIUM_STAINS = ["DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin"]


def write_xenium(root: Path, *, mpp: float = 0.2125, size=(40, 56), version: str = "1.0.2"):
    """A Xenium output folder: 2 cells (labels and polygons), 3 transcripts.

    ``version="1.0.2"`` writes XOA 1's layout (``morphology_focus.ome.tif``, DAPI only);
    ``"2.0.0"`` writes XOA 2's: ``morphology_focus/morphology_focus_000<i>.ome.tif`` (4 stains),
    ``cell_id`` as (prefix, suffix) pairs and ``polygon_sets`` in ``cells.zarr.zip``, and
    ``label_id`` in the boundary files. (XOA 2's OME-XML links the four files into one image;
    here the first file holds the four planes, the others are placeholders, which reads the same
    through spatialdata-io.)
    """
    import zarr
    from spatialdata_io.readers.xenium import cell_id_str_from_prefix_suffix_uint32

    xoa2 = version.startswith("2")
    root.mkdir(parents=True)
    (root / "experiment.xenium").write_text(json.dumps(
        {"pixel_size": mpp, "analysis_sw_version": f"xenium-{version}"}))
    labels = np.zeros(size, np.uint32)
    labels[5:15, 10:20] = 1
    labels[20:30, 30:45] = 2
    ids = ["a", "b"]
    store = zarr.storage.ZipStore(root / "cells.zarr.zip", mode="w")
    group = zarr.open_group(store, mode="w")
    group.create_array("masks/0", data=labels)
    group.create_array("masks/1", data=labels)
    if xoa2:
        pairs = np.array([[1, 1], [2, 1]], np.uint32)
        ids = list(cell_id_str_from_prefix_suffix_uint32(pairs[:, 0], pairs[:, 1]))
        group.create_array("cell_id", data=pairs)
        summary = group.create_array("cell_summary", data=np.ones((2, 8)))
        summary.attrs["column_names"] = [
            "cell_centroid_x", "cell_centroid_y", "cell_area", "nucleus_centroid_x",
            "nucleus_centroid_y", "nucleus_area", "z_level", "nucleus_count"]
        for mask in (0, 1):
            group.create_array(f"polygon_sets/{mask}/cell_index", data=np.array([0, 1], np.int32))
    store.close()
    dapi = np.zeros(size, np.uint16)
    dapi[labels > 0] = 800
    if xoa2:
        (root / "morphology_focus").mkdir()
        stains = np.stack([dapi, dapi // 2 + 7, np.full(size, 3, np.uint16),
                           np.full(size, 5, np.uint16)])
        tifffile.imwrite(root / "morphology_focus" / "morphology_focus_0000.ome.tif", stains)
        for i in (1, 2, 3):
            tifffile.imwrite(root / "morphology_focus" / f"morphology_focus_000{i}.ome.tif",
                             stains[i])
    else:
        tifffile.imwrite(root / "morphology_focus.ome.tif", dapi)
    pixels = np.array([[15, 10], [37, 25], [50, 35]], float)
    um = pixels * mpp
    pd.DataFrame({"transcript_id": [1, 2, 3], "cell_id": [*ids, "UNASSIGNED"],
                  "overlaps_nucleus": [1, 1, 0], "feature_name": ["Gfap", "Slc17a7", "Gfap"],
                  "x_location": um[:, 0], "y_location": um[:, 1], "z_location": 1.0,
                  "qv": 40.0}).to_parquet(root / "transcripts.parquet")
    centres = np.array([[15.0, 10.0], [37.5, 25.0]]) * mpp
    pd.DataFrame({"cell_id": ids, "x_centroid": centres[:, 0], "y_centroid": centres[:, 1],
                  "transcript_counts": [1, 1], "cell_area": [100 * mpp**2, 150 * mpp**2],
                  "nucleus_area": [50 * mpp**2, 60 * mpp**2]}).to_parquet(root / "cells.parquet")
    for name, boxes in (("cell_boundaries.parquet", [(10, 5, 20, 15), (30, 20, 45, 30)]),
                        ("nucleus_boundaries.parquet", [(12, 7, 18, 13), (33, 22, 42, 28)])):
        rows = [{"cell_id": cell, "vertex_x": vx * mpp, "vertex_y": vy * mpp, "label_id": n}
                for n, (cell, (x0, y0, x1, y1)) in enumerate(zip(ids, boxes, strict=True), 1)
                for vx, vy in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
        frame = pd.DataFrame(rows)
        (frame if xoa2 else frame.drop(columns="label_id")).to_parquet(root / name)
    _write_10x_h5(root / "cell_feature_matrix.h5", [[1, 0], [0, 1]], ids, ["Gfap", "Slc17a7"])
    return pixels


def write_cosmx(root: Path, *, size=(40, 48), origins=((1000, 2000), (1048, 2000))):
    """A CosMx flat-file export: 2 FOVs of 3 cells each, one transcript per cell."""
    from PIL import Image

    (root / "CellComposite").mkdir(parents=True)
    (root / "CellLabels").mkdir()
    height, width = size
    centres = [(10, 8), (30, 20), (12, 30)]  # (col, row) in the files' pixels
    expr, meta, tx = [], [], []
    for fov, (gx, gy) in enumerate(origins, start=1):
        labels = np.zeros(size, np.uint16)
        rgb = np.zeros((*size, 3), np.uint8)
        for cell, (col, row) in enumerate(centres, start=1):
            labels[row - 3 : row + 4, col - 3 : col + 4] = cell
            rgb[row - 3 : row + 4, col - 3 : col + 4] = 200
            lx, ly = col, height - 1 - row  # spatialdata-io flips CosMx images upside down
            meta.append({"fov": fov, "cell_ID": cell, "CenterX_local_px": lx,
                         "CenterY_local_px": ly, "CenterX_global_px": gx + lx,
                         "CenterY_global_px": gy + ly, "Area": 49})
            expr.append({"fov": fov, "cell_ID": cell, "Gfap": cell % 2, "Slc17a7": 1})
            tx.append({"fov": fov, "cell_ID": cell, "x_local_px": lx + 0.2,
                       "y_local_px": ly - 0.2, "x_global_px": gx + lx + 0.2,
                       "y_global_px": gy + ly - 0.2, "z": 0,
                       "target": "Gfap" if cell % 2 else "Slc17a7", "CellComp": "Nuclear"})
        Image.fromarray(rgb).save(root / "CellComposite" / f"CellComposite_F{fov:03d}.jpg")
        tifffile.imwrite(root / "CellLabels" / f"CellLabels_F{fov:03d}.tif", labels)
    pd.DataFrame(expr).to_csv(root / "Run1_exprMat_file.csv", index=False)
    pd.DataFrame(meta).to_csv(root / "Run1_metadata_file.csv", index=False)
    pd.DataFrame(tx).to_csv(root / "Run1_tx_file.csv", index=False)
    pd.DataFrame({"fov": [1, 2], "x_global_px": [o[0] for o in origins],
                  "y_global_px": [o[1] for o in origins]}).to_csv(
        root / "Run1_fov_positions_file.csv", index=False)


def _value_at(sdata, key: str, x: float, y: float):
    """The pixel value(s) of an image or label map at the point (x, y) um."""
    step = hx.io.get_pixel_size(sdata, key) / 4
    return hx.io.read_region(sdata, key, (x - step, y - step, x + step, y + step), mpp=step * 2,
                             outside="fill")


def _channels(sdata, key: str) -> list[str]:
    return [str(c) for c in hx.io.image_levels(sdata, key)[0].data.coords["c"].values]


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ----------------------------------------------------------------------------- readers


def test_read_merscope_mpp_alignment_and_cells(tmp_path):
    pixels, um = write_merscope(tmp_path / "region_0", mpp=0.5, origin=(100.0, 200.0))
    sdata = hx.io.read_merscope(tmp_path / "region_0", z_layer=3)

    assert hx.io.get_pixel_size(sdata, "dapi") == pytest.approx(0.5)
    assert hx.io.image_levels(sdata, "dapi")[0].offset == pytest.approx((100.0, 200.0))
    # the nuclear stain alone under "dapi", the other stains under "stains"
    assert _channels(sdata, "dapi") == ["DAPI"]
    assert _channels(sdata, "stains") == ["PolyT"]
    assert _value_at(sdata, "stains", *um[0])[0].max() == 500
    points = sdata.points["transcripts"].compute()
    assert sdata.points["transcripts"].attrs["spatialdata_attrs"]["feature_key"] == "gene"
    np.testing.assert_allclose(points[["x", "y"]].to_numpy(), um)  # global_x/y kept, in um
    assert list(points["gene"]) == ["Gfap", "Slc17a7", "Gfap"]
    # the first transcript was written on the bright DAPI square (pixel col 35, row 15)
    assert _value_at(sdata, "dapi", *um[0])[0].max() == 1000
    assert _value_at(sdata, "dapi", *um[1])[0].max() == 0
    table = sdata.tables["table"]
    assert table.n_obs == 2 and list(table.var_names) == ["Gfap", "Slc17a7"]  # Blank-1 aside
    (shapes,) = sdata.shapes.values()
    np.testing.assert_allclose(np.column_stack([shapes.centroid.x, shapes.centroid.y]), um[:2])


def test_read_xenium_mpp_and_transcripts_on_their_cells(tmp_path):
    pixels = write_xenium(tmp_path / "outs", mpp=0.2125)
    sdata = hx.io.read_xenium(tmp_path / "outs")

    assert hx.io.get_pixel_size(sdata, "dapi") == pytest.approx(0.2125)
    assert hx.io.get_pixel_size(sdata, "cell_labels") == pytest.approx(0.2125)
    assert _channels(sdata, "dapi") == ["0"] and "stains" not in sdata.images  # XOA 1: DAPI only
    points = sdata.points["transcripts"].compute()
    np.testing.assert_allclose(points[["x", "y"]].to_numpy(), pixels * 0.2125)
    assert list(points["gene"]) == ["Gfap", "Slc17a7", "Gfap"]
    on = [int(_value_at(sdata, "cell_labels", x, y).max()) for x, y in points[["x", "y"]].values]
    assert on == [1, 2, 0]  # cells a, b and the unassigned transcript
    assert sdata.tables["table"].n_obs == 2
    centroid = sdata.shapes["cell_boundaries"].centroid
    np.testing.assert_allclose([centroid.x.iloc[0], centroid.y.iloc[0]], [15 * 0.2125, 10 * 0.2125])


def write_he(root: Path, matrix, *, feature=(slice(12, 20), slice(20, 28)), name="he_image",
             alignment=True):
    """A 60 x 80 px RGB H&E (OME-TIFF) with one red square, and its alignment CSV (``matrix``).

    The alignment maps H&E pixels (x = column, y = row) to morphology pixels, as Xenium
    Explorer exports it.
    """
    he = np.full((60, 80, 3), 30, np.uint8)
    he[feature] = (220, 10, 10)
    tifffile.imwrite(root / f"{name}.ome.tif", he, photometric="rgb")
    if alignment:
        pd.DataFrame(np.asarray(matrix, float)).to_csv(root / f"{name}alignment.csv",
                                                       header=False, index=False)


def test_read_xenium_he_lands_on_the_transcripts(tmp_path):
    """H&E pixel (col, row) -> morphology pixel 0.5 * (col, row) + (3, 2); the first transcript
    (morphology pixel (15, 10)) sits on H&E pixel (24, 16), inside the red square."""
    write_xenium(tmp_path / "outs", mpp=0.2125)
    write_he(tmp_path / "outs", [[0.5, 0, 3], [0, 0.5, 2], [0, 0, 1]])
    before = _listing(tmp_path / "outs")
    sdata = hx.io.read_xenium(tmp_path / "outs")  # found in the folder with its alignment

    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(0.5 * 0.2125)
    assert hx.io.image_levels(sdata, "he")[0].offset == pytest.approx((3 * 0.2125, 2 * 0.2125))
    assert _channels(sdata, "he") == ["r", "g", "b"]
    points = sdata.points["transcripts"].compute()[["x", "y"]].to_numpy()
    on, off = _value_at(sdata, "he", *points[0]), _value_at(sdata, "he", *points[1])
    assert tuple(on[:, 0, 0]) == (220, 10, 10) and tuple(off[:, 0, 0]) == (30, 30, 30)
    # the red square's corners, in um, are where the alignment puts them
    x0, y0, x1, y1 = (3 + 0.5 * 20) * 0.2125, (2 + 0.5 * 12) * 0.2125, \
        (3 + 0.5 * 28) * 0.2125, (2 + 0.5 * 20) * 0.2125
    region = hx.io.read_region(sdata, "he", (x0, y0, x1, y1), mpp=0.5 * 0.2125)
    assert region.shape == (3, 8, 8) and (region[0] == 220).all()
    assert _listing(tmp_path / "outs") == before
    assert "he" not in hx.io.read_xenium(tmp_path / "outs", he_image=None).images


def test_read_xenium_rotated_he_is_resampled_onto_the_transcripts(tmp_path, caplog):
    """A 90-degree alignment: H&E (col, row) -> morphology (40 - 0.5 row, 0.5 col); the first
    transcript (morphology (15, 10)) sits on H&E (col 20, row 50)."""
    write_xenium(tmp_path / "outs", mpp=0.2125)
    write_he(tmp_path / "outs", [[0, -0.5, 40], [0.5, 0, 0], [0, 0, 1]],
             feature=(slice(46, 55), slice(16, 25)), name="post_xenium")
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_xenium(tmp_path / "outs", he_image="post_xenium.ome.tif")
    assert "resampling" in caplog.text
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(0.5 * 0.2125)
    points = sdata.points["transcripts"].compute()[["x", "y"]].to_numpy()
    assert _value_at(sdata, "he", *points[0])[0, 0, 0] > 200  # red, on the square
    assert _value_at(sdata, "he", *points[1])[0, 0, 0] < 50


def test_read_xenium_xoa2_dapi_alone_and_stains_apart(tmp_path):
    """XOA 2's morphology_focus/ folder (4 stains) and polygon_sets: the nuclear stain alone
    under "dapi" (what the one-channel steps read), the three others under "stains"."""
    pixels = write_xenium(tmp_path / "outs", mpp=0.2125, version="2.0.0")
    sdata = hx.io.read_xenium(tmp_path / "outs")

    assert _channels(sdata, "dapi") == ["DAPI"]
    assert _channels(sdata, "stains") == XENIUM_STAINS[1:]
    x, y = pixels[0] * 0.2125
    assert _value_at(sdata, "dapi", x, y).shape[0] == 1
    assert _value_at(sdata, "dapi", x, y).max() == 800
    assert list(_value_at(sdata, "stains", x, y)[:, 0, 0]) == [407, 3, 5]
    assert hx.io.get_pixel_size(sdata, "stains") == pytest.approx(0.2125)
    table = sdata.tables["table"]
    assert list(table.obs_names) == ["aaaaaaab-1", "aaaaaaac-1"]
    on = [int(_value_at(sdata, "cell_labels", *p * 0.2125).max()) for p in pixels]
    assert on == [1, 2, 0]
    assert list(sdata.shapes["cell_boundaries"].index) == ["aaaaaaab-1", "aaaaaaac-1"]
    only = hx.io.read_xenium(tmp_path / "outs", stains_key=None)
    assert "stains" not in only.images and _channels(only, "dapi") == ["DAPI"]


def test_merscope_dapi_is_one_fluorescence_channel(tmp_path):
    """The steps reading "dapi" (transcript_labels' tissue test, tiles, augmentations) get one
    fluorescence channel, not the stains averaged (nor 3 stains taken for an RGB H&E)."""
    from histoexpr._core.image_facts import stain_of

    write_merscope(tmp_path / "region_0")
    sdata = hx.io.read_merscope(tmp_path / "region_0", z_layer=3)
    region = hx.io.read_region(sdata, "dapi", hx.io.image_levels(sdata, "dapi")[0].bounds,
                               mpp=0.5)
    assert region.shape == (1, 48, 64) and stain_of(region.shape[0]) == "fluorescence"


def test_read_cosmx_fovs_in_micrometres(tmp_path):
    write_cosmx(tmp_path / "run")
    sdata = hx.io.read_cosmx(tmp_path / "run", mpp=0.12)

    assert sorted(sdata.images) == ["1_image", "2_image"]
    for key in ("1_image", "2_labels"):
        assert hx.io.get_pixel_size(sdata, key) == pytest.approx(0.12)
    # FOV 2 starts 48 px to the right of FOV 1
    offset_1 = hx.io.image_levels(sdata, "1_image")[0].offset
    offset_2 = hx.io.image_levels(sdata, "2_image")[0].offset
    assert offset_2[0] - offset_1[0] == pytest.approx(48 * 0.12)
    points = sdata.points["transcripts"].compute()
    assert len(points) == 6 and set(points["gene"]) == {"Gfap", "Slc17a7"}
    for row in points.itertuples():  # every transcript lies on its own cell, in its own FOV
        own, other = f"{row.fov}_labels", f"{3 - int(row.fov)}_labels"
        assert int(_value_at(sdata, own, row.x, row.y).max()) == row.cell_ID
        assert int(_value_at(sdata, other, row.x, row.y).max()) == 0
    table = sdata.tables["table"]
    assert table.n_obs == 6
    np.testing.assert_allclose(table.obsm["spatial"], table.obsm["global"] * 0.12)


# ----------------------------------------------------------------------------- bad input


@bad_input("obscure error", "`hx.io.read_xenium` on a MERSCOPE (or any non-Xenium) folder",
           says="FileNotFoundError naming the missing Xenium files and the platform the folder "
                "looks like; nothing is written",
           fix="call the reader of that platform (here hx.io.read_merscope)")
def test_read_xenium_on_a_merscope_folder_names_the_right_reader(tmp_path):
    folder = tmp_path / "region_0"
    write_merscope(folder)
    before = _listing(folder)
    with pytest.raises(FileNotFoundError, match=r"experiment\.xenium.*read_merscope"):
        hx.io.read_xenium(folder)
    assert _listing(folder) == before


@bad_input("obscure error", "a MERSCOPE folder without `detected_transcripts.csv` (or another "
           "file the reader needs)",
           says="FileNotFoundError naming every missing file, before spatialdata-io runs",
           fix="pass the complete region folder, or turn the part off (transcripts=False, "
               "cells=False, image=False)")
def test_read_merscope_missing_file_is_named(tmp_path):
    folder = tmp_path / "region_0"
    write_merscope(folder)
    (folder / "detected_transcripts.csv").unlink()
    (folder / "cell_metadata.csv").unlink()
    before = _listing(folder)
    with pytest.raises(FileNotFoundError,
                       match=r"detected_transcripts\.csv.*cell_metadata\.csv.*turn off"):
        hx.io.read_merscope(folder)
    assert _listing(folder) == before
    sdata = hx.io.read_merscope(folder, transcripts=False, cells=False)
    assert "transcripts" not in sdata.points and "dapi" in sdata.images


@bad_input("obscure error", "`hx.io.read_merscope(..., z_layer=...)` of a plane without images",
           says="FileNotFoundError naming the z planes the folder has",
           fix="pass one of the z_layer values named, or image=False")
def test_read_merscope_missing_z_layer(tmp_path):
    folder = tmp_path / "region_0"
    write_merscope(folder)
    with pytest.raises(FileNotFoundError, match=r"z_layer=0.*mosaic_DAPI_z3\.tif"):
        hx.io.read_merscope(folder, z_layer=0)


@bad_input("obscure error", "`hx.io.read_cosmx` on a folder without a CosMx counts file, or on "
           "a file",
           says="FileNotFoundError / NotADirectoryError saying what a CosMx export holds",
           fix="pass the CosMx flat-file export folder (or dataset_id= where it holds several)")
def test_read_cosmx_not_a_cosmx_folder(tmp_path):
    write_xenium(tmp_path / "outs")
    with pytest.raises(FileNotFoundError, match=r"0 CosMx counts files.*read_xenium"):
        hx.io.read_cosmx(tmp_path / "outs")
    with pytest.raises(NotADirectoryError, match="not a CosMx output folder"):
        hx.io.read_cosmx(tmp_path / "outs" / "experiment.xenium")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hx.io.read_cosmx(tmp_path / "nowhere")


@bad_input("silently wrong", "`hx.io.read_cosmx(folder, dataset_id=\"../other/run\")` (a "
           "dataset_id holding a path): the files of another folder read as this one's",
           says="ValueError: dataset_id='../other/run' cannot name a CosMx data set (the prefix "
                "of its files) ...",
           fix="the prefix of the export's files (e.g. dataset_id='Lung5_Rep1')")
def test_read_cosmx_dataset_id_names_files_in_the_folder_only(tmp_path):
    write_cosmx(tmp_path / "run")
    with pytest.raises(ValueError, match=r"dataset_id='../other/run' cannot name a CosMx data "
                                         r"set \(the prefix of its files\)"):
        hx.io.read_cosmx(tmp_path / "run", dataset_id="../other/run", mpp=0.12)


@bad_input("obscure error", "a CosMx export without its `CellLabels/` folder",
           says="FileNotFoundError naming 'CellLabels'", fix="copy the folder from the export")
def test_read_cosmx_missing_labels(tmp_path):
    write_cosmx(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "CellLabels")
    with pytest.raises(FileNotFoundError, match="CellLabels"):
        hx.io.read_cosmx(tmp_path / "run")


@bad_input("obscure error", "a Xenium `experiment.xenium` without `pixel_size`",
           says="ValueError naming the file and the missing pixel size",
           fix="copy experiment.xenium again from the run's output")
def test_read_xenium_without_pixel_size(tmp_path):
    write_xenium(tmp_path / "outs")
    (tmp_path / "outs" / "experiment.xenium").write_text(json.dumps(
        {"analysis_sw_version": "xenium-1.0.2"}))
    with pytest.raises(ValueError, match="pixel_size"):
        hx.io.read_xenium(tmp_path / "outs")


@bad_input("silently wrong", "a Xenium folder with a post-Xenium H&E (`*he_image.ome.tif`) but "
           "no alignment CSV next to it",
           says="FileNotFoundError naming the alignment file expected, before anything is read "
                "(an H&E placed without its alignment would sit off the transcripts)",
           fix="pass he_alignment= the CSV exported from Xenium Explorer, he_alignment=None if "
               "the image is already registered onto the morphology image, or he_image=None")
def test_read_xenium_he_without_alignment_is_refused(tmp_path):
    write_xenium(tmp_path / "outs")
    write_he(tmp_path / "outs", None, alignment=False)
    before = _listing(tmp_path / "outs")
    with pytest.raises(FileNotFoundError,
                       match=r"he_imagealignment\.csv.*he_alignment=None.*he_image=None"):
        hx.io.read_xenium(tmp_path / "outs")
    assert _listing(tmp_path / "outs") == before
    with pytest.raises(FileNotFoundError, match="alignment file .*nowhere.csv.* does not exist"):
        hx.io.read_xenium(tmp_path / "outs", he_alignment="nowhere.csv")
    registered = hx.io.read_xenium(tmp_path / "outs", he_alignment=None)  # said to be aligned
    assert hx.io.get_pixel_size(registered, "he") == pytest.approx(0.2125)


@bad_input("silently wrong", "`hx.io.read_xenium(folder, he_image='he_image.ome.tif')` run from "
           "a working folder that holds a file of that name (another sample's H&E)",
           says="nothing: a relative path is read from the Xenium folder only (before: the "
                "working folder's file was read first, and another sample's H&E placed on this "
                "one); a name only in the working folder: FileNotFoundError ... a relative path "
                "is read from the Xenium folder, not the working folder",
           fix="nothing; give an absolute path for an H&E outside the Xenium folder")
def test_read_xenium_relative_he_image_is_read_from_the_xenium_folder(tmp_path, monkeypatch):
    sample = tmp_path / "sampleA"
    write_xenium(sample, mpp=0.2125)
    write_he(sample, [[0.5, 0, 3], [0, 0.5, 2], [0, 0, 1]])
    workdir = tmp_path / "workdir"  # the working folder: another sample's H&E, same names
    workdir.mkdir()
    write_he(workdir, [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]], feature=(slice(40, 50),
                                                                         slice(60, 70)))
    write_he(workdir, [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]], name="elsewhere")
    monkeypatch.chdir(workdir)
    before = _listing(tmp_path)
    sdata = hx.io.read_xenium(sample, he_image="he_image.ome.tif",
                              he_alignment="he_imagealignment.csv")
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(0.5 * 0.2125)  # sample A's
    assert hx.io.image_levels(sdata, "he")[0].offset == pytest.approx((3 * 0.2125, 2 * 0.2125))
    with pytest.raises(FileNotFoundError, match=r"sampleA/elsewhere\.ome\.tif' does not exist\. "
                                                r"Check the path \(a relative path is read from "
                                                r"the Xenium folder, not the working folder"):
        hx.io.read_xenium(sample, he_image="elsewhere.ome.tif")
    with pytest.raises(FileNotFoundError, match=r"sampleA/elsewherealignment\.csv' does not "
                                                r"exist.*read from the Xenium folder"):
        hx.io.read_xenium(sample, he_alignment="elsewherealignment.csv")
    assert _listing(tmp_path) == before
    placed = hx.io.read_xenium(sample, he_image=workdir / "elsewhere.ome.tif")  # absolute: read
    assert hx.io.get_pixel_size(placed, "he") == pytest.approx(0.2125)


@bad_input("obscure error", "an H&E alignment CSV that is not a 3x3 affine matrix (2x3, text, "
           "last row not 0,0,1)",
           says="ValueError naming the file and what it holds, before spatialdata-io runs",
           fix="export the image alignment again from Xenium Explorer, or pass he_image=None")
@pytest.mark.parametrize(("content", "says"), [
    ("0.5,0,3\n0,0.5,2\n", r"2x3 table, not the 3x3"),
    ("scale,0.5\nshift,3\nnone,1\n", "not a table of numbers"),
    ("0.5,0,3\n0,0.5,2\n1,1,1\n", r"not an invertible affine matrix \(last row 0, 0, 1\)"),
])
def test_read_xenium_bad_he_alignment(tmp_path, content, says):
    write_xenium(tmp_path / "outs")
    write_he(tmp_path / "outs", None, alignment=False)
    (tmp_path / "outs" / "he_imagealignment.csv").write_text(content)
    before = _listing(tmp_path / "outs")
    with pytest.raises(ValueError, match=says + ".*Xenium Explorer"):
        hx.io.read_xenium(tmp_path / "outs")
    assert _listing(tmp_path / "outs") == before


@bad_input("obscure error", "an H&E image that is not RGB (e.g. a one-channel TIFF) passed as "
           "`he_image`",
           says="ValueError naming the image's shape and the RGB layouts expected (spatialdata-io "
                "would fail on a bare assert)",
           fix="pass the post-Xenium H&E OME-TIFF, or he_image=None")
def test_read_xenium_he_not_rgb(tmp_path):
    write_xenium(tmp_path / "outs")
    tifffile.imwrite(tmp_path / "outs" / "grey.ome.tif", np.zeros((60, 80), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(60, 80\); expected an RGB image"):
        hx.io.read_xenium(tmp_path / "outs", he_image=tmp_path / "outs" / "grey.ome.tif",
                          he_alignment=None)


@bad_input("obscure error", "`nuclear_stain=` naming no channel of a multi-stain Xenium or "
           "MERSCOPE image",
           says="ValueError listing the channels the image has",
           fix="pass nuclear_stain= the name of the nuclear stain among them")
def test_nuclear_stain_not_found_names_the_channels(tmp_path):
    write_merscope(tmp_path / "region_0")
    with pytest.raises(ValueError, match=r"no channel named 'Hoechst'.*\['DAPI', 'PolyT'\]"):
        hx.io.read_merscope(tmp_path / "region_0", nuclear_stain="Hoechst")


# ----------------------------------------------------------------------------- flip_y, labels


def test_read_transcripts_flip_y_matches_the_upright_table():
    table = pd.DataFrame({"x": [1.0, 4.0, 7.5], "y": [2.0, 6.0, 0.5], "gene": ["A", "B", "A"]})
    upright = hx.io.read_transcripts(table, offset=(0.5, 0.25)).points["transcripts"].compute()
    negated = table.assign(y=-table["y"])
    flipped = hx.io.read_transcripts(negated, offset=(0.5, 0.25), flip_y=True)
    np.testing.assert_allclose(flipped.points["transcripts"].compute()[["x", "y"]],
                               upright[["x", "y"]])
    np.testing.assert_allclose(upright["y"], [1.75, 5.75, 0.25])


def test_float_label_image_holding_integers_is_converted(caplog):
    labels = np.zeros((20, 20), np.float32)
    labels[2:6, 2:6] = 1.0
    labels[10:15, 10:15] = 2.0
    table = pd.DataFrame({"x": [3.0, 12.0], "y": [3.0, 12.0], "gene": ["A", "B"]})
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        sdata = hx.io.read_transcripts(table, labels=labels)
    assert "float32 with integer values" in caplog.text
    nuclei = sdata.labels["nuclei"]
    assert nuclei.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(nuclei), labels.astype(np.uint8))


@bad_input("silently wrong", "a float label image with non-integer values (e.g. a probability "
           "map) passed as labels",
           says="ValueError: The label image passed as labels= (float32) holds 16 non-integer "
                "values (e.g. 0.7 at (row, col) (2, 2)): it is not a label image",
           fix="pass the segmentation's label image (integer object ids, 0 for none)")
def test_float_label_image_with_fractions_is_refused():
    labels = np.zeros((20, 20), np.float32)
    labels[2:6, 2:6] = 0.7
    table = pd.DataFrame({"x": [3.0], "y": [3.0], "gene": ["A"]})
    with pytest.raises(ValueError, match=r"non-integer values \(e\.g\. 0\.7.*not a label image"):
        hx.io.read_transcripts(table, labels=labels)


def test_float_label_map_in_sdata_labels_cells(caplog):
    """A float label map stored in ``sdata.labels`` (made elsewhere) still names cells 1, 2."""
    from spatialdata.models import Labels2DModel

    from histoexpr._core.cells import cell_raster

    labels = np.zeros((20, 20), np.float64)
    labels[2:6, 2:6] = 1.0
    labels[10:15, 10:15] = 2.0
    table = pd.DataFrame({"x": [3.0], "y": [3.0], "gene": ["A"]})
    sdata = hx.io.read_transcripts(table, image=np.zeros((20, 20), np.uint8))
    sdata.labels["cells"] = Labels2DModel.parse(labels, dims=("y", "x"),
                                                transformations=hx.io.read_transcripts(
                                                    table, labels=labels.astype(np.uint8)
                                                ).labels["nuclei"].attrs["transform"])
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        ids, names = cell_raster(sdata, "cells", (0.0, 0.0), 1.0, (20, 20))
    assert list(names) == ["1", "2"]  # not "1.0", "2.0"
    assert "converted to uint8" in caplog.text
    assert ids[3, 3] == 1 and ids[12, 12] == 2 and ids[0, 0] == 0


# ----------------------------------------------------------------------------- real data


def _merfish_as_merscope(source: Path, root: Path) -> int:
    """Lay the MERFISH crop out as a MERSCOPE region folder; return the number of cells.

    The crop's images become ``images/mosaic_<stain>_z0.tif``; the transform is built from the
    crop's origin and pixel size (README); the cell polygons (y stored negated) become
    ``cell_boundaries.parquet``; each cell's counts are its transcripts inside its polygon.
    """
    from PIL import Image

    (root / "images").mkdir(parents=True)
    for stain, name in (("DAPI", "dapi"), ("PolyT", "polyT")):
        with Image.open(source / "images" / f"mini_dataset_{name}_z0.jpg") as image:
            tifffile.imwrite(root / "images" / f"mosaic_{stain}_z0.tif",
                             np.asarray(image.convert("L")))
    ox, oy = MERFISH_ORIGIN
    matrix = np.array([[1 / MERFISH_MPP, 0, -ox / MERFISH_MPP],
                       [0, 1 / MERFISH_MPP, -oy / MERFISH_MPP], [0, 0, 1]])
    np.savetxt(root / "images" / "micron_to_mosaic_pixel_transform.csv", matrix)
    with gzip.open(source / "vizgen_transcripts.csv.gz") as stream:
        transcripts = pd.read_csv(stream)
    transcripts.to_csv(root / "detected_transcripts.csv")
    vertices = pd.read_csv(source / "cell_boundaries" / "z0_polygons.gz")
    polygons, ids = [], []
    for cell, group in vertices.groupby("poly_ID", sort=True):
        if len(group) >= 3:
            polygon = Polygon(np.column_stack([group["x"], -group["y"]])).buffer(0)
            if polygon.geom_type == "Polygon" and polygon.area > 0:
                polygons.append(MultiPolygon([polygon]))
                ids.append(str(cell))
    _write_boundaries(root / "cell_boundaries.parquet", ids, polygons)
    cells = gpd.GeoDataFrame({"cell": ids}, geometry=[p.geoms[0] for p in polygons])
    points = gpd.GeoDataFrame(transcripts[["gene"]], geometry=gpd.points_from_xy(
        transcripts["global_x"], transcripts["global_y"]))
    inside = gpd.sjoin(points, cells, predicate="within")
    counts = pd.crosstab(inside["cell"], inside["gene"]).reindex(ids, fill_value=0)
    counts.index.name = "cell"
    counts.to_csv(root / "cell_by_gene.csv")
    centroids = cells.geometry.centroid
    pd.DataFrame({"EntityID": ids, "fov": 0, "center_x": centroids.x, "center_y": centroids.y}
                 ).set_index("EntityID").to_csv(root / "cell_metadata.csv")
    return len(ids)


@realdata
@pytest.mark.slow
def test_read_merscope_on_the_merfish_crop(data_dir, tmp_path):
    """The Vizgen MERFISH crop, laid out as MERSCOPE writes it, reads aligned with its image."""
    source = data_dir / "merfish_mouse_brain"
    n_cells = _merfish_as_merscope(source, tmp_path / "region_0")
    sdata = hx.io.read_merscope(tmp_path / "region_0", z_layer=0)

    assert hx.io.get_pixel_size(sdata, "dapi") == pytest.approx(MERFISH_MPP)
    assert hx.io.image_levels(sdata, "dapi")[0].offset == pytest.approx(MERFISH_ORIGIN)
    assert sdata.images["dapi"]["scale0"]["image"].shape == (1, 4143, 4603)  # DAPI alone
    assert _channels(sdata, "stains") == ["PolyT"]
    points = sdata.points["transcripts"].compute()
    # the 337 transcripts of the 109 blank barcodes (Blank-*) are dropped from the points
    assert len(points) == 80343 - 337 and points["gene"].nunique() == 559 - 109
    assert not points["gene"].astype(str).str.startswith("Blank-").any()
    # the same transcripts read with read_transcripts (offset, image mpp) land on the same pixels
    reference = hx.io.read_transcripts(
        source / "vizgen_transcripts.csv.gz", x="global_x", y="global_y",
        offset=MERFISH_ORIGIN, image=source / "images" / "mini_dataset_dapi_z0.jpg",
        image_mpp=MERFISH_MPP, outside="keep").points["transcripts"].compute()
    reference = reference[~reference["gene"].astype(str).str.startswith("Blank-")]
    np.testing.assert_allclose(points["x"] - MERFISH_ORIGIN[0], reference["x"], atol=1e-6)
    np.testing.assert_allclose(points["y"] - MERFISH_ORIGIN[1], reference["y"], atol=1e-6)
    # cells: one row per polygon, and the polygons sit on the nuclei (DAPI brighter inside)
    table = sdata.tables["table"]
    assert table.n_obs == n_cells > 100
    (shapes,) = sdata.shapes.values()
    assert len(shapes) == n_cells
    from histoexpr._core.cells import cell_raster

    (shapes_key,) = sdata.shapes.keys()
    x0, y0 = MERFISH_ORIGIN
    bounds = (x0, y0, x0 + 4603 * MERFISH_MPP, y0 + 4143 * MERFISH_MPP)
    dapi = hx.io.read_region(sdata, "dapi", bounds, mpp=1.0)[0].astype(np.float32)
    ids, _ = cell_raster(sdata, shapes_key, (x0, y0), 1.0, dapi.shape)
    inside, outside = dapi[ids > 0].mean(), dapi[ids == 0].mean()
    assert inside > 1.5 * outside, (inside, outside)
    # transcripts crowd on the cells: the share inside them is well above their share of area
    assert table.X.sum() / len(points) > 1.5 * (ids > 0).mean()
