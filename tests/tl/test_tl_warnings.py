"""tl's own steps call pp with today's names: a user running them sees no FutureWarning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import histoexpr as hx

GENES = ["EPCAM", "KRT8", "COL1A1", "PTPRC"]


@pytest.fixture(scope="module")
def pair(synthetic):
    hx.settings.progress_bar = False
    return {name: synthetic(seed=seed, size_um=200, spot_pitch_um=40,
                            spot_diameter_um=35)
            for seed, name in enumerate("ab")}


def test_spot_regressor_fit_and_predict_warn_nothing(pair):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        # fit tiles the spots itself (hx.pp.tile(centres=...)), predict makes grid tiles
        model = hx.tl.fit(pair["a"], model="spot_regressor", route="ridge", genes=GENES,
                          size_um=40.0, mpp=1.0, seed=0)
        hx.tl.predict(model, pair["b"], key_added="pred", stride_um=40.0)
    table = pair["b"].tables["pred"]
    assert table.n_obs > 0 and np.isfinite(np.asarray(table.X)).all()


def test_spot_auto_pretraining_tiles_warn_nothing(pair, monkeypatch):
    from histoexpr.tl._spot import _spot_auto

    made = []

    def untrained(sections, tiles_key, **options):  # the tiles are what this test checks
        import torch

        from histoexpr.models import TileEncoder

        made.extend(s.tables[f"{tiles_key}_table"].n_obs for s in sections)
        torch.manual_seed(0)
        network = TileEncoder(**_spot_auto.CNN_CONFIG)
        network.metadata = {"normalisation": {"mean": 0.5, "std": 0.25}}
        return network

    monkeypatch.setattr(_spot_auto, "pretrain_encoder", untrained)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        # the ssl encoder is pretrained on grid tiles that fit makes (hx.pp.tile(size_px=...))
        model = hx.tl.fit(pair["a"], model="spot_regressor", route="ridge", encoder="ssl",
                          genes=GENES[:2], size_um=40.0, mpp=1.0, seed=0,
                          tiles_key="ssl_tiles")
    assert made and made[0] > 0
    assert model.metadata["route"] == "ridge"
