"""Interpretable MIL: contribution maps, per-gene attention, the attention check, classification."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx

GENES = ["EPCAM", "COL1A1", "PTPRC"]  # markers of tumour, stroma and lymphocyte regions
FAST = {"epochs": 40, "val_fraction": 0, "seed": 0, "batch_size": 8}


@pytest.fixture(scope="module")
def sections():
    """Three synthetic spot sections; overlapping bags ``bags`` and a partition ``blocks``."""
    torch.set_num_threads(1)
    sections = {}
    for seed in range(3):
        sdata = hx.datasets.synthetic_section(seed=seed, size_um=600, transcripts=True,
                                              spots=True)
        hx.pp.tile(sdata, "he", size_um=100, mpp=2.0, centres="spots", min_tissue=0.0)
        hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
        hx.pp.pseudobulk(sdata, "he_tiles", size_um=300, stride_um=100, min_spots=3)
        hx.pp.pseudobulk(sdata, "he_tiles", size_um=300, min_spots=1, key_added="blocks")
        sections[f"s{seed}"] = sdata
    return sections


def test_contributions_sum_to_the_bag_prediction(sections):
    train = {k: sections[k] for k in ("s0", "s1")}
    held_out = {"s2": sections["s2"]}
    network = hx.tl.fit(train, model="abmil", genes=GENES, bags_key="blocks",
                        **{**FAST, "epochs": 5})
    predicted = hx.tl.predict(network, held_out, key_added="blocks_mil")
    tiles = sections["s2"].tables["he_tiles_table"]
    contribution = tiles.obsm["blocks_mil_contribution"][GENES].to_numpy()
    attention = tiles.obsm["blocks_mil_attention"]["attention"].to_numpy()
    own = tiles.obsm["blocks_mil"][GENES].to_numpy()
    membership = sections["s2"].tables["blocks_table"].obsm["tiles"].toarray() > 0
    assert (membership.sum(axis=0) <= 1).all() and membership.shape[0] >= 3  # a partition
    for i, rows in enumerate(membership):
        # a tile's share is its attention within the bag times its own output ...
        weights = attention[rows] / attention[rows].sum()
        np.testing.assert_allclose(contribution[rows] / rows.sum(), weights[:, None] * own[rows],
                                   rtol=1e-5, atol=1e-7)
        # ... and the shares sum to the bag's prediction
        np.testing.assert_allclose((contribution[rows] / rows.sum()).sum(axis=0),
                                   predicted.X[i], rtol=1e-4)
    # with uniform attention (the mean-pool baseline) the map is the tile's own output
    ridge = hx.tl.fit(train, model="meanpool_ridge", genes=GENES)
    hx.tl.predict(ridge, held_out, key_added="ridge_map")
    np.testing.assert_allclose(tiles.obsm["ridge_map_contribution"].to_numpy(),
                               tiles.obsm["ridge_map"].to_numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # two or three cross-validations (10-20 s on an idle 2-core machine)
def test_per_gene_attention_tracks_its_gene_and_the_check_runs_by_default(sections):
    # the attention itself, so without the penalty that keeps it even (the default 10)
    options = {**FAST, "hidden": 16, "attention_entropy": 0.0}
    shared = hx.tl.cross_validate(sections, model="abmil", genes=GENES, key_added="shared",
                                  **options)
    per_gene = hx.tl.cross_validate(sections, model="abmil", genes=GENES, per_gene=True,
                                    key_added="per_gene", **options)
    # the check ran by default on the held-out sections (their tiles sit on measured spots)
    check_shared, check = shared.uns["attention_check"], per_gene.uns["attention_check"]
    assert len(check) == 3 * len(GENES) and set(check["fold"]) == {0, 1, 2}
    by_gene = check.groupby("gene")[["attention_spearman", "contribution_spearman"]].mean()
    # EPCAM's branch attends to the tumour tiles whose spots express it
    assert by_gene.loc["EPCAM", "attention_spearman"] > 0.4, by_gene
    assert by_gene.loc["EPCAM", "contribution_spearman"] > 0.4, by_gene
    # one branch per gene tracks expression better than the single shared attention
    assert (check["attention_spearman"].mean()
            > check_shared["attention_spearman"].mean() + 0.1), (check, check_shared)
    no_check = hx.tl.cross_validate(sections, model="meanpool_ridge", genes=GENES,
                                    key_added="ridge_cv", check_attention=False)
    assert "attention_check" not in no_check.uns


@pytest.mark.slow  # two or three cross-validations (10-20 s on an idle 2-core machine)
def test_classification_head_beats_chance_on_held_out_bags(sections):
    # up / down labels of a driver gene and a marker score, split at the training bags' median
    genes = {"deg_EPCAM": ["EPCAM"], "lymphoid": ["PTPRC", "CD3E"]}
    result = hx.tl.cross_validate(sections, model="abmil", task="classification", genes=genes,
                                  labels="median", key_added="cls", **FAST)
    baseline = hx.tl.cross_validate(sections, model="meanpool_logistic", task="classification",
                                    genes=genes, labels="median", key_added="cls_lr")
    assert list(result.var_names) == ["deg_EPCAM:down", "deg_EPCAM:up", "lymphoid:down",
                                      "lymphoid:up"]
    scores = result.uns["scores"].groupby("target")[["auc", "balanced_accuracy"]].mean()
    assert scores["auc"].min() > 0.75 and scores["balanced_accuracy"].min() > 0.6, scores
    lr = baseline.uns["scores"].groupby("target")["auc"].mean()
    assert lr.min() > 0.6, lr  # the baseline learns too: the labels carry signal
    # held-out labels come from the training thresholds, stored with the model
    network = hx.tl.fit({k: sections[k] for k in ("s0", "s1")}, model="abmil",
                        task="classification", genes=["EPCAM"], labels="median",
                        **{**FAST, "epochs": 2})
    rule = network.metadata["label_rule"]["deg_EPCAM"]
    bags = hx.tl.predict(network, {"s2": sections["s2"]}, key_added="cls_one")
    assert set(bags.obs["deg_EPCAM"].astype(str)) <= {"down", "up"}
    assert np.isfinite(rule["threshold"]) and rule["genes"] == ["EPCAM"]


@bad_input("silently wrong", "`hx.tl.fit(..., model='abmil', labels='median')` for regression "
           "or with `target=`", says="ValueError: labels='median' makes classification labels "
           "from genes=", fix="pass task='classification' and genes= (no target=)")
def test_median_labels_need_classification(sections):
    train = {k: sections[k] for k in ("s0", "s1")}
    with pytest.raises(ValueError, match="labels='median'"):
        hx.tl.fit(train, model="abmil", genes=["EPCAM"], labels="median")
    with pytest.raises(ValueError, match="labels='median'"):
        hx.tl.fit(train, model="abmil", task="classification", target="x", labels="median")
    with pytest.raises(ValueError, match="regression baseline"):
        hx.tl.fit(train, model="meanpool_logistic", task="regression", genes=["EPCAM"])


@bad_input("silently wrong", "`hx.pl.attention` of a map that does not follow the expression "
           "under the tiles", says="warning: This map does not track expression (Spearman ...)",
           fix="draw show='contribution' of a model trained with attention_entropy (e.g. 10) or "
               "per_gene=True; check hx.tl.attention_check")
def test_attention_plot_warns_on_a_map_that_does_not_track(sections, caplog):
    sdata = sections["s2"]
    tiles = sdata.tables["he_tiles_table"]
    spots = sdata.tables["table"]
    rows = [list(spots.obs["spot_id"]).index(s) for s in tiles.obs["spot_id"]]
    truth = hx.pp.expression_targets(spots[rows], ["EPCAM"])[:, 0]
    import pandas as pd

    for key, values in {"good": truth, "bad": -truth}.items():
        tiles.obsm[key] = pd.DataFrame({"EPCAM": values}, index=tiles.obs_names)
        tiles.obsm[f"{key}_attention"] = pd.DataFrame({"EPCAM": values},
                                                      index=tiles.obs_names)
        tiles.obs[f"{key}_attention"] = values
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        ax = hx.pl.attention(sdata, "he_tiles", pred_key="good", gene="EPCAM", show="attention")
        assert "does not track" not in caplog.text and "Spearman 1.00" in ax.get_title()
        ax = hx.pl.attention(sdata, "he_tiles", pred_key="bad", gene="EPCAM", show="attention")
    assert "does not track expression" in caplog.text and "-1.00" in ax.get_title()
    with pytest.raises(ValueError, match="show must be"):
        hx.pl.attention(sdata, "he_tiles", pred_key="good", show="nope")
    plt.close("all")


def test_attention_entropy_keeps_the_contribution_map_on_the_expression(sections):
    # on pseudo-bulk bags the bag's expression is the mean of its spots: with the entropy
    # penalty the per-gene attention stops piling onto a few tiles, so the contribution map
    # (attention x tile output) follows the spots under the tiles better, and the held-out bags
    # are predicted as well as without it
    train = {k: sections[k] for k in ("s0", "s1")}
    held_out = {"s2": sections["s2"]}
    options = {**FAST, "epochs": 30, "per_gene": True, "hidden": 16}
    pearson, contribution = {}, {}
    for weight in (0.0, 1.0):
        network = hx.tl.fit(train, model="abmil", genes=GENES, attention_entropy=weight,
                            **options)
        assert network.metadata["options"]["attention_entropy"] == weight
        key = f"entropy_{weight:g}"
        predicted = hx.tl.predict(network, held_out, key_added=key)
        measured = predicted.layers["measured"]
        pearson[weight] = np.mean([np.corrcoef(predicted.X[:, j], measured[:, j])[0, 1]
                                   for j in range(len(GENES))])
        check = hx.tl.attention_check(held_out, pred_key=key)
        contribution[weight] = check["contribution_spearman"].mean()
    assert contribution[1.0] > contribution[0.0] + 0.05, contribution
    assert pearson[1.0] > 0.7 and pearson[1.0] > pearson[0.0] - 0.05, pearson
    with pytest.raises(ValueError, match="attention_entropy must be a non-negative number"):
        hx.tl.ABMILOptions(attention_entropy=-1.0)
