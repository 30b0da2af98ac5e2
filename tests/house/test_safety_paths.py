"""Nothing escapes the store, nothing runs, nothing is half-written.

Keys and slide ids that become folder names follow one rule (``histoexpr._core.validate.
check_store_name``), checked before anything is written; loading a model never runs code from
a folder it names; a write that replaces a file writes beside it and swaps at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _catalogue import bad_input
from conftest import tree_digest

import histoexpr as hx
from histoexpr._core.records import WriterRecord
from histoexpr._core.records import made_within as hx_within
from histoexpr._core.validate import check_store_name

OPTIONS = {"encoder": "handcrafted", "size_px": 16, "mpp": 2.0}


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
                                 "NUL", "x" * 300, "a:b", " padded",
                                 # names that read as another name, or as a path
                                 "a\u0085b", "x\u202eftp.exe", "X\u200b", "a\u2028b",
                                 "..\u2215etc", "a\u2044b", "a\uff0fb", "COM\u00b9",
                                 "lpt\u00b3.txt", "\ufeffkey", "\u0301", "a\u2066b",
                                 "a\ue000b", "cafe\u0301"])
def test_one_rule_for_names_on_disk(key):
    with pytest.raises((ValueError, TypeError), match="cannot name a .*Nothing was written"):
        check_store_name("key_added", key)


@pytest.mark.parametrize("key", ["X_handcrafted", "X_handcrafted+resnet18", "abmil_v2",
                                 "slide 01", "TCGA-AB-1234.01", "caf\u00e9", "\u5207\u7247_1",
                                 "\u00c5ngstr\u00f6m"])
def test_plain_names_pass_the_rule(key):
    assert check_store_name("key_added", key) == key


@bad_input("silently wrong", "a manifest whose slide id holds an invisible or look-alike "
           "character (a zero-width space, a right-to-left override, a fraction slash '⁄')",
           says="ValueError: `slide_id='S\\u200b1' cannot name a slide's store ... it holds "
                "U+200B: a control, invisible or unassigned character`",
           fix="the id as it reads, e.g. slide_id='S1'")
def test_a_slide_id_that_reads_as_another_is_refused(tmp_path):
    import pandas as pd

    manifest = hx.datasets.synthetic_slide_cohort(tmp_path / "c", 1, seed=0, size_um=160,
                                                  mpp=1.0)
    frame = pd.read_csv(manifest)
    for slide_id, suggested in (("S\u200b1", "S1"), ("S\u202e1", "S1"), ("S\u20441", "S_1")):
        frame["slide_id"] = [slide_id]
        frame.to_csv(manifest, index=False)
        with pytest.raises(ValueError, match=r"cannot name a slide's store .*Nothing was "
                                             r"written") as refused:
            hx.io.read_cohort(manifest, store_dir=tmp_path / "stores")
        assert f"slide_id={suggested!r}" in str(refused.value)  # what it reads as
    assert not (tmp_path / "stores").exists()


@bad_input("data lost", "`hx.tl.embed_cohort(cohort, key_added=\"../../../../victim\")` (a key "
           "that climbs out of the slide store)",
           says="ValueError: key_added='../../../../victim' cannot name a set of features in a "
           "slide store: it holds a path separator",
           fix="a plain name, e.g. key_added='X_mine'")
def test_embed_cohort_key_cannot_climb_out_of_the_store(cohort):
    cohort, _ = cohort
    victim = _victim(cohort.store_dir)
    before = tree_digest(victim)
    stores = {i: tree_digest(cohort.store(i).path) for i in cohort.ids}
    with pytest.raises(ValueError, match="key_added='../../../../victim' cannot name a set of "
                       "features in a slide store: it holds a path separator"):
        hx.tl.embed_cohort(cohort, key_added="../../../../victim", **OPTIONS)
    assert tree_digest(victim) == before
    assert {i: tree_digest(cohort.store(i).path) for i in cohort.ids} == stores


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
    stores = {i: tree_digest(cohort.store(i).path) for i in cohort.ids}
    for key in ("abmil/v2", "X/a"):
        with pytest.raises(ValueError, match=f"key_added='{key}' cannot name a set of features "
                           "in a slide store: it holds a path separator.*key_added='"
                           f"{key.replace('/', '_')}'"):
            hx.tl.embed_cohort(cohort, key_added=key, **OPTIONS)
    assert {i: tree_digest(cohort.store(i).path) for i in cohort.ids} == stores
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
    before = tree_digest(victim)
    stores = {i: tree_digest(cohort.store(i).path) for i in cohort.ids}
    for key in ("../../../../victim", "abmil/v2"):
        with pytest.raises(ValueError, match=f"key_added='{key}' cannot name a set of results "
                           "in a slide store: it holds a path separator"):
            hx.tl.predict(model, cohort, key_added=key, overwrite=True)
    assert tree_digest(victim) == before
    assert {i: tree_digest(cohort.store(i).path) for i in cohort.ids} == stores
    # a plain key writes the results into every store
    hx.tl.predict(model, cohort, key_added="abmil_v2", overwrite=True)
    assert all("abmil_v2" in cohort.store(i).results_keys("he_tiles") for i in cohort.ids)
    assert tree_digest(victim) == before


@bad_input("data lost", "`hx.tl.cross_validate(cohort, key_added=\"abmil_run\")` on a cohort on "
           "disk whose stores hold `hx.tl.predict`'s results under that key (replaced by the "
           "out-of-fold results, after the first fold's training)",
           says="KeyError: The store of 'slide_00' holds results 'abmil_run' written by "
           "hx.tl.predict; hx.tl.predict within hx.tl.cross_validate replaces only the results "
           "it wrote itself, even with overwrite=True",
           fix="another key_added for the cross-validation")
def test_cross_validation_on_disk_leaves_predict_results_alone(cohort):
    cohort, model = cohort
    hx.tl.predict(model, cohort, key_added="abmil_run")
    stores = {i: tree_digest(cohort.store(i).path) for i in cohort.ids}
    with pytest.raises(KeyError, match="holds results 'abmil_run' written by hx.tl.predict; "
                       "hx.tl.predict within hx.tl.cross_validate replaces only the results it "
                       "wrote itself"):
        hx.tl.cross_validate(cohort, model="abmil", genes=["EPCAM"], n_folds=2, epochs=1,
                             val_fraction=0, hidden=8, seed=0, key_added="abmil_run")
    assert {i: tree_digest(cohort.store(i).path) for i in cohort.ids} == stores
    # its own results a rerun replaces; predict's own results predict replaces
    for _ in range(2):
        hx.tl.cross_validate(cohort, model="abmil", genes=["EPCAM"], n_folds=2, epochs=1,
                             val_fraction=0, hidden=8, seed=0, key_added="cv_run")
    writer = cohort.store("slide_00").results_writer("he_tiles", "cv_run")
    assert writer == WriterRecord("hx.tl.predict", "cv_run", "hx.tl.cross_validate")
    hx.tl.predict(model, cohort, key_added="abmil_run", overwrite=True)
    # but not the cross-validation's, and nothing is written before that is known
    stores = {i: tree_digest(cohort.store(i).path) for i in cohort.ids}
    with pytest.raises(KeyError, match="holds results 'cv_run' written by hx.tl.predict within "
                       "hx.tl.cross_validate; hx.tl.predict replaces only"):
        hx.tl.predict(model, cohort, key_added="cv_run", overwrite=True)
    assert {i: tree_digest(cohort.store(i).path) for i in cohort.ids} == stores


@bad_input("data lost", "`hx.tl.predict(model, cohort, key_added=k, overwrite=True)` where a "
           "slide store holds results under `k` with no record of their writer (an earlier "
           "version)",
           says="KeyError: The store of 'slide_00' holds results 'old_run' with no record of the "
           "step that wrote them (an earlier version)",
           fix="another key_added")
def test_results_without_a_writer_record_are_never_replaced(cohort):
    import zarr

    cohort, model = cohort
    hx.tl.predict(model, cohort, key_added="old_run")
    path = cohort.store("slide_00").path / "tiles" / "he_tiles" / "results" / "old_run"
    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs)
    del attrs["writer"]
    group.attrs.clear()
    group.attrs.update(attrs)  # as an earlier version wrote them
    before = tree_digest(cohort.store("slide_00").path)
    with pytest.raises(KeyError, match="holds results 'old_run' with no record of the step that "
                       "wrote them"):
        hx.tl.predict(model, cohort, key_added="old_run", overwrite=True)
    assert tree_digest(cohort.store("slide_00").path) == before


def test_results_read_back_from_a_store_keep_their_writer(cohort):
    cohort, model = cohort
    hx.tl.predict(model, cohort, key_added="reread")
    sections = {i: cohort[i] for i in cohort.ids}
    record = sections["slide_00"].tables["he_tiles_table"].uns["bag_outputs"]["reread"]
    assert record["histoexpr"] == {"step": "hx.tl.predict", "key": "reread"}
    # so the sections in memory may be predicted again under that key, by predict alone
    first = sections["slide_00"].tables["he_tiles_table"].obsm["reread"].copy()
    memory = hx.io.Cohort(sections, cohort.bulk)
    hx.tl.predict(model, memory, key_added="reread", overwrite=True)
    np.testing.assert_allclose(
        sections["slide_00"].tables["he_tiles_table"].obsm["reread"], first, rtol=1e-4,
        atol=1e-5)
    with pytest.raises(KeyError, match="did not write there"), hx_within("hx.tl.cross_validate"):
        hx.tl.predict(model, memory, key_added="reread", overwrite=True)


@bad_input("data lost", "a slide store read or written with a key holding a path "
           "(`SlideStore.features(\"he_tiles\", \"../../x\")`, `write_results(..., key=\"/x\")`)",
           says="ValueError: key='../../x' cannot name a set of features in a slide store",
           fix="a plain name")
def test_slide_store_checks_every_key_it_joins_to_a_path(cohort, tmp_path):
    cohort, _ = cohort
    store = cohort.store("slide_00")
    before = tree_digest(store.path)
    with pytest.raises(ValueError, match="key='../../x' cannot name a set of features in a "
                       "slide store"):
        store.features("he_tiles", "../../x")
    n = store.n_tiles("he_tiles")
    with pytest.raises(ValueError, match="key_added='/x' cannot name a set of results"):
        store.write_results("he_tiles", "/x", np.zeros((n, 1)), np.zeros((n, 1)),
                            columns=["a"], branches=["b"],
                            writer=WriterRecord.now("hx.tl.predict", "/x"), overwrite=True)
    with pytest.raises(ValueError, match="key='../x' cannot name a set of features"):
        store.write_features("he_tiles", "../x", np.zeros((n, 2)), {})
    assert tree_digest(store.path) == before


@bad_input("data lost", "`SlideStore.write_prediction(\"../../victim\", table, overwrite=True)` "
           "or `SlideStore.prediction(\"../x\")` (the store's public methods, called without "
           "hx.tl.predict's check of the key): the user's folder beside the store replaced",
           says="ValueError: key='../../victim' cannot name a table of predictions in a slide "
                "store ... (before: the folder written outside the store, a user's folder "
                "deleted with overwrite=True); a folder of predictions without histoexpr's record "
                "is not replaced by overwrite=True (FileExistsError)",
           fix="a plain name; move the foreign folder away")
def test_slide_store_checks_prediction_keys_and_replaces_only_its_own(cohort, tmp_path):
    import anndata as ad

    cohort, _ = cohort
    store = cohort.store("slide_01")
    victim = _victim(store.path.parent)
    before, victim_before = tree_digest(store.path), tree_digest(victim)
    table = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"key='../../victim' cannot name a table of "
                                         r"predictions in a slide store"):
        store.write_prediction("../../victim", table, record={}, slide={}, overwrite=True)
    with pytest.raises(ValueError, match=r"key='../x' cannot name a table of predictions"):
        store.prediction("../x")
    assert tree_digest(store.path) == before and tree_digest(victim) == victim_before
    import shutil

    folder = store.path / "predictions"
    made = not folder.exists()
    foreign = folder / "mine"  # a folder histoexpr did not write
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("kept")
    try:
        with pytest.raises(FileExistsError, match=r"not a table of predictions written by "
                                                  r"histoexpr.*overwrite=True does not replace"):
            store.write_prediction("mine", table, record={}, slide={}, overwrite=True)
        assert (foreign / "notes.txt").read_text() == "kept"
    finally:  # the module's other tests see the store as it was
        shutil.rmtree(folder if made else foreign)


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
def spot_model(tmp_path_factory, synthetic):
    """A small spot regressor model file and a slide (a plain TIFF at 0.5 um/px)."""
    import tifffile

    folder = tmp_path_factory.mktemp("spot")
    train = synthetic(seed=0, size_um=200, spot_pitch_um=40,
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
    before = tree_digest(out)

    def fail_midway(self, file_path, *a, **k):
        Path(file_path).mkdir()
        (Path(file_path) / "zarr.json").write_text("{")  # half a store, then killed
        raise KeyboardInterrupt

    monkeypatch.setattr(sd.SpatialData, "write", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--overwrite"])
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.zarr"]  # nothing left beside
    monkeypatch.undo()
    assert main([*args, "--overwrite"]) == 0
    assert "he_expr_tiles_expression" in sd.read_zarr(out).tables


_KILLED_CLI_SWAP = """
import os, sys
from pathlib import Path
from histoexpr._cli import main

out = Path(sys.argv[1]).absolute()
real = os.replace

def replace(source, target):
    if Path(target).absolute() == out and ".new." in Path(source).name:
        os._exit(3)  # the old store is aside, the new one not yet in place
    real(source, target)

os.replace = replace
main(sys.argv[2:])
"""


@bad_input("data lost", "`histoexpr predict --overwrite` killed between moving the old store "
           "aside and renaming the new one into place: the old store stayed hidden beside an "
           "empty name, and the next run wrote a new store there as if none had existed",
           says="nothing: the next write to that path puts the old store back first (a warning "
           "says so), then checks and writes as usual",
           fix="nothing to do")
def test_a_cli_store_swap_killed_midway_is_put_back_by_the_next_write(spot_model, tmp_path):
    import subprocess

    from histoexpr._cli import main

    model, slide = spot_model
    out = tmp_path / "pred.zarr"
    args = ["predict", "-m", str(model), "-i", str(slide), "-o", str(out), "--mpp", "0.5"]
    assert main(args) == 0
    before = tree_digest(out)
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_CLI_SWAP)
    done = subprocess.run([sys.executable, str(script), str(out), *args, "--overwrite"],
                          check=False)
    assert done.returncode == 3
    assert not out.exists()  # killed with the old store aside
    # the next call without --overwrite finds the old store back in place and refuses
    assert main(args) != 0
    assert tree_digest(out) == before
    assert not list(tmp_path.glob(".pred.zarr.old.*"))
    assert main([*args, "--overwrite"]) == 0


# ------------------------------------------------------------------ loading never runs code
class _Pickled:
    """An object a weights-only reader refuses (a pickle of a class, not plain values)."""


def _model_file(path: Path, name: str, config: dict, metadata: dict | None = None) -> Path:
    """A histoexpr model file written by hand (as anyone could write one)."""
    torch.save({"format": "histoexpr-model", "format_version": 1, "histoexpr_version": "0",
                "class": name, "config": config, "metadata": metadata or {},
                "state_dict": {}}, path)
    return path


def _custom_code_folder(folder: Path, model_type: str) -> Path:
    """A transformers folder whose config points at its own code, which would leave a marker."""
    import json

    folder.mkdir()
    marker = folder.parent / "code_ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type, "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32, "image_size": 28, "patch_size": 7,
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n"
        f"class EvilConfig(PretrainedConfig):\n    model_type = {model_type!r}\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n")
    return marker


@pytest.mark.slow  # imports transformers (tens of seconds here)
@bad_input("data lost", "a model file (or `encoder=\"hf:<folder>\"`) naming a transformers folder "
           "whose config.json points at its own code (`auto_map`): transformers asked \"run the "
           "custom code? [y/N]\" on stdin, and y ran it",
           says="ValueError: ... exists only as Python code in the folder (config.json's "
           "auto_map: ...); histoexpr never runs code from a model folder",
           fix="a model transformers has built in, or build the network yourself")
def test_a_model_folder_with_its_own_code_is_refused_never_run(tmp_path, monkeypatch):
    import io

    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))  # a question would be answered
    marker = _custom_code_folder(tmp_path / "evil_model", "evilnet")
    message = ("exists only as Python code in the folder \\(config.json's auto_map: .*\\); "
               "histoexpr never runs code from a model folder")
    with pytest.raises(ValueError, match=message):
        hx.models.HuggingFaceEncoder(path=str(tmp_path / "evil_model"))
    model = _model_file(tmp_path / "model.pt", "HuggingFaceEncoder",
                        {"path": str(tmp_path / "evil_model"), "pooling": "cls"})
    with pytest.raises(ValueError, match=message):
        hx.io.load_model(model, device="cpu")
    assert not marker.exists()
    assert sys.stdin.read() == "y\ny\ny\n"  # nothing was asked


@pytest.mark.filterwarnings(  # the folder has no image processor, on purpose
    "ignore:.* has no preprocessor_config.json:UserWarning")
@pytest.mark.slow
def test_a_known_architecture_with_an_auto_map_is_built_without_its_code(tmp_path, monkeypatch):
    import io

    pytest.importorskip("transformers")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    marker = _custom_code_folder(tmp_path / "vit_with_code", "vit")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        encoder = hx.models.HuggingFaceEncoder(path=str(tmp_path / "vit_with_code"))
    assert type(encoder.model).__name__ == "ViTModel" and not marker.exists()


@pytest.mark.slow
@bad_input("obscure error", "a transformers folder whose `pytorch_model.bin` holds pickled Python "
           "objects: torch's advice \"weights_only=False will likely succeed\" reached the user",
           says="ValueError: The weights in ... cannot be loaded: a weights file holds Python "
           "objects other than tensors, and is refused for safety",
           fix="save the model with safetensors")
def test_pickled_weights_in_a_model_folder_never_pass_on_torch_advice(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "vit"
    transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, image_size=28, patch_size=7).save_pretrained(
        folder)
    torch.save({"embeddings.cls_token": _Pickled()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="cannot be loaded: a weights file holds Python objects "
                       "other than tensors, and is refused for safety") as caught:
        hx.models.HuggingFaceEncoder(path=str(folder))
    assert "weights_only=False" not in str(caught.value)
    assert caught.value.__suppress_context__ and caught.value.__cause__ is None


@bad_input("silently wrong", "a model file naming its transformers folder or encoder file by a "
           "relative path: it was resolved against whatever the current folder was",
           says="ValueError: ... names the transformers folder 'tiny' by a relative path ... "
           "Pass root=",
           fix="`hx.io.load_model(path, root=...)` (CLI: `--root DIR`)")
def test_relative_paths_in_a_model_file_are_resolved_only_where_the_user_says(tmp_path,
                                                                              monkeypatch):
    model = _model_file(tmp_path / "model.pt", "HuggingFaceEncoder",
                        {"path": "tiny", "pooling": "cls"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # a folder of that name in the current folder is not used
    with pytest.raises(ValueError, match="names the transformers folder 'tiny' by a relative "
                       "path.*Pass root="):
        hx.io.load_model(model, device="cpu")
    # the same for a spot regressor's encoder, "hf:<folder>" or a model file
    for encoder, what in (("hf:models/phikon", "transformers folder"),
                          ("encoders/enc.pt", "encoder model file")):
        other = _model_file(tmp_path / "other.pt", "HandcraftedEncoder", {"in_channels": 3},
                            {"encoder": encoder, "features": {"fingerprint": encoder}})
        with pytest.raises(ValueError, match=f"names the {what} '{encoder.removeprefix('hf:')}' "
                           "by a relative path"):
            hx.io.load_model(other, device="cpu")
        loaded = hx.io.load_model(other, device="cpu", root=tmp_path / "project")
        expected = str(tmp_path / "project" / encoder.removeprefix("hf:"))
        assert loaded.metadata["encoder"] in (f"hf:{expected}", expected)
        assert loaded.metadata["features"]["fingerprint"] == loaded.metadata["encoder"]


@bad_input("obscure error", "`hx.tl.pretrain(..., resume=True)` on a checkpoint holding pickled "
           "Python objects: torch's \"weights_only=False will likely succeed\" reached the user",
           says="ValueError: ... is not a plain weights file ... refused for safety",
           fix="start afresh (overwrite=True) or use the run's own checkpoint")
def test_pretrain_resume_never_passes_on_torch_advice(tmp_path):
    from histoexpr.tl._features._pretrain import CHECKPOINT_NAME

    sdata = hx.datasets.synthetic_section(seed=0, size_um=120, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=16, mpp=2.0, min_tissue=0.5)
    torch.save({"format": "histoexpr-pretraining-checkpoint", "x": _Pickled()},
               tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="is not a plain weights file.*refused for safety") \
            as caught:
        hx.tl.pretrain(sdata, "he_tiles", checkpoint_dir=tmp_path, resume=True, epochs=1,
                       encoder="small_cnn", batch_size=8)
    assert "weights_only=False" not in str(caught.value)


# ------------------------------------------------------------------------- no display, numpy
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the check is for Linux")
@bad_input("data lost", "`hx.pl.napari(sdata)` on a machine without a display (a remote Jupyter "
           "kernel): Qt aborted the Python process, and its unsaved work with it",
           says="RuntimeError: hx.pl.napari needs a display, and this machine has none ... "
           "xvfb-run",
           fix="run under `xvfb-run -a`, or save the section and open it elsewhere")
def test_napari_without_a_display_raises_instead_of_aborting(monkeypatch):
    import types

    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    made = []
    fake = types.ModuleType("napari")
    fake.Viewer = lambda *a, **k: made.append(1)  # would abort the process for real
    monkeypatch.setitem(sys.modules, "napari", fake)
    sdata = hx.datasets.synthetic_section(seed=0, size_um=100, transcripts=False, spots=False)
    with pytest.raises(RuntimeError, match="hx.pl.napari needs a display, and this machine has "
                       "none.*xvfb-run -a"):
        hx.pl.napari(sdata)
    assert made == []
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # draws without a display
    from histoexpr.pl._napari import check_display

    check_display()


@bad_input("obscure error", "`hx.pp.tile(numpy_array)` (an image array instead of a section): "
           "AttributeError: 'numpy.ndarray' object has no attribute 'images'",
           says="TypeError: sdata must be a SpatialData (a section or slide), got a ndarray. "
           "For an image array, wrap it first: hx.io.read_wsi(path)",
           fix="`hx.io.read_wsi(path)`, or wrap the array in a SpatialData")
def test_tile_of_a_numpy_array_names_what_to_pass():
    image = np.zeros((3, 64, 64), dtype=np.uint8)
    with pytest.raises(TypeError, match="sdata must be a SpatialData \\(a section or slide\\), "
                       "got a ndarray. For an image array, wrap it first: hx.io.read_wsi"):
        hx.pp.tile(image, size_px=16)
    with pytest.raises(TypeError, match="got a str. Read the file first: hx.io.read_wsi"):
        hx.pp.detect_tissue("slide.svs")


@bad_input("data lost", "`histoexpr demo --overwrite` killed or failing midway: the old report "
           "was deleted before the new one was written",
           says="the old report stays whole: the new one is written beside it and swapped in "
           "when complete",
           fix="run it again")
def test_demo_overwrite_failing_midway_keeps_the_old_report(tmp_path, monkeypatch, tiny_demo):
    from histoexpr import _demo
    from histoexpr._cli import main

    out = tmp_path / "histoexpr-demo"
    assert main(["demo", "--out", str(out)]) == 0
    before = tree_digest(out)

    def killed(report, scale, seed):
        tiny_demo(report, scale, seed)
        raise KeyboardInterrupt

    monkeypatch.setattr(_demo, "_run_jobs", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["demo", "--out", str(out), "--overwrite"])
    assert tree_digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["histoexpr-demo"]


@bad_input("data lost", "`hx.datasets.synthetic_slide_cohort(folder, overwrite=True)` failing "
           "midway: each slide file was rewritten in place, so a failure left a cut-short slide",
           says="the old files stay whole: each is written beside it and renamed into place "
           "when complete",
           fix="run it again")
def test_synthetic_slide_cohort_failing_midway_keeps_the_old_files(tmp_path, monkeypatch):
    from histoexpr.datasets import _slides

    hx.datasets.synthetic_slide_cohort(tmp_path, 2, seed=0, size_um=100, mpp=1.0)
    before = tree_digest(tmp_path)
    real = _slides.write_pyramidal_tiff

    def cut_short(path, *args, **kwargs):
        real(path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_slides, "write_pyramidal_tiff", cut_short)
    with pytest.raises(OSError, match="No space left"):
        hx.datasets.synthetic_slide_cohort(tmp_path, 2, seed=1, size_um=100, mpp=1.0,
                                           overwrite=True)
    assert tree_digest(tmp_path) == before


def test_cli_predict_takes_the_root_of_relative_paths_in_a_model_file(tmp_path, capsys):
    from histoexpr._cli import EXIT_BAD_INPUT, main

    model = _model_file(tmp_path / "model.pt", "HuggingFaceEncoder",
                        {"path": "models/phikon", "pooling": "cls"})
    (tmp_path / "slide.tif").write_bytes(b"")  # present: the command gets to the model file
    args = ["predict", "-m", str(model), "-i", str(tmp_path / "slide.tif"),
            "-o", str(tmp_path / "out.zarr")]
    assert main(args) == EXIT_BAD_INPUT
    assert "by a relative path" in capsys.readouterr().err
    # with --root the folder is looked for there (and is missing: named)
    assert main([*args, "--root", str(tmp_path)]) == EXIT_BAD_INPUT
    assert str(tmp_path / "models" / "phikon") in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


_KILLED_SWAP = """
import os, sys
import numpy as np
import histoexpr as hx

store = hx.io.SlideStore(sys.argv[1])
real = os.replace

def replace(source, target):
    if str(target).endswith(os.path.join("features", "X_handcrafted")):
        os._exit(3)  # the old features are aside, the new ones not yet in place
    real(source, target)

os.replace = replace
n = store.n_tiles("he_tiles")
store.write_features("he_tiles", "X_handcrafted", np.ones((n, 23), np.float32), {"redo": 1})
"""


@bad_input("data lost", "a write into a slide store killed between moving the old features "
           "aside and renaming the new ones into place (the next run's clean-up deleted the "
           "old ones: neither old nor new left)",
           says="nothing: the next run puts the old features back (a warning says so) before it "
                "removes what the interrupted write left",
           fix="nothing to do")
def test_a_swap_killed_midway_is_undone_before_the_clean_up(cohort, tmp_path):
    import subprocess

    cohort, _ = cohort
    store = cohort.store("slide_00")
    before = store.features("he_tiles", "X_handcrafted").copy()
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_SWAP)
    done = subprocess.run([sys.executable, str(script), str(store.path)], check=False)
    assert done.returncode == 3
    target = store.path / "tiles" / "he_tiles" / "features" / "X_handcrafted"
    assert not target.exists()  # killed with the old features aside
    assert store.remove_partials() >= 1
    np.testing.assert_array_equal(store.features("he_tiles", "X_handcrafted"), before)
    assert not list(store.path.parent.glob(f".{store.path.name}.*partial-*"))
