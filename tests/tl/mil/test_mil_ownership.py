"""Slide-level predict and cross-validation replace only the per-tile outputs they wrote."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input
from spatialdata import SpatialData

import histoexpr as hx

GENES = ["EPCAM", "KRT8", "COL1A1"]
TILES = "he_tiles_table"


@pytest.fixture(scope="module")
def made():
    sections = {}
    for seed in range(3):
        sdata = hx.datasets.synthetic_section(seed=seed, size_um=400, spots=True)
        hx.pp.tile(sdata, "he", size_um=100, mpp=2.0, centres="spots", min_tissue=0.0)
        hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
        hx.pp.pseudobulk(sdata, "he_tiles", size_um=200, stride_um=100, min_spots=3)
        sections[f"s{seed}"] = sdata
    model = hx.tl.fit({"s0": sections["s0"], "s1": sections["s1"]}, model="meanpool_ridge",
                      genes=GENES)
    return sections, model


def _fresh(sections: dict) -> dict:
    """The sections with their own copies of the tables (what a test writes stays in it)."""
    return {name: SpatialData(images=dict(s.images), labels=dict(s.labels),
                              points=dict(s.points), shapes=dict(s.shapes),
                              tables={k: t.copy() for k, t in s.tables.items()})
            for name, s in sections.items()}


def _with_users_entries(sdata: SpatialData, key: str) -> tuple[pd.Series, pd.DataFrame]:
    table = sdata.tables[TILES]
    column = pd.Series(np.arange(table.n_obs, dtype=float), index=table.obs_names)
    matrix = pd.DataFrame(np.full((table.n_obs, 2), 7.0), index=table.obs_names,
                          columns=["a", "b"])
    table.obs[f"{key}_attention"] = column
    table.obsm[f"{key}_contribution"] = matrix
    return column.copy(), matrix.copy()


def _untouched(sections: dict, key: str) -> None:
    for sdata in sections.values():
        table = sdata.tables[TILES]
        assert key not in table.obsm and f"{key}_attention" not in table.obsm
        assert "bag_outputs" not in table.uns


@bad_input("data lost", "`hx.tl.predict(model, sections, key_added=\"mine\")` (a slide-level "
           "model) where a tile table holds the user's own `obs[\"mine_attention\"]` or "
           "`obsm[\"mine_contribution\"]`: they were replaced by the prediction",
           says="KeyError: The tile tables already hold entries that hx.tl.predict would write "
                "under key_added='mine' and that hx.tl.predict did not write there: ... "
                "(not written by histoexpr) ... They are never replaced, even with "
                "overwrite=True",
           fix="choose another key_added (the message suggests a free one)")
def test_users_entries_named_like_the_outputs_survive_predict(made):
    sections, model = made
    fresh = _fresh(sections)
    column, matrix = _with_users_entries(fresh["s2"], "mine")
    for overwrite in (False, True):
        with pytest.raises(KeyError, match=r"obs\['mine_attention'\].*obsm\['mine_contribution'\]"
                           ".*choose another key_added, e.g. 'mine_2'"):
            hx.tl.predict(model, fresh, key_added="mine", overwrite=overwrite)
    table = fresh["s2"].tables[TILES]
    pd.testing.assert_series_equal(table.obs["mine_attention"], column, check_names=False)
    pd.testing.assert_frame_equal(table.obsm["mine_contribution"], matrix)
    _untouched({n: s for n, s in fresh.items() if n != "s2"}, "mine")  # nothing written anywhere
    assert "mine" not in table.obsm and "bag_outputs" not in table.uns


@bad_input("data lost", "`hx.tl.predict(model, cohort, key_added=\"X_handcrafted\", "
           "overwrite=True)` (a slide-level model): the tile features hx.tl.embed wrote there "
           "were replaced by the prediction",
           says="KeyError: The tile tables already hold entries that hx.tl.predict would write "
                "under key_added='X_handcrafted' and that hx.tl.predict did not write there: "
                "... obsm['X_handcrafted'] (written by hx.tl.embed) ... They are never replaced, "
                "even with overwrite=True",
           fix="choose another key_added")
def test_embed_features_survive_predict_under_their_key(made):
    sections, model = made
    fresh = _fresh(sections)
    before = {n: np.array(s.tables[TILES].obsm["X_handcrafted"]) for n, s in fresh.items()}
    with pytest.raises(KeyError, match="written by hx.tl.embed"):
        hx.tl.predict(model, fresh, key_added="X_handcrafted", overwrite=True)
    for name, sdata in fresh.items():
        table = sdata.tables[TILES]
        np.testing.assert_array_equal(np.asarray(table.obsm["X_handcrafted"]), before[name])
        assert "X_handcrafted_attention" not in table.obsm and "bag_outputs" not in table.uns


def test_predicting_twice_with_overwrite_replaces_the_first(made):
    sections, model = made
    fresh = _fresh(sections)
    other = hx.tl.fit({"s1": sections["s1"], "s2": sections["s2"]}, model="meanpool_ridge",
                      genes=GENES)
    hx.tl.predict(model, fresh, key_added="mil")
    table = fresh["s2"].tables[TILES]
    first = table.obsm["mil"].to_numpy().copy()
    record = table.uns["bag_outputs"]["mil"]
    assert record["histoexpr"] == {"step": "hx.tl.predict", "key": "mil"}
    assert set(record["obsm"]) == {"mil", "mil_attention", "mil_contribution"}
    with pytest.raises(KeyError, match="Pass overwrite=True to replace them"):
        hx.tl.predict(other, fresh, key_added="mil")
    np.testing.assert_array_equal(table.obsm["mil"].to_numpy(), first)
    hx.tl.predict(other, fresh, key_added="mil", overwrite=True)
    hx.tl.predict(other, fresh, key_added="other")
    np.testing.assert_array_equal(table.obsm["mil"].to_numpy(), table.obsm["other"].to_numpy())
    np.testing.assert_array_equal(table.obsm["mil_contribution"].to_numpy(),
                                  table.obsm["other_contribution"].to_numpy())
    assert not np.allclose(first, table.obsm["mil"].to_numpy())
    # another key's outputs are not this key's: predicting under "mil_attention" would write
    # obsm["mil_attention"], which "mil" wrote
    with pytest.raises(KeyError, match=r"obsm\['mil_attention'\] \(written by hx.tl.predict "
                                       "of a meanpool_ridge model under key_added='mil'\\)"):
        hx.tl.predict(other, fresh, key_added="mil_attention", overwrite=True)


def test_the_record_survives_a_zarr_store(made, tmp_path):
    sections, model = made
    fresh = _fresh({"s2": sections["s2"]})
    hx.tl.predict(model, fresh, key_added="mil")
    fresh["s2"].write(tmp_path / "s2.zarr")
    from spatialdata import read_zarr

    again = {"s2": read_zarr(tmp_path / "s2.zarr")}
    hx.tl.predict(model, again, key_added="mil", overwrite=True)
    with pytest.raises(KeyError, match="overwrite=True"):
        hx.tl.predict(model, again, key_added="mil")


@bad_input("data lost", "`hx.tl.cross_validate(sections, model=\"abmil\", key_added=\"cv\")` "
           "where a tile table holds the user's own `obsm[\"cv_contribution\"]` (or outputs a "
           "plain `hx.tl.predict` wrote under \"cv\"): every fold replaced them",
           says="KeyError: The tile tables already hold entries that hx.tl.cross_validate would "
                "write under key_added='cv' and that hx.tl.cross_validate did not write there: "
                "... They are never replaced",
           fix="choose another key_added")
def test_cross_validate_leaves_users_entries_intact(made):
    sections, _ = made
    fresh = _fresh(sections)
    column, matrix = _with_users_entries(fresh["s1"], "cv")
    with pytest.raises(KeyError, match=r"'s1': obs\['cv_attention'\] \(not written by histoexpr"):
        hx.tl.cross_validate(fresh, model="meanpool_ridge", genes=GENES, key_added="cv",
                             check_attention=False)
    table = fresh["s1"].tables[TILES]
    pd.testing.assert_series_equal(table.obs["cv_attention"], column, check_names=False)
    pd.testing.assert_frame_equal(table.obsm["cv_contribution"], matrix)
    _untouched(fresh, "cv")
    # its own results of an earlier run are replaced; a plain predict's are not, nor the reverse
    clean = _fresh(sections)
    for _ in range(2):
        hx.tl.cross_validate(clean, model="meanpool_ridge", genes=GENES, key_added="cv",
                             check_attention=False)
    record = clean["s0"].tables[TILES].uns["bag_outputs"]["cv"]["histoexpr"]
    assert record == {"step": "hx.tl.predict", "key": "cv", "within": "hx.tl.cross_validate"}
    with pytest.raises(KeyError, match="within hx.tl.cross_validate"):
        hx.tl.predict(made[1], clean, key_added="cv", overwrite=True)
    hx.tl.predict(made[1], clean, key_added="plain")
    with pytest.raises(KeyError, match=r"written by hx.tl.predict of a meanpool_ridge model "
                       r"under key_added='plain'"):
        hx.tl.cross_validate(clean, model="meanpool_ridge", genes=GENES, key_added="plain",
                             check_attention=False)
