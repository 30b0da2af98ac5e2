"""A cohort on disk: manifest -> slide stores -> MIL cross-validation -> attention; resumable,
parallel on dask, parameters checked before reuse."""

from __future__ import annotations

import contextlib
import json
import re
import shutil

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx
from histoexpr._core.records import TileRecord
from histoexpr.tl._metrics._expression_metrics import column_pearson

GENES = ["EPCAM", "KRT8", "COL1A1", "PTPRC", "CD3E", "CDH1"]
OPTIONS = {"encoder": "handcrafted", "size_px": 16, "mpp": 2.0}
N_SLIDES = 12


@pytest.fixture(scope="session")
def slide_folder(tmp_path_factory):
    """12 small pyramidal TIFF slides (6 patients), their manifest and bulk expression."""
    folder = tmp_path_factory.mktemp("slides")
    hx.settings.progress_bar = False
    return hx.datasets.synthetic_slide_cohort(folder, N_SLIDES, seed=0, size_um=300, mpp=1.0)


@pytest.fixture(scope="session")
def embedded(slide_folder, tmp_path_factory):
    """The cohort read from its manifest and embedded serially into its stores."""
    store_dir = tmp_path_factory.mktemp("stores") / "stores"
    cohort = hx.io.read_cohort(slide_folder, bulk=slide_folder.parent / "bulk.h5ad",
                               store_dir=store_dir)
    frame = hx.tl.embed_cohort(cohort, **OPTIONS)
    return cohort, frame


@pytest.fixture
def one_thread():
    """Two cores are shared by many processes here: small networks train fastest on one."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _features(cohort, key="X_handcrafted"):
    return {i: cohort.store(i).features("he_tiles", key) for i in cohort.ids}


def _processed(cohort):
    return {i: cohort.store(i).info.get("processed") for i in cohort.ids}


def test_synthetic_slides_follow_the_rule_and_read_as_slides(slide_folder):
    import anndata as ad
    import pandas as pd

    manifest = pd.read_csv(slide_folder)
    bulk = ad.read_h5ad(slide_folder.parent / "bulk.h5ad")
    assert list(manifest.columns) == ["path", "slide_id", "patient", "diagnosis"]
    assert manifest["patient"].nunique() == N_SLIDES // 2
    # the same slides and bulk as the in-memory synthetic cohort of the same seed
    memory = hx.datasets.synthetic_cohort(2, seed=0, size_um=300, mpp=1.0)
    np.testing.assert_array_equal(bulk.X[:2], memory.bulk.X)
    assert (bulk.obs["diagnosis"] == np.where(bulk.obs["fraction_tumour"] >= 0.25, "tumour",
                                              "normal")).all()
    sdata = hx.io.read_wsi(slide_folder.parent / manifest["path"][0])
    levels = hx.io.image_levels(sdata, "he")
    assert len(levels) == 1 or levels[1].mpp == pytest.approx(2.0)
    assert levels[0].mpp == pytest.approx(1.0)
    # zlib tiles are lossless: the file holds exactly the rendered H&E
    np.testing.assert_array_equal(np.asarray(levels[0].data.values),
                                  np.asarray(memory["slide_00"].images["he"].values))


def test_manifest_to_stores(embedded, slide_folder):
    cohort, frame = embedded
    assert cohort.on_disk and len(cohort) == N_SLIDES
    assert (frame["status"] == "computed").all() and (frame["n_tiles"] > 20).all()
    assert set(cohort.bulk.obs["patient"]) == {f"patient_{i:02d}" for i in range(6)}
    # a later session reopens the results: the same features, tiles and tissue
    again = hx.io.read_cohort(slide_folder, bulk=slide_folder.parent / "bulk.h5ad",
                              store_dir=cohort.store_dir)
    sdata = again["slide_03"]
    table = sdata.tables["he_tiles_table"]
    np.testing.assert_array_equal(table.obsm["X_handcrafted"],
                                  cohort.store("slide_03").features("he_tiles", "X_handcrafted"))
    assert table.n_obs == frame.loc["slide_03", "n_tiles"] == len(sdata.shapes["he_tiles"])
    assert "he_tissue" in sdata.labels and table.uns["tiles"]["mpp"] == pytest.approx(2.0)
    # the features are those hx.tl.embed computes on the slide in memory
    fresh = hx.io.read_wsi(cohort.path("slide_03"))
    hx.pp.tile(fresh, "he", size_px=16, mpp=2.0)
    hx.tl.embed(fresh, "he_tiles", encoder="handcrafted")
    np.testing.assert_allclose(fresh.tables["he_tiles_table"].obsm["X_handcrafted"],
                               table.obsm["X_handcrafted"], rtol=1e-5, atol=1e-6)
    # a rerun skips every slide
    rerun = hx.tl.embed_cohort(again, **OPTIONS)
    assert (rerun["status"] == "skipped").all()


def test_cross_validation_from_stores_learns_the_rule(embedded, one_thread):
    cohort, _ = embedded
    result = hx.tl.cross_validate(cohort, model="meanpool_ridge", genes=GENES, groups="patient",
                                  n_folds=3, key_added="cv_ridge")
    pearson = column_pearson(result.X, result.layers["measured"])
    # baseline in the same folds: the slide's tissue area (number of tiles) alone
    baseline = _tile_count_baseline(cohort, result)
    assert pearson[:2].min() > 0.75 and pearson.mean() > 0.5, pearson
    assert pearson[:2].min() > baseline[:2].max() + 0.3, (pearson, baseline)
    # streaming from the stores gives exactly what the slides in memory give
    memory = hx.io.Cohort({i: cohort[i] for i in cohort.ids}, cohort.bulk)
    in_memory = hx.tl.cross_validate(memory, model="meanpool_ridge", genes=GENES,
                                     groups="patient", n_folds=3, key_added="cv_memory")
    np.testing.assert_allclose(result.X, in_memory.X, rtol=1e-4, atol=1e-5)
    # out-of-fold per-tile results went back into each slide's store
    for slide_id in cohort.ids:
        assert "cv_ridge" in cohort.store(slide_id).results_keys("he_tiles")
    table = cohort["slide_00"].tables["he_tiles_table"]
    assert list(table.obsm["cv_ridge"].columns) == GENES
    np.testing.assert_allclose(table.obs["cv_ridge_attention"].sum(), 1, rtol=1e-5)


@pytest.mark.slow
def test_attention_mil_from_stores_and_attention_maps(embedded, one_thread):
    cohort, _ = embedded
    result = hx.tl.cross_validate(cohort, model="abmil", genes=GENES[:2], groups="patient",
                                  n_folds=3, key_added="cv_abmil", epochs=30, hidden=32,
                                  val_fraction=0, seed=0, batch_size=2)
    pearson = column_pearson(result.X, result.layers["measured"])
    baseline = _tile_count_baseline(cohort, result)
    assert pearson.min() > 0.5 and pearson.min() > baseline.max() + 0.2, (pearson, baseline)
    sdata = cohort["slide_01"]
    attention = sdata.tables["he_tiles_table"].obs["cv_abmil_attention"].to_numpy()
    np.testing.assert_allclose(attention.sum(), 1, rtol=1e-5)
    ax = hx.pl.attention(sdata, pred_key="cv_abmil", max_side=100)
    shown = ax.images[0].get_array()
    # the thumbnail comes from a low level, not the full-resolution slide
    assert max(shown.shape[:2]) <= 160 < hx.io.image_levels(sdata, "he")[0].shape_yx[0]
    fig = hx.pl.top_tiles(cohort, result, gene="EPCAM", pred_key="cv_abmil", n_bins=2, n_tiles=2)
    tile = fig.axes[0].images[0].get_array()
    assert tile.shape[:2] == (16, 16)  # a tile read at its own 2 um/px


def _tile_count_baseline(cohort, result) -> np.ndarray:
    """Out-of-fold Pearson of a linear fit of each gene on the slide's number of tiles."""
    n_tiles = np.array([cohort.store(i).n_tiles("he_tiles") for i in result.obs_names], float)
    measured, predicted = result.layers["measured"], np.zeros_like(result.layers["measured"])
    folds = result.obs["fold"].to_numpy()
    for fold in np.unique(folds):
        train = folds != fold
        for g in range(measured.shape[1]):
            slope, intercept = np.polyfit(n_tiles[train], measured[train, g], 1)
            predicted[~train, g] = slope * n_tiles[~train] + intercept
    return column_pearson(predicted, measured)


def test_killed_run_resumes_without_redoing_finished_slides(embedded, slide_folder, tmp_path,
                                                            monkeypatch):
    import histoexpr.tl._features._embed_cohort as module

    reference, _ = embedded
    cohort = hx.io.read_cohort(slide_folder, bulk=slide_folder.parent / "bulk.h5ad",
                               store_dir=tmp_path / "stores")
    real, done = module._run_slide, []

    def killed_after_four(task, encoders):
        if len(done) == 4:
            raise KeyboardInterrupt("killed")
        done.append(task["slide_id"])
        return real(task, encoders)

    monkeypatch.setattr(module, "_run_slide", killed_after_four)
    with pytest.raises(KeyboardInterrupt):
        hx.tl.embed_cohort(cohort, **OPTIONS)
    monkeypatch.setattr(module, "_run_slide", real)
    finished = [i for i in cohort.ids if cohort.store(i).complete]
    assert finished == cohort.ids[:4] == done
    before = _processed(cohort)
    # what a kill in the middle of a write leaves: a temporary folder, and (on a file system
    # without atomic renames) a store that lacks its completion mark
    leftover = tmp_path / "stores" / ".slide_04.zarr.slide.partial-0123456789ab"
    leftover.mkdir()
    (leftover / "zarr.json").write_text("{}")
    half = cohort.store("slide_05")
    half.path.mkdir()
    (half.path / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "group",
        "attributes": {"histoexpr": {"format": "histoexpr-slide-store", "complete": False}}}))
    assert not half.complete

    frame = hx.tl.embed_cohort(cohort, **OPTIONS)
    assert (frame["status"][:4] == "skipped").all()
    assert (frame["status"][4:] == "computed").all()
    after = _processed(cohort)
    assert all(after[i] == before[i] for i in cohort.ids[:4])  # finished slides not redone
    assert not leftover.exists() and half.complete
    expected, got = _features(reference), _features(cohort)
    for slide_id in cohort.ids:
        np.testing.assert_array_equal(got[slide_id], expected[slide_id])


@pytest.mark.slow
def test_dask_workers_give_the_serial_features(embedded, slide_folder, tmp_path):
    from dask.distributed import Client, LocalCluster

    reference, _ = embedded
    cohort = hx.io.read_cohort(slide_folder, bulk=slide_folder.parent / "bulk.h5ad",
                               store_dir=tmp_path / "stores").subset(["slide_00", "slide_01",
                                                                      "slide_02", "slide_03"])
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    client = Client(cluster)
    try:
        frame = hx.tl.embed_cohort(cohort, client=client, **OPTIONS)
        workers = client.scheduler_info()["workers"]
    finally:  # on a loaded machine the workers take a while to stop
        client.close(timeout=120)
        with contextlib.suppress(TimeoutError):  # the nannies' kill timing out is no failure
            cluster.close(timeout=120)
    assert len(workers) == 2
    assert (frame["status"] == "computed").all()
    expected = _features(reference)
    for slide_id, values in _features(cohort).items():
        np.testing.assert_array_equal(values, expected[slide_id])


def test_each_slide_leaves_no_decoded_chunks_behind(slide_folder, tmp_path, monkeypatch):
    """A worker's memory does not grow with the slides it ran: the process-wide chunk cache is
    emptied after every slide (before, it kept ~12 MB of every finished slide's chunks, up to
    128 MiB; benchmarks/README.md measures the RSS per worker)."""
    from histoexpr._core import image as _image
    from histoexpr.tl._features import _embed_cohort

    cohort = hx.io.read_cohort(slide_folder, store_dir=tmp_path / "stores").subset(
        ["slide_00", "slide_01", "slide_02"])
    held = []
    process = _embed_cohort._process_slide

    def spy(task, encoders):
        result = process(task, encoders)
        held.append(_image.CHUNKS.store.nbytes)  # the chunks this slide left in the cache
        return result

    monkeypatch.setattr(_embed_cohort, "_process_slide", spy)
    frame = hx.tl.embed_cohort(cohort, **OPTIONS)
    assert list(frame["status"]) == ["computed"] * 3
    assert len(held) == 3 and min(held) > 0  # every slide read its pixels through the cache
    assert _image.CHUNKS.store.nbytes == 0 and not len(_image.CHUNKS.store)  # and left none of them


@pytest.mark.filterwarnings(  # a random encoder drawn from the seed, on purpose
    "ignore:encoder='small_cnn' without checkpoint= has RANDOM weights:UserWarning")
def test_changed_parameters_recompute_never_reuse(embedded, slide_folder, tmp_path):
    reference, _ = embedded
    for slide_id in ("slide_00", "slide_01"):
        shutil.copytree(reference.store(slide_id).path, tmp_path / "stores" / f"{slide_id}.zarr")
        # results of another step (e.g. cross_validate, when it ran first): never dropped
        shutil.rmtree(tmp_path / "stores" / f"{slide_id}.zarr" / "tiles" / "he_tiles" / "results",
                      ignore_errors=True)
    cohort = hx.io.read_cohort(slide_folder, store_dir=tmp_path / "stores").subset(
        ["slide_00", "slide_01"])
    before = _processed(cohort)
    with pytest.raises(ValueError, match=r"other parameters than those asked now \(tile option "
                       r"size_px: 16, not 20\)\. Pass overwrite=True"):
        hx.tl.embed_cohort(cohort, **{**OPTIONS, "size_px": 20})
    # tile options are compared as given: no tolerance on the pixel size, None is a value
    for other in ({"mpp": 2.05}, {"size_px": None, "size_um": 32.0}, {"stride_px": 8}):
        with pytest.raises(ValueError, match=r"\(tile option (mpp|size_px|stride_px): "):
            hx.tl.embed_cohort(cohort, **{**OPTIONS, **other})
    assert _processed(cohort) == before  # nothing was touched
    frame = hx.tl.embed_cohort(cohort, **{**OPTIONS, "size_px": 20}, overwrite=True)
    assert (frame["status"] == "computed").all()
    after = _processed(cohort)
    assert all(after[i] > before[i] for i in cohort.ids)
    assert cohort.store("slide_00").params["tiles"]["size_px"] == 20
    n_old = reference.store("slide_00").n_tiles("he_tiles")
    assert cohort.store("slide_00").n_tiles("he_tiles") < n_old  # larger tiles: fewer
    # another encoder (here: another key) adds its features to the stored tiles
    cnn = {**OPTIONS, "size_px": 20, "encoder": "small_cnn"}
    frame = hx.tl.embed_cohort(cohort, **cnn, seed=3)
    assert (frame["status"] == "features").all()
    assert _processed(cohort) == after
    records = cohort.store("slide_01").feature_records("he_tiles")
    assert set(records) == {"X_handcrafted", "X_small_cnn"}
    # a random encoder is drawn from the seed: the same on every slide and every run
    first = _features(cohort, "X_small_cnn")
    with pytest.raises(ValueError, match=r"made otherwise than asked now \(params\['seed'\]: "
                       r"3, not 4\)"):
        hx.tl.embed_cohort(cohort, **cnn, seed=4)
    hx.tl.embed_cohort(cohort, **cnn, seed=3, overwrite=True)
    for slide_id, values in _features(cohort, "X_small_cnn").items():
        np.testing.assert_allclose(values, first[slide_id], rtol=1e-5, atol=1e-6)


def test_stores_recorded_with_the_old_tile_names_are_still_recognised(embedded, slide_folder,
                                                                       tmp_path):
    """Stores written before size/stride became size_px/stride_px are reused, not recomputed."""
    import warnings

    reference, _ = embedded
    shutil.copytree(reference.store("slide_00").path, tmp_path / "stores" / "slide_00.zarr")
    meta = tmp_path / "stores" / "slide_00.zarr" / "zarr.json"
    content = json.loads(meta.read_text())
    tiles = content["attributes"]["histoexpr"]["params"]["tiles"]
    assert tiles["size_px"] == 16 and tiles["stride_px"] is None
    assert TileRecord.from_uns(tiles).extra == {"stride_px": None}
    cohort = hx.io.read_cohort(slide_folder, store_dir=tmp_path / "stores").subset(["slide_00"])
    before = _processed(cohort)
    for earlier in (
        {"size": 16, "mpp": 2.0, "size_um": None, "stride": None, "min_tissue": 0.5},
        # the form before the options became a tile record: no image_key, centres, stride_um
        {"size_px": 16, "mpp": 2, "size_um": None, "stride_px": None, "min_tissue": 0.5},
    ):
        content["attributes"]["histoexpr"]["params"]["tiles"] = earlier
        meta.write_text(json.dumps(content))
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # today's names warn nothing
            frame = hx.tl.embed_cohort(cohort, **OPTIONS)
        assert (frame["status"] == "skipped").all()
        assert _processed(cohort) == before
    # the old keywords still work, with a FutureWarning naming the new ones
    with pytest.warns(FutureWarning, match="'size' is deprecated.*use 'size_px'"):
        frame = hx.tl.embed_cohort(cohort, encoder="handcrafted", size=16, mpp=2.0)
    assert (frame["status"] == "skipped").all()


@bad_input("data lost",
           "`read_cohort(..., store_dir=D)` where D/<slide_id>.zarr is a user's folder",
           says="refuses: not a histoexpr slide store", fix="move it away or choose another "
           "store_dir")
def test_a_foreign_folder_in_the_store_dir_is_never_replaced(slide_folder, tmp_path):
    foreign = tmp_path / "stores" / "slide_00.zarr"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    cohort = hx.io.read_cohort(slide_folder, store_dir=tmp_path / "stores").subset(["slide_00"])
    with pytest.raises(FileExistsError, match="not a histoexpr slide store"):
        hx.tl.embed_cohort(cohort, **OPTIONS)
    assert (foreign / "notes.txt").read_text() == "mine"


@bad_input("obscure error", "a manifest whose slide files do not exist (wrong relative paths)",
           says="names the missing files and the folder relative paths are read from",
           fix="fix the paths")
def test_manifest_with_missing_files(tmp_path):
    manifest = tmp_path / "slides.csv"
    manifest.write_text("path,patient\nnowhere/a.svs,p1\n")
    with pytest.raises(FileNotFoundError, match="do not exist.*relative paths are read from"):
        hx.io.read_cohort(manifest)
    manifest.write_text("file,patient\na.svs,p1\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        hx.io.read_cohort(manifest)


@bad_input("silently wrong", "a bulk AnnData lacking rows for some slides of the manifest",
           says="names the slides without bulk and what obs_names must be",
           fix="give every slide its expression or drop it from the manifest")
def test_bulk_must_cover_the_manifest(slide_folder):
    import anndata as ad

    bulk = ad.read_h5ad(slide_folder.parent / "bulk.h5ad")
    with pytest.raises(ValueError, match="no row in bulk.*slide_11"):
        hx.io.read_cohort(slide_folder, bulk=bulk[:11].copy())


def test_embed_cohort_needs_a_cohort_on_disk(synthetic_cohort):
    cohort = synthetic_cohort(2, seed=0, size_um=100)
    with pytest.raises(TypeError, match="read_cohort"):
        hx.tl.embed_cohort(cohort)


@pytest.mark.slow
def test_two_processes_cross_validate_from_the_stores_as_one(embedded, slide_folder, tmp_path,
                                                             one_thread):
    """Attention MIL under torchrun (two gloo processes) on a cohort on disk: the processes
    share each batch, rank 0 alone writes the out-of-fold results into the stores (both writing
    would race: the second finds the first's results and refuses), and the predictions are those
    of one process to float32 summation order."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import _ddp_worker

    cohort, _ = embedded
    stores = tmp_path / "stores"
    shutil.copytree(cohort.store_dir, stores)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
         "--nproc_per_node=2", str(Path(_ddp_worker.__file__)), str(tmp_path), "mil",
         str(slide_folder), str(stores)],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(tmp_path / "mil_ddp.pt", weights_only=True)["X"].numpy()
    single = hx.tl.cross_validate(cohort, model="abmil", key_added="cv_single",
                                  **_ddp_worker.MIL_OPTIONS)
    # training carries the float32 summation-order differences of the two processes' shared
    # batches into the weights: up to 1.7e-3 relative seen on these slides' tiles
    np.testing.assert_allclose(ddp, single.X, rtol=5e-3, atol=1e-4)
    again = hx.io.read_cohort(slide_folder, bulk=slide_folder.parent / "bulk.h5ad",
                              store_dir=stores)
    for slide_id in cohort.ids:
        assert "cv_ddp" in again.store(slide_id).results_keys("he_tiles")
    written = again["slide_00"].tables["he_tiles_table"].obsm["cv_ddp"].to_numpy()
    expected = cohort["slide_00"].tables["he_tiles_table"].obsm["cv_single"].to_numpy()
    np.testing.assert_allclose(written, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_twelve_slide_cohort_logs_its_steps_not_each_slide(slide_folder, tmp_path):
    """At the default level (info) a cohort logs a line per step and fold, its time, and no
    per-slide chatter, which is logged at debug level."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("histoexpr").addHandler(handler)
    try:
        hx.settings.verbosity = "debug"  # everything, each record with its level
        cohort = hx.io.read_cohort(slide_folder, bulk=slide_folder.parent / "bulk.h5ad",
                                   store_dir=tmp_path / "stores")
        hx.tl.embed_cohort(cohort, **OPTIONS)
        hx.tl.cross_validate(cohort, model="meanpool_ridge", genes=GENES[:2], groups="patient",
                             n_folds=3)
    finally:
        logging.getLogger("histoexpr").removeHandler(handler)
    info = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in records if r.levelno < logging.INFO]
    assert len(info) <= 10, info
    assert sum(line.startswith("    finished (") for line in info) == 2
    assert [line.split(" (")[0] for line in info if line.startswith("Fold")] == [
        "Fold 1/3", "Fold 2/3", "Fold 3/3"]
    assert not any(re.search(r"\bslide_\d+\b", line) for line in info)
    assert sum(line.startswith("slide_") for line in debug) == N_SLIDES  # one per slide
    assert len(debug) > 5 * N_SLIDES  # the steps of every slide, at debug level


@bad_input("silently wrong", "a slide file of a cohort on disk replaced after `hx.tl.embed_cohort` "
           "(re-scanned, or another slide copied over it): `cohort[slide_id]` and "
           "`hx.tl.fit(cohort, ...)` used the store's tiles and features of the old file",
           says="ValueError: The slide file ... is not the one the tiles and features of its "
           "store ... were made from",
           fix="`hx.tl.embed_cohort(cohort, ..., overwrite=True)`, or another `store_dir`")
def test_a_replaced_slide_file_is_never_paired_with_its_old_store(slide_folder, tmp_path):
    folder = tmp_path / "slides"
    shutil.copytree(slide_folder.parent, folder)
    manifest, bulk = folder / slide_folder.name, folder / "bulk.h5ad"
    cohort = hx.io.read_cohort(manifest, bulk=bulk, store_dir=tmp_path / "stores")
    cohort = cohort.subset(cohort.ids[:4])
    hx.tl.embed_cohort(cohort, **OPTIONS)
    old = cohort.store("slide_00").features("he_tiles", "X_handcrafted")
    shutil.copyfile(cohort.path("slide_01"), cohort.path("slide_00"))
    with pytest.raises(ValueError, match="is not the one the tiles and features of its store .* "
                       "were made from.*hx.tl.embed_cohort\\(cohort, ..., overwrite=True\\)"):
        cohort["slide_00"]
    with pytest.raises(ValueError, match="is not the one the tiles and features"):
        hx.tl.fit(cohort, model="meanpool_ridge", genes=GENES[:2])
    assert np.array_equal(cohort.store("slide_00").features("he_tiles", "X_handcrafted"), old)
    # recomputed, the store is the new file's: its features are slide_01's
    frame = hx.tl.embed_cohort(cohort, overwrite=True, **OPTIONS)
    assert frame.loc["slide_00", "status"] == "computed"
    assert (frame.drop(index="slide_00")["status"] == "skipped").all()
    np.testing.assert_array_equal(cohort.store("slide_00").features("he_tiles", "X_handcrafted"),
                                  cohort.store("slide_01").features("he_tiles", "X_handcrafted"))
    assert cohort["slide_00"].tables["he_tiles_table"].n_obs == \
        cohort.store("slide_01").n_tiles("he_tiles")
