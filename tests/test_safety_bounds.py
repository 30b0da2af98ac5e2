"""Bounded work, isolated faults, scales stated: bad inputs refused before work is spent.

Each test is the check of one bad input of the catalogue (``docs/bad_inputs.md``): memory and
time estimated before they are spent, one bad slide not stopping a cohort, slides identified by
their content, pixel sizes never assumed, the same section not scored by a model trained on its
copy, identifiers kept as written and hyper-parameters that are not numbers refused.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx

SLIDE_OPTIONS = {"encoder": "handcrafted", "size_px": 16, "mpp": 2.0}


def _cohort_files(folder, n=3, compression="none"):
    """``n`` small slide files (1 um/px, 200 um), their manifest; stores beside them."""
    manifest = hx.datasets.synthetic_slide_cohort(folder, n, seed=0, size_um=200, mpp=1.0,
                                                  compression=compression)
    return manifest


def _read(manifest, folder):
    return hx.io.read_cohort(manifest, store_dir=folder / "stores")


# --- hyper-parameters ---------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "options"), [
    ("meanpool_ridge", {"alphas": [float("nan")]}),
    ("spot_regressor", {"alphas": [1.0, float("inf")]}),
    ("spot_regressor", {"candidates": {"lr": [1e-3, float("nan")]}}),
    ("abmil", {"dropout": float("nan")}),
    ("meanpool_logistic", {"Cs": [0.1, -1.0]}),
])
@bad_input("silently wrong", "hyper-parameters that are not finite numbers (`alphas=[nan]`, "
           "`candidates={'lr': [nan]}`, `dropout=nan`) or negative penalties",
           says="ValueError at options construction: `alphas[0]=nan is not a finite number`",
           fix="pass finite values (or leave the default)")
def test_hyper_parameters_must_be_finite_numbers(model, options):
    from histoexpr.tl._options import options_for

    with pytest.raises(ValueError, match="finite|positive"):
        options_for(model, **options)
    with pytest.raises(ValueError, match="finite|positive"):
        hx.tl.fit(hx.datasets.synthetic_cohort(2, seed=0, size_um=100), model=model, **options)


# --- manifests ----------------------------------------------------------------------------------

@bad_input("silently wrong", "a manifest whose slide ids look like numbers (`001`, `002`)",
           says="nothing: the ids stay `001`, `002` as written (read as text)",
           fix="nothing to do")
def test_manifest_ids_stay_as_written(tmp_path):
    manifest = _cohort_files(tmp_path, 2)
    frame = pd.read_csv(manifest)
    frame["slide_id"] = ["001", "002"]
    frame["patient"] = ["007", "007"]
    frame.to_csv(manifest, index=False)
    cohort = _read(manifest, tmp_path)
    assert cohort.ids == ["001", "002"]
    assert list(cohort.bulk.obs["patient"]) == ["007", "007"]
    assert cohort.store("001").path.name == "001.zarr"


@bad_input("obscure error", "an empty manifest file (0 bytes)",
           says="ValueError: `The manifest 'slides.csv' is empty; write a header line ...`",
           fix="write a header with a 'path' column and one row per slide")
def test_empty_manifest_file(tmp_path):
    manifest = tmp_path / "slides.csv"
    manifest.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        hx.io.read_cohort(manifest)


# --- one bad slide ------------------------------------------------------------------------------

def _corrupt_first_tile(path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00" * count)


def _blank_slide(path, size_px=200, mpp=1.0):
    import tifffile

    white = np.full((size_px, size_px, 3), 250, np.uint8)
    tifffile.imwrite(path, white, photometric="rgb", tile=(64, 64),
                     resolution=(1 / mpp, 1 / mpp), resolutionunit="MICROMETER")


@bad_input("obscure error", "a cohort where one slide is blank and one has a corrupt JPEG tile",
           says="the others are embedded; a warning names each failed slide and its error; "
                "the returned table has status 'failed' and the 'error'",
           fix="fix or replace those files and run embed_cohort again (only they are retried)")
def test_one_bad_slide_does_not_stop_the_cohort(tmp_path):
    manifest = _cohort_files(tmp_path, 4, compression="jpeg")
    good = (tmp_path / "slide_01.tif").read_bytes()
    _corrupt_first_tile(tmp_path / "slide_01.tif")
    _blank_slide(tmp_path / "slide_02.tif")
    cohort = _read(manifest, tmp_path)
    with pytest.warns(UserWarning, match="2 of 4 slides failed") as record:
        frame = hx.tl.embed_cohort(cohort, **SLIDE_OPTIONS)
    assert list(frame["status"]) == ["computed", "failed", "failed", "computed"]
    assert "No tissue" in frame.loc["slide_02", "error"]
    said = next(str(w.message) for w in record if "slides failed" in str(w.message))
    assert "slide_01" in said and "slide_02" in said and "JPEG" in said
    assert cohort.store("slide_00").complete and not cohort.store("slide_01").complete
    # the next run retries the failed slides only
    (tmp_path / "slide_01.tif").write_bytes(good)
    with pytest.warns(UserWarning, match="1 of 4 slides failed"):
        again = hx.tl.embed_cohort(cohort, **SLIDE_OPTIONS)
    assert list(again["status"]) == ["skipped", "computed", "failed", "skipped"]
    assert cohort.store("slide_01").features("he_tiles", "X_handcrafted").shape[0] > 0


# --- slides by content --------------------------------------------------------------------------

@bad_input("silently wrong", "a slide file replaced by another of the same byte size after "
           "embed_cohort (its store then skipped, the old features reused)",
           says="ValueError: `The slide file of 'slide_00' is not the one its store ... was "
                "made from`; overwrite=True recomputes it",
           fix="pass overwrite=True (or another store_dir)")
def test_a_slide_replaced_by_one_of_the_same_size_is_not_skipped(tmp_path):
    manifest = _cohort_files(tmp_path, 2, compression="none")
    first, second = tmp_path / "slide_00.tif", tmp_path / "slide_01.tif"
    assert first.stat().st_size == second.stat().st_size
    cohort = _read(manifest, tmp_path)
    hx.tl.embed_cohort(cohort, **SLIDE_OPTIONS)
    theirs = cohort.store("slide_01").features("he_tiles", "X_handcrafted")
    shutil.copyfile(second, first)
    with pytest.raises(ValueError, match="is not the one its store"):
        hx.tl.embed_cohort(cohort, **SLIDE_OPTIONS)
    frame = hx.tl.embed_cohort(cohort, **SLIDE_OPTIONS, overwrite=True)
    assert frame.loc["slide_00", "status"] == "computed"
    assert frame.loc["slide_01", "status"] == "skipped"
    np.testing.assert_allclose(cohort.store("slide_00").features("he_tiles", "X_handcrafted"),
                               theirs)


def test_file_fingerprint_samples_large_files(tmp_path, monkeypatch):
    from histoexpr import _memory

    monkeypatch.setattr(_memory, "WHOLE_FILE_BYTES", 1024)
    path = tmp_path / "big.bin"
    data = np.random.default_rng(0).integers(0, 256, 12 * 2**20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    before = _memory.file_fingerprint(path)
    assert before["hashed"] == "sampled" and before["bytes"] == data.size
    data[:16] ^= 1  # another scan of the same size: its header differs
    path.write_bytes(data.tobytes())
    assert _memory.file_fingerprint(path) != before


# --- pixel sizes --------------------------------------------------------------------------------

@bad_input("silently wrong", "a cohort of slides at different pixel sizes tiled with "
           "`size_px=` and no `mpp=` (16 um tiles on some, 32 um on others under one key)",
           says="ValueError: `The slides have different pixel sizes (0.5 um/px (1 slides ...), "
                "1 um/px ...)`, before any slide is processed",
           fix="pass mpp= (tiles resampled to one pixel size) or size_um= with mpp=")
def test_mixed_pixel_sizes_with_size_px_are_refused(tmp_path):
    manifest = _cohort_files(tmp_path, 2)
    frame = pd.read_csv(manifest)
    frame["mpp"] = [1.0, 0.5]
    frame.to_csv(manifest, index=False)
    cohort = _read(manifest, tmp_path)
    with pytest.raises(ValueError, match="different pixel sizes"):
        hx.tl.embed_cohort(cohort, encoder="handcrafted", size_px=16)
    assert not (tmp_path / "stores").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = hx.tl.embed_cohort(cohort, encoder="handcrafted", size_px=16, mpp=2.0)
    assert list(frame["status"]) == ["computed", "computed"]


# --- the same section twice ---------------------------------------------------------------------

@bad_input("silently wrong", "`hx.tl.cross_validate` given the same section twice under two "
           "names (a fold trains on the copy of the section it scores: 0.335 instead of 0.182)",
           says="ValueError: `Sections 'a' and 'a_copy' hold the same image ... in different "
                "groups`, before any fold is trained",
           fix="drop one copy, or give both the same group (groups=)")
def test_cross_validate_refuses_a_section_and_its_copy():
    from test_safety_tl import PATCH, make_section

    a = make_section(0)
    copy = make_section(0)
    sections = {"a": a, "b": make_section(1), "a_copy": copy}
    with pytest.raises(ValueError, match="hold the same image"):
        hx.tl.cross_validate(sections, model="spot_regressor", n_genes=3,
                             gene_flavor="top_expressed", **PATCH)
    cohort = hx.datasets.synthetic_cohort(3, seed=0, size_um=100)
    twice = {"x": cohort["slide_00"], "y": cohort["slide_01"], "z": cohort["slide_00"]}
    with pytest.raises(ValueError, match="hold the same image"):
        hx.tl.cross_validate(twice, model="meanpool_ridge")


@bad_input("obscure error", "`hx.tl.cross_validate([section, section, section], ...)`: a list "
           "of sections, as `hx.tl.fit` takes (AttributeError: 'list' object has no attribute "
           "'items')",
           says="nothing: the sections are named section_0, section_1, ... as fit names them",
           fix="nothing to do")
def test_cross_validate_takes_a_list_of_sections():
    from test_safety_tl import PATCH, make_section

    sections = [make_section(seed) for seed in range(3)]
    frame = hx.tl.cross_validate(sections, model="spot_regressor",
                                 genes=["ERBB2", "COL1A1"], **PATCH)
    assert set(frame["section"]) == {"section_0", "section_1", "section_2"}
    # the rule is learnt: ERBB2 follows the purple share under a spot on held-out sections
    assert frame[frame["gene"] == "ERBB2"]["pearson"].mean() > 0.3
