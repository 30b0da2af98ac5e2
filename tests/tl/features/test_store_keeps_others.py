"""Recomputing a slide's store (embed_cohort with overwrite=True) never loses what another step
(or the user) wrote there: MIL results, other tile sets, features of unknown origin. It refuses,
naming them and the way out, before any slide is written."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from _catalogue import bad_input
from conftest import tree_digest

import histoexpr as hx
from histoexpr._core.records import WriterRecord

OPTIONS = {"encoder": "handcrafted", "size_px": 16, "mpp": 2.0}
CHANGED = {**OPTIONS, "size_px": 20}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Two small slides on disk and their stores, embedded once (copied by each test)."""
    folder = tmp_path_factory.mktemp("keeps_others")
    hx.settings.progress_bar = False
    manifest = hx.datasets.synthetic_slide_cohort(folder, 2, seed=0, size_um=160, mpp=1.0)
    hx.tl.embed_cohort(hx.io.read_cohort(manifest, store_dir=folder / "stores"), **OPTIONS)
    return manifest, folder / "stores"


@pytest.fixture
def cohort(embedded, tmp_path):
    """The embedded cohort, on its own copy of the stores."""
    manifest, stores = embedded
    shutil.copytree(stores, tmp_path / "stores")
    return hx.io.read_cohort(manifest, store_dir=tmp_path / "stores")


def _write_results(store, key: str, step: str = "hx.tl.predict") -> None:
    """Per-tile results of a slide-level model, as ``hx.tl.predict`` writes them."""
    n = store.n_tiles("he_tiles")
    store.write_results("he_tiles", key, np.ones((n, 2)), np.full((n, 1), 1 / n),
                        columns=["EPCAM", "KRT8"], branches=["attention"],
                        writer=WriterRecord(step, key))


@bad_input("data lost", "`hx.tl.embed_cohort(cohort, ..., overwrite=True)` with other tile "
           "options, on stores holding MIL results (`hx.tl.fit` / `predict` / "
           "`cross_validate`): the store was rebuilt and the results dropped",
           says="ValueError: Recomputing the store of 'slide_01' ... would lose what it holds "
                "... the results 'abmil_run' of the tiles 'he_tiles' (written by hx.tl.predict) "
                "... overwrite=True replaces only what hx.tl.embed_cohort wrote there itself "
                "... another store_dir ... remove them from the store first",
           fix="read the cohort with another `store_dir`, or remove those results first")
def test_results_of_another_step_are_never_dropped(cohort):
    # results in the second slide's store only: the first slide is refused too, unwritten
    _write_results(cohort.store("slide_01"), "abmil_run")
    before = tree_digest(cohort.store_dir)
    with pytest.raises(ValueError, match=r"Recomputing the store of 'slide_01' \(.*slide_01\.zarr"
                       r"\) would lose .*the results 'abmil_run' of the tiles 'he_tiles' "
                       r"\(written by hx.tl.predict\)\. .*another store_dir"):
        hx.tl.embed_cohort(cohort, **CHANGED, overwrite=True)
    assert tree_digest(cohort.store_dir) == before
    assert not list(cohort.store_dir.glob(".*partial*"))
    # any other change takes the same way: recomputed only where nothing is lost
    with pytest.raises(ValueError, match="results 'abmil_run'"):
        hx.tl.embed_cohort(cohort, **{**OPTIONS, "min_tissue": 0.6}, overwrite=True)
    assert tree_digest(cohort.store_dir) == before
    # once the user removed them, the slides are recomputed
    shutil.rmtree(cohort.store("slide_01").path / "tiles" / "he_tiles" / "results")
    frame = hx.tl.embed_cohort(cohort, **CHANGED, overwrite=True)
    assert (frame["status"] == "computed").all()


@bad_input("data lost", "`hx.tl.embed_cohort(cohort, tiles_key=..., overwrite=True)` with "
           "another tile set than the one stored (or on a store holding a second tile set): "
           "the stored tiles and their features were dropped",
           says="ValueError: Recomputing the store of 'slide_00' ... would lose what it holds "
                "beside the tissue map 'he_tissue', the tiles 'he_tiles_20' and their features: "
                "the tiles 'he_tiles'; the features 'X_handcrafted' of the tiles 'he_tiles'",
           fix="read the cohort with another `store_dir`")
def test_another_tile_set_is_never_dropped(cohort):
    before = tree_digest(cohort.store_dir)
    with pytest.raises(ValueError, match=r"the tiles 'he_tiles'; the features 'X_handcrafted' "
                       r"of the tiles 'he_tiles'\. overwrite=True replaces only"):
        hx.tl.embed_cohort(cohort, **CHANGED, tiles_key="he_tiles_20", overwrite=True)
    assert tree_digest(cohort.store_dir) == before
    # a second tile set in the store (and a file of the user's) stays as well
    tiles = cohort.store("slide_00").path / "tiles"
    shutil.copytree(tiles / "he_tiles", tiles / "he_tiles_b")
    (cohort.store("slide_01").path / "notes.txt").write_text("mine")
    before = tree_digest(cohort.store_dir)
    with pytest.raises(ValueError, match=r"the tiles 'he_tiles_b'; the features 'X_handcrafted' "
                       r"of the tiles 'he_tiles_b'\."):
        hx.tl.embed_cohort(cohort, **CHANGED, overwrite=True)
    (tiles / "he_tiles_b" / "zarr.json").unlink()
    shutil.rmtree(tiles / "he_tiles_b")
    with pytest.raises(ValueError, match=r"'slide_01'.*features: 'notes.txt'\."):
        hx.tl.embed_cohort(cohort, **CHANGED, overwrite=True)
    assert (cohort.store("slide_01").path / "notes.txt").read_text() == "mine"


@bad_input("data lost", "`hx.tl.embed_cohort(cohort, ..., overwrite=True)` with other tile "
           "options, on a store holding features written by another hand "
           "(`SlideStore.write_features` with a record that is not embed_cohort's)",
           says="ValueError: Recomputing the store of 'slide_00' ... would lose ... the "
                "features 'X_mine' of the tiles 'he_tiles'",
           fix="read the cohort with another `store_dir`, or remove those features first")
def test_features_not_made_by_embed_cohort_are_never_dropped(cohort):
    store = cohort.store("slide_00")
    n = store.n_tiles("he_tiles")
    store.write_features("he_tiles", "X_mine", np.zeros((n, 3)), {"encoder": "mine"})
    before = tree_digest(cohort.store_dir)
    with pytest.raises(ValueError, match="the features 'X_mine' of the tiles 'he_tiles'"):
        hx.tl.embed_cohort(cohort, **CHANGED, overwrite=True)
    assert tree_digest(cohort.store_dir) == before
    # nor by SlideStore.write_slide called by itself
    sdata = cohort["slide_00"]
    with pytest.raises(ValueError, match="the features 'X_mine' of the tiles 'he_tiles'"):
        store.write_slide(sdata, tissue_key="he_tissue", tiles_key="he_tiles",
                          slide={"slide_id": "slide_00"}, params=store.params,
                          feature_keys=["X_handcrafted"])
    assert tree_digest(cohort.store_dir) == before


def test_a_store_of_embed_cohort_alone_is_still_recomputed(cohort, caplog):
    import anndata as ad
    import pandas as pd

    # features of another key made by embed_cohort, and a table of predictions
    hx.tl.embed_cohort(cohort, **OPTIONS, key_added="X_second")
    store = cohort.store("slide_00")
    assert set(store.feature_records("he_tiles")) == {"X_handcrafted", "X_second"}
    table = ad.AnnData(np.ones((2, 1), dtype=np.float32),
                       obs=pd.DataFrame({"tile_id": [0, 1]}, index=["0", "1"]),
                       obsm={"spatial": np.array([[20.0, 20.0], [60.0, 20.0]])},
                       uns={"tiles": {"size_um": 40.0}})
    store.write_prediction("pred", table, record={"tiles_key": "pred_tiles"},
                           slide={"slide_id": "slide_00"})
    n_old = store.n_tiles("he_tiles")
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        frame = hx.tl.embed_cohort(cohort, **CHANGED, overwrite=True)
    assert (frame["status"] == "computed").all()
    assert store.params["tiles"]["size_px"] == 20
    assert store.n_tiles("he_tiles") < n_old  # larger tiles: fewer
    assert store.features("he_tiles", "X_handcrafted").shape[0] == store.n_tiles("he_tiles")
    # features of the old tiles went with them, said so; the predictions stayed
    assert set(store.feature_records("he_tiles")) == {"X_handcrafted"}
    assert "the features ['X_second'] of 'he_tiles' were made from the tiles now replaced" \
        in caplog.text
    assert set(store.prediction_records()) == {"pred"}
