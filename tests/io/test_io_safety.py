"""Nothing lost, nothing silently wrong in io, pp and the CLI: bad input, refits, overwrites.

Each test is one bad input of the catalogue (``docs/bad_inputs.md``); the data-loss tests check
that the user's files and elements are still there, byte for byte.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
from _catalogue import bad_input
from conftest import make_disk_section, tree_digest

import histoexpr as hx
from histoexpr._cli import EXIT_BAD_INPUT, main


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("three months of annotations\n")
    (path / "sub").mkdir()
    (path / "sub" / "slide.bin").write_bytes(bytes(range(256)) * 4)
    return tree_digest(path)


# --- 1. the CLI replaces only folders and stores it wrote ---------------------------------------

@bad_input("data lost", "`histoexpr demo --out DIR --overwrite` on a folder of the user's",
           says="refuses: DIR was not written by `histoexpr demo` (no .histoexpr-demo.json); "
                "nothing is deleted",
           fix="choose another --out, or move the folder yourself")
def test_demo_overwrite_refuses_a_user_folder(tmp_path, capsys):
    out = tmp_path / "my-results"
    before = _user_folder(out)
    assert main(["demo", "--out", str(out), "--overwrite", "--size", "quick"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert str(out) in err and "not written by `histoexpr demo`" in err and "--out" in err
    assert tree_digest(out) == before


@bad_input("data lost", "`histoexpr demo --overwrite` on a demo report the user added a file to",
           says="refuses: the folder also holds files the demo did not write (named)",
           fix="move those files out of the folder, or choose another --out")
def test_demo_overwrite_refuses_a_report_holding_user_files(tmp_path, tiny_demo, capsys):
    out = tmp_path / "histoexpr-demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert {"tiles.png", "metrics.json", "summary.md"} <= {p.name for p in out.iterdir()}
    # the Makefile's `make demo` runs `--overwrite` on the demo's own folder: it is replaced
    figure = out / "tiles.png"
    first = figure.stat().st_ino
    assert main(["demo", "--out", str(out), "--overwrite"]) == 0
    assert figure.stat().st_ino != first  # a new file in its place
    # ... but not once the user keeps a file of theirs in it, or edited one of the demo's
    (out / "my_notes.md").write_text("keep me")
    before = tree_digest(out)
    assert main(["demo", "--out", str(out), "--overwrite"]) == EXIT_BAD_INPUT
    assert "my_notes.md" in capsys.readouterr().err
    assert tree_digest(out) == before
    (out / "my_notes.md").unlink()
    (out / "summary.md").write_text("# my own notes on the demo\n")
    before = tree_digest(out)
    assert main(["demo", "--out", str(out), "--overwrite"]) == EXIT_BAD_INPUT
    assert "summary.md" in capsys.readouterr().err
    assert tree_digest(out) == before


@bad_input("data lost", "`histoexpr demo --overwrite` on a demo report where the user added an "
           "element inside the report's `section.zarr` (only the folder's top level was "
           "compared with what the demo wrote)",
           says="refuses: the folder also holds files the demo did not write or that changed "
           "since (named, e.g. section.zarr/shapes/my_annotations/...)",
           fix="move those files out of the folder, or choose another --out")
def test_demo_overwrite_refuses_a_report_with_a_file_added_deep_inside(tmp_path, monkeypatch,
                                                                        capsys):
    from histoexpr import _demo

    def jobs(report, scale, seed):
        store = report.record("section.zarr")
        (store / "shapes" / "spots").mkdir(parents=True)
        (store / "shapes" / "spots" / "zarr.json").write_text("{}")

    monkeypatch.setattr(_demo, "_run_jobs", jobs)
    monkeypatch.setattr(_demo, "_summary", lambda metrics, figures: "# a tiny demo\n")
    out = tmp_path / "histoexpr-demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert main(["demo", "--out", str(out), "--overwrite"]) == 0  # its own report: replaced
    mine = out / "section.zarr" / "shapes" / "my_annotations"
    mine.mkdir()
    (mine / "zarr.json").write_text('{"mine": true}')
    before = tree_digest(out)
    assert main(["demo", "--out", str(out), "--overwrite"]) == EXIT_BAD_INPUT
    assert "section.zarr/shapes/my_annotations/zarr.json" in capsys.readouterr().err
    assert tree_digest(out) == before


@bad_input("data lost", "`histoexpr predict -o OUT --overwrite` where OUT is a user's folder or "
           "their own .zarr store",
           says="refuses: OUT is not a store written by `histoexpr predict`; nothing is deleted",
           fix="choose another -o")
@pytest.mark.parametrize("what", ["folder", "own store", "file"])
def test_predict_overwrite_refuses_what_it_did_not_write(what, tmp_path, capsys):
    out = tmp_path / "results.zarr"
    if what == "folder":
        before = _user_folder(out)
    elif what == "own store":
        make_disk_section(size_px=40).write(out)
        before = tree_digest(out)
    else:
        out.write_bytes(b"not a store")
        before = {"": hashlib.sha256(out.read_bytes()).hexdigest()}
    code = main(["predict", "-m", str(tmp_path / "model.pt"), "-i", str(tmp_path / "slide.tif"),
                 "-o", str(out), "--overwrite"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert str(out) in err and "not a store written by `histoexpr predict`" in err
    if what == "file":
        assert {"": hashlib.sha256(out.read_bytes()).hexdigest()} == before
    else:
        assert tree_digest(out) == before


@bad_input("data lost", "`histoexpr predict -o OUT --overwrite` where the user had added an "
           "element to OUT with spatialdata (`write_element`), or OUT is a copy the user wrote "
           "elsewhere from a prediction store (its marker travels in the attributes)",
           says="refuses: OUT is not a store written by `histoexpr predict` alone / at this "
           "path; nothing is deleted",
           fix="choose another -o")
@pytest.mark.slow
def test_predict_overwrite_replaces_its_own_store(tmp_path):
    """The positive side: a store ``histoexpr predict`` wrote is marked and may be replaced."""
    import tifffile

    train = hx.datasets.synthetic_section(seed=0, size_um=240, spot_pitch_um=40,
                                          spot_diameter_um=35)
    model = hx.tl.fit(train, model="spot_regressor", genes=["EPCAM", "PTPRC"], size_um=40.0,
                      mpp=1.0)
    model_path = hx.io.save_model(model, tmp_path / "m.pt")
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, np.moveaxis(_pixels(train, "he"), 0, -1))
    out = tmp_path / "pred.zarr"
    args = ["predict", "-m", str(model_path), "-i", str(slide), "-o", str(out), "--mpp", "0.5"]
    assert main(args) == 0
    assert sd.read_zarr(out).attrs["histoexpr"]["written_by"] == "histoexpr predict"
    first = (out / "zarr.json").stat().st_ino
    assert main([*args, "--overwrite"]) == 0
    assert (out / "zarr.json").stat().st_ino != first  # a new store in its place
    # a file of the user's put inside the store: the store is no longer histoexpr's alone
    notes = out / "tables" / "notes.txt"
    notes.write_text("mine")
    assert main([*args, "--overwrite"]) == EXIT_BAD_INPUT
    assert notes.read_text() == "mine"
    notes.unlink()
    # an element the user added with spatialdata: refused, and kept
    import geopandas as gpd
    from shapely.geometry import Point
    from spatialdata.models import ShapesModel

    store = sd.read_zarr(out)
    store.shapes["my_annotations"] = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=[Point(1, 1)], data={"radius": [3.0]}))
    store.write_element("my_annotations")
    before = tree_digest(out)
    assert main([*args, "--overwrite"]) == EXIT_BAD_INPUT
    assert tree_digest(out) == before
    # a copy the user wrote elsewhere from a prediction store carries its marker: not ours there
    copy = tmp_path / "copy.zarr"
    sd.read_zarr(out).write(copy)
    before = tree_digest(copy)
    args_copy = [*args[:-4], "-o", str(copy), "--mpp", "0.5"]
    assert main([*args_copy, "--overwrite"]) == EXIT_BAD_INPUT
    assert tree_digest(copy) == before


# --- 2. overwrite=True replaces only what the same step wrote -----------------------------------

@pytest.fixture
def section():
    """A synthetic section: image 'he', circles 'spots' and the counts 'table'."""
    return hx.datasets.synthetic_section(seed=0, size_um=200)


def _pixels(sdata, key) -> np.ndarray:
    import xarray as xr

    element = sdata.images[key]
    if isinstance(element, xr.DataTree):
        element = element["scale0"]["image"]
    return np.asarray(element.values)


@bad_input("data lost", "`hx.pp.tile(sdata, 'he', key_added='he', overwrite=True)`",
           says="KeyError: sdata.images['he'] ... not by hx.pp.tile: it is not replaced, even "
                "with overwrite=True ... choose another key_added, e.g. 'he_2'",
           fix="choose another key_added")
def test_tile_overwrite_never_replaces_the_image(section):
    pixels = _pixels(section, "he").copy()
    with pytest.raises(KeyError, match="another key_added") as caught:
        hx.pp.tile(section, "he", size_um=40.0, mpp=1.0, key_added="he", overwrite=True)
    assert "Pass overwrite=True" not in str(caught.value)
    np.testing.assert_array_equal(_pixels(section, "he"), pixels)
    assert "he_table" not in section.tables


@bad_input("data lost", "`hx.pp.detect_tissue(sdata, key_added='table', overwrite=True)`",
           says="KeyError: sdata.tables['table'] already exists and it was not written by "
                "histoexpr, not by hx.pp.detect_tissue: it is not replaced, even with "
                "overwrite=True ... Choose another key_added",
           fix="choose another key_added (the default is '{image_key}_tissue')")
def test_detect_tissue_overwrite_never_replaces_the_counts(section):
    table = section.tables["table"]
    counts = table.X.copy()
    with pytest.raises(KeyError, match="not written by histoexpr"):
        hx.pp.detect_tissue(section, "he", key_added="table", overwrite=True)
    assert section.tables["table"] is table
    assert (section.tables["table"].X != counts).nnz == 0


@bad_input("silently wrong", "`hx.pp.tile(sdata, key_added='spots', overwrite=True)` (the counts "
           "table then annotates tiles)",
           says="KeyError: sdata.shapes['spots'] already exists and it was not written by "
                "histoexpr, not by hx.pp.tile ... Choose another key_added",
           fix="choose another key_added")
def test_tile_overwrite_never_replaces_the_spots(section):
    spots = section.shapes["spots"].copy()
    with pytest.raises(KeyError, match="another key_added"):
        hx.pp.tile(section, "he", size_um=40.0, mpp=1.0, key_added="spots", overwrite=True)
    assert section.shapes["spots"].geometry.equals(spots.geometry)
    assert "spots_table" not in section.tables


@bad_input("data lost", "`overwrite=True` of one step on an element another histoexpr step wrote "
           "(e.g. `tile(key_added='he_tissue')`)",
           says="KeyError: ... was written by hx.pp.detect_tissue, not by hx.pp.tile",
           fix="choose another key_added")
def test_overwrite_of_another_steps_element_is_refused(section):
    hx.pp.detect_tissue(section, "he")
    labels = section.labels["he_tissue"]
    with pytest.raises(KeyError, match="written by hx.pp.detect_tissue, not by hx.pp.tile"):
        hx.pp.tile(section, "he", size_um=40.0, mpp=1.0, key_added="he_tissue", overwrite=True)
    assert section.labels["he_tissue"] is labels


def test_overwrite_replaces_what_the_same_step_wrote_also_after_a_round_trip(section, tmp_path):
    hx.pp.tile(section, "he", size_um=40.0, mpp=1.0)
    with pytest.raises(KeyError, match="overwrite=True"):  # asked first, as before
        hx.pp.tile(section, "he", size_um=20.0, mpp=1.0)
    hx.pp.tile(section, "he", size_um=20.0, mpp=1.0, overwrite=True)
    assert section.tables["he_tiles_table"].uns["tiles"]["size_um"] == 20.0
    # images, labels and points lose their attrs in a .zarr store: sdata.attrs keeps the record
    section.write(tmp_path / "s.zarr")
    back = sd.read_zarr(tmp_path / "s.zarr")
    hx.pp.detect_tissue(back, "he", mpp=8.0, overwrite=True)
    hx.pp.tile(back, "he", size_um=40.0, mpp=1.0, overwrite=True)
    assert back.tables["he_tiles_table"].uns["tiles"]["size_um"] == 40.0
    # a labels element the user later put under the recorded name is not taken for histoexpr's
    from spatialdata.models import Labels2DModel

    del back.labels["he_tissue"]
    back.labels["he_tissue"] = Labels2DModel.parse(np.ones((7, 9), dtype=np.uint8),
                                                   dims=("y", "x"))
    with pytest.raises(KeyError, match="not written by histoexpr"):
        hx.pp.detect_tissue(back, "he", overwrite=True)
    assert back.labels["he_tissue"].shape == (7, 9)


# --- 9. settings ---------------------------------------------------------------------------------

@bad_input("silently wrong", "`hx.settings.progressbar = False` (a typo of progress_bar)",
           says="AttributeError: hx.settings has no option 'progressbar' ... Did you mean "
                "'progress_bar'? The options are: device, seed, progress_bar, verbosity, "
                "n_workers, precision, datasets_dir, max_memory",
           fix="use one of the options named")
def test_unknown_setting_is_refused():
    with pytest.raises(AttributeError, match="Did you mean 'progress_bar'") as caught:
        hx.settings.progressbar = False
    assert "verbosity" in str(caught.value)
    assert not hasattr(hx.settings, "progressbar")
    hx.settings.progress_bar = False  # the real option still works
    assert hx.settings.progress_bar is False


# --- 4. the pixel size of a legacy ST section, estimated robustly --------------------------------

def _st_files(folder: Path, *, n_x: int = 14, n_y: int = 13, pitch_px: float = 50.0,
              genes=("EPCAM", "PTPRC", "COL1A1"), seed: int = 0):
    """A legacy ST section: counts (spots x genes), a spot file and a white PNG image."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(1, n_x + 1), np.arange(1, n_y + 1))
    xs, ys = xs.ravel()[:-1], ys.ravel()[:-1]  # 14 x 13 - 1 = 181 spots
    ids = [f"{x}x{y}" for x, y in zip(xs, ys, strict=True)]
    spots = pd.DataFrame({"x": xs, "y": ys, "new_x": xs + rng.normal(0, 0.02, len(xs)),
                          "new_y": ys + rng.normal(0, 0.02, len(xs)),
                          "pixel_x": 20 + (xs - 1) * pitch_px + rng.normal(0, 0.5, len(xs)),
                          "pixel_y": 30 + (ys - 1) * pitch_px + rng.normal(0, 0.5, len(xs)),
                          "selected": 1})
    counts = pd.DataFrame(rng.poisson(3, (len(ids), len(genes))), index=ids, columns=list(genes))
    size = (int(20 + n_x * pitch_px), int(30 + n_y * pitch_px))
    Image.fromarray(np.full((size[1], size[0], 3), 240, dtype=np.uint8)).save(folder / "he.png")
    return counts, spots


def _write_st(folder: Path, counts, spots, *, counts_name: str = "counts.tsv"):
    counts.to_csv(folder / counts_name, sep="\t")
    spots.to_csv(folder / "spots.tsv", sep="\t", index=False)
    return folder / counts_name, folder / "spots.tsv", folder / "he.png"


@bad_input("silently wrong", "a legacy-ST spot file with 10 of 181 spots moved off the array "
           "(`hx.io.read_st` without mpp=)",
           says="warning: 10 of 181 spots ... lie more than a quarter of the spot pitch off the "
                "array grid: 14x1, ...; the pixel size is estimated without them",
           fix="check their pixel_x/pixel_y, or pass mpp=")
def test_read_st_pixel_size_is_robust_to_spots_off_the_array(tmp_path, caplog):
    import logging

    counts, spots = _st_files(tmp_path)
    truth = 200.0 / 50.0  # 200 um between neighbours of a row, 50 px apart
    moved = spots.index[np.random.default_rng(1).choice(len(spots), 10, replace=False)]
    spots.loc[moved, ["x", "new_x"]] += 40  # off the 14 columns of the array
    # (kept unique: no two moved spots land on one array position)
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        sdata = hx.io.read_st(*_write_st(tmp_path, counts, spots), selected_only=False)
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(truth, rel=0.01)
    named = [f"{x}x{y}" for x, y in spots.loc[moved, ["x", "y"]].to_numpy()]
    assert "10 of 181 spots" in caplog.text and all(name in caplog.text for name in named)


@bad_input("silently wrong", "a legacy-ST spot file whose pixel positions do not follow its "
           "array (a third of the spots misplaced)",
           says="ValueError: the pixel size cannot be estimated reliably from spots.tsv: ... of "
                "181 spots lie off the array grid ...",
           fix="check the spot file's pixel_x/pixel_y, or pass mpp=")
def test_read_st_refuses_an_unstable_pixel_size(tmp_path):
    counts, spots = _st_files(tmp_path)
    rng = np.random.default_rng(2)
    moved = rng.choice(len(spots), 60, replace=False)
    spots.iloc[moved, spots.columns.get_loc("pixel_x")] += rng.uniform(15, 25, 60)
    spots.iloc[moved, spots.columns.get_loc("pixel_y")] -= rng.uniform(15, 25, 60)
    with pytest.raises(ValueError, match="cannot be estimated reliably.*pass mpp="):
        hx.io.read_st(*_write_st(tmp_path, counts, spots), selected_only=False)
    # mpp= is the way out
    sdata = hx.io.read_st(*_write_st(tmp_path, counts, spots), mpp=4.0, selected_only=False)
    assert hx.io.get_pixel_size(sdata, "he") == 4.0


@pytest.mark.realdata
@pytest.mark.slow  # reads the 92 Mpx H&E twice
def test_read_st_pixel_size_her2st_with_spots_off_the_array(data_dir, tmp_path):
    import shutil

    import pandas as pd

    root = data_dir / "her2st"
    image = next((root / "images").glob("C2_*.jpg"))
    counts = root / "counts" / "C2.tsv.gz"
    clean = hx.io.read_st(counts, root / "spots" / "C2_selection.tsv", image)
    spots = pd.read_csv(root / "spots" / "C2_selection.tsv", sep="\t")
    taken = set(zip(spots["x"], spots["y"], strict=True))
    rows = [i for i in np.random.default_rng(0).permutation(len(spots))
            if (spots.loc[i, "x"] + 60, spots.loc[i, "y"]) not in taken][:10]
    spots.loc[rows, ["x", "new_x"]] += 60
    spots.to_csv(tmp_path / "C2_selection.tsv", sep="\t", index=False)
    shutil.copy(counts, tmp_path / "C2.tsv.gz")
    moved = hx.io.read_st(tmp_path / "C2.tsv.gz", tmp_path / "C2_selection.tsv", image)
    assert hx.io.get_pixel_size(moved, "he") == pytest.approx(
        hx.io.get_pixel_size(clean, "he"), rel=0.005)


# --- 8 and obscure errors of the table readers ---------------------------------------------------

@bad_input("silently wrong", "a counts table with a gene twice (`IGKC`, `IGKC`), silently renamed "
           "`IGKC.1` (and `IGKC-1`, without a word, by Visium .h5 counts)",
           says="warning: the gene names of the counts hold 1 duplicated name(s): IGKC (2x); "
                "renamed IGKC -> IGKC-1 (scanpy's convention, for every reader)",
           fix="sum or drop the repeated columns before reading if they are one gene")
def test_duplicated_gene_names_are_named(tmp_path, caplog):
    import logging

    counts, spots = _st_files(tmp_path, genes=("IGKC", "EPCAM", "IGKC"))
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        sdata = hx.io.read_st(*_write_st(tmp_path, counts, spots), mpp=4.0)
    assert list(sdata.tables["table"].var_names) == ["IGKC", "EPCAM", "IGKC-1"]
    assert "IGKC (2x)" in caplog.text and "IGKC -> IGKC-1" in caplog.text
    np.testing.assert_array_equal(sdata.tables["table"].X.toarray(),
                                  counts.loc[sdata.tables["table"].obs_names].to_numpy())


@pytest.mark.realdata
def test_duplicated_gene_names_of_a_visium_run_are_named(data_dir, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        sdata = hx.io.read_visium(data_dir / "visium" / "perik_visium_cytassist_mouse")
    assert "11 duplicated name(s)" in caplog.text and "Aldoa -> Aldoa-1" in caplog.text
    assert sdata.tables["table"].var_names.is_unique


@bad_input("obscure error", "a truncated `.tsv.gz` counts file",
           says="ValueError: the counts file '.../counts.tsv.gz' is truncated or corrupt",
           fix="copy or download it again")
def test_truncated_gz_names_the_file(tmp_path):
    counts, spots = _st_files(tmp_path)
    paths = _write_st(tmp_path, counts, spots, counts_name="counts.tsv.gz")
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"counts\.tsv\.gz.*truncated or corrupt.*again"):
        hx.io.read_st(*paths, mpp=4.0)


@bad_input("obscure error", "a plain text file named `.gz`",
           says="ValueError: the counts file '...' is not gzip-compressed although its name ends "
                "in .gz",
           fix="drop '.gz' from its name")
def test_text_named_gz_names_the_file(tmp_path):
    counts, spots = _st_files(tmp_path)
    paths = _write_st(tmp_path, counts, spots)
    renamed = paths[0].rename(tmp_path / "counts.tsv.gz")
    with pytest.raises(ValueError, match=r"counts\.tsv\.gz.*not gzip-compressed"):
        hx.io.read_st(renamed, *paths[1:], mpp=4.0)


@bad_input("obscure error", "a string in the counts (`'12 reads'`)",
           says="ValueError: the counts of 'counts.tsv' hold text in 1 column(s): ['EPCAM'] "
                "(e.g. '12 reads' in row '3x2')",
           fix="fix or remove those entries")
def test_text_in_counts_is_named(tmp_path):
    counts, spots = _st_files(tmp_path)
    counts = counts.astype(object)
    counts.loc["3x2", "EPCAM"] = "12 reads"
    with pytest.raises(ValueError, match=r"hold text.*EPCAM.*'12 reads' in row '3x2'"):
        hx.io.read_st(*_write_st(tmp_path, counts, spots), mpp=4.0)


@bad_input("obscure error", "an empty counts file",
           says="ValueError: the counts file '.../counts.tsv' is empty",
           fix="pass the complete file")
def test_empty_counts_file(tmp_path):
    counts, spots = _st_files(tmp_path)
    paths = _write_st(tmp_path, counts, spots)
    paths[0].write_text("")
    with pytest.raises(ValueError, match=r"counts\.tsv' is empty"):
        hx.io.read_st(*paths, mpp=4.0)


@bad_input("obscure error", "a spot twice in the counts table",
           says="ValueError: the counts table 'counts.tsv' holds 1 spot(s) more than once "
                "(['2x1'])",
           fix="sum or drop the repeated rows, e.g. table.groupby(level=0).sum()")
def test_duplicated_spots_in_counts(tmp_path):
    import pandas as pd

    counts, spots = _st_files(tmp_path)
    counts = pd.concat([counts, counts.loc[["2x1"]]])
    with pytest.raises(ValueError, match=r"holds 1 spot\(s\) more than once.*2x1"):
        hx.io.read_st(*_write_st(tmp_path, counts, spots), mpp=4.0)


@bad_input("silently wrong", "a 1 x 1 px RGB image (read as 3 x 1 px: a (y, x, c) image of "
           "height <= 4 was taken for (c, y, x))",
           says="read as 1 x 1 px with 3 channels (the file's own layout is used)",
           fix="nothing: it is read as it is")
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_tiny_image_keeps_its_axes(suffix, tmp_path):
    import pandas as pd
    import tifffile
    from PIL import Image

    pixel = np.array([[[200, 100, 50]]], dtype=np.uint8)  # (y, x, c) = (1, 1, 3)
    path = tmp_path / f"one{suffix}"
    if suffix == ".png":
        Image.fromarray(pixel).save(path)
    else:
        tifffile.imwrite(path, np.repeat(np.repeat(pixel, 3, 0), 2, 1))  # (3, 2, 3): y, x, c
    table = pd.DataFrame({"x": [0.2], "y": [0.3], "gene": ["A"]})
    sdata = hx.io.read_transcripts(table, image=path, pixel_size=1.0)
    image = _pixels(sdata, "dapi")
    expected = (3, 1, 1) if suffix == ".png" else (3, 3, 2)
    assert image.shape == expected
    assert list(image[:, 0, 0]) == [200, 100, 50]


@bad_input("obscure error", "an in-memory (y, x, c) or (c, y, x) array too small to tell its "
           "channel axis (e.g. 3 x 4 x 3)",
           says="ValueError: the image of shape (3, 4, 3) is too small to tell its channel axis",
           fix="pass it as (channels, height, width)")
def test_ambiguous_tiny_array_is_refused():
    import pandas as pd

    table = pd.DataFrame({"x": [0.2], "y": [0.3], "gene": ["A"]})
    with pytest.raises(ValueError, match="too small to tell its channel axis"):
        hx.io.read_transcripts(table, image=np.zeros((3, 4, 3), dtype=np.uint8), pixel_size=1.0)


@bad_input("obscure error", "a truncated slide (a tiled TIFF cut short; an SVS of its header "
           "only)",
           says="ValueError: the slide '...' is truncated or corrupt: the pixel data ... end past "
                "the file's ... bytes",
           fix="copy or download it again")
def test_truncated_slide_is_refused(tmp_path):
    import tifffile

    path = tmp_path / "slide.tif"
    image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    tifffile.imwrite(path, image, tile=(128, 128), resolution=(2.0, 2.0),
                     resolutionunit="MICROMETER")
    assert hx.io.read_wsi(path).images["he"]["scale0"]["image"].shape == (3, 512, 512)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=r"slide\.tif' is truncated or corrupt"):
        hx.io.read_wsi(path)


@pytest.mark.realdata
def test_header_only_svs_is_refused(data_dir, tmp_path):
    path = tmp_path / "cut.svs"
    path.write_bytes((data_dir / "wsi" / "CMU-1-Small-Region.svs").read_bytes()[:20_000])
    with pytest.raises(ValueError, match=r"cut\.svs' is truncated or corrupt"):
        hx.io.read_wsi(path)


@bad_input("obscure error", "`hx.pl.spots(..., max_side=0)` (ZeroDivisionError)",
           says="ValueError: max_side must be a positive number of pixels (e.g. 1000), got 0",
           fix="pass a positive max_side")
def test_max_side_zero_is_refused(section):
    with pytest.raises(ValueError, match="max_side must be a positive"):
        hx.pl.spots(section, "spots", max_side=0)


@bad_input("silently wrong", "`hx.io.read_transcripts(labels=...)` with label ids 0, 5, 900 "
           "(logged as 900 labels)",
           says="log: Adding `sdata.labels['nuclei']` (2 labels (largest id 900))",
           fix="nothing: the count is right")
def test_transcript_labels_are_counted_not_maxed(caplog):
    import logging

    import pandas as pd

    labels = np.zeros((20, 20), dtype=np.int32)
    labels[2:5, 2:5], labels[10:15, 10:15] = 5, 900
    table = pd.DataFrame({"x": [1.0, 12.0], "y": [1.0, 12.0], "gene": ["A", "B"]})
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        hx.io.read_transcripts(table, labels=labels, pixel_size=1.0)
    assert "2 labels (largest id 900)" in caplog.text


@bad_input("obscure error", "text in the coordinates of a transcript table",
           says="ValueError: the coordinate columns 'x', 'y' of the transcript table hold text "
                "in 1 column(s): ['x'] (e.g. 'abc' in row 1)",
           fix="fix or remove those entries")
def test_text_in_transcript_coordinates_is_named():
    import pandas as pd

    table = pd.DataFrame({"x": ["1.0", "abc"], "y": [1.0, 2.0], "gene": ["A", "B"]})
    with pytest.raises(ValueError, match=r"hold text.*'abc' in row 1"):
        hx.io.read_transcripts(table, pixel_size=1.0)


# --- 7. read_region says when the box leaves the image -------------------------------------------

@bad_input("silently wrong", "`hx.io.read_region` with a box wholly outside the image (black "
           "pixels returned)",
           says="ValueError: the box ... lies wholly outside 'he' (x 0..200, y 0..200 um): there "
                "is nothing to read",
           fix="give the box in micrometres of the 'global' coordinate system, or "
               "outside='fill'")
def test_read_region_wholly_outside_is_refused():
    sdata = make_disk_section()  # 400 px at 0.5 um/px: 200 x 200 um
    with pytest.raises(ValueError, match="wholly outside 'he'.*nothing to read"):
        hx.io.read_region(sdata, "he", (300, 300, 350, 350))
    filled = hx.io.read_region(sdata, "he", (300, 300, 350, 350), outside="fill", fill=7)
    assert filled.shape == (3, 100, 100) and (filled == 7).all()


@bad_input("silently wrong", "`hx.io.read_region` with a box partly outside the image (padded "
           "with black without a word)",
           says="UserWarning: 75% of the box ... lies outside 'he' (...); that part is padded "
                "with the fill value",
           fix="pass a box on the image, outside='fill' to pad silently or outside='raise' to "
               "refuse")
def test_read_region_partly_outside_warns_and_pads():
    import warnings

    sdata = make_disk_section()
    inside = hx.io.read_region(sdata, "he", (150, 150, 200, 200))
    with pytest.warns(UserWarning, match="75% of the box .* lies outside 'he'"):
        region = hx.io.read_region(sdata, "he", (150, 150, 250, 250), fill=0)
    np.testing.assert_array_equal(region[:, :100, :100], inside)  # the part on the image
    assert (region[:, 100:, :] == 0).all() and (region[:, :, 100:] == 0).all()
    with pytest.raises(ValueError, match="lies outside"):
        hx.io.read_region(sdata, "he", (150, 150, 250, 250), outside="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hx.io.read_region(sdata, "he", (150, 150, 250, 250), outside="fill")
        hx.io.read_region(sdata, "he", (0, 0, 200, 200))  # the whole image: no warning


# --- 5. detect_tissue(kind="auto") from the pixels -----------------------------------------------

def _with_pixels(pixels: np.ndarray, mpp: float = 0.5):
    from spatialdata import SpatialData

    from histoexpr.io._elements import image_element

    return SpatialData(images={"he": image_element(pixels, mpp=mpp)})


def _tissue_fraction(sdata, key: str = "he_tissue") -> float:
    level = hx.io.image_levels(sdata, key)[0]
    height, width = level.shape_yx
    return float((np.asarray(sdata.labels[key]) > 0).mean()) if height and width else 0.0


@bad_input("silently wrong", "`detect_tissue(kind='auto')` on a grey or an RGBA H&E (99.6 % "
           "tissue: taken for fluorescence by its channel count)",
           says="log: detecting tissue on 'he' as brightfield: its background is 94% of full "
                "scale, bright; the map matches the RGB one",
           fix="nothing (pass kind= to override the decision)")
@pytest.mark.parametrize("variant", ["grey", "rgba"])
def test_detect_tissue_auto_on_grey_and_rgba_brightfield(variant):
    rgb = make_disk_section()
    hx.pp.detect_tissue(rgb, "he")
    expected = _tissue_fraction(rgb)
    pixels = np.asarray(rgb.images["he"].values)
    if variant == "grey":
        pixels = pixels.mean(axis=0, keepdims=True).astype(np.uint8)
    else:
        pixels = np.concatenate([pixels, np.full_like(pixels[:1], 255)])
    sdata = _with_pixels(pixels)
    hx.pp.detect_tissue(sdata, "he")
    assert 0.3 < expected < 0.5  # a disk of radius 0.35
    assert _tissue_fraction(sdata) == pytest.approx(expected, abs=0.03)


@bad_input("silently wrong", "`detect_tissue(kind='auto')` on a DAPI scan stored as RGB (100 % "
           "tissue: taken for brightfield by its 3 channels)",
           says="log: detecting tissue on 'he' (3 channel(s)) as fluorescence: its background is "
                "2% of full scale, dark",
           fix="nothing (pass kind= to override the decision)")
def test_detect_tissue_auto_on_dapi_stored_as_rgb():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 6, (400, 400)).astype(np.uint8)  # dark background
    yy, xx = np.mgrid[:400, :400]
    nuclei = (((yy - 200) ** 2 + (xx - 200) ** 2) < 120**2) & (rng.random((400, 400)) < 0.3)
    grey[nuclei] = 180
    sdata = _with_pixels(np.repeat(grey[None], 3, axis=0))
    hx.pp.detect_tissue(sdata, "he", mpp=4.0)
    assert _tissue_fraction(sdata) == pytest.approx(np.pi * 120**2 / 400**2, abs=0.08)


@pytest.mark.realdata
def test_detect_tissue_auto_on_the_dapi_ndpi(data_dir, caplog):
    import logging

    sdata = hx.io.read_wsi(data_dir / "wsi" / "test3-DAPI-2-387.ndpi")
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        hx.pp.detect_tissue(sdata, "he")
    assert "as fluorescence" in caplog.text
    assert _tissue_fraction(sdata) < 0.9  # brightfield on these pixels: 100 %


@bad_input("silently wrong", "an eosin smear on bare glass beside the tissue, counted as tissue",
           says="not tissue: it absorbs little (optical density 0.04 against the glass, below "
                "the image's threshold of 0.07)",
           fix="nothing")
def test_detect_tissue_ignores_a_faint_smear_on_glass():
    pixels = np.full((3, 400, 400), 245, dtype=np.uint8)
    pixels[:, 50:200, 50:200] = np.array([230, 60, 150], dtype=np.uint8)[:, None, None]  # eosin
    # a smear of saturation 0.18, as the haze on the perik glass (above the old cap of 0.15)
    pixels[:, 250:380, 250:380] = np.array([245, 200, 228], dtype=np.uint8)[:, None, None]
    sdata = _with_pixels(pixels, mpp=2.0)
    hx.pp.detect_tissue(sdata, "he", mpp=4.0)
    mask = np.asarray(sdata.labels["he_tissue"]) > 0
    assert mask[35:90, 35:90].all()  # the tissue (at 4 um/px)
    assert not mask[135:180, 135:180].any()  # the smear


@pytest.mark.realdata
def test_detect_tissue_ignores_the_smear_on_the_perik_glass(data_dir):
    sdata = hx.io.read_visium(data_dir / "visium" / "perik_visium_cytassist_mouse")
    hx.pp.detect_tissue(sdata, "he")
    level = hx.io.image_levels(sdata, "he")[0]
    mask = hx.io.read_region(sdata, "he_tissue", (0, 0, 600 * level.mpp, 600 * level.mpp),
                             mpp=level.mpp, outside="fill") > 0
    assert mask[380:480, 520:550].mean() < 0.05  # the pink haze at the right edge
    assert mask[100:200, 380:500].mean() > 0.95  # the section above it


@bad_input("silently wrong", "`detect_tissue` whose mask covers almost all (or none) of the "
           "image, e.g. a forced wrong kind",
           says="UserWarning: the tissue detected on 'he' as ... covers 100.0% of the image, "
                "which is rarely right",
           fix="check the map (hx.pl.labels); pass the right kind=")
def test_detect_tissue_warns_near_all_tissue():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 40, (3, 200, 200)).astype(np.uint8)  # dark, noisy: fluorescence
    pixels[2] += 40  # a blue (DAPI-like) signal
    sdata = _with_pixels(pixels, mpp=2.0)
    with pytest.warns(UserWarning, match=r"covers 100\.0% of the image"):
        hx.pp.detect_tissue(sdata, "he", kind="brightfield", mpp=4.0, min_area_um2=0)
    # the same dark noise in grey absorbs like no stain: nothing is tissue, and the error says so
    grey = _with_pixels(np.repeat(pixels[:1], 3, axis=0), mpp=2.0)
    with pytest.raises(ValueError, match="No tissue was found.*Check kind"):
        hx.pp.detect_tissue(grey, "he", kind="brightfield", mpp=4.0, min_area_um2=0)


def test_key_check_without_a_step_replaces_only_what_histoexpr_wrote(section):
    """A key check without ``step=`` accepts only what some histoexpr step wrote; it deletes
    nothing, and the replacement at the end replaces only that."""
    from histoexpr._core.ownership import (
        check_key_writable,
        replace_elements,
        store_element,
        writer_of,
    )

    with pytest.raises(KeyError, match="not written by histoexpr"):
        check_key_writable(section, "spots", overwrite=True)
    assert "spots" in section.shapes
    store_element(section, "shapes", "mine", section.shapes["spots"].copy(), step="hx.tl.demo")
    assert writer_of(section, "mine") == "hx.tl.demo"
    assert writer_of(section, "spots") is None  # the copy's record is not the original's
    with pytest.raises(KeyError, match=r"Pass overwrite=True"):
        check_key_writable(section, "mine", overwrite=False)
    assert check_key_writable(section, "mine", overwrite=True) is True
    assert "mine" in section.shapes  # checking deletes nothing
    new = section.shapes["spots"].iloc[:1].copy()
    replace_elements(section, [("shapes", "mine", new)], overwrite=True, step="hx.tl.demo")
    assert len(section.shapes["mine"]) == 1 and writer_of(section, "mine") == "hx.tl.demo"
