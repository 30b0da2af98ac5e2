"""predict on a cohort on disk writes each slide's results as it goes: flat memory, same values."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import torch

import histoexpr as hx
from histoexpr._core.records import WriterRecord

N_SLIDES = 9
#: small tiles, so that a slide's per-tile results outweigh what predict holds once
OPTIONS = {"encoder": "handcrafted", "size_px": 8, "mpp": 2.0}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Nine small slides on disk, embedded into their stores."""
    hx.settings.progress_bar = False
    folder = tmp_path_factory.mktemp("predict_memory")
    manifest = hx.datasets.synthetic_slide_cohort(folder / "slides", N_SLIDES, seed=0,
                                                  size_um=300, mpp=1.0)
    cohort = hx.io.read_cohort(manifest, bulk=manifest.parent / "bulk.h5ad",
                               store_dir=folder / "stores")
    hx.tl.embed_cohort(cohort, **OPTIONS)
    return cohort


@pytest.fixture(scope="module")
def model(cohort):
    """A tiny attention MIL network of every bulk gene, trained for one epoch on 3 slides."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return hx.tl.fit(cohort.subset(cohort.ids[:3]), model="abmil",
                         genes=list(cohort.bulk.var_names), epochs=1, val_fraction=0, seed=0,
                         batch_size=3, hidden=8, attention_hidden=8)
    finally:
        torch.set_num_threads(saved)


def _one_by_one(model, cohort, ids):
    """Each slide scored alone, in memory: its bag row and its tile table."""
    rows, tables = [], {}
    for slide_id in ids:
        alone = hx.io.Cohort({slide_id: cohort[slide_id]}, cohort.bulk[[slide_id]].copy())
        rows.append(hx.tl.predict(model, alone, key_added="alone"))
        tables[slide_id] = alone[slide_id].tables["he_tiles_table"]
    return rows, tables


def _peak(function) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_predict_on_disk_equals_slides_scored_one_by_one(cohort, model, monkeypatch):
    from histoexpr.io import _cohort

    opened = []
    original = _cohort._StoredSlides.__getitem__

    def spy(self, slide_id):
        opened.append(slide_id)
        return original(self, slide_id)

    monkeypatch.setattr(_cohort._StoredSlides, "__getitem__", spy)
    result = hx.tl.predict(model, cohort, key_added="streamed", overwrite=True)
    monkeypatch.undo()
    assert opened == []  # scored from the stores: no slide file is opened
    rows, tables = _one_by_one(model, cohort, cohort.ids)
    assert list(result.obs_names) == list(cohort.ids)
    np.testing.assert_array_equal(np.asarray(result.X),
                                  np.concatenate([np.asarray(r.X) for r in rows]))
    np.testing.assert_array_equal(result.layers["measured"],
                                  np.concatenate([r.layers["measured"] for r in rows]))
    assert list(result.obs["n_tiles"]) == [int(r.obs["n_tiles"].iloc[0]) for r in rows]
    for slide_id in cohort.ids:
        reopened = cohort[slide_id].tables["he_tiles_table"]
        alone = tables[slide_id]
        for key in ("streamed", "streamed_attention"):  # stored as float32
            expected = alone.obsm[key.replace("streamed", "alone")]
            assert list(reopened.obsm[key].columns) == list(expected.columns)
            np.testing.assert_array_equal(reopened.obsm[key].to_numpy(),
                                          expected.to_numpy().astype(np.float32))
        # the stores keep no contribution map (documented): for regression it is the output
        # times the attention of its branch times the slide's number of tiles
        assert "streamed_contribution" not in reopened.obsm
        contribution = alone.obsm["alone_contribution"]
        assert list(contribution.columns) == list(reopened.obsm["streamed"].columns)
        np.testing.assert_allclose(
            reopened.obsm["streamed"].to_numpy() * reopened.obsm["streamed_attention"].to_numpy()
            * reopened.n_obs, contribution.to_numpy(), rtol=1e-4, atol=1e-5)


def test_predict_on_disk_memory_is_flat_in_the_number_of_slides(cohort, model):
    small = cohort.subset(cohort.ids[:3])
    hx.tl.predict(model, small, key_added="flat", overwrite=True)  # one-off costs first
    three = _peak(lambda: hx.tl.predict(model, small, key_added="flat", overwrite=True))
    nine = _peak(lambda: hx.tl.predict(model, cohort, key_added="flat", overwrite=True))
    # every slide's per-tile outputs and contributions held at once came to about 2x
    assert nine < 1.5 * three, (three / 2**20, nine / 2**20)


def test_a_refused_store_leaves_every_store_unwritten(cohort, model):
    last = cohort.store(cohort.ids[-1])
    n = last.n_tiles("he_tiles")
    last.write_results("he_tiles", "taken", np.zeros((n, 1)), np.zeros((n, 1)),
                       columns=["mine"], branches=["attention"],
                       writer=WriterRecord.now("someone.else", "taken"))
    with pytest.raises(KeyError, match="taken"):
        hx.tl.predict(model, cohort, key_added="taken", overwrite=True)
    assert all("taken" not in cohort.store(i).results_keys("he_tiles") for i in cohort.ids[:-1])
    assert last.results_writer("he_tiles", "taken").step == "someone.else"
