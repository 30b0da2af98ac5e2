"""Model files: a saved network comes back identical, and bad files get clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import histoexpr as hx
from histoexpr.io import _model_files
from histoexpr.models import TileEncoder


@pytest.fixture
def trained_encoder():
    torch.manual_seed(0)
    model = TileEncoder(arch="small_cnn", in_channels=3, width=8)
    # one optimisation step so the weights and batch-norm statistics differ from a fresh build
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(torch.rand(4, 3, 32, 32)).pow(2).mean().backward()
    optimiser.step()
    model.metadata = {"genes": ["EPCAM", "VIM"], "classes": ["tumour", "stroma"], "mpp": 0.5,
                      "normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}}
    return model.eval()


def test_round_trip_restores_weights_outputs_and_metadata(trained_encoder, tmp_path):
    path = hx.io.save_model(trained_encoder, tmp_path / "encoder.pt")
    loaded = hx.io.load_model(path, device="cpu")
    assert type(loaded) is TileEncoder
    assert loaded.get_config() == trained_encoder.get_config()
    assert loaded.metadata == trained_encoder.metadata
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained_encoder(x))


def test_monai_resnet_round_trip(tmp_path):
    model = TileEncoder(arch="resnet10", in_channels=1).eval()
    loaded = hx.io.load_model(hx.io.save_model(model, tmp_path / "r.pt"), device="cpu")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_file_is_readable_with_weights_only(trained_encoder, tmp_path):
    path = hx.io.save_model(trained_encoder, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "histoexpr-model"
    assert payload["class"] == "TileEncoder"


def test_refuses_to_overwrite(trained_encoder, tmp_path):
    path = hx.io.save_model(trained_encoder, tmp_path / "m.pt")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hx.io.save_model(trained_encoder, path)
    hx.io.save_model(trained_encoder, path, overwrite=True)


def test_metadata_must_be_plain(trained_encoder, tmp_path):
    trained_encoder.metadata["mpp"] = np.float64(0.5)
    with pytest.raises(TypeError, match="float64"):
        hx.io.save_model(trained_encoder, tmp_path / "m.pt")


def test_newer_format_is_refused(trained_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(_model_files, "FORMAT_VERSION", 99)
    path = hx.io.save_model(trained_encoder, tmp_path / "future.pt")
    monkeypatch.setattr(_model_files, "FORMAT_VERSION", 1)
    with pytest.raises(ValueError, match="Upgrade histoexpr"):
        hx.io.load_model(path)


def test_retired_format_is_refused(trained_encoder, tmp_path, monkeypatch):
    path = hx.io.save_model(trained_encoder, tmp_path / "old.pt")
    monkeypatch.setattr(_model_files, "OLDEST_READABLE_FORMAT", 2)
    monkeypatch.setattr(_model_files, "FORMAT_VERSION", 2)
    with pytest.raises(ValueError, match="no longer reads"):
        hx.io.load_model(path)


def test_pickled_module_is_refused(trained_encoder, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(trained_encoder, path)  # a whole pickled module: unsafe to load
    with pytest.raises(ValueError, match="weights_only"):
        hx.io.load_model(path)


def test_foreign_files_are_refused(tmp_path):
    state = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, state)
    with pytest.raises(ValueError, match="not a histoexpr model file"):
        hx.io.load_model(state)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch file"):
        hx.io.load_model(garbage)
    with pytest.raises(FileNotFoundError, match="No model file"):
        hx.io.load_model(tmp_path / "missing.pt")


def test_unknown_network_class_is_refused(trained_encoder, tmp_path):
    path = hx.io.save_model(trained_encoder, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["class"] = "QuantumEncoder"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="QuantumEncoder"):
        hx.io.load_model(path)


def test_only_histoexpr_networks_are_saved(tmp_path):
    with pytest.raises(TypeError, match="histoexpr networks"):
        hx.io.save_model(torch.nn.Linear(2, 2), tmp_path / "m.pt")


def test_encoder_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        TileEncoder(in_channels=3)(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="Unknown encoder"):
        TileEncoder(arch="vit_giant")
