"""TRIDENT/CLAM feature files and HEST-1k samples, on files written here as their formats say."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx


@pytest.fixture(scope="module")
def embedded():
    sdata = hx.datasets.synthetic_section(seed=0, size_um=300, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_um=50, mpp=1.0, min_tissue=0)
    hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
    return sdata


def test_trident_round_trip(embedded, tmp_path):
    path = hx.io.write_trident_h5(embedded, tmp_path / "slide.h5")
    table = embedded.tables["he_tiles_table"]
    mpp = hx.io.get_pixel_size(embedded, "he")
    with h5py.File(path) as handle:
        assert handle["features"].dtype == np.float32
        assert handle["coords"].shape == (table.n_obs, 2)
        attrs = dict(handle["coords"].attrs)
    assert attrs["patch_size_level0"] == round(50 / mpp) and attrs["patch_level"] == 0
    assert attrs["patch_size"] == table.uns["tiles"]["size_px"]
    assert attrs["target_magnification"] == pytest.approx(10.0)  # tiles at 1 um/px
    back = hx.io.read_trident_h5(path, key_added="he_tiles")
    read = back.tables["he_tiles_table"]
    np.testing.assert_array_equal(read.obsm["X_handcrafted"], table.obsm["X_handcrafted"])
    np.testing.assert_allclose(read.obsm["spatial"], table.obsm["spatial"], atol=mpp)
    np.testing.assert_allclose(
        back.shapes["he_tiles"].total_bounds, embedded.shapes["he_tiles"].total_bounds, atol=mpp
    )
    assert read.uns["embeddings"]["X_handcrafted"]["encoder"] == "handcrafted"
    # the tiles join the slide and train like its own
    embedded.shapes["read_tiles"] = back.shapes["he_tiles"]


def test_read_a_trident_file_as_documented(tmp_path):
    """features (n, d); coords (n, 2) top-left in level-0 px, TRIDENT's attributes on coords."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 768)).astype(np.float32)
    coords = np.array([[0, 0], [512, 0], [1024, 0], [0, 512], [512, 512], [1024, 512]])
    path = tmp_path / "TCGA-XX.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=features)
        handle.create_dataset("coords", data=coords)
        handle["coords"].attrs.update(
            {
                "patch_size": 256,
                "patch_size_level0": 512,
                "level0_magnification": 40,
                "target_magnification": 20,
                "overlap": 0,
                "name": "TCGA-XX",
            }
        )
    sdata = hx.io.read_trident_h5(path)
    table = sdata.tables["tiles_table"]
    np.testing.assert_array_equal(table.obsm["X_features"], features)
    np.testing.assert_allclose(table.obsm["spatial"], coords * 0.25 + 64)  # 40x: 0.25 um/px
    assert table.uns["tiles"]["mpp"] == pytest.approx(0.5) and table.uns["tiles"]["size_px"] == 256
    x0, y0, x1, y1 = sdata.shapes["tiles"].geometry.iloc[4].bounds
    assert (x0, y0, x1, y1) == pytest.approx((128, 128, 256, 256))


@bad_input(
    "obscure error",
    "`hx.io.read_trident_h5` of a CLAM feature file (no patch size, no magnification recorded)",
    says="names the missing patch size or pixel size and the option that gives it",
    fix="pass patch_size_level0= and mpp=",
)
def test_clam_file_without_attributes(tmp_path):
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=np.ones((3, 4), np.float32))
        handle.create_dataset("coords", data=np.array([[0, 0], [256, 0], [0, 256]]))
    with pytest.raises(ValueError, match="pass mpp="):
        hx.io.read_trident_h5(path)
    with pytest.raises(ValueError, match="pass patch_size_level0="):
        hx.io.read_trident_h5(path, mpp=0.5)
    sdata = hx.io.read_trident_h5(path, mpp=0.5, patch_size_level0=256)
    assert sdata.tables["tiles_table"].uns["tiles"]["size_um"] == 128
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle.create_dataset("X", data=np.ones(3))
    with pytest.raises(ValueError, match=r"no dataset \['features', 'coords'\]"):
        hx.io.read_trident_h5(tmp_path / "other.h5")


@bad_input(
    "data lost",
    "`hx.io.write_trident_h5(..., overwrite=True)` onto a .h5 file of the user's",
    says="refuses: the file is one hx.io.write_trident_h5 did not write; it is left intact",
    fix="choose another path",
)
def test_write_replaces_only_its_own_file(embedded, tmp_path):
    mine = tmp_path / "mine.h5"
    mine.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hx.io.write_trident_h5(embedded, mine)
    with pytest.raises(FileExistsError, match="write_trident_h5 did not write"):
        hx.io.write_trident_h5(embedded, mine, overwrite=True)
    assert mine.read_bytes() == b"user data"
    ours = hx.io.write_trident_h5(embedded, tmp_path / "ours.h5")
    hx.io.write_trident_h5(embedded, ours, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.h5", "ours.h5"]


def _hest_sample(root, sample_id="TENX00", mpp=0.5):
    import anndata as ad
    import tifffile

    for folder in ("st", "wsis", "metadata"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = np.full((1024, 1024, 3), 235, np.uint8)
    image[200:800, 200:800] = (200, 120, 170)
    with tifffile.TiffWriter(root / "wsis" / f"{sample_id}.tif") as tif:
        tif.write(image, tile=(256, 256), subifds=1, photometric="rgb")
        tif.write(image[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
    spots_px = np.array([[300.0, 300.0], [500.0, 300.0], [700.0, 700.0]])
    counts = rng.poisson(3, size=(3, 5)).astype(np.float32)
    adata = ad.AnnData(
        X=counts,
        obs=pd.DataFrame({"in_tissue": [1, 1, 1]}, index=["AAAC-1", "AAAG-1", "AACT-1"]),
        var=pd.DataFrame(index=[f"G{i}" for i in range(5)]),
    )
    adata.obsm["spatial"] = spots_px
    adata.write_h5ad(root / "st" / f"{sample_id}.h5ad")
    meta = {
        "pixel_size_um_estimated": mpp,
        "pixel_size_um_embedded": 0.4,
        "spot_diameter": 55.0,
        "inter_spot_dist": 100.0,
        "st_technology": "Visium",
        "fullres_px_width": 1024,
    }
    (root / "metadata" / f"{sample_id}.json").write_text(json.dumps(meta))
    return counts, spots_px


def test_read_hest_sample(tmp_path):
    counts, spots_px = _hest_sample(tmp_path)
    sdata = hx.io.read_hest(tmp_path, "TENX00")
    table = sdata.tables["table"]
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(0.5)  # the estimated one
    np.testing.assert_allclose(table.obsm["spatial"], spots_px * 0.5)
    np.testing.assert_array_equal(table.X.toarray(), counts)
    assert list(table.obs_names) == ["AAAC-1", "AAAG-1", "AACT-1"]
    np.testing.assert_allclose(sdata.shapes["spots"]["radius"], 27.5)
    assert table.uns["hest"]["st_technology"] == "Visium"
    # the spots lie on the tissue drawn under them
    patch = hx.io.read_region(sdata, "he", (140, 140, 160, 160))
    assert patch[1].mean() < 150
    with pytest.raises(FileNotFoundError, match="HEST metadata"):
        hx.io.read_hest(tmp_path, "TENX99")


@bad_input(
    "silently wrong",
    "`hx.io.read_hest(root, sample_id)` with a sample id that is a path ('../other/TENX00')",
    says="ValueError: sample_id='../other/TENX00' cannot name a HEST sample's files: it holds a "
    "path separator (before: joined to root's folders as a path, reaching outside them)",
    fix="pass the sample's id alone (the stem of its files in root's st/, wsis/, metadata/)",
)
def test_a_hest_sample_id_that_is_a_path_is_refused(tmp_path):
    _hest_sample(tmp_path)
    for sample_id in ("../other/TENX00", "..", "/tmp/TENX00", ""):
        with pytest.raises(ValueError, match="sample_id=.* cannot name a HEST sample's files"):
            hx.io.read_hest(tmp_path, sample_id)
    assert hx.io.read_hest(tmp_path, "TENX00").tables["table"].n_obs == 3


@bad_input("data lost", "`hx.io.write_trident_h5(sdata, 'slide.h5')` beside a file of the user's "
           "named `.slide.h5.partial` (or two writers of the same file at once)",
           says="nothing: the file is written under a name of its own beside the target and "
                "swapped in at the end (before: a fixed temporary name, truncated and then "
                "deleted)",
           fix="nothing to do")
def test_trident_writes_beside_under_a_name_of_its_own(embedded, tmp_path, monkeypatch):
    mine = tmp_path / ".slide.h5.partial"
    mine.write_bytes(b"the user's own file")
    path = hx.io.write_trident_h5(embedded, tmp_path / "slide.h5")
    assert mine.read_bytes() == b"the user's own file"
    written = path.read_bytes()
    # a write failing midway leaves the file as it was, and nothing of its own beside it
    monkeypatch.setattr(h5py.Group, "create_dataset",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        hx.io.write_trident_h5(embedded, path, overwrite=True)
    assert path.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == [".slide.h5.partial", "slide.h5"]
