"""Attention MIL: it learns slide-level expression and labels, and its attention is well formed."""

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
from histoexpr.tl._metrics._expression_metrics import column_pearson

GENES = ["EPCAM", "KRT8", "COL1A1", "PTPRC", "CD3E", "CDH1"]
FAST = {"epochs": 40, "val_fraction": 0, "seed": 0, "batch_size": 2}


@pytest.fixture(scope="module")
def cohort():
    cohort = hx.datasets.synthetic_cohort(20, seed=0, size_um=300)
    for sdata in cohort.values():
        hx.pp.tile(sdata, "he", size_px=32, mpp=2.0, min_tissue=0.5)
        hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
    cohort.bulk.obs["patient"] = [f"p{i // 2}" for i in range(20)]  # two slides per patient
    return cohort


@pytest.fixture(scope="module")
def sections():
    sections = {}
    for seed in range(3):
        sdata = hx.datasets.synthetic_section(seed=seed, size_um=600, transcripts=True,
                                              spots=True)
        hx.pp.tile(sdata, "he", size_um=100, mpp=2.0, centres="spots", min_tissue=0.0)
        hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
        hx.pp.pseudobulk(sdata, "he_tiles", size_um=300, stride_um=100, min_spots=3)
        sections[f"s{seed}"] = sdata
    return sections


def test_regression_learns_held_out_patients(cohort):
    result = hx.tl.cross_validate(cohort, model="abmil", genes=GENES, groups="patient",
                                       n_folds=3, key_added="cv_mil", **FAST)
    assert result.shape == (20, len(GENES)) and list(result.var_names) == GENES
    measured = result.layers["measured"]
    pearson = column_pearson(result.X, measured)
    # tumour markers follow the most visible morphology; every gene is learnt to some degree
    assert pearson[:2].min() > 0.8 and pearson.min() > 0.3, pearson
    r2 = 1 - ((result.X - measured) ** 2).sum(0) / ((measured - measured.mean(0)) ** 2).sum(0)
    assert r2[:2].min() > 0.5, r2


def test_per_gene_models_are_independent_and_learn(cohort):
    result = hx.tl.cross_validate(cohort, model="abmil", genes=GENES[:3], per_gene=True,
                                       hidden=16, groups="patient", n_folds=3,
                                       key_added="per_gene", **FAST)
    assert column_pearson(result.X, result.layers["measured"])[:2].min() > 0.75
    table = cohort[cohort.ids[0]].tables["he_tiles_table"]
    assert list(table.obsm["per_gene_attention"].columns) == GENES[:3]
    # the loss of one gene moves only that gene's branch
    network = hx.models.AttentionMIL(in_features=23, n_outputs=3, hidden=16, n_branches=3)
    x = torch.randn(2, 7, network.in_features)
    network.zero_grad()
    network(x)[:, 0].sum().backward()
    grads = network.head.weight.grad.reshape(3, -1)
    assert grads[0].abs().sum() > 0 and grads[1:].abs().sum() == 0


def test_classification_of_diagnosis_on_held_out_patients(cohort):
    result = hx.tl.cross_validate(cohort, model="abmil", task="classification",
                                       target="diagnosis", groups="patient", n_folds=3,
                                       key_added="cv_class", **FAST)
    truth = cohort.bulk.obs.loc[result.obs_names, "diagnosis"]
    accuracy = (result.obs["diagnosis_pred"].astype(str) == truth.astype(str)).mean()
    majority = truth.value_counts(normalize=True).max()
    assert accuracy >= 0.75 and accuracy > majority + 0.15, (accuracy, majority)
    np.testing.assert_allclose(np.asarray(result.X).sum(axis=1), 1, rtol=1e-5)


def test_classification_of_deg_labels(cohort):
    hx.pp.deg_labels(cohort.bulk, ["EPCAM"], lower=0.5, upper=0.5, overwrite=True)
    result = hx.tl.cross_validate(cohort, model="abmil", task="classification",
                                       genes=["EPCAM"], groups="patient", n_folds=3,
                                       key_added="cv_deg", **FAST)
    assert list(result.var_names) == ["deg_EPCAM:down", "deg_EPCAM:up"]
    truth = cohort.bulk.obs.loc[result.obs_names, "deg_EPCAM"].astype(str)
    assert (result.obs["deg_EPCAM_pred"].astype(str) == truth).mean() >= 0.75


def test_attention_is_a_distribution_over_real_tiles():
    torch.manual_seed(0)
    network = hx.models.AttentionMIL(in_features=5, n_outputs=4, hidden=8, n_branches=2)
    x = torch.randn(3, 10, 5)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    output, attention, tiles = network.eval()(x, mask, return_att=True)
    assert output.shape == (3, 4) and attention.shape == (3, 10, 2) and tiles.shape == (3, 10, 4)
    np.testing.assert_allclose(attention.sum(dim=1).detach(), 1, rtol=1e-6)
    assert (attention[1, 6:] == 0).all()
    # padding changes nothing; the output is the attention-weighted mean of tile outputs
    alone = network(x[1, :6])
    torch.testing.assert_close(alone, output[1])
    weights = attention.repeat_interleave(2, dim=-1)
    torch.testing.assert_close((weights * tiles).sum(1), output)
    with pytest.raises(ValueError, match="features per tile"):
        network(torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="multiple"):
        hx.models.AttentionMIL(in_features=5, n_outputs=3, n_branches=2)


def test_predict_writes_tile_outputs_that_average_to_the_bag(sections, tmp_path):
    network = hx.tl.fit({"s0": sections["s0"], "s1": sections["s1"]}, model="abmil",
                        genes=GENES, **{**FAST, "batch_size": 8})
    path = hx.io.save_model(network, tmp_path / "abmil.pt")
    network = hx.io.load_model(path)
    assert isinstance(network, hx.models.AttentionMIL)
    assert network.metadata["genes"] == GENES and network.metadata["encoder"] == "handcrafted"
    held_out = {"s2": sections["s2"]}
    predicted = hx.tl.predict(network, held_out, key_added="mil")
    tiles = sections["s2"].tables["he_tiles_table"]
    attention = tiles.obsm["mil_attention"]["attention"].to_numpy()
    assert np.isclose(attention.sum(), 1) and (attention > 0).all()
    membership = sections["s2"].tables["bags_table"].obsm["tiles"].toarray() > 0
    per_tile = tiles.obsm["mil"][GENES].to_numpy()
    for i in (0, len(membership) // 2):
        weights = attention[membership[i]] / attention[membership[i]].sum()
        np.testing.assert_allclose(weights @ per_tile[membership[i]], predicted.X[i], rtol=1e-4)
    with pytest.raises(KeyError, match="overwrite"):
        hx.tl.predict(network, held_out, key_added="mil")


def test_folds_never_split_a_patient(cohort):
    result = hx.tl.cross_validate(cohort, model="meanpool_ridge", genes=GENES,
                                       groups="patient", n_folds=3, key_added="cv_ridge")
    assert sorted(result.obs_names) == sorted(cohort.ids)  # every slide predicted once
    folds_of_patient = result.obs.groupby("group", observed=True)["fold"].nunique()
    assert (folds_of_patient == 1).all()
    assert result.obs["fold"].nunique() == 3
    scores = result.uns["scores"]
    assert set(scores["fold"]) == {0, 1, 2} and set(scores["gene"]) == set(GENES)
    with pytest.raises(KeyError, match="groups"):
        hx.tl.cross_validate(cohort, model="meanpool_ridge", genes=GENES, groups="nope")


def test_attention_check_scores_held_out_tiles(sections):
    result = hx.tl.cross_validate(sections, model="abmil", genes=GENES, key_added="cv",
                                       **{**FAST, "batch_size": 8})
    assert set(result.obs["section"]) == set(sections)
    assert result.uns["scores"].groupby("fold")["pearson"].mean().min() > 0.4
    check = hx.tl.attention_check(sections, pred_key="cv")
    assert len(check) == 3 * len(GENES)
    # per-tile predictions of a bag-level model find the expression of single spots
    assert check["tile_spearman"].mean() > 0.4
    with pytest.raises(KeyError, match="predict"):
        hx.tl.attention_check(sections, pred_key="absent")


def test_bad_input_is_refused_or_logged(cohort, caplog):
    train = cohort.subset(cohort.ids[:6])
    with pytest.raises(KeyError, match="not in the bulk expression"):
        hx.tl.fit(train, model="abmil", genes=["EPCAM", "NOT_A_GENE"])
    with pytest.raises(KeyError, match="no tile table"):
        hx.tl.fit(train, model="abmil", genes=GENES, tiles_key="nope")
    with pytest.raises(KeyError, match="lacks obsm"):
        hx.tl.fit(train, model="abmil", genes=GENES, features_key="X_absent")
    with pytest.raises(TypeError, match="Cohort"):
        hx.tl.fit([1, 2], model="abmil", genes=GENES)
    bulk = train.bulk.copy()
    bulk.X[0, 0] = np.nan
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        network = hx.tl.fit(hx.io.Cohort(train.slides, bulk), model="meanpool_ridge",
                            genes=GENES, target_transform="log1p")
    assert "Left out 1 of 6 bags" in caplog.text and network.metadata["n_train_bags"] == 5
    network = hx.tl.fit(train, model="meanpool_ridge", genes=GENES)
    network.metadata["n_features"] = 7
    with pytest.raises(ValueError, match="same encoder"):
        hx.tl.predict(network, train, key_added="bad")


def test_attention_plot_follows_the_values(sections):
    sdata = sections["s2"]
    tiles = sdata.tables["he_tiles_table"]
    tiles.obs["fixed_attention"] = np.linspace(0, 1, tiles.n_obs)
    ax = hx.pl.attention(sdata, "he_tiles", pred_key="fixed")
    collection = ax.collections[0]
    shapes_order = tiles.obs.set_index("tile_id")["fixed_attention"].reindex(
        sdata.shapes["he_tiles"].index)
    np.testing.assert_allclose(collection.get_array(), shapes_order.to_numpy())
    ax.figure.canvas.draw()
    top = collection.get_facecolors()[int(np.argmax(shapes_order.to_numpy()))]
    assert np.allclose(top[:3], plt.get_cmap("magma")(1.0)[:3], atol=0.01)
    plt.close("all")


def test_top_tiles_show_the_most_attended_tiles(sections):
    held_out = {"s2": sections["s2"]}
    network = hx.tl.fit({k: sections[k] for k in ("s0", "s1")}, model="abmil", genes=GENES,
                        **{**FAST, "batch_size": 8, "epochs": 10})
    predicted = hx.tl.predict(network, held_out, key_added="top", overwrite=True)
    fig = hx.pl.top_tiles(held_out, predicted, gene="EPCAM", pred_key="top", n_bins=2, n_tiles=3)
    axes = np.array(fig.axes).reshape(2, 3)
    assert all(len(ax.images) == 1 for ax in axes.ravel())
    # the first tile of each row is the one with the highest within-bag attention of its bin
    titles = np.array([[float(ax.get_title()) for ax in row] for row in axes])
    assert (np.diff(titles, axis=1) <= 1e-9).all()
    plt.close("all")


def test_bag_tiles_lists_the_tiles_of_every_bag(sections):
    members = hx.tl.bag_tiles({"s2": sections["s2"]})
    bags = sections["s2"].tables["bags_table"] if "bags_table" in sections["s2"].tables else None
    assert list(members.columns) == ["bag", "section", "tile"]
    assert (members["section"] == "s2").all()
    n_tiles = sections["s2"].tables["he_tiles_table"].n_obs
    assert members["tile"].between(0, n_tiles - 1).all()
    assert not members.duplicated().any()
    if bags is not None:
        assert set(members["bag"]) <= {f"s2/{name}" for name in bags.obs_names}
    # one section without a name is section_0, as for every tl step
    assert (hx.tl.bag_tiles(sections["s2"])["section"] == "section_0").all()


@bad_input(
    "silently wrong",
    "`hx.tl.fit(cohort, model='abmil')` on tile features of an image replaced or edited since "
    "`hx.tl.embed` made them",
    says="ValueError: Section ... the tile features ... were made from other pixels than "
    "sdata.images['he'] holds now ... so they are not used",
    fix="embed the tiles again with `overwrite=True`",
)
def test_features_of_an_image_replaced_since_are_refused_before_training():
    """embed records the image's fingerprint; MIL refuses features of pixels since replaced."""
    from spatialdata.models import Image2DModel

    from histoexpr._core.image_facts import image_fingerprint

    cohort = hx.datasets.synthetic_cohort(4, seed=1, size_um=200)
    for sdata in cohort.values():
        hx.pp.tile(sdata, "he", size_px=32, mpp=2.0, min_tissue=0.5)
        hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
    first = next(iter(cohort.values()))
    record = first.tables["he_tiles_table"].uns["embeddings"]["X_handcrafted"]
    assert len(record["image_fingerprint"]) == 16
    image = first.images["he"]
    level = image["scale0"]["image"] if hasattr(image, "children") else image
    data = np.asarray(level.values)
    first.images["he"] = Image2DModel.parse(  # the same slide, its pixels edited since
        (255 - data).astype(data.dtype), dims=("c", "y", "x"),
        c_coords=list(level.coords["c"].values), transformations=dict(level.attrs["transform"]))
    with pytest.raises(ValueError, match=r"made from other pixels.*overwrite=True"):
        hx.tl.fit(cohort, model="abmil", genes=GENES[:2], **{**FAST, "epochs": 1})
    hx.tl.embed(first, "he_tiles", encoder="handcrafted", overwrite=True)  # the fix it names
    remade = first.tables["he_tiles_table"].uns["embeddings"]["X_handcrafted"]
    assert remade["image_fingerprint"] == image_fingerprint(first, "he")
    assert remade["image_fingerprint"] != record["image_fingerprint"]
    model = hx.tl.fit(cohort, model="abmil", genes=GENES[:2], **{**FAST, "epochs": 1})
    assert model.metadata["features_made"]["encoder"] == "handcrafted"
