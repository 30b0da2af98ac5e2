"""A slide store's nodes are replaced only where histoexpr wrote all of them; a store moved aside
by a rewrite killed midway is put back, never deleted.

Every write that replaces a node of a store (features, results, the whole store) asks one check
(:meth:`histoexpr.io.SlideStore.check_node`, the store's layout in
``histoexpr.io._store_parts``): a folder of the user's at a node's place, or a file of the
user's inside a node, is named and nothing is written, while planning and again at write time.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from _catalogue import bad_input
from conftest import tree_digest

import histoexpr as hx
from histoexpr._core.files import partial_path
from histoexpr._core.records import WriterRecord

OPTIONS = {"encoder": "handcrafted", "size_px": 16, "mpp": 2.0}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Two small slides on disk and their stores, embedded once (copied by each test)."""
    folder = tmp_path_factory.mktemp("store_user_files")
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


def _results(store, key: str, **kwargs) -> None:
    n = store.n_tiles("he_tiles")
    store.write_results("he_tiles", key, np.ones((n, 2)), np.full((n, 1), 1 / n),
                        columns=["EPCAM", "KRT8"], branches=["attention"],
                        writer=WriterRecord("hx.tl.predict", key), **kwargs)


@bad_input("data lost", "a folder of the user's (no `zarr.json`) inside a slide store where "
           "`hx.tl.embed_cohort(cohort, key_added=K)` puts features `K` "
           "(`tiles/<tiles_key>/features/K/`)",
           says="FileExistsError: The features 'X_new' in the store of 'slide_00' ... holds what "
                "histoexpr did not write there: tiles/he_tiles/features/X_new/my_notes.txt. "
                "histoexpr replaces only the zarr nodes it wrote itself ... nothing was written "
                "or deleted (before: the folder was deleted, even without overwrite)",
           fix="move the folder out of the store, or choose another key_added")
def test_a_users_folder_at_a_features_key_is_never_replaced(cohort):
    feat = cohort.store("slide_00").path / "tiles" / "he_tiles" / "features"
    (feat / "X_new").mkdir()
    (feat / "X_new" / "my_notes.txt").write_bytes(b"user data 1")
    before = tree_digest(cohort.store_dir)
    for overwrite in (False, True):  # refused while planning: no slide is written
        with pytest.raises(FileExistsError, match="my_notes.txt"):
            hx.tl.embed_cohort(cohort, **OPTIONS, key_added="X_new", overwrite=overwrite)
        assert tree_digest(cohort.store_dir) == before
    # and at write time, by the store itself
    store = cohort.store("slide_00")
    with pytest.raises(FileExistsError, match="my_notes.txt"):
        store.write_features("he_tiles", "X_new", np.zeros((store.n_tiles("he_tiles"), 2)), {})
    assert (feat / "X_new" / "my_notes.txt").read_bytes() == b"user data 1"
    assert tree_digest(cohort.store_dir) == before


@bad_input("data lost", "a folder of the user's (no `zarr.json`) inside a slide store where "
           "`hx.tl.predict` / `SlideStore.write_results` puts per-tile results "
           "(`tiles/<tiles_key>/results/<key>/`)",
           says="FileExistsError: The results 'mil' in the store of 'slide_00' ... holds what "
                "histoexpr did not write there: tiles/he_tiles/results/mil/my_analysis.ipynb "
                "(before: the folder was deleted, even with overwrite=False)",
           fix="move the folder out of the store, or choose another key_added")
def test_a_users_folder_at_a_results_key_is_never_replaced(cohort):
    store = cohort.store("slide_00")
    target = store.path / "tiles" / "he_tiles" / "results" / "mil"
    target.mkdir(parents=True)
    (target / "my_analysis.ipynb").write_bytes(b"user notebook")
    before = tree_digest(cohort.store_dir)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="my_analysis.ipynb"):
            _results(store, "mil", overwrite=overwrite)
    assert tree_digest(cohort.store_dir) == before
    # a file of the user's added inside results histoexpr wrote: the same
    _results(store, "other")
    (store.path / "tiles" / "he_tiles" / "results" / "other" / "notes.md").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="results/other/notes.md"):
        _results(store, "other", overwrite=True)
    assert (store.path / "tiles" / "he_tiles" / "results" / "other" / "notes.md").read_bytes() \
        == b"mine"


USER_FILES = {"labels/he_tissue/README.txt": b"user data 2",
              "tiles/he_tiles/obs/my_column.csv": b"user data 3",
              "tiles/he_tiles/features/X_handcrafted/my_features_notes.txt": b"user data 4",
              "tiles/he_tiles/boxes/c/notes/x.txt": b"user data 5",
              "my_notes.txt": b"user data 6"}


@bad_input("data lost", "`hx.tl.embed_cohort(cohort, ..., overwrite=True)` recomputing a store "
           "holding files of the user's inside its own nodes (`labels/he_tissue/README.txt`, "
           "`tiles/he_tiles/obs/my_column.csv`, a note in a features folder)",
           says="ValueError: Recomputing the store of 'slide_00' ... would lose ... files "
                "histoexpr did not write (labels/he_tissue/README.txt, ... "
                "tiles/he_tiles/obs/my_column.csv) ... nothing was written (before: deleted "
                "with the old store, without a word)",
           fix="move those files out of the store, or read the cohort with another store_dir")
def test_recomputing_a_store_never_deletes_a_users_file_inside_it(cohort):
    store = cohort.store("slide_00")
    for name, data in USER_FILES.items():
        (store.path / name).parent.mkdir(parents=True, exist_ok=True)
        (store.path / name).write_bytes(data)
    before = tree_digest(cohort.store_dir)
    with pytest.raises(ValueError, match="files histoexpr did not write") as caught:
        hx.tl.embed_cohort(cohort, **{**OPTIONS, "size_px": 20}, overwrite=True)
    for name in USER_FILES:  # each named (a file beside the nodes as an item of the store)
        assert name in str(caught.value)
    assert tree_digest(cohort.store_dir) == before
    assert all((store.path / n).read_bytes() == data for n, data in USER_FILES.items())
    # the store itself refuses the rewrite at write time as well, one file at a time
    for name in USER_FILES:
        keep = cohort.store_dir.parent / "kept"
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir()
        for other in USER_FILES:
            if other != name:
                os.replace(store.path / other, keep / other.replace("/", "_"))
        with pytest.raises(ValueError, match=name.split("/")[-1].replace(".", r"\.")):
            store.check_rewritable(tissue_key="he_tissue", tiles_key="he_tiles",
                                   feature_keys=["X_handcrafted"])
        for other in USER_FILES:
            if other != name:
                os.replace(keep / other.replace("/", "_"), store.path / other)
    assert tree_digest(cohort.store_dir) == before


def test_a_store_histoexpr_wrote_holds_nothing_foreign(cohort):
    """The layout check finds nothing in what embed_cohort, predict and write_results wrote."""
    import anndata as ad
    import pandas as pd

    from histoexpr.io._store_parts import store_foreign_parts

    store = cohort.store("slide_00")
    _results(store, "mil")
    table = ad.AnnData(np.ones((2, 1), dtype=np.float32),
                       obs=pd.DataFrame({"tile_id": [0, 1]}, index=["0", "1"]),
                       obsm={"spatial": np.zeros((2, 2))}, uns={"tiles": {"size_um": 40.0}})
    store.write_prediction("pred", table, record={"tiles_key": "pred_tiles"},
                           slide={"slide_id": "slide_00"})
    assert store_foreign_parts(store.path) == []
    # a zarr node of the user's at a place of the layout is theirs all the same
    import zarr

    zarr.open_group(store.path / "tiles" / "he_tiles" / "features" / "X_mine", mode="w")
    assert store_foreign_parts(store.path) == ["tiles/he_tiles/features/X_mine/zarr.json"]


@bad_input("data lost", "a slide store rewritten by `hx.tl.embed_cohort(..., overwrite=True)` "
           "killed between its two renames (the old store moved aside, the new one not yet in "
           "place), then the cohort read again",
           says="log: Put back ... which an interrupted write had moved aside (before: the next "
                "run's clean-up deleted the old store with the partial writes)",
           fix="nothing to do: the old store is back")
@pytest.mark.parametrize("how", ["read_cohort", "remove_partials"])
def test_a_store_moved_aside_by_a_killed_rewrite_is_put_back(embedded, cohort, how):
    store = cohort.store("slide_00")
    before = tree_digest(store.path)
    # what swap_into_place leaves when killed between its renames: the new store written
    # beside, the note naming the store, the old store aside
    new = partial_path(store.path, "slide")
    shutil.copytree(store.path, new)
    aside = partial_path(store.path, "old")
    aside.with_name(aside.name + ".target").write_text(str(store.path.absolute()))
    os.replace(store.path, aside)
    assert not store.path.exists()
    if how == "read_cohort":  # a later process: reading the cohort puts it back
        again = hx.io.read_cohort(embedded[0], store_dir=cohort.store_dir)
        assert again.store("slide_00").complete
        again.store("slide_00").remove_partials()
    else:  # the next slide's task, on the store itself
        assert hx.io.SlideStore(store.path).remove_partials() == 1  # the new write only
    assert tree_digest(store.path) == before
    assert sorted(p.name for p in cohort.store_dir.iterdir()) == ["slide_00.zarr",
                                                                  "slide_01.zarr"]


@bad_input("silently wrong", "`hx.tl.embed_cohort(cohort, key_added=K)` where the stores hold "
           "per-tile results `K` of a slide-level model (`hx.tl.predict`)",
           says="KeyError: The store of 'slide_00' ... holds the per-tile results 'X_b' of a "
                "slide-level model ... features under key_added='X_b' would share the opened "
                "slide's tile table entry obsm['X_b'] with them. Nothing was written; choose "
                "another key_added (before: refused only in each slide's task, after the slide "
                "was read)",
           fix="choose another key_added")
def test_features_over_results_are_refused_while_planning(cohort, monkeypatch):
    from histoexpr.tl._features import _embed_cohort

    _results(cohort.store("slide_00"), "X_b")
    before = tree_digest(cohort.store_dir)
    opened = []
    monkeypatch.setattr(_embed_cohort, "_run_slide", lambda task, enc: opened.append(task))
    with pytest.raises(KeyError, match="holds the per-tile results 'X_b'"):
        hx.tl.embed_cohort(cohort, **OPTIONS, key_added="X_b")
    with pytest.raises(KeyError, match="results 'X_b'"):  # and their attention's name
        hx.tl.embed_cohort(cohort, **OPTIONS, key_added="X_b_attention")
    assert opened == [] and tree_digest(cohort.store_dir) == before
