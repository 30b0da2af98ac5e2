"""Foundation encoders from local weights: transformers folders (ViT, DINOv2) and timm.

Tiny random models are saved to a temporary folder by the tests themselves; nothing is
downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx

os.environ["HF_HUB_OFFLINE"] = "1"
pytestmark = pytest.mark.slow  # importing transformers alone takes tens of seconds here
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def section():
    sdata = hx.datasets.synthetic_section(seed=2, size_um=300, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=28, mpp=0.5, min_tissue=0.5)  # 14 um tiles of 28 px
    return sdata


def _processor_kwargs(size: int) -> dict:
    return {"image_mean": [0.7, 0.5, 0.65], "image_std": [0.15, 0.2, 0.25],
            "size": {"height": size, "width": size}}


def _save_vit(folder, *, weights: bool = True, size: int = 28):
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, image_size=size, patch_size=7)
    model = transformers.ViTModel(config, add_pooling_layer=False).eval()
    if weights:
        model.save_pretrained(folder)
    else:
        config.save_pretrained(folder)
    processor = transformers.ViTImageProcessor(**_processor_kwargs(size))
    processor.save_pretrained(folder)
    return model, processor


def _direct(model, processor, dataset, rows, pooling="cls"):
    """The model applied by transformers' own image processor to the tiles' pixels."""
    images = [np.moveaxis(dataset.pixels(i), 0, -1) for i in rows]  # (H, W, C) uint8
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = model(pixel_values=pixels).last_hidden_state
    n_registers = getattr(model.config, "num_register_tokens", 0) or 0
    cls, mean = tokens[:, 0], tokens[:, 1 + n_registers:].mean(dim=1)
    return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], 1)}[pooling].numpy()


def test_a_vit_folder_embeds_as_the_model_does_through_its_own_processor(section, tmp_path):
    model, processor = _save_vit(tmp_path / "tiny_vit")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # real weights, right size: no warning
        hx.tl.embed(section, "he_tiles", encoder=f"hf:{tmp_path / 'tiny_vit'}")
    table = section.tables["he_tiles_table"]
    features = table.obsm["X_hf_tiny_vit"]
    assert features.shape == (table.n_obs, 16)
    dataset = hx.pp.TileDataset(section, "he_tiles")
    rows = [0, 3, table.n_obs - 1]
    np.testing.assert_allclose(features[rows], _direct(model, processor, dataset, rows),
                               rtol=1e-4, atol=1e-5)
    record = table.uns["embeddings"]["X_hf_tiny_vit"]
    assert record["encoder"] == "hf_tiny_vit"


def test_dinov2_with_centre_crop_and_mean_pooling(section, tmp_path):
    torch.manual_seed(1)
    config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, mlp_ratio=2, image_size=28,
                                       patch_size=7)
    model = transformers.Dinov2Model(config).eval()
    model.save_pretrained(tmp_path / "tiny_dino")
    # the DINOv2 recipe: resize the shortest edge, then crop the centre (here both 28 px)
    processor = transformers.BitImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, do_center_crop=True,
        image_mean=[0.7, 0.5, 0.65], image_std=[0.15, 0.2, 0.25], do_convert_rgb=False)
    processor.save_pretrained(tmp_path / "tiny_dino")
    encoder = hx.models.HuggingFaceEncoder(path=str(tmp_path / "tiny_dino"), pooling="cls+mean")
    assert encoder.metadata["size_px"] == 28 and encoder.out_features == 32
    hx.tl.embed(section, "he_tiles", encoder=encoder, key_added="X_dino")
    dataset = hx.pp.TileDataset(section, "he_tiles")
    rows = [1, 2, 5]
    np.testing.assert_allclose(section.tables["he_tiles_table"].obsm["X_dino"][rows],
                               _direct(model, processor, dataset, rows, "cls+mean"),
                               rtol=1e-4, atol=1e-5)
    # a model file rebuilds the encoder from its folder, with the same weights
    path = hx.io.save_model(encoder, tmp_path / "dino.pt")
    hx.tl.embed(section, "he_tiles", encoder=path, key_added="X_dino_file")
    obsm = section.tables["he_tiles_table"].obsm
    np.testing.assert_allclose(obsm["X_dino_file"], obsm["X_dino"], rtol=1e-5, atol=1e-6)


@bad_input("silently wrong", "`hx.tl.embed(encoder=...)` with random weights: an architecture "
           "name without `checkpoint=`, or an `hf:` folder without weights; tiles of another "
           "size than the model's", says="UserWarning: ... has RANDOM weights; UserWarning: "
           "tiles ... are resized", fix="pass `checkpoint=` / put the weights in the folder; "
           "tile at the model's size")
def test_random_weights_and_other_tile_sizes_are_warned_about(section, tmp_path):
    _save_vit(tmp_path / "no_weights", weights=False)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        hx.tl.embed(section, "he_tiles", encoder=f"hf:{tmp_path / 'no_weights'}",
                    key_added="X_random")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        hx.tl.embed(section, "he_tiles", encoder="small_cnn", key_added="X_random_cnn")
    # tiles of another size (28 px) are resized as the processor asks (35 px), and the user
    # is told
    _save_vit(tmp_path / "vit32", size=35)
    with pytest.warns(UserWarning, match="resized to 35x35 px"):
        hx.tl.embed(section, "he_tiles", encoder=f"hf:{tmp_path / 'vit32'}",
                    key_added="X_resized")
    assert np.isfinite(section.tables["he_tiles_table"].obsm["X_resized"]).all()


@bad_input("obscure error", "`encoder='hf:<folder>'` of a folder without config.json, with "
           "`checkpoint=`, or an unknown pooling", says="FileNotFoundError: ... is not a "
           "transformers model folder; ValueError: drop checkpoint=", fix="give the folder "
           "save_pretrained wrote; weights go in the folder")
def test_bad_folders_are_explained(section, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hx.tl.embed(section, "he_tiles", encoder=f"hf:{tmp_path}", key_added="X_none")
    _save_vit(tmp_path / "vit")
    with pytest.raises(ValueError, match="drop checkpoint="):
        hx.tl.embed(section, "he_tiles", encoder=f"hf:{tmp_path / 'vit'}",
                    checkpoint=tmp_path / "w.pt", key_added="X_ckpt")
    with pytest.raises(ValueError, match="Unknown pooling"):
        hx.models.HuggingFaceEncoder(path=str(tmp_path / "vit"), pooling="max")


@bad_input("silently wrong", "`encoder='timm:<name>'` without `checkpoint=`",
           says="UserWarning: ... has RANDOM weights", fix="pass checkpoint= (local weights)")
def test_timm_without_a_checkpoint_warns_of_random_weights(section):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        try:
            hx.tl.embed(section, "he_tiles", encoder="timm:resnet18", key_added="X_timm_random")
        except ImportError as error:  # timm imports torchvision, which has no CPU build here
            pytest.skip(f"timm cannot be imported here ({error}); the warning came first")
