"""``hf:<folder>`` encoders are identified by their files' content, not their path.

Tiny random ViTs are saved to a temporary folder by the tests themselves (as in
tests/models/test_foundation_encoders.py); nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx
from histoexpr.tl._features._embed import encoder_fingerprint, hf_folder_fingerprint

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings(  # the tiny folders hold no image processor
    "ignore:.* has no preprocessor_config.json:UserWarning")
TILES = {"size_px": 28, "mpp": 2.0}  # the tiny ViT's input: 28 px, 56 um tiles


def _save_vit(folder, seed: int) -> None:
    """A tiny ViT with weights drawn from ``seed``, saved into ``folder`` (replacing any)."""
    torch.manual_seed(seed)
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, image_size=28, patch_size=7)
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(folder)


def test_an_hf_folder_is_fingerprinted_by_its_content_not_its_path(tmp_path):
    _save_vit(tmp_path / "enc", seed=0)
    first = hf_folder_fingerprint(tmp_path / "enc")
    assert encoder_fingerprint(f"hf:{tmp_path / 'enc'}") == f"hf_enc:folder:{first}"
    # the same files elsewhere: the same fingerprint (a model file may name a moved folder)
    _save_vit(tmp_path / "copy" / "enc", seed=0)
    assert hf_folder_fingerprint(tmp_path / "copy" / "enc") == first
    _save_vit(tmp_path / "enc", seed=1)  # new weights into the same folder
    assert hf_folder_fingerprint(tmp_path / "enc") != first
    # the configuration and every weights file count, whatever their names
    second = hf_folder_fingerprint(tmp_path / "enc")
    (tmp_path / "enc" / "model-00002-of-00002.safetensors").write_bytes(b"shard")
    third = hf_folder_fingerprint(tmp_path / "enc")
    assert third != second
    config = (tmp_path / "enc" / "config.json").read_text()
    (tmp_path / "enc" / "config.json").write_text(config.replace('"hidden_act"', '"hidden_act" '))
    assert hf_folder_fingerprint(tmp_path / "enc") != third


@bad_input("silently wrong", "`hx.tl.embed_cohort(..., encoder=\"hf:<folder>\")` run again after "
           "new weights were saved into the same folder: every slide was 'skipped' and the "
           "stored features were those of the old weights (the folder was known by its path)",
           says="ValueError: The features ... were made otherwise than asked now "
           "(params['encoder']: ... 'content': ... Pass overwrite=True to recompute them",
           fix="`overwrite=True` recomputes the features with the new weights (or another "
           "`key_added`)")
def test_an_hf_folder_with_new_weights_is_not_reused_by_embed_cohort(tmp_path):
    hx.settings.progress_bar = False
    folder = hx.datasets.synthetic_slide_cohort(tmp_path / "slides", 2, seed=0, size_um=300,
                                                mpp=1.0)
    cohort = hx.io.read_cohort(folder, store_dir=tmp_path / "stores")
    encoder = f"hf:{tmp_path / 'enc'}"
    _save_vit(tmp_path / "enc", seed=0)
    options = {"encoder": encoder, "key_added": "X_enc", **TILES}
    assert (hx.tl.embed_cohort(cohort, **options)["status"] == "computed").all()
    assert (hx.tl.embed_cohort(cohort, **options)["status"] == "skipped").all()
    old = {i: cohort.store(i).features(f"{cohort.image_key}_tiles", "X_enc") for i in cohort.ids}

    _save_vit(tmp_path / "enc", seed=1)  # new weights saved into the same folder
    with pytest.raises(ValueError, match=r"made otherwise than asked now \(params\['encoder'\]: "
                       r".*'content': .*Pass overwrite=True"):
        hx.tl.embed_cohort(cohort, **options)
    for slide_id in cohort.ids:  # nothing was touched
        np.testing.assert_array_equal(
            cohort.store(slide_id).features(f"{cohort.image_key}_tiles", "X_enc"), old[slide_id])
    frame = hx.tl.embed_cohort(cohort, **options, overwrite=True)
    assert (frame["status"] == "features").all()  # re-embedded on the stored tiles
    for slide_id in cohort.ids:
        stored = cohort.store(slide_id).features(f"{cohort.image_key}_tiles", "X_enc")
        sdata = cohort[slide_id]
        hx.tl.embed(sdata, f"{cohort.image_key}_tiles", encoder=encoder, key_added="X_fresh")
        fresh = sdata.tables[f"{cohort.image_key}_tiles_table"].obsm["X_fresh"]
        np.testing.assert_allclose(stored, fresh, rtol=1e-5, atol=1e-6)
        assert not np.allclose(stored, old[slide_id])
    assert (hx.tl.embed_cohort(cohort, **options)["status"] == "skipped").all()


def test_the_spot_regressor_remakes_its_features_of_an_hf_folder_with_new_weights(tmp_path,
                                                                                  caplog):
    from histoexpr.tl._spot._spot_features import section_features

    sdata = hx.datasets.synthetic_section(seed=2, size_um=300, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", min_tissue=0.5, **TILES)
    encoder = f"hf:{tmp_path / 'enc'}"
    _save_vit(tmp_path / "enc", seed=0)
    old, made = section_features(sdata, "he_tiles", encoder=encoder, features_key="X_spot")
    assert made["fingerprint"] == encoder_fingerprint(encoder)
    _save_vit(tmp_path / "enc", seed=1)
    with caplog.at_level("INFO", logger="histoexpr"):
        new, remade = section_features(sdata, "he_tiles", encoder=encoder, features_key="X_spot")
    assert "Remaking obsm['X_spot']" in caplog.text and "fingerprint: 'hf_enc:folder:" in \
        caplog.text
    assert remade["fingerprint"] != made["fingerprint"]
    hx.tl.embed(sdata, "he_tiles", encoder=encoder, key_added="X_fresh")
    np.testing.assert_allclose(new, sdata.tables["he_tiles_table"].obsm["X_fresh"], rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(new, old)
