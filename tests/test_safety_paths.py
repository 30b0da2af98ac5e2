"""Nothing escapes the store, nothing runs, nothing is half-written.

Keys and slide ids that become folder names follow one rule (``histoexpr._validate.
check_store_name``), checked before anything is written; loading a model never runs code from
a folder it names; a write that replaces a file writes beside it and swaps at the end.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx
from histoexpr._validate import check_store_name

OPTIONS = {"encoder": "handcrafted", "size_px": 16, "mpp": 2.0}


def _tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: its relative path and the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _victim(folder: Path) -> Path:
    """A user's folder with two files, beside the slide stores."""
    victim = folder / "victim"
    if victim.exists():
        return victim
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("the user's notes")
    (victim / "sub" / "data.bin").write_bytes(bytes(range(256)) * 4)
    return victim


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two small slides on disk, embedded into their stores, with an attention MIL model."""
    folder = tmp_path_factory.mktemp("slides")
    hx.settings.progress_bar = False
    manifest = hx.datasets.synthetic_slide_cohort(folder, 2, seed=0, size_um=160, mpp=1.0)
    cohort = hx.io.read_cohort(manifest, bulk=manifest.parent / "bulk.h5ad",
                               store_dir=folder / "stores")
    hx.tl.embed_cohort(cohort, **OPTIONS)
    torch.manual_seed(0)
    model = hx.tl.fit(cohort, model="abmil", genes=["EPCAM"], epochs=1, val_fraction=0,
                      hidden=8, seed=0)
    return cohort, model


# ------------------------------------------------------------------------------------ keys
@pytest.mark.parametrize("key", ["../../../../victim", "/tmp/elsewhere", "abmil/v2", "X/a",
                                 "..", "", "a\\b", ".hidden", "zarr.json", "__x", "tab\tkey",
                                 "NUL", "x" * 300, "a:b", " padded"])
def test_one_rule_for_names_on_disk(key):
    with pytest.raises((ValueError, TypeError), match="cannot name a .*Nothing was written"):
        check_store_name("key_added", key)


@pytest.mark.parametrize("key", ["X_handcrafted", "X_handcrafted+resnet18", "abmil_v2",
                                 "slide 01", "TCGA-AB-1234.01"])
def test_plain_names_pass_the_rule(key):
    assert check_store_name("key_added", key) == key


@bad_input("data lost", "`hx.tl.embed_cohort(cohort, key_added=\"../../../../victim\")` (a key "
           "that climbs out of the slide store)",
           says="ValueError: key_added='../../../../victim' cannot name a set of features in a "
           "slide store: it holds a path separator",
           fix="a plain name, e.g. key_added='X_mine'")
def test_embed_cohort_key_cannot_climb_out_of_the_store(cohort):
    cohort, _ = cohort
    victim = _victim(cohort.store_dir)
    before = _tree_digest(victim)
    stores = {i: _tree_digest(cohort.store(i).path) for i in cohort.ids}
    with pytest.raises(ValueError, match="key_added='../../../../victim' cannot name a set of "
                       "features in a slide store: it holds a path separator"):
        hx.tl.embed_cohort(cohort, key_added="../../../../victim", **OPTIONS)
    assert _tree_digest(victim) == before
    assert {i: _tree_digest(cohort.store(i).path) for i in cohort.ids} == stores


@bad_input("obscure error", "`hx.tl.embed_cohort(cohort, key_added=\"/abs/path\")` (an absolute "
           "key: the write walked up to `/` forever)",
           says="ValueError: key_added='/abs/path' cannot name a set of features in a slide "
           "store: it holds a path separator",
           fix="a plain name, e.g. key_added='X_mine'")
def test_embed_cohort_absolute_key_is_refused_at_once(cohort):
    import time

    cohort, _ = cohort
    start = time.process_time()
    with pytest.raises(ValueError, match="key_added='/abs/path' cannot name a set of features "
                       "in a slide store: it holds a path separator"):
        hx.tl.embed_cohort(cohort, key_added="/abs/path", **OPTIONS)
    assert time.process_time() - start < 5
    assert not Path("/abs/path").exists()


@bad_input("data lost", "`hx.tl.embed_cohort(cohort, key_added=\"abmil/v2\")` or `\"X/a\"` (a key "
           "with a slash: every slide store unreadable, or features nobody finds)",
           says="ValueError: key_added='abmil/v2' cannot name a set of features in a slide "
           "store: it holds a path separator",
           fix="a plain name, e.g. key_added='abmil_v2'")
def test_embed_cohort_key_with_a_slash_is_refused_before_any_write(cohort):
    cohort, _ = cohort
    stores = {i: _tree_digest(cohort.store(i).path) for i in cohort.ids}
    for key in ("abmil/v2", "X/a"):
        with pytest.raises(ValueError, match=f"key_added='{key}' cannot name a set of features "
                           "in a slide store: it holds a path separator.*key_added='"
                           f"{key.replace('/', '_')}'"):
            hx.tl.embed_cohort(cohort, key_added=key, **OPTIONS)
    assert {i: _tree_digest(cohort.store(i).path) for i in cohort.ids} == stores
    # the stores are still readable
    assert cohort["slide_00"].tables["he_tiles_table"].obsm["X_handcrafted"].shape[0] > 0
    with pytest.raises(ValueError, match="tiles_key='he/tiles' cannot name a tile set"):
        hx.tl.embed_cohort(cohort, tiles_key="he/tiles", **OPTIONS)


@bad_input("data lost", "`hx.tl.predict(model, cohort, key_added=\"../../../../victim\", "
           "overwrite=True)` (a results key that climbs out of the slide store: deleted the "
           "user's folder beside the stores)",
           says="ValueError: key_added='../../../../victim' cannot name a set of results in a "
           "slide store: it holds a path separator",
           fix="a plain name, e.g. key_added='abmil_v2'")
def test_predict_key_cannot_climb_out_of_the_store(cohort):
    cohort, model = cohort
    victim = _victim(cohort.store_dir)
    before = _tree_digest(victim)
    stores = {i: _tree_digest(cohort.store(i).path) for i in cohort.ids}
    for key in ("../../../../victim", "abmil/v2"):
        with pytest.raises(ValueError, match=f"key_added='{key}' cannot name a set of results "
                           "in a slide store: it holds a path separator"):
            hx.tl.predict(model, cohort, key_added=key, overwrite=True)
    assert _tree_digest(victim) == before
    assert {i: _tree_digest(cohort.store(i).path) for i in cohort.ids} == stores
    # a plain key writes the results into every store
    hx.tl.predict(model, cohort, key_added="abmil_v2", overwrite=True)
    assert all("abmil_v2" in cohort.store(i).results_keys("he_tiles") for i in cohort.ids)
    assert _tree_digest(victim) == before


@bad_input("data lost", "a slide store read or written with a key holding a path "
           "(`SlideStore.features(\"he_tiles\", \"../../x\")`, `write_results(..., key=\"/x\")`)",
           says="ValueError: key='../../x' cannot name a set of features in a slide store",
           fix="a plain name")
def test_slide_store_checks_every_key_it_joins_to_a_path(cohort, tmp_path):
    cohort, _ = cohort
    store = cohort.store("slide_00")
    before = _tree_digest(store.path)
    with pytest.raises(ValueError, match="key='../../x' cannot name a set of features in a "
                       "slide store"):
        store.features("he_tiles", "../../x")
    n = store.n_tiles("he_tiles")
    with pytest.raises(ValueError, match="key_added='/x' cannot name a set of results"):
        store.write_results("he_tiles", "/x", np.zeros((n, 1)), np.zeros((n, 1)),
                            columns=["a"], branches=["b"], overwrite=True)
    with pytest.raises(ValueError, match="key='../x' cannot name a set of features"):
        store.write_features("he_tiles", "../x", np.zeros((n, 2)), {})
    assert _tree_digest(store.path) == before


@bad_input("data lost", "a manifest whose slide_id holds a path separator or is `..` (the store "
           "`<store_dir>/<slide_id>.zarr` lands elsewhere)",
           says="ValueError: slide_id='../escape' cannot name a slide's store (a manifest row's "
           "slide_id): it holds a path separator",
           fix="slide ids that are plain names")
def test_slide_ids_with_separators_are_refused(cohort, tmp_path):
    cohort, _ = cohort
    path = cohort.path("slide_00")
    for slide_id in ("../escape", "a/b", "..", "c:\\x"):
        manifest = tmp_path / "slides.csv"
        manifest.write_text(f"path,slide_id\n{path},{slide_id}\n")
        with pytest.raises(ValueError, match=f"slide_id={slide_id!r}".replace("\\", "\\\\")
                           .replace(".", "\\.") + " cannot name a slide's store"):
            hx.io.read_cohort(manifest, store_dir=tmp_path / "stores")
    assert not (tmp_path / "stores").exists()
    assert not (tmp_path / "escape.zarr").exists()


# --------------------------------------------------------------------------- write, then swap
def _half_written(real):
    """A writer that writes part of its output, then fails (a full disk, a kill)."""

    def write(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"PK\x03\x04 half a file")
        raise OSError(28, "No space left on device")

    return write


@bad_input("data lost", "`hx.io.save_model(model, path, overwrite=True)` failing midway (a full "
           "disk, a kill): it wrote in place, leaving a truncated file and no model",
           says="the old file stays whole: the new one is written beside it and renamed into "
           "place only when complete",
           fix="free space and save again")
def test_save_model_failing_midway_leaves_the_old_file(tmp_path, monkeypatch):
    old_model = hx.models.TileEncoder(arch="small_cnn", in_channels=3)
    path = hx.io.save_model(old_model, tmp_path / "model.pt")
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _half_written(torch.save))
    new_model = hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8)
    with pytest.raises(OSError, match="No space left"):
        hx.io.save_model(new_model, path, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no partial file left
    monkeypatch.undo()
    hx.io.save_model(new_model, path, overwrite=True)
    assert hx.io.load_model(path, device="cpu").get_config()["width"] == 8


@pytest.fixture(scope="module")
def spot_model(tmp_path_factory):
    """A small spot regressor model file and a slide (a plain TIFF at 0.5 um/px)."""
    import tifffile

    folder = tmp_path_factory.mktemp("spot")
    train = hx.datasets.synthetic_section(seed=0, size_um=200, spot_pitch_um=40,
                                          spot_diameter_um=35)
    model = hx.tl.fit(train, model="spot_regressor", genes=["EPCAM", "COL1A1"], size_um=40.0,
                      mpp=1.0)
    section = hx.datasets.synthetic_section(seed=1, size_um=200)
    slide = folder / "slide.tif"
    tifffile.imwrite(slide, np.moveaxis(section.images["he"].values, 0, -1))
    return hx.io.save_model(model, folder / "spots.pt"), slide


@bad_input("data lost", "`histoexpr predict --overwrite` killed or failing while it writes: the "
           "old store was deleted before the new one was written, so both were lost",
           says="the old store stays whole: the new one is written beside it and swapped in at "
           "the end",
           fix="run it again")
def test_cli_predict_overwrite_failing_midway_keeps_the_old_store(spot_model, tmp_path,
                                                                   monkeypatch):
    import spatialdata as sd

    from histoexpr._cli import main

    model, slide = spot_model
    out = tmp_path / "pred.zarr"
    args = ["predict", "-m", str(model), "-i", str(slide), "-o", str(out), "--mpp", "0.5"]
    assert main(args) == 0
    before = _tree_digest(out)

    def fail_midway(self, file_path, *a, **k):
        Path(file_path).mkdir()
        (Path(file_path) / "zarr.json").write_text("{")  # half a store, then killed
        raise KeyboardInterrupt

    monkeypatch.setattr(sd.SpatialData, "write", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--overwrite"])
    assert _tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.zarr"]  # nothing left beside
    monkeypatch.undo()
    assert main([*args, "--overwrite"]) == 0
    assert "he_expr_tiles_expression" in sd.read_zarr(out).tables
