"""What a new user's first sections do in tl: tiny sections, images under another key, spots
without counts; each test asserts the right result or a message naming the problem and its fix.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx


@bad_input("obscure error", "`hx.tl.evaluate` on a section with only 2 spots",
           says="ValueError: The truth table holds 2 spot(s); a correlation needs at least 3 "
                "(before: 'Fewer than 3 spots have a predicted tile: predict on tiles that cover "
                "the spots', though every spot had one)",
           fix="evaluate on a section (or several) with more spots")
def test_evaluate_on_a_two_spot_section_says_why():
    from anndata import AnnData

    from histoexpr.tl._metrics._expression_metrics import _match_spots

    truth = AnnData(np.ones((2, 1), np.float32))
    pred = AnnData(np.ones((2, 1), np.float32))
    pred.obsm["spatial"] = np.array([[0.0, 0.0], [10.0, 0.0]])
    with pytest.raises(ValueError, match=r"holds 2 spot\(s\); a correlation needs at least 3"):
        _match_spots(pred, truth, (np.array([[0.0, 0.0], [10.0, 0.0]]), None))


def test_ridge_on_too_few_spots_to_score_says_so(caplog):
    import warnings

    from histoexpr.tl._spot._spot_training import fit_ridge

    rng = np.random.default_rng(0)
    features, targets = [rng.normal(size=(3, 4))], [rng.normal(size=(3, 2))]
    with caplog.at_level(logging.WARNING, logger="histoexpr"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, record = fit_ridge(features, targets, alphas=(0.1, 1.0, 10.0), n_components=None)
    assert record["alpha"] == 1.0
    assert "No inner fold could score the ridge penalties (3 spots" in caplog.text


@bad_input("obscure error", "`hx.tl.cross_validate(sections, model='spot_regressor', genes=5)` "
           "(the number of genes named as in hx.tl.fit)",
           says="TypeError: cross_validate chooses the genes inside each fold: pass their number "
                "as n_genes=5 (before: options_for() got multiple values for keyword argument "
                "'genes')",
           fix="pass n_genes=5; genes= takes a fixed list of gene names")
def test_cross_validate_names_n_genes_and_takes_a_gene_list(two_sections):
    with pytest.raises(TypeError, match=r"pass their number as n_genes=5"):
        hx.tl.cross_validate(two_sections, model="spot_regressor", genes=5, image_key="img")
    genes = list(two_sections["a"].tables["table"].var_names[:2])
    frame = hx.tl.cross_validate(two_sections, model="spot_regressor", genes=genes,
                                 image_key="img", size_um=40, mpp=2.0)
    assert sorted(set(frame["gene"])) == sorted(genes)
    assert set(frame["section"]) == {"a", "b"}


@bad_input("obscure error", "`hx.tl.fit(sections, model='spot_regressor')` or `hx.pl.spots` on "
           "sections whose image is not called 'he' (e.g. read with image_key='img')",
           says="KeyError: ... has no sdata.images['he'] (it has ['dapi', 'img']) ... Pass "
                "image_key= — pl.spots also offers image_key=None to draw the spots alone",
           fix="pass image_key='img'")
def test_other_image_key_is_named_with_the_option(two_sections):
    section = two_sections["a"]
    with pytest.raises(KeyError, match=r"has no sdata.images\['he'\] \(it has \['dapi', "
                                       r"'img'\]\).*Pass image_key="):
        hx.tl.fit(section, model="spot_regressor", genes=2)
    with pytest.raises(KeyError, match=r"no image 'he' \(images: \['dapi', 'img'\]\). Pass "
                                       r"image_key="):
        hx.pl.spots(section, "spots")
    ax = hx.pl.spots(section, "spots", image_key="img")
    assert len(ax.get_images()) == 1


@bad_input("obscure error", "`hx.tl.evaluate` on a section with a spot that has no counts "
           "(a Visium or ST spot with total count 0)",
           says="log: 1 of N spots have no counts and are left out (before: ValueError: "
                "library_size must be positive)",
           fix="nothing: the spot has no expression to score")
def test_evaluate_leaves_out_spots_without_counts(two_sections, caplog):
    import scipy.sparse as sp

    train, test = two_sections["a"], two_sections["b"]
    genes = list(train.tables["table"].var_names[:3])
    model = hx.tl.fit(train, model="spot_regressor", genes=genes, image_key="img", size_um=40,
                      mpp=2.0)
    hx.pp.tile(test, "img", size_um=40, mpp=2.0, centres="spots", key_added="spot_tiles",
               min_tissue=0)
    hx.tl.predict(model, test, tiles_key="spot_tiles")
    table = test.tables["table"]
    zero = np.asarray(table.layers["counts"].sum(axis=1)).ravel() == 0
    if not zero.any():  # make one spot empty
        counts = sp.csr_matrix(table.layers["counts"]).tolil()
        counts[0, :] = 0
        table.layers["counts"] = counts.tocsr()
        table.X = table.layers["counts"].copy()
        zero = np.asarray(table.layers["counts"].sum(axis=1)).ravel() == 0
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        scores = hx.tl.evaluate(test, "spot_tiles_expression", "table")
    assert f"{int(zero.sum())} of {table.n_obs} spots have no counts" in caplog.text
    test.tables["table"] = table[~zero].copy()
    expected = hx.tl.evaluate(test, "spot_tiles_expression", "table")
    pd.testing.assert_frame_equal(scores, expected)
    assert np.isfinite(scores["pearson"]).all()
