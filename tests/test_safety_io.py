"""Nothing lost, nothing silently wrong (issue 12, io/pp/CLI half): bad input, refits, overwrites.

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
from conftest import make_disk_section

import histoexpr as hx
from histoexpr._cli import EXIT_BAD_INPUT, main


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("three months of annotations\n")
    (path / "sub").mkdir()
    (path / "sub" / "slide.bin").write_bytes(bytes(range(256)) * 4)
    return _digest(path)


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
    assert _digest(out) == before


@bad_input("data lost", "`histoexpr demo --overwrite` on a demo report the user added a file to",
           says="refuses: the folder also holds files the demo did not write (named)",
           fix="move those files out of the folder, or choose another --out")
def test_demo_overwrite_refuses_a_report_holding_user_files(tmp_path, monkeypatch, capsys):
    from histoexpr import _demo

    def tiny_jobs(report, scale, seed):
        report.figure("tiles.png", lambda: __import__("matplotlib.pyplot").pyplot.figure())

    monkeypatch.setattr(_demo, "_run_jobs", tiny_jobs)
    monkeypatch.setattr(_demo, "_summary", lambda metrics, figures: "# a tiny demo\n")
    out = tmp_path / "histoexpr-demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert {"tiles.png", "metrics.json", "summary.md"} <= {p.name for p in out.iterdir()}
    # the Makefile's `make demo` runs `--overwrite` on the demo's own folder: it is replaced
    stale = out / "tiles.png"
    stale.write_bytes(b"old figure")
    assert main(["demo", "--out", str(out), "--overwrite"]) == 0
    assert stale.read_bytes() != b"old figure"
    # ... but not once the user keeps a file of theirs in it
    (out / "my_notes.md").write_text("keep me")
    before = _digest(out)
    assert main(["demo", "--out", str(out), "--overwrite"]) == EXIT_BAD_INPUT
    assert "my_notes.md" in capsys.readouterr().err
    assert _digest(out) == before


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
        before = _digest(out)
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
        assert _digest(out) == before


@pytest.mark.slow
def test_predict_overwrite_replaces_its_own_store(tmp_path):
    """The positive side: a store ``histoexpr predict`` wrote is marked and may be replaced."""
    import tifffile

    train = hx.datasets.synthetic_section(seed=0, size_um=240, spot_pitch_um=40,
                                          spot_diameter_um=35)
    model = hx.tl.fit(train, model="spot_regressor", genes=["EPCAM", "PTPRC"], patch_um=40.0,
                      mpp=1.0)
    model_path = hx.io.save_model(model, tmp_path / "m.pt")
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, np.moveaxis(_pixels(train, "he"), 0, -1))
    out = tmp_path / "pred.zarr"
    args = ["predict", "-m", str(model_path), "-i", str(slide), "-o", str(out), "--mpp", "0.5"]
    assert main(args) == 0
    assert sd.read_zarr(out).attrs["histoexpr"]["written_by"] == "histoexpr predict"
    (out / "tables" / "marker_of_the_old_run").mkdir()
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "tables" / "marker_of_the_old_run").exists()


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
           says="KeyError: sdata.images['he'] ... was not written by hx.pp.tile: it is not "
                "replaced, even with overwrite=True; choose another key_added, e.g. 'he_2'",
           fix="choose another key_added")
def test_tile_overwrite_never_replaces_the_image(section):
    pixels = _pixels(section, "he").copy()
    with pytest.raises(KeyError, match="another key_added") as caught:
        hx.pp.tile(section, "he", size_um=40.0, mpp=1.0, key_added="he", overwrite=True)
    assert "Pass overwrite=True" not in str(caught.value)
    np.testing.assert_array_equal(_pixels(section, "he"), pixels)
    assert "he_table" not in section.tables


@bad_input("data lost", "`hx.pp.detect_tissue(sdata, key_added='table', overwrite=True)`",
           says="KeyError: sdata.tables['table'] was not written by hx.pp.detect_tissue; "
                "choose another key_added",
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
           says="KeyError: sdata.shapes['spots'] was not written by hx.pp.tile; choose another "
                "key_added",
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
                "'progress_bar'? The options are: device, seed, progress_bar, verbosity, n_workers",
           fix="use one of the options named")
def test_unknown_setting_is_refused():
    with pytest.raises(AttributeError, match="Did you mean 'progress_bar'") as caught:
        hx.settings.progressbar = False
    assert "verbosity" in str(caught.value)
    assert not hasattr(hx.settings, "progressbar")
    hx.settings.progress_bar = False  # the real option still works
    assert hx.settings.progress_bar is False
