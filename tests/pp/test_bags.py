"""Pseudo-bulk bags, up/down labels and gene panels, checked on numbers made by hand."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx


@pytest.fixture(scope="module")
def section():
    sdata = hx.datasets.synthetic_section(seed=3, size_um=500, transcripts=True, spots=True)
    hx.pp.tile(sdata, "he", size_um=100, mpp=2.0, centres="spots", min_tissue=0.0)
    return sdata


def test_bags_hold_the_summed_counts_of_their_spots(section):
    hx.pp.pseudobulk(section, "he_tiles", size_um=300, stride_um=100, min_spots=2,
                     overwrite=True)
    bags = section.tables["bags_table"]
    tiles = section.tables["he_tiles_table"]
    spots = section.tables["table"]
    membership = bags.obsm["tiles"].toarray() > 0
    assert membership.shape == (bags.n_obs, tiles.n_obs)
    row_of_spot = {s: i for i, s in enumerate(spots.obs["spot_id"])}
    counts = spots.layers["counts"].toarray()
    centres = tiles.obsm["spatial"]
    for i in range(bags.n_obs):
        members = np.flatnonzero(membership[i])
        assert len(members) >= 2 and bags.obs["n_spots"].iloc[i] == len(members)
        expected = counts[[row_of_spot[s] for s in tiles.obs["spot_id"].iloc[members]]].sum(0)
        np.testing.assert_allclose(bags.X[i].toarray().ravel(), expected)
        # every member lies inside the bag's square, whose centre is recorded
        assert (np.abs(centres[members] - bags.obsm["spatial"][i]) <= 150 + 1e-9).all()
    assert len({tuple(np.flatnonzero(m)) for m in membership}) == bags.n_obs  # no duplicates
    assert len(section.shapes["bags"]) == bags.n_obs


def test_non_overlapping_bags_partition_the_tiles(section):
    hx.pp.pseudobulk(section, "he_tiles", size_um=200, min_spots=1, key_added="grid",
                     overwrite=True)
    membership = section.tables["grid_table"].obsm["tiles"].toarray()
    np.testing.assert_array_equal(membership.sum(0), 1)


def test_pseudobulk_errors(section):
    hx.pp.pseudobulk(section, "he_tiles", size_um=300, key_added="taken", overwrite=True)
    with pytest.raises(KeyError, match="already exists"):
        hx.pp.pseudobulk(section, "he_tiles", size_um=300, key_added="taken")
    with pytest.raises(ValueError, match="stride_um"):
        hx.pp.pseudobulk(section, "he_tiles", size_um=300, stride_um=400, key_added="x")
    with pytest.raises(ValueError, match="min_spots"):
        hx.pp.pseudobulk(section, "he_tiles", size_um=50, min_spots=50, key_added="y")
    hx.pp.tile(section, "he", size_px=50, mpp=2.0, key_added="grid_tiles", overwrite=True)
    with pytest.raises(ValueError, match="centres='spots'"):
        hx.pp.pseudobulk(section, "grid_tiles", key_added="z")


def _bags_state(sdata, key):
    """What a pseudobulk call left under ``key``: the squares and the table, by value."""
    table = sdata.tables[f"{key}_table"]
    return (sdata.shapes[key].geometry.to_wkb().tolist(), table.obs_names.tolist(),
            np.asarray(table.X.toarray()).tolist())


@bad_input("data lost", "`hx.pp.pseudobulk(..., overwrite=True)` that then fails on its data "
           "(e.g. `min_spots` larger than any window holds): the bags of the earlier call were "
           "deleted before the windows were computed",
           says="ValueError: No window of 300 um holds min_spots=10000 tiles ... (before: the "
                "old bags deleted first)",
           fix="use larger bags or a smaller min_spots; the earlier bags are kept")
def test_a_failing_pseudobulk_rerun_keeps_the_earlier_bags(section):
    hx.pp.pseudobulk(section, "he_tiles", size_um=300, key_added="kept", overwrite=True)
    before = _bags_state(section, "kept")
    with pytest.raises(ValueError, match="No window of 300 um holds min_spots=10000 tiles"):
        hx.pp.pseudobulk(section, "he_tiles", size_um=300, min_spots=10_000, key_added="kept",
                         overwrite=True)
    assert _bags_state(section, "kept") == before
    # a valid rerun still replaces them
    hx.pp.pseudobulk(section, "he_tiles", size_um=200, min_spots=1, key_added="kept",
                     overwrite=True)
    assert section.tables["kept_table"].uns["bags"]["size_um"] == 200


@bad_input("data lost", "`hx.pp.pseudobulk(..., key_added='mixed', overwrite=True)` where "
           "`shapes['mixed']` is an earlier call's but `tables['mixed_table']` is the user's: "
           "the squares were deleted, then the call refused",
           says="KeyError: sdata.tables['mixed_table'] already exists and it was not written by "
                "histoexpr, not by hx.pp.pseudobulk: it is not replaced, even with "
                "overwrite=True ... (before: shapes['mixed'] deleted first)",
           fix="choose another key_added")
def test_pseudobulk_checks_every_key_before_replacing_any(section):
    hx.pp.pseudobulk(section, "he_tiles", size_um=300, key_added="mixed", overwrite=True)
    squares = section.shapes["mixed"].geometry.to_wkb().tolist()
    del section.tables["mixed_table"]
    mine = ad.AnnData(np.zeros((3, 2), dtype=np.float32))
    section.tables["mixed_table"] = mine  # the user's own table, under the table's name
    try:
        with pytest.raises(KeyError, match=r"sdata.tables\['mixed_table'\] already exists and "
                           "it was not written by histoexpr"):
            hx.pp.pseudobulk(section, "he_tiles", size_um=300, key_added="mixed",
                             overwrite=True)
        assert section.shapes["mixed"].geometry.to_wkb().tolist() == squares
        assert section.tables["mixed_table"] is mine
    finally:
        del section.tables["mixed_table"], section.shapes["mixed"]


@bad_input("data lost", "`hx.pp.pseudobulk(..., overwrite=True)` where the user put an edited "
           "copy of the bags' table (e.g. some bags dropped) back under its name: the copy "
           "carried the step's record, so it was taken for the step's own and replaced",
           says="KeyError: sdata.tables['edited_table'] already exists and it was not written "
                "by histoexpr, not by hx.pp.pseudobulk",
           fix="choose another key_added, or delete the edited table yourself")
def test_an_edited_copy_under_the_same_key_is_the_users(section):
    hx.pp.pseudobulk(section, "he_tiles", size_um=200, min_spots=1, key_added="edited",
                     overwrite=True)
    edited = section.tables["edited_table"][:2].copy()  # carries the step's record in uns
    del section.tables["edited_table"]
    section.tables["edited_table"] = edited
    try:
        with pytest.raises(KeyError, match="it was not written by histoexpr, not by "
                           "hx.pp.pseudobulk"):
            hx.pp.pseudobulk(section, "he_tiles", size_um=200, min_spots=1, key_added="edited",
                             overwrite=True)
        assert section.tables["edited_table"] is edited and edited.n_obs == 2
    finally:
        del section.tables["edited_table"], section.shapes["edited"]


def bulk_of(values, genes=("A", "B")):
    return ad.AnnData(np.asarray(values, dtype=np.float32),
                      obs=pd.DataFrame(index=[f"s{i}" for i in range(len(values))]),
                      var=pd.DataFrame(index=list(genes)))


def test_deg_labels_by_quantile():
    bulk = bulk_of([[1, 10], [2, 20], [3, 30], [4, 40], [5, 50]])
    hx.pp.deg_labels(bulk, ["A", "B"], lower=0.25, upper=0.75)
    # quantiles of 1..5: 0.25 -> 2, 0.75 -> 4; down <= 2, up > 4
    assert bulk.obs["deg_A"].tolist() == ["down", "down", "unchanged", "unchanged", "up"]
    assert bulk.obs["deg_B"].tolist() == bulk.obs["deg_A"].tolist()
    hx.pp.deg_labels(bulk, "A", lower=0.5, upper=0.5, key_added="half")
    assert bulk.obs["half_A"].tolist() == ["down", "down", "down", "up", "up"]
    assert list(bulk.obs["half_A"].cat.categories) == ["down", "up"]


def test_deg_labels_by_fold_change_against_reference():
    bulk = bulk_of([[1, 1], [1, 1], [4, 1], [0.2, 3], [1.5, 1]])
    hx.pp.deg_labels(bulk, ["A", "B"], method="fold_change", reference=["s0", "s1"],
                     log2_threshold=1.0, pseudocount=0.0)
    # log2 fold changes of A against 1: 0, 0, 2, -2.32, 0.58
    assert bulk.obs["deg_A"].tolist() == ["unchanged", "unchanged", "up", "down", "unchanged"]
    assert bulk.obs["deg_B"].tolist() == ["unchanged"] * 3 + ["up", "unchanged"]
    bulk.obs["normal"] = [True, True, False, False, False]
    hx.pp.deg_labels(bulk, "A", method="fold_change", reference="normal", log2_threshold=0,
                     pseudocount=0.0, key_added="two")
    assert bulk.obs["two_A"].tolist() == ["down", "down", "up", "down", "up"]


def test_deg_labels_errors():
    bulk = bulk_of([[1, 2], [3, 4], [5, 6]])
    with pytest.raises(KeyError, match="not in bulk.var_names"):
        hx.pp.deg_labels(bulk, ["A", "MISSING"])
    with pytest.raises(ValueError, match="reference"):
        hx.pp.deg_labels(bulk, "A", method="fold_change")
    with pytest.raises(ValueError, match="method"):
        hx.pp.deg_labels(bulk, "A", method="zscore")
    hx.pp.deg_labels(bulk, "A")
    with pytest.raises(KeyError, match="overwrite"):
        hx.pp.deg_labels(bulk, "A")
    nan = bulk_of([[1, np.nan], [3, 4], [5, 6]])
    with pytest.raises(ValueError, match="NaN"):
        hx.pp.deg_labels(nan, "B")


@bad_input("data lost", "`hx.pp.deg_labels(bulk, genes, overwrite=True)` where `bulk.obs` "
           "holds a column of the user's named `deg_<gene>` (their own labels)",
           says="KeyError: bulk.obs already has ['deg_A'], which hx.pp.deg_labels did not write "
                "(no record in bulk.uns['deg']['deg']), so overwrite=True does not replace them "
                "... "
                "(before: replaced)",
           fix="choose another key_added, or rename the columns")
def test_deg_labels_replace_only_their_own_columns():
    bulk = bulk_of([[1, 2], [3, 4], [5, 6]])
    bulk.obs["deg_A"] = ["mine", "mine", "mine"]  # the user's own labels
    with pytest.raises(KeyError, match=r"already has \['deg_A'\], which hx.pp.deg_labels did not "
                                       r"write.*overwrite=True does not replace them"):
        hx.pp.deg_labels(bulk, ["A", "B"], overwrite=True)
    assert bulk.obs["deg_A"].tolist() == ["mine"] * 3 and "deg_B" not in bulk.obs
    hx.pp.deg_labels(bulk, "B")
    hx.pp.deg_labels(bulk, "B", lower=0.5, upper=0.5, overwrite=True)  # its own: replaced
    assert bulk.obs["deg_B"].tolist() == ["down", "down", "up"]
    assert bulk.uns["deg"]["deg"]["columns"] == ["deg_B"]


def test_the_paper_panel_and_any_list():
    panel = hx.pp.gene_panel("graziani2022")
    assert len(panel) == 21 and panel[0] == "SEMA5A" and panel[-1] == "AXIN2"
    with pytest.raises(KeyError, match="graziani2022"):
        hx.pp.gene_panel("nope")
    bulk = bulk_of(np.ones((3, 21)), genes=panel)
    hx.pp.deg_labels(bulk, "graziani2022", lower=0.5, upper=0.5)
    assert all(f"deg_{g}" in bulk.obs for g in panel)


@bad_input("data lost", "`hx.pp.deg_labels(bulk, genes, key_added='a/b')`: the columns "
           "'a/b_<gene>' and uns['deg']['a/b'] were written, and an h5ad written then read "
           "back nested them (the record lost)",
           says="ValueError: `key_added='a/b' cannot name a set of labels in bulk.obs and "
                "bulk.uns: it holds a path separator`",
           fix="use one plain name (letters, digits, '_', '-', '.', '+')")
def test_deg_labels_key_must_be_one_plain_name():
    bulk = bulk_of([[1, 2], [3, 4], [5, 6]])
    with pytest.raises(ValueError, match="key_added='a/b' cannot name a set of labels in "
                                         "bulk.obs and bulk.uns: it holds a path separator"):
        hx.pp.deg_labels(bulk, "A", key_added="a/b")
    assert list(bulk.obs.columns) == [] and "deg" not in bulk.uns


@bad_input("obscure error", "`hx.pp.deg_labels` on a bulk with no samples (numpy's "
           "IndexError from the quantiles)",
           says="ValueError: `The bulk has no samples (0 rows): there is nothing to label`",
           fix="give the samples x genes expression")
def test_deg_labels_refuses_an_empty_bulk():
    empty = bulk_of(np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"The bulk has no samples \(0 rows\)"):
        hx.pp.deg_labels(empty, None)
    assert list(empty.obs.columns) == [] and "deg" not in empty.uns
