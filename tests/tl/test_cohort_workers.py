"""The per-slide runner of a cohort on disk (embed_cohort, predict with a spot regressor): a
dask Client open in the process, a failing slide, the client's type, dask workers' settings and
their loader processes."""

from __future__ import annotations

import contextlib
import logging
import shutil

import numpy as np
import pytest
from _catalogue import bad_input
from conftest import tree_digest

import histoexpr as hx

GENES = ["EPCAM", "KRT8", "COL1A1", "PTPRC"]
KEY = "he_expr_tiles_expression"
EMBED = {"encoder": "handcrafted", "size_px": 16, "mpp": 2.0}
#: pytest.warns gives back the warnings it does not match, outside the module filters name:
#: zarr's announcement when a table of predictions is written among them
ZARR_NOTE = "ignore:zarr v3 autosharding will be the default:UserWarning"


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three small pyramidal TIFF slides (H&E only) and their manifest."""
    hx.settings.progress_bar = False
    folder = tmp_path_factory.mktemp("worker_slides")
    return hx.datasets.synthetic_slide_cohort(folder, 3, seed=0, size_um=300, mpp=1.0)


@pytest.fixture(scope="module")
def model():
    """A spot regressor (ridge on hand-crafted features of 40 um tiles)."""
    train = {name: hx.datasets.synthetic_section(seed=seed, size_um=400, spot_pitch_um=40,
                                                 spot_diameter_um=35, mpp=1.0)
             for seed, name in enumerate("ab")}
    return hx.tl.fit(train, model="spot_regressor", genes=GENES, size_um=40.0, mpp=1.0)


@pytest.fixture(scope="module")
def clean(slides, model, tmp_path_factory):
    """Features and predictions of every slide, computed with no dask client anywhere."""
    folder = tmp_path_factory.mktemp("clean")
    embedded = hx.io.read_cohort(slides, store_dir=folder / "embedded")
    hx.tl.embed_cohort(embedded, **EMBED)
    predicted = hx.io.read_cohort(slides, store_dir=folder / "predicted")
    hx.tl.predict(model, predicted)
    return ({i: embedded.store(i).features("he_tiles", "X_handcrafted") for i in embedded.ids},
            {i: np.asarray(predicted.store(i).prediction(KEY).X) for i in predicted.ids})


@pytest.fixture(scope="module")
def client(clean):
    """A local dask cluster (two worker processes), its Client dask's default while open."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    opened = Client(cluster)
    yield opened
    opened.close(timeout=120)  # on a loaded machine the workers take a while to stop
    with contextlib.suppress(TimeoutError):
        cluster.close(timeout=120)


@pytest.fixture
def corrupt(slides, tmp_path):
    """A copy of the slides whose slide_01 has its pixel data zeroed (its header intact), and
    the good file to put back."""
    copies = tmp_path / "slides"
    shutil.copytree(slides.parent, copies)
    bad = copies / "slide_01.tif"
    good = bad.read_bytes()
    data = bytearray(good)
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    bad.write_bytes(bytes(data))
    return copies / slides.name, bad, good


def _predictions(cohort):
    return {i: np.asarray(cohort.store(i).prediction(KEY).X) for i in cohort.ids}


@pytest.mark.slow
def test_an_open_client_leaves_the_runs_without_client_as_they_were(slides, model, clean,
                                                                    client, tmp_path):
    import dask

    features, predictions = clean
    assert dask.config.get("scheduler") == "dask.distributed"  # the Client is dask's default
    embedded = hx.io.read_cohort(slides, store_dir=tmp_path / "embedded")
    frame = hx.tl.embed_cohort(embedded, **EMBED)  # no client=: here, one slide after the other
    assert (frame["status"] == "computed").all()
    for slide_id in embedded.ids:
        np.testing.assert_array_equal(embedded.store(slide_id).features("he_tiles",
                                                                        "X_handcrafted"),
                                      features[slide_id])
    predicted = hx.io.read_cohort(slides, store_dir=tmp_path / "predicted")
    frame = hx.tl.predict(model, predicted)
    assert (frame["status"] == "computed").all()
    for slide_id, values in _predictions(predicted).items():
        np.testing.assert_array_equal(values, predictions[slide_id])
    # one slide, step by step, as the cohort predicts it: the same values
    slide = hx.io.read_wsi(slides.parent / "slide_00.tif")
    hx.pp.detect_tissue(slide, "he")
    table = hx.tl.predict(model, slide, key_added=KEY)
    np.testing.assert_array_equal(np.asarray(table.X), predictions["slide_00"])
    # spatialdata writes the lazily read slide with the cluster as dask's default: the workers
    # open the slide file themselves; the pixels written are the file's
    import spatialdata

    slide.write(tmp_path / "slide_00.zarr")
    written = spatialdata.read_zarr(tmp_path / "slide_00.zarr")
    levels = hx.io.image_levels(slide, "he")
    assert len(hx.io.image_levels(written, "he")) == len(levels)
    for ours, theirs in zip(levels, hx.io.image_levels(written, "he"), strict=True):
        np.testing.assert_array_equal(np.asarray(theirs.data.data.compute(scheduler="synchronous")),
                                      np.asarray(ours.data.data.compute(scheduler="synchronous")))


@pytest.mark.slow
@pytest.mark.filterwarnings(ZARR_NOTE)
def test_a_failing_slide_on_dask_workers_is_reported_and_the_others_predicted(
        model, clean, client, corrupt, tmp_path):
    _, predictions = clean
    manifest, bad, good = corrupt
    cohort = hx.io.read_cohort(manifest, store_dir=tmp_path / "stores")
    with pytest.warns(UserWarning, match="predict: 1 of 3 slides failed.*slide_01"):
        frame = hx.tl.predict(model, cohort, client=client)
    assert list(frame["status"]) == ["computed", "failed", "computed"]
    assert not cohort.store("slide_01").prediction_records()
    bad.write_bytes(good)
    again = hx.tl.predict(model, cohort, client=client)
    assert list(again["status"]) == ["skipped", "computed", "skipped"]
    for slide_id, values in _predictions(cohort).items():
        np.testing.assert_array_equal(values, predictions[slide_id])


@pytest.mark.filterwarnings(ZARR_NOTE)
@bad_input("obscure error",
           "`hx.tl.predict(model, cohort)` where the pixel data of one slide file cannot be "
           "decoded (its header intact): the run stopped at that slide with the decoder's "
           "error, the slides before it stored",
           says="UserWarning: predict: 1 of 3 slides failed and were left out (status "
                "'failed', their error in the 'error' column): slide_01: ... Fix or replace "
                "those slide files and run predict again (before: the decoder's error stopped "
                "the run)",
           fix="fix or replace the file and run predict again: only the failed slides are "
               "predicted")
def test_a_failing_slide_is_reported_and_a_rerun_predicts_only_it(model, clean, corrupt,
                                                                  tmp_path):
    _, predictions = clean
    manifest, bad, good = corrupt
    cohort = hx.io.read_cohort(manifest, store_dir=tmp_path / "stores")
    with pytest.warns(UserWarning, match="predict: 1 of 3 slides failed") as record:
        frame = hx.tl.predict(model, cohort)
    said = next(str(w.message) for w in record if "slides failed" in str(w.message))
    assert "slide_01: " in said and frame.loc["slide_01", "error"] in said
    assert list(frame["status"]) == ["computed", "failed", "computed"]
    assert list(frame.columns) == ["status", "n_tiles", "seconds", "worker",
                                   "fraction_out_of_range", "warns", "error"]
    assert frame.loc["slide_01", "n_tiles"] == 0 and frame["error"].isna().sum() == 2
    # nothing of the failed slide is in its store, not even a temporary folder
    assert not cohort.store("slide_01").prediction_records()
    assert not list((tmp_path / "stores").glob(".*"))
    for slide_id in ("slide_00", "slide_02"):
        np.testing.assert_array_equal(np.asarray(cohort.store(slide_id).prediction(KEY).X),
                                      predictions[slide_id])
    bad.write_bytes(good)
    again = hx.tl.predict(model, cohort)
    assert list(again["status"]) == ["skipped", "computed", "skipped"]
    assert again["error"].isna().all()
    for slide_id, values in _predictions(cohort).items():
        np.testing.assert_array_equal(values, predictions[slide_id])


def test_every_slide_failing_is_an_error(model, corrupt, tmp_path):
    manifest, bad, _ = corrupt
    cohort = hx.io.read_cohort(manifest, store_dir=tmp_path / "stores").subset(["slide_01"])
    with pytest.raises(RuntimeError, match=r"Every slide predict tried failed \(1\): slide_01"):
        hx.tl.predict(model, cohort)
    # the command line: an exit status and the message, not a traceback
    from histoexpr._cli import EXIT_CANNOT_PREDICT, main

    model_file = hx.io.save_model(model, tmp_path / "model.pt")
    only = tmp_path / "bad.csv"
    only.write_text(f"path\n{bad}\n")
    code = main(["predict", "-m", str(model_file), "--manifest", str(only), "--store-dir",
                 str(tmp_path / "cli_stores")])
    assert code == EXIT_CANNOT_PREDICT


@bad_input("obscure error",
           "`hx.tl.embed_cohort(cohort, client=ThreadPoolExecutor())` (or `hx.tl.predict(model, "
           "cohort, client=...)`) with an executor of concurrent.futures, a scheduler's address "
           "or a LocalCluster: anything with a `map` passed and failed inside the run",
           says="TypeError: client must be a dask.distributed Client, got ThreadPoolExecutor. "
                "Pass client=Client(LocalCluster(...)) ... or client=None (before: an internal "
                "TypeError from inside the run)",
           fix="pass a `dask.distributed.Client` (e.g. `Client(LocalCluster(n_workers=4, "
               "threads_per_worker=1))`), or no client to run the slides here")
def test_a_client_that_is_not_a_dask_client_is_refused_before_anything_is_written(
        slides, model, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    before = tree_digest(slides.parent)
    with ThreadPoolExecutor(1) as executor:
        for call in (lambda c, client: hx.tl.embed_cohort(c, client=client, **EMBED),
                     lambda c, client: hx.tl.predict(model, c, client=client)):
            for client in (executor, "tcp://127.0.0.1:8786"):
                cohort = hx.io.read_cohort(slides, store_dir=tmp_path / "stores")
                with pytest.raises(TypeError, match=r"client must be a dask\.distributed "
                                   r"Client, got (ThreadPoolExecutor|str)\. Pass client="
                                   r"Client\(LocalCluster"):
                    call(cohort, client)
    assert not (tmp_path / "stores").exists()
    assert tree_digest(slides.parent) == before


def test_a_daemonic_process_reads_tiles_itself(monkeypatch, caplog):
    """A dask worker is a daemonic process: DataLoader workers there would fail every slide."""
    import multiprocessing

    from histoexpr._core import devices

    class Daemonic:
        daemon = True

    monkeypatch.setattr(hx.settings, "n_workers", None)
    monkeypatch.setattr(multiprocessing, "current_process", lambda: Daemonic())
    with caplog.at_level(logging.DEBUG, logger="histoexpr"):
        assert devices.resolve_workers("cuda") == 0
        monkeypatch.setattr(hx.settings, "n_workers", 2)
        assert devices.resolve_workers("cuda") == 0
        assert devices.resolve_workers("cpu") == 0
        options = devices.loader_options("cuda")
    assert options["num_workers"] == 0 and not options["persistent_workers"]
    assert "daemonic process" in caplog.text
    monkeypatch.setattr(multiprocessing, "current_process", lambda: type("Main", (), {
        "daemon": False})())
    assert devices.resolve_workers("cuda") == 2  # elsewhere, as set


def test_a_worker_runs_each_slide_with_the_callers_settings_then_puts_its_own_back(caplog):
    """What the runner ships with each slide; on a worker, a slide's info lines are debug."""
    from histoexpr._core.distributed import _on_worker
    from histoexpr._core.logs import logger

    seen = {}

    def work(task, extra):
        seen.update(precision=hx.settings.precision, verbosity=hx.settings.verbosity.name,
                    seed=hx.settings.seed, progress_bar=hx.settings.progress_bar, extra=extra)
        logger.info("%s: done", task["slide_id"])
        return {"slide_id": task["slide_id"]}

    saved = (hx.settings.precision, hx.settings.verbosity, hx.settings.seed,
             hx.settings.progress_bar)
    with caplog.at_level(logging.DEBUG, logger="histoexpr"):
        for verbosity in ("debug", "warning"):
            shipped = {"precision": "bf16", "verbosity": verbosity, "seed": 7}
            assert _on_worker({"slide_id": verbosity}, work=work, shipped=shipped,
                              extra=1) == {"slide_id": verbosity}
            assert seen == {"precision": "bf16", "verbosity": verbosity, "seed": 7,
                            "progress_bar": False, "extra": 1}
            assert (hx.settings.precision, hx.settings.verbosity, hx.settings.seed,
                    hx.settings.progress_bar) == saved
    logged = {r.getMessage(): r.levelname for r in caplog.records if "done" in r.getMessage()}
    assert logged == {"debug: done": "DEBUG"}  # at 'warning', not at all
