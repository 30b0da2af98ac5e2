"""A stain reference is checked before it is used."""

from __future__ import annotations

import copy

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
from _catalogue import bad_input

import histoexpr as hx

STAIN = {"method": "macenko", "stain_matrix": [[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]],
         "max_concentrations": [1.9, 1.0]}


@pytest.fixture(scope="module")
def tiled():
    section = hx.datasets.synthetic_section(seed=0, size_um=200)
    hx.pp.detect_tissue(section)
    hx.pp.tile(section, size_px=32)
    return section


def no_tile_read(monkeypatch):
    """Make reading the tiles of a stain estimate fail the test."""
    import histoexpr.pp._stain as stain

    def read(*args, **kwargs):
        raise AssertionError("the tiles were read")

    monkeypatch.setattr(stain, "_mosaic", read)


@bad_input("obscure error", "`hx.pp.stain_normaliser(sdata, reference={})` (or a reference "
           "without 'stain_matrix' or 'max_concentrations'): a bare KeyError after the "
           "section's tiles were read",
           says="ValueError: reference must be a stain from hx.pp.stain_reference: a dict with "
                "'stain_matrix' ... and 'max_concentrations' ...; it has no ... Make one with "
                "hx.pp.stain_reference(sections, tiles_key)",
           fix="pass the dict hx.pp.stain_reference returns (or a spot regressor's "
               "metadata['stain'])")
def test_stain_normaliser_refuses_a_reference_without_its_keys(tiled, monkeypatch):
    no_tile_read(monkeypatch)
    elements = (sorted(tiled.shapes), sorted(tiled.tables))
    for reference, named in (({}, "'stain_matrix' or 'max_concentrations'"),
                             ({"stain_matrix": STAIN["stain_matrix"]}, "'max_concentrations'"),
                             ({"max_concentrations": [1, 1], "method": "macenko"},
                              "'stain_matrix'")):
        given = copy.deepcopy(reference)
        with pytest.raises(ValueError, match=f"it has no {named} .*Make one with "
                                             r"hx.pp.stain_reference\(sections, tiles_key\)"):
            hx.pp.stain_normaliser(tiled, "he_tiles", reference=reference)
        assert reference == given
    assert (sorted(tiled.shapes), sorted(tiled.tables)) == elements


@bad_input("silently wrong", "`hx.pp.stain_normaliser(sdata, reference=...)` with a "
           "'stain_matrix' of another shape than 3 x 2 (a wrong colour map, or an error from "
           "deep inside torch), concentrations that are not 2 positive numbers, or a reference "
           "that is not a dict",
           says="ValueError: reference must be a stain from hx.pp.stain_reference ...; its "
                "'stain_matrix' is ..., not 3 x 2 finite numbers. Make one with "
                "hx.pp.stain_reference(sections, tiles_key)",
           fix="pass the dict hx.pp.stain_reference returns")
def test_stain_normaliser_refuses_a_malformed_reference(tiled, monkeypatch):
    no_tile_read(monkeypatch)
    cases = [({**STAIN, "stain_matrix": [[1, 2]]}, r"'stain_matrix' is \[\[1, 2\]\], not 3 x 2"),
             ({**STAIN, "stain_matrix": "abc"}, "'stain_matrix' is 'abc', not 3 x 2"),
             ({**STAIN, "max_concentrations": ["a", "b"]},
              "'max_concentrations' is .*, not 2 finite positive numbers"),
             ({**STAIN, "max_concentrations": [1.0, 0.0]}, "not 2 finite positive numbers"),
             ({**STAIN, "max_concentrations": [1.0, np.nan]}, "not 2 finite positive numbers"),
             ({**STAIN, "method": "reinhard"}, "its 'method' is 'reinhard', not one of")]
    for reference, says in cases:
        given = copy.deepcopy(reference)
        with pytest.raises(ValueError, match=says):
            hx.pp.stain_normaliser(tiled, "he_tiles", reference=reference)
        assert str(reference) == str(given)
    with pytest.raises(TypeError, match="reference must be a stain from hx.pp.stain_reference.*"
                                        "got str 'abc'.*Make one with"):
        hx.pp.stain_normaliser(tiled, "he_tiles", reference="abc")
    with pytest.raises(ValueError, match="source must be a stain.*it has no"):
        hx.pp.StainNormaliser(reference=STAIN, source={})


def test_a_well_formed_reference_is_still_taken(tiled):
    import torch

    normaliser = hx.pp.stain_normaliser(tiled, "he_tiles", reference=STAIN, n_tiles=8)
    tiles = normaliser(torch.full((2, 3, 4, 4), 0.5))
    assert tiles.shape == (2, 3, 4, 4) and torch.isfinite(tiles).all()
