"""The spot regressor over a cohort of H&E-only slides on disk: per-slide tables in the slides'
stores, equal to the single-slide prediction, resumable, checked before anything is written."""

from __future__ import annotations

import contextlib
import os
import shutil

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
from _catalogue import bad_input
from conftest import tree_digest

import histoexpr as hx
from histoexpr._cli import EXIT_BAD_INPUT, EXIT_CANNOT_PREDICT, main

GENES = ["EPCAM", "KRT8", "COL1A1", "PTPRC"]
KEY = "he_expr_tiles_expression"


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three small pyramidal TIFF slides (H&E only) and their manifest."""
    hx.settings.progress_bar = False
    folder = tmp_path_factory.mktemp("spot_slides")
    return hx.datasets.synthetic_slide_cohort(folder, 3, seed=0, size_um=300, mpp=1.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A spot regressor (ridge on hand-crafted features of 40 um tiles) and its model file."""
    train = {
        name: hx.datasets.synthetic_section(
            seed=seed, size_um=400, spot_pitch_um=40, spot_diameter_um=35, mpp=1.0
        )
        for seed, name in enumerate("ab")
    }
    network = hx.tl.fit(train, model="spot_regressor", genes=GENES, size_um=40.0, mpp=1.0)
    path = hx.io.save_model(network, tmp_path_factory.mktemp("spot_model") / "spots.pt")
    return network, path


def cohort_at(slides, store_dir):
    return hx.io.read_cohort(slides, store_dir=store_dir)


def single_slide(network, cohort, slide_id):
    return hx.tl.predict(network, hx.io.read_wsi(cohort.path(slide_id), image_key="he"))


@pytest.mark.filterwarnings(  # the scanpy habit, on purpose: scanpy says to use squidpy
    "ignore:Use `squidpy.pl.spatial_scatter` instead:FutureWarning")
def test_cohort_predictions_are_the_single_slide_ones_and_a_rerun_skips_them(
    slides, model, tmp_path
):
    import scanpy as sc

    network, _ = model
    cohort = cohort_at(slides, tmp_path / "stores")
    first = hx.tl.predict(network, cohort)
    assert list(first.index) == cohort.ids and (first["status"] == "computed").all()
    for slide_id in cohort.ids:
        stored = cohort.store(slide_id).prediction(KEY)
        expected = single_slide(network, cohort, slide_id)
        assert list(stored.var_names) == GENES
        np.testing.assert_array_equal(np.asarray(stored.X), np.asarray(expected.X))
        np.testing.assert_array_equal(stored.obsm["spatial"], expected.obsm["spatial"])
        assert first.loc[slide_id, "n_tiles"] == stored.n_obs > 10
        # the slide's guard summary is a row of the frame: the slides to doubt at a glance
        guard = stored.uns["prediction"]["guard"]
        assert first.loc[slide_id, "fraction_out_of_range"] == guard["fraction_out_of_range"]
        assert first.loc[slide_id, "warns"] == guard["warns"]
        assert guard["fraction_out_of_range"] == stored.obs["out_of_range"].mean()
        # the slide opened from the cohort carries its table and tiles, and scanpy takes it
        opened = cohort[slide_id]
        assert opened.tables[KEY].n_obs == stored.n_obs
        assert len(opened.shapes["he_expr_tiles"]) == stored.n_obs
        sc.pp.pca(stored, n_comps=2)
        sc.pl.spatial(stored, color=GENES[0], show=False)
    written = {
        i: os.stat(cohort.store(i).path / "predictions" / KEY).st_mtime_ns for i in cohort.ids
    }

    # a second run (a new Python process reading the same manifest) skips every finished slide
    again = hx.tl.predict(network, cohort_at(slides, tmp_path / "stores"))
    assert (again["status"] == "skipped").all()
    assert again["n_tiles"].tolist() == first["n_tiles"].tolist()
    columns = ["fraction_out_of_range", "warns"]
    assert again[columns].equals(first[columns])  # read back from the stores
    assert written == {
        i: os.stat(cohort.store(i).path / "predictions" / KEY).st_mtime_ns for i in cohort.ids
    }

    # a run killed after the first slide: the next run predicts only the others
    shutil.rmtree(cohort.store("slide_02").path)
    resumed = hx.tl.predict(network, cohort)
    assert resumed["status"].tolist() == ["skipped", "skipped", "computed"]


def test_cohort_intervals_at_a_given_library_size_are_recorded_and_checked_on_resume(
    slides, model, tmp_path
):
    """H&E-only slides: intervals at the calibration's reference depth by default, or at the
    library size asked for; a later run asking another depth does not take the stored tables
    for its own."""
    network, _ = model
    reference = network.metadata["calibration"]["intervals"]["reference_library_size"]
    cohort = cohort_at(slides, tmp_path / "stores")
    hx.tl.predict(network, cohort.subset(["slide_00"]), library_size=2 * reference)
    stored = cohort.store("slide_00").prediction(KEY)
    assert (stored.obs["interval_library_size"] == 2 * reference).all()
    by_default = single_slide(network, cohort, "slide_00")
    assert (by_default.obs["interval_library_size"] == reference).all()
    assert ((stored.layers["upper"] - stored.layers["lower"])
            < (by_default.layers["upper"] - by_default.layers["lower"])).all()
    with pytest.raises(ValueError, match="library_size differ"):
        hx.tl.predict(network, cohort.subset(["slide_00"]))


def test_predictions_survive_a_later_embed_cohort(slides, model, tmp_path):
    network, _ = model
    cohort = cohort_at(slides, tmp_path / "stores").subset(["slide_00"])
    hx.tl.predict(network, cohort)
    before = np.asarray(cohort.store("slide_00").prediction(KEY).X)
    hx.tl.embed_cohort(cohort, encoder="handcrafted", size_px=16, mpp=2.0)
    store = cohort.store("slide_00")
    assert store.complete and "X_handcrafted" in store.feature_records("he_tiles")
    np.testing.assert_array_equal(np.asarray(store.prediction(KEY).X), before)
    assert hx.tl.predict(network, cohort)["status"].tolist() == ["skipped"]


@bad_input(
    "silently wrong",
    "`hx.tl.predict(model, cohort)` again after the model (or a slide "
    "file, or an option) changed, into the stores of an earlier run",
    says="ValueError naming what differs (model, slide file, options), before any slide "
    "is predicted; the stored tables are kept",
    fix="pass overwrite=True to predict them anew, or another key_added to keep both",
)
def test_a_changed_model_is_not_mistaken_for_the_stored_one(slides, model, tmp_path):
    network, _ = model
    cohort = cohort_at(slides, tmp_path / "stores").subset(["slide_00", "slide_01"])
    hx.tl.predict(network, cohort)
    before = np.asarray(cohort.store("slide_00").prediction(KEY).X)
    changed = hx.io.load_model(model[1], device="cpu")
    with __import__("torch").no_grad():
        changed.bias.add_(1.0)
    with pytest.raises(ValueError, match="made otherwise.*model.*overwrite=True"):
        hx.tl.predict(changed, cohort)
    np.testing.assert_array_equal(np.asarray(cohort.store("slide_00").prediction(KEY).X), before)
    frame = hx.tl.predict(changed, cohort, overwrite=True)
    assert (frame["status"] == "computed").all()
    np.testing.assert_allclose(
        np.asarray(cohort.store("slide_00").prediction(KEY).X), before + 1.0, rtol=1e-5, atol=1e-5
    )


@bad_input(
    "silently wrong",
    "a slide file replaced after `hx.tl.predict(model, cohort)` (another slide copied over it): "
    "`cohort[slide_id]` attached the old file's predictions to the new image",
    says="ValueError: The slide file ... is not the one the predictions ... of its store ... "
    "were made from",
    fix="`hx.tl.predict(model, cohort, overwrite=True)`, or another `store_dir`",
)
def test_predictions_of_a_replaced_slide_file_are_not_attached_to_it(slides, model, tmp_path):
    network, _ = model
    copies = tmp_path / "slides"
    shutil.copytree(slides.parent, copies)
    cohort = cohort_at(copies / slides.name, tmp_path / "stores").subset(["slide_00", "slide_01"])
    hx.tl.predict(network, cohort)
    shutil.copyfile(cohort.path("slide_01"), cohort.path("slide_00"))
    os.utime(cohort.path("slide_00"), ns=(0, 0))  # whatever the file's dates say
    with pytest.raises(ValueError, match=f"is not the one the predictions '{KEY}' of its store "
                       ".*hx.tl.predict\\(model, cohort, overwrite=True\\)"):
        cohort["slide_00"]
    with pytest.raises(ValueError, match="made otherwise.*slide"):
        hx.tl.predict(network, cohort)
    frame = hx.tl.predict(network, cohort, overwrite=True)
    assert list(frame["status"]) == ["computed", "skipped"]
    np.testing.assert_array_equal(np.asarray(cohort["slide_00"].tables[KEY].X),
                                  np.asarray(cohort.store("slide_01").prediction(KEY).X))


@bad_input(
    "obscure error",
    "`hx.tl.predict(model, cohort)` after some slide files of the manifest were moved or deleted",
    says="FileNotFoundError naming the missing files, before any slide is predicted",
    fix="restore them, or predict on `cohort.subset([...])` of the others",
)
def test_missing_slide_files_are_named_before_anything_is_written(slides, model, tmp_path):
    network, _ = model
    copies = tmp_path / "slides"
    shutil.copytree(slides.parent, copies)
    cohort = cohort_at(copies / slides.name, tmp_path / "stores")
    cohort.path("slide_01").unlink()
    with pytest.raises(FileNotFoundError, match="no longer exist.*slide_01"):
        hx.tl.predict(network, cohort)
    assert not (tmp_path / "stores").exists() or not any((tmp_path / "stores").iterdir())


@bad_input(
    "obscure error",
    "`hx.tl.predict(model, cohort)` with a model that does not predict "
    "over a cohort (e.g. a patch classifier), or a cohort in memory",
    says="ValueError naming the models that predict over a cohort / TypeError asking "
    "for a cohort read from a manifest; nothing is written",
    fix="predict each slide with `hx.tl.predict(model, cohort[slide_id])`, or read the "
    "cohort with `hx.io.read_cohort`",
)
def test_wrong_model_kind_or_cohort_in_memory_is_refused(slides, model, tmp_path, synthetic_cohort):
    network, _ = model
    cohort = cohort_at(slides, tmp_path / "stores")
    other = hx.models.LinearHead(n_features=3, n_genes=2)
    other.metadata = {"model": "patch_classifier"}
    with pytest.raises(ValueError, match="does not predict over a cohort.*spot_regressor"):
        hx.tl.predict(other, cohort)
    with pytest.raises(TypeError, match="read_cohort"):
        hx.tl.predict(network, synthetic_cohort(2, seed=0, size_um=100))
    with pytest.raises(ValueError, match="client= runs the slides of a cohort"):
        hx.tl.predict(network, cohort["slide_00"], client=object())
    assert not (tmp_path / "stores").exists()


@bad_input(
    "data lost",
    "`hx.tl.predict(model, cohort, tiles_key=...)` naming the tiles "
    "`hx.tl.embed_cohort` stored for a slide, or `key_added=` naming the tiles",
    says="ValueError naming the clash, before any slide is predicted; the stores are kept",
    fix="pass another tiles_key (the default makes its own) or key_added",
)
def test_key_clashes_are_refused_before_anything_is_written(slides, model, tmp_path):
    network, _ = model
    cohort = cohort_at(slides, tmp_path / "stores").subset(["slide_00", "slide_01"])
    hx.tl.embed_cohort(cohort.subset(["slide_01"]), encoder="handcrafted", size_px=16, mpp=2.0)
    with pytest.raises(ValueError, match="holds tiles 'he_tiles'.*another tiles_key"):
        hx.tl.predict(network, cohort, tiles_key="he_tiles")
    with pytest.raises(ValueError, match="names the tiles"):
        hx.tl.predict(network, cohort, key_added="he_expr_tiles")
    assert not cohort.store("slide_00").exists
    assert cohort.store("slide_01").prediction_records() == {}
    assert cohort.store("slide_01").complete


@bad_input(
    "data lost",
    "`hx.tl.predict(model, cohort, key_added='run2')` where the store of a later slide holds "
    "something that is not a table of predictions (no record) at `predictions/run2`: the "
    "slides before it were predicted and stored, then the run stopped",
    says="FileExistsError: The stores of 1 slide(s) hold something at predictions/run2 that is "
         "not a table of predictions written by histoexpr (it has no record of how it was made) "
         "... so it is not replaced, even with overwrite=True. Move it away, or choose another "
         "key_added (on the command line: another --store-dir). Nothing was predicted.",
    fix="move the folder away, or choose another key_added",
)
def test_a_foreign_prediction_target_stops_the_run_before_any_slide(slides, model, tmp_path):
    network, _ = model
    cohort = cohort_at(slides, tmp_path / "stores").subset(["slide_00", "slide_01"])
    hx.tl.embed_cohort(cohort, encoder="handcrafted", size_px=16, mpp=2.0)  # histoexpr's stores
    theirs = cohort.store("slide_01").path / "predictions" / "run2"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    before = tree_digest(tmp_path / "stores")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"predictions/run2 that is not a table of "
                           r"predictions written by histoexpr .*'slide_01'.*Nothing was "
                           "predicted"):
            hx.tl.predict(network, cohort, key_added="run2", overwrite=overwrite)
        assert tree_digest(tmp_path / "stores") == before
    assert cohort.store("slide_00").prediction_records() == {}


def test_the_command_line_predicts_a_manifest(slides, model, tmp_path, capsys):
    network, path = model
    stores = tmp_path / "stores"
    assert (
        main(["predict", "-m", str(path), "--manifest", str(slides), "--store-dir", str(stores)])
        == 0
    )
    cohort = cohort_at(slides, stores)
    expected = single_slide(network, cohort, "slide_01")
    np.testing.assert_allclose(
        np.asarray(cohort.store("slide_01").prediction(KEY).X),
        np.asarray(expected.X),
        rtol=1e-6,
        atol=1e-6,
    )
    capsys.readouterr()
    assert (
        main(["predict", "-m", str(path), "--manifest", str(slides), "--store-dir", str(stores)])
        == 0
    )
    assert capsys.readouterr().out.count("skipped") == 3


@bad_input(
    "obscure error",
    "`histoexpr predict --manifest SLIDES.csv` with a model file of a model that "
    "does not predict a cohort, or a manifest naming missing slide files",
    says="exit 3: names the model and the models that predict a manifest / "
    "exit 2: names the missing files; no store is written",
    fix="give a model that predicts a cohort (or predict each slide with --image); fix the paths",
)
def test_the_command_line_refuses_a_manifest_it_cannot_predict(slides, model, tmp_path, capsys):
    other = hx.models.LinearHead(n_features=3, n_genes=2)
    other.metadata = {"model": "patch_classifier"}
    path = hx.io.save_model(other, tmp_path / "classifier.pt")
    stores = tmp_path / "stores"
    code = main(["predict", "-m", str(path), "--manifest", str(slides), "--store-dir", str(stores)])
    assert code == EXIT_CANNOT_PREDICT
    assert "'patch_classifier' model" in capsys.readouterr().err
    manifest = tmp_path / "slides.csv"
    manifest.write_text("path\nnowhere/slide.tif\n")
    code = main(
        ["predict", "-m", str(model[1]), "--manifest", str(manifest), "--store-dir", str(stores)]
    )
    assert code == EXIT_BAD_INPUT
    assert "do not exist" in capsys.readouterr().err
    assert not stores.exists()


@pytest.mark.slow
def test_dask_workers_predict_what_one_process_predicts(slides, model, tmp_path):
    from dask.distributed import Client, LocalCluster

    network, _ = model
    serial = cohort_at(slides, tmp_path / "serial")
    hx.tl.predict(network, serial)
    cohort = cohort_at(slides, tmp_path / "dask")
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster)
    try:
        frame = hx.tl.predict(network, cohort, client=client)
    finally:  # on a loaded machine the workers take a while to stop
        client.close(timeout=120)
        with contextlib.suppress(TimeoutError):
            cluster.close(timeout=120)
    assert (frame["status"] == "computed").all()
    for slide_id in cohort.ids:
        np.testing.assert_array_equal(
            np.asarray(cohort.store(slide_id).prediction(KEY).X),
            np.asarray(serial.store(slide_id).prediction(KEY).X),
        )


@bad_input(
    "obscure error",
    "`hx.tl.predict(model, cohort, device='gpu')` (or `batch_size=0`, `level=1.5`, "
    "`key_added=''`, `tiles_key='a/b'`, `stride_um=-1`): refused when the first slide was "
    "predicted, device='gpu' as torch's RuntimeError",
    says="ValueError: device='gpu' is not a device: use None (automatic), 'cpu' ... "
    "(before: torch's RuntimeError, after the first slide was read and tiled)",
    fix="pass a device of this machine, a batch size of at least 1, a level the model keeps, "
    "keys of letters, digits, '_', '-' or '.'",
)
def test_bad_options_are_refused_before_any_slide_is_read(slides, model, tmp_path, monkeypatch):
    from histoexpr.io import _wsi

    network, _ = model
    cohort = cohort_at(slides, tmp_path / "stores")

    def never(*args, **kwargs):
        raise AssertionError("a slide was read")

    monkeypatch.setattr(_wsi, "read_wsi", never)
    for options, said in (
        ({"device": "gpu"}, "device='gpu' is not a device"),
        ({"batch_size": 0}, r"batch_size must be an integer in \[1, inf\]"),
        ({"level": 1.5}, r"level must be a fraction in \(0, 1\)"),
        ({"key_added": ""}, "key_added='' cannot name an element"),
        ({"tiles_key": "a/b"}, "tiles_key='a/b' cannot name an element"),
        ({"stride_um": -1}, "stride_um must be a positive number"),
        ({"min_tissue": 2}, r"min_tissue must be a fraction in \[0, 1\]"),
        ({"library_size": "spots"}, "library_size='spots': pass a number of UMIs per spot"),
        ({"library_size": -1}, "library_size must be a positive number"),
    ):
        with pytest.raises(ValueError, match=said):
            hx.tl.predict(network, cohort, **options)
    assert not (tmp_path / "stores").exists()


@bad_input(
    "data lost",
    "`hx.tl.predict(model, cohort)` where one slide file of the manifest is no slide (a "
    "truncated copy, a text file) or has no pixel size in its metadata nor in the manifest",
    says="ValueError: 1 of the 3 slides to predict cannot be predicted ('slide_01': ... Fix or "
    "replace those files ... Nothing was predicted (before: the slides before it were "
    "predicted and stored, then the run stopped)",
    fix="fix or replace the file, give its pixel size in the manifest's mpp column, or predict "
    "the others with `cohort.subset([...])`",
)
def test_a_slide_that_cannot_be_opened_stops_the_run_before_any_slide(slides, model, tmp_path):
    import tifffile

    network, _ = model
    copies = tmp_path / "slides"
    shutil.copytree(slides.parent, copies)
    manifest = copies / slides.name
    bad = copies / "slide_01.tif"
    pixels = tifffile.imread(bad)
    tifffile.imwrite(bad, pixels)  # the same pixels, without a pixel size
    before = tree_digest(copies)
    with pytest.raises(ValueError, match="1 of the 3 slides.*'slide_01'.*pixel size.*mpp column"):
        hx.tl.predict(network, cohort_at(manifest, tmp_path / "stores"))
    bad.write_text("not a slide")
    with pytest.raises(ValueError, match="'slide_01'.*is not a slide histoexpr can read"):
        hx.tl.predict(network, cohort_at(manifest, tmp_path / "stores"))
    assert not (tmp_path / "stores").exists()
    assert set(tree_digest(copies)) == set(before)


@bad_input(
    "silently wrong",
    "`histoexpr predict --manifest SLIDES.csv --mpp 0.5` (or `--out OUT.zarr`): the option "
    "was ignored; `--store-dir` naming a file: a traceback (NotADirectoryError)",
    says="exit 2: names the option and where its value goes with --manifest (the manifest's "
    "mpp column, each slide's store); nothing is read or written",
    fix="drop the option; give pixel sizes in the manifest's mpp column",
)
def test_the_command_line_refuses_options_a_manifest_ignores(slides, model, tmp_path, capsys):
    _, path = model
    stores = tmp_path / "stores"
    base = ["predict", "-m", str(path), "--manifest", str(slides), "--store-dir", str(stores)]
    assert main([*base, "--mpp", "0.5"]) == EXIT_BAD_INPUT
    assert "manifest's mpp column" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "out.zarr")]) == EXIT_BAD_INPUT
    assert "its own store" in capsys.readouterr().err
    assert main([*base, "--batch-size", "0"]) == EXIT_BAD_INPUT
    assert main([*base, "--device", "gpu"]) == EXIT_BAD_INPUT
    assert "--device='gpu' is not a device" in capsys.readouterr().err
    assert not stores.exists() and not (tmp_path / "out.zarr").exists()
    stores.write_text("a file of the user's")  # --store-dir naming a file: a message, exit 2
    assert main(base) == EXIT_BAD_INPUT
    assert "is a file; give a folder" in capsys.readouterr().err
    assert stores.read_text() == "a file of the user's"
