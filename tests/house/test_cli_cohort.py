"""``histoexpr predict --manifest`` with any model that predicts a cohort, not only the spot
regressor: a bag model (attention MIL) predicts the slides of a manifest as ``hx.tl.predict``
does, making the tile features it reads where the stores lack them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx
from histoexpr._cli import EXIT_BAD_INPUT, EXIT_CANNOT_PREDICT, main

GENES = ["EPCAM", "KRT8"]
EMBED = {"encoder": "handcrafted", "size_px": 16, "mpp": 2.0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three small slides, embedded into stores, and an attention MIL model trained on them."""
    folder = tmp_path_factory.mktemp("slides")
    manifest = hx.datasets.synthetic_slide_cohort(folder, 3, seed=0, size_um=200, mpp=1.0)
    cohort = hx.io.read_cohort(manifest, bulk=manifest.parent / "bulk.h5ad",
                               store_dir=folder / "python_stores")
    hx.tl.embed_cohort(cohort, **EMBED)
    torch.manual_seed(0)
    model = hx.tl.fit(cohort, model="abmil", genes=GENES, epochs=2, seed=0)
    path = hx.io.save_model(model, folder / "abmil.pt")
    return manifest, cohort, model, path


def test_a_bag_model_predicts_a_manifest_as_python_does(trained, tmp_path, capsys):
    manifest, cohort, model, path = trained
    stores = tmp_path / "stores"  # no features yet: the command line makes them as trained
    base = ["predict", "-m", str(path), "--manifest", str(manifest), "--store-dir", str(stores)]
    assert main(base) == 0
    table = capsys.readouterr().out
    expected = hx.tl.predict(model, cohort, overwrite=True)
    assert table.count("predicted") == 3 and table.count(" made ") == 3
    again = hx.io.read_cohort(manifest, store_dir=stores)
    for slide_id in cohort.ids:  # the tiles and features of training, made in the new stores
        np.testing.assert_allclose(again.store(slide_id).features("he_tiles", "X_handcrafted"),
                                   cohort.store(slide_id).features("he_tiles", "X_handcrafted"),
                                   rtol=1e-5, atol=1e-6)
    from histoexpr._cli_cohort import run_predict_cohort

    frame = run_predict_cohort(path, manifest, store_dir=stores, overwrite=True)
    assert list(frame["status"]) == ["predicted"] * 3 and set(frame["features"]) == {"found"}
    assert list(frame.index) == list(expected.obs_names)
    np.testing.assert_allclose(frame[GENES].to_numpy(), np.asarray(expected.X), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(frame["n_tiles"], expected.obs["n_tiles"])
    for slide_id in cohort.ids:  # the per-tile outputs and attention in each store, alike
        cli, python = again[slide_id].tables["he_tiles_table"], cohort[slide_id].tables[
            "he_tiles_table"]
        for key in ("abmil", "abmil_attention"):
            np.testing.assert_allclose(np.asarray(cli.obsm[key]), np.asarray(python.obsm[key]),
                                       rtol=1e-5, atol=1e-6)
    # a rerun does not replace the stores' results silently
    assert main(base) == EXIT_BAD_INPUT
    assert "already holds results 'abmil'" in capsys.readouterr().err


@bad_input("obscure error", "`histoexpr predict --manifest SLIDES.csv` with a model that predicts "
           "no cohort (a patch classifier)",
           says="exit 3: ... holds a 'patch_classifier' model, which does not predict a manifest "
                "of slides: ... the models that do are ... predict each slide with --image",
           fix="predict each slide with --image, or use a model that predicts a cohort")
def test_a_model_that_predicts_no_cohort_names_those_that_do(trained, tmp_path, capsys):
    manifest = trained[0]
    other = hx.models.LinearHead(n_features=3, n_genes=2)
    other.metadata = {"model": "patch_classifier"}
    path = hx.io.save_model(other, tmp_path / "classifier.pt")
    stores = tmp_path / "stores"
    assert main(["predict", "-m", str(path), "--manifest", str(manifest), "--store-dir",
                 str(stores)]) == EXIT_CANNOT_PREDICT
    error = capsys.readouterr().err
    assert "holds a 'patch_classifier' model, which does not predict a manifest of slides" in error
    assert "'abmil'" in error and "'spot_regressor'" in error and "--image" in error
    assert not stores.exists()


@bad_input("obscure error", "`histoexpr predict --manifest` with a bag model whose tile features "
           "came from an encoder file (not one histoexpr makes by name), on slides whose stores "
           "lack them",
           says="exit 3: ... slides' stores lack the tile features 'X_handcrafted' ... the "
                "command line cannot make them ... hx.tl.embed_cohort(",
           fix="embed the slides first with `hx.tl.embed_cohort` and the training encoder, into "
               "the stores the command line reads (`--store-dir`)")
def test_features_the_command_line_cannot_make_are_asked_for(trained, tmp_path, capsys):
    manifest, _, _, trained_path = trained
    model = hx.io.load_model(trained_path)
    model.metadata = {**model.metadata, "features_made": {
        **model.metadata["features_made"], "encoder": "mine", "fingerprint": "mine:file:0a1b"}}
    path = hx.io.save_model(model, tmp_path / "abmil_file_encoder.pt")
    stores = tmp_path / "stores"
    assert main(["predict", "-m", str(path), "--manifest", str(manifest), "--store-dir",
                 str(stores)]) == EXIT_CANNOT_PREDICT
    error = capsys.readouterr().err
    assert "3 slides' stores lack the tile features 'X_handcrafted'" in error
    assert "hx.tl.embed_cohort(hx.io.read_cohort(manifest" in error
    assert "size_px=16, mpp=2.0" in error
    assert not stores.exists()
