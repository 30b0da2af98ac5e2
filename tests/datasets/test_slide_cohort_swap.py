"""A synthetic slide cohort is written as one: all its files swapped in at the end, seed first."""

from __future__ import annotations

import pytest
from _catalogue import bad_input
from conftest import tree_digest

import histoexpr as hx
from histoexpr.datasets import _slides

_SMALL = {"size_um": 100, "mpp": 1.0}


@bad_input("data lost", "`hx.datasets.synthetic_slide_cohort(folder, 4, seed=1, overwrite=True)` "
           "over a cohort of another seed, interrupted after two slides: the folder held new "
           "slides beside the old manifest and bulk table, and a rerun was refused as if the "
           "files were not histoexpr's",
           says="refuses nothing and mixes nothing: the old cohort stays whole until every new "
           "file is written, and the rerun replaces it",
           fix="nothing: run the call again")
def test_an_interrupted_overwrite_leaves_the_old_cohort_whole(tmp_path, monkeypatch):
    folder = tmp_path / "cohort"
    hx.datasets.synthetic_slide_cohort(folder, 4, seed=0, **_SMALL)
    before = tree_digest(folder)
    real, count = _slides.write_pyramidal_tiff, [0]

    def interrupted(*args, **kwargs):
        count[0] += 1
        if count[0] == 3:
            raise KeyboardInterrupt("a kill after two slides")
        return real(*args, **kwargs)

    monkeypatch.setattr(_slides, "write_pyramidal_tiff", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hx.datasets.synthetic_slide_cohort(folder, 4, seed=1, overwrite=True, **_SMALL)
    assert tree_digest(folder) == before  # no new slide, no leftover
    monkeypatch.undo()
    hx.datasets.synthetic_slide_cohort(folder, 4, seed=1, overwrite=True, **_SMALL)
    after = tree_digest(folder)
    assert sorted(after) == sorted(before) and after["bulk.h5ad"] != before["bulk.h5ad"]


def test_a_run_stopped_among_the_final_renames_is_still_replaced(tmp_path, monkeypatch):
    from histoexpr._core import files

    folder = tmp_path / "cohort"
    hx.datasets.synthetic_slide_cohort(folder, 2, seed=0, **_SMALL)
    real, renamed = files.swap_into_place, []

    def stopped(source, target, **kwargs):
        if target.name.endswith(".tif") and renamed:
            raise KeyboardInterrupt("a kill among the renames")
        renamed.append(target.name)
        return real(source, target, **kwargs)

    monkeypatch.setattr(files, "swap_into_place", stopped)
    with pytest.raises(KeyboardInterrupt):
        hx.datasets.synthetic_slide_cohort(folder, 2, seed=1, overwrite=True, **_SMALL)
    monkeypatch.undo()
    assert [p.name for p in folder.iterdir() if "partial" in p.name] == []
    # the files are a mixture of both calls, each as one of them wrote it: replaced
    hx.datasets.synthetic_slide_cohort(folder, 2, seed=1, overwrite=True, **_SMALL)
    assert tree_digest(folder) != {}
    (folder / "slide_00.tif").write_bytes((folder / "slide_00.tif").read_bytes() + b"x")
    with pytest.raises(FileExistsError, match="slide_00.tif is a file that hx.datasets."
                       "synthetic_slide_cohort wrote, but it changed since histoexpr wrote it"):
        hx.datasets.synthetic_slide_cohort(folder, 2, seed=2, overwrite=True, **_SMALL)


@bad_input("obscure error", "`hx.datasets.synthetic_slide_cohort(path, seed=\"abc\")` (or seed=-1, "
           "seed=1.5): the folder was made first, then a bare int() or numpy error, or 1.5 "
           "silently taken as 1",
           says="TypeError: seed must be an integer (or None for hx.settings.seed), got 'abc' "
           "(str); pass e.g. seed=0.",
           fix="pass a whole number from 0, e.g. seed=0")
def test_a_bad_seed_is_refused_before_the_folder_is_made(tmp_path):
    for seed, error in (("abc", TypeError), (1.5, TypeError), (True, TypeError),
                        (-1, ValueError)):
        with pytest.raises(error, match="seed must be an integer"):
            hx.datasets.synthetic_slide_cohort(tmp_path / "deep" / "cohort", 2, seed=seed,
                                               **_SMALL)
    assert list(tmp_path.iterdir()) == []
    import numpy as np

    from histoexpr._core.seeds import resolve_seed

    assert resolve_seed(np.int64(3)) == 3 and resolve_seed(2**64 - 1) == 2**64 - 1
