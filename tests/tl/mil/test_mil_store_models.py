"""Per-tile results of slide-level models in slide stores record the model that made them: one
key holding the results of two models (an interrupted ``predict(..., overwrite=True)``, or one on
part of the cohort) is refused where the slides are opened, and a rerun finishes the run."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx

GENES = ["EPCAM", "KRT8"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A four-slide cohort on disk, embedded, and two meanpool models fitted on other slides."""
    folder = tmp_path_factory.mktemp("mil_store_models")
    hx.settings.progress_bar = False
    manifest = hx.datasets.synthetic_slide_cohort(folder, 4, seed=0, size_um=200, mpp=1.0)
    cohort = hx.io.read_cohort(manifest, bulk=manifest.parent / "bulk.h5ad",
                               store_dir=folder / "stores")
    hx.tl.embed_cohort(cohort, encoder="handcrafted", size_px=16, mpp=2.0)
    a = hx.tl.fit(cohort.subset(cohort.ids[:2]), model="meanpool_ridge", genes=GENES)
    b = hx.tl.fit(cohort.subset(cohort.ids[2:]), model="meanpool_ridge", genes=GENES)
    return manifest, folder / "stores", a, b


@pytest.fixture
def cohort(models, tmp_path):
    import shutil

    manifest, stores, _, _ = models
    shutil.copytree(stores, tmp_path / "stores")
    return hx.io.read_cohort(manifest, bulk=manifest.parent / "bulk.h5ad",
                             store_dir=tmp_path / "stores")


def _outputs(cohort) -> dict[str, np.ndarray]:
    import zarr

    return {i: np.asarray(zarr.open_group(cohort.store(i).path, mode="r")[
        "tiles/he_tiles/results/mil/outputs"][:]) for i in cohort.ids}


@bad_input("silently wrong", "`hx.tl.predict(model_b, cohort, key_added=K, overwrite=True)` "
           "interrupted midway on stores holding model A's results `K` (or run on "
           "`cohort.subset(...)` only): a silent mixture of two models' per-tile results under one "
           "key, served by `cohort[slide_id]`",
           says="ValueError: The per-tile results 'mil' (tiles 'he_tiles') of the slides come "
                "from 2 different models or runs ... They would pass for the results of one "
                "model, so the slide was not opened. Predict every slide with one model, "
                "hx.tl.predict(model, cohort, key_added='mil', overwrite=True)",
           fix="predict every slide again with one model (overwrite=True), or use another "
               "key_added")
def test_results_of_two_models_under_one_key_are_refused(models, cohort, monkeypatch):
    from histoexpr.tl._mil import _abmil

    _, _, a, b = models
    hx.tl.predict(a, cohort, key_added="mil")
    first = _outputs(cohort)
    assert cohort.store("slide_00").results_model("he_tiles", "mil")["run"].startswith(
        "hx.tl.predict:")
    real, calls = _abmil._score_section, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("Ctrl-C on the third slide")
        return real(*args, **kwargs)

    monkeypatch.setattr(_abmil, "_score_section", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hx.tl.predict(b, cohort, key_added="mil", overwrite=True)
    monkeypatch.setattr(_abmil, "_score_section", real)
    now = _outputs(cohort)
    mixed = [not np.allclose(now[i], first[i]) for i in cohort.ids]
    assert mixed == [True, True, False, False]  # two slides of B, two of A
    for slide_id in cohort.ids:
        with pytest.raises(ValueError, match=r"come from 2 different models or runs .*"
                           r"'slide_00', 'slide_01'.*'slide_02', 'slide_03'"):
            cohort[slide_id]
    # the same run again finishes it: every slide B's, opened again
    hx.tl.predict(b, cohort, key_added="mil", overwrite=True)
    runs = {cohort.store(i).results_model("he_tiles", "mil")["run"] for i in cohort.ids}
    assert len(runs) == 1
    assert "mil" in cohort["slide_03"].tables["he_tiles_table"].obsm


def test_a_prediction_on_part_of_the_cohort_is_named_and_refused(models, cohort, caplog):
    _, _, a, b = models
    hx.tl.predict(a, cohort, key_added="mil")
    part = cohort.subset(["slide_01"])
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        hx.tl.predict(b, part, key_added="mil", overwrite=True)
    assert "another model or run ('slide_00', 'slide_02', 'slide_03')" in caplog.text
    part["slide_01"]  # within the part, one model
    with pytest.raises(ValueError, match="2 different models or runs"):
        cohort["slide_00"]
    # results recorded before models were (an earlier version) count as another model
    store = cohort.store("slide_02")
    import zarr

    group = zarr.open_group(store.path / "tiles" / "he_tiles" / "results" / "mil", mode="a")
    del group.attrs["model"]
    hx.tl.predict(b, cohort, key_added="mil", overwrite=True)
    cohort["slide_02"]


def test_cross_validation_results_are_one_run(models, cohort):
    """Each fold predicts with its own model, and the folds' results are one set all the same."""
    torch.set_num_threads(1)
    hx.tl.cross_validate(cohort, model="meanpool_ridge", genes=GENES, n_folds=2, key_added="mil")
    made = [cohort.store(i).results_model("he_tiles", "mil") for i in cohort.ids]
    assert len({m["fingerprint"] for m in made}) == 2  # one model per fold
    assert len({m["run"] for m in made}) == 1 and made[0]["run"].startswith(
        "hx.tl.cross_validate:")
    assert "mil" in cohort["slide_00"].tables["he_tiles_table"].obsm
