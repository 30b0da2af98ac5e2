"""The spot regressor and an encoder of one's own (a network object).

``encoder=`` takes names and model files, which prediction can make again; a network object is
refused before any work, with the two ways that work: its model file, or its features embedded
by the user (``hx.tl.embed(..., encoder=net)``) and given as ``features_key``. Those features
are the user's own: trained on as they are, and prediction needs the same network's features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx
from histoexpr.models import Network
from histoexpr.tl._features._embed import encoder_fingerprint

GENES = ["EPCAM", "KRT8", "COL1A1", "PTPRC"]
SECTION = {"size_um": 240, "spot_pitch_um": 40, "spot_diameter_um": 35}
FIT = {"genes": GENES, "size_um": 40.0, "mpp": 1.0, "calibrate": False}


class PooledColour(Network):
    """A network of one's own: each channel's mean (or max) over the tile."""

    def __init__(self, *, pool: str = "mean", in_channels: int = 3) -> None:
        super().__init__(config={"pool": pool, "in_channels": in_channels})
        self.pool, self.in_channels, self.out_features = pool, in_channels, in_channels

    def forward(self, x):
        return x.mean(dim=(2, 3)) if self.pool == "mean" else x.amax(dim=(2, 3))


def embedded(seed: int, network: Network, key: str = "X_mine"):
    """A section with spot tiles ``t`` embedded by ``network`` under ``key``."""
    section = hx.datasets.synthetic_section(seed=seed, **SECTION)
    hx.pp.tile(section, "he", size_um=40, mpp=1.0, centres="spots", min_tissue=0,
               key_added="t")
    hx.tl.embed(section, "t", encoder=network, key_added=key)
    return section


@bad_input("obscure error", "`hx.tl.fit(..., model='spot_regressor', encoder=net)` with a network "
           "object (an encoder of one's own)",
           says="TypeError: encoder= of the spot regressor takes an encoder's name or model file "
                "(or a list of them), not a network object (PooledColour) ... "
                "hx.io.save_model(net, 'my_encoder.pt') ... features_key='X_mine' (before: "
                "TypeError: 'PooledColour' object is not iterable)",
           fix="save the network with `hx.io.save_model` and pass the file, or embed the tiles "
               "with it (`hx.tl.embed(..., encoder=net)`) and pass `features_key=`")
def test_a_network_object_is_refused_before_any_work():
    section = hx.datasets.synthetic_section(seed=0, **SECTION)
    names = set(section.shapes) | set(section.tables) | set(section.labels)
    for encoder in (PooledColour(), ["handcrafted", PooledColour()]):
        with pytest.raises(TypeError, match=r"not a network object \(PooledColour\).*"
                           r"register_network\(PooledColour\).*features_key='X_mine'"):
            hx.tl.fit(section, model="spot_regressor", encoder=encoder, **FIT)
    with pytest.raises(TypeError, match=r"encoder= takes .* got 3 \(int\)"):
        hx.tl.SpotRegressorOptions(route="mlp", encoder=3)
    with pytest.raises(ValueError, match="names no encoder"):
        hx.tl.SpotRegressorOptions(encoder=[])
    assert set(section.shapes) | set(section.tables) | set(section.labels) == names


def test_a_path_is_an_encoder_file_as_its_string(tmp_path):
    torch.manual_seed(0)
    path = hx.io.save_model(hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8),
                            tmp_path / "encoder.pt")
    options = hx.tl.SpotRegressorOptions(encoder=Path(path))
    assert options.encoder == str(path)
    assert hx.tl.SpotRegressorOptions(encoder=("handcrafted", Path(path))).encoder == (
        "handcrafted", str(path))
    section = hx.datasets.synthetic_section(seed=0, **SECTION)
    model = hx.tl.fit(section, model="spot_regressor", encoder=Path(path), **FIT)
    assert model.metadata["encoder"] == str(path)
    assert model.metadata["features"]["fingerprint"] == encoder_fingerprint(str(path))


def test_features_of_ones_own_network_train_and_predict(tmp_path):
    network = PooledColour(pool="mean")
    train = embedded(0, network)
    model = hx.tl.fit(train, model="spot_regressor", tiles_key="t", features_key="X_mine",
                      **FIT)
    fingerprint = encoder_fingerprint(network)
    assert model.metadata["features"] == {
        "source": "user", "encoder": "pooledcolour", "fingerprint": fingerprint,
        "image_key": "he", "mpp": 1.0, "size_px": 40, "n_features": 3}
    assert model.metadata["encoder"] == "pooledcolour"
    model = hx.io.load_model(hx.io.save_model(model, tmp_path / "model.pt"))  # plain metadata

    # a new section embedded by the same network: predicted from those features
    other = embedded(1, PooledColour(pool="mean"))
    table = hx.tl.predict(model, other, tiles_key="t")
    features = np.asarray(other.tables["t_table"].obsm["X_mine"], dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(np.asarray(table.X), expected, rtol=1e-5, atol=1e-6)

    # features of another network (another pooling) under the key: refused, nothing written
    wrong = embedded(1, PooledColour(pool="max"))
    before = tree_digest_of(wrong)
    with pytest.raises(ValueError, match=r"obsm\['X_mine'\] .* was made otherwise \("
                       r"fingerprint: 'pooledcolour:weights:\w+', not "
                       rf"'{fingerprint}'\)"):
        hx.tl.predict(model, wrong, tiles_key="t")
    assert tree_digest_of(wrong) == before


@bad_input("obscure error", "`hx.tl.predict` of a spot regressor trained on features of one's own "
           "network, on a slide without them",
           says="ValueError: The model was trained on features of your own network "
                "'pooledcolour' ... Embed the tiles with the same network, hx.tl.embed(sdata, "
                "'he_expr_tiles', encoder=net, key_added='X_mine')",
           fix="embed the slide's tiles with the same network under the training features_key, "
               "and predict with that tiles_key")
def test_prediction_without_the_networks_features_says_how_to_make_them():
    model = hx.tl.fit(embedded(0, PooledColour()), model="spot_regressor", tiles_key="t",
                      features_key="X_mine", **FIT)
    other = hx.datasets.synthetic_section(seed=1, **SECTION)
    with pytest.raises(ValueError, match=r"features of your own network 'pooledcolour' .* "
                       r"hx\.tl\.embed\(sdata, 'he_expr_tiles', encoder=net, "
                       r"key_added='X_mine'\)"):
        hx.tl.predict(model, other)
    assert "he_expr_tiles_expression" not in other.tables


@bad_input("silently wrong", "`hx.tl.fit(..., model='spot_regressor', encoder='squidpy', "
           "features_key='X_mine')` where X_mine holds features of a network object of the user's",
           says="ValueError: obsm['X_mine'] of sdata.tables['t_table'] holds features that "
                "hx.tl.embed made with a network object of yours ('pooledcolour', fingerprint "
                "...), not with encoder='squidpy', so they are not used",
           fix="leave encoder at its default to train on them as they are, or pass another "
               "features_key")
def test_another_encoder_asked_for_is_not_given_the_networks_features():
    section = embedded(0, PooledColour())
    kept = section.tables["t_table"].obsm["X_mine"].copy()
    with pytest.raises(ValueError, match=r"network object of yours \('pooledcolour'.*not with "
                       r"encoder='squidpy'"):
        hx.tl.fit(section, model="spot_regressor", tiles_key="t", features_key="X_mine",
                  encoder="squidpy", **FIT)
    np.testing.assert_array_equal(section.tables["t_table"].obsm["X_mine"], kept)


def tree_digest_of(section) -> dict:
    """What a section holds: its elements and the tile table's obsm and uns keys."""
    table = section.tables["t_table"]
    return {"elements": sorted(name for _, name, _ in section.gen_elements()),
            "obsm": sorted(table.obsm), "uns": sorted(table.uns)}
