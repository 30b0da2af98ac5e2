"""hx.tl.benchmark: nested leave-one-section-out of encoders x heads, per section and pooled."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input
from spatialdata import SpatialData

import histoexpr as hx

PATCH = {"size_um": 40.0, "mpp": 1.0}
QUICK = {"encoders": ["handcrafted"], "heads": ["ridge"], "n_genes": 8, "peer": False, **PATCH}


def trio() -> dict[str, SpatialData]:
    """Three small sections with dense spots (about 100 each) whose expression follows the H&E."""
    return {name: hx.datasets.synthetic_section(seed=seed, size_um=500, spot_pitch_um=40,
                                                spot_diameter_um=35)
            for seed, name in enumerate("abc")}


@pytest.fixture(scope="module")
def sections():
    return trio()


@pytest.fixture(scope="module")
def plain(sections):
    return hx.tl.benchmark(sections, **QUICK)


def with_table(sdata: SpatialData, table: ad.AnnData) -> SpatialData:
    return SpatialData(images=dict(sdata.images), labels=dict(sdata.labels),
                       shapes=dict(sdata.shapes), tables={"table": table})


def shuffled(sdata: SpatialData, seed: int = 0) -> SpatialData:
    """The section with its spots' counts permuted: the image no longer predicts them."""
    table = sdata.tables["table"].copy()
    order = np.random.default_rng(seed).permutation(table.n_obs)
    table.X = table.X[order]
    table.layers["counts"] = table.layers["counts"][order]
    return with_table(sdata, table)


def scaled_genes(sdata: SpatialData, factor: float) -> SpatialData:
    """The section with every other gene's counts multiplied: a section-wide offset of the
    normalised expression (up for those genes, down for the others), the pattern within the
    section unchanged."""
    table = sdata.tables["table"].copy()
    scale = np.where(np.arange(table.n_vars) % 2 == 0, factor, 1.0)
    counts = np.asarray(table.layers["counts"].toarray() if hasattr(table.layers["counts"],
                        "toarray") else table.layers["counts"], dtype=np.float64)
    table.layers["counts"] = np.round(counts * scale).astype(np.float32)
    table.X = table.layers["counts"].copy()
    return with_table(sdata, table)


def with_gene(sdata: SpatialData, name: str, counts: np.ndarray) -> SpatialData:
    """The section with one more gene measured in every spot."""
    table = sdata.tables["table"]
    extra = ad.AnnData(X=counts[:, None].astype(np.float32), obs=table.obs[[]],
                       var=pd.DataFrame(index=[name]),
                       layers={"counts": counts[:, None].astype(np.float32)})
    joined = ad.concat([table, extra], axis=1, merge="first", uns_merge="first")
    joined.obs = table.obs.copy()
    joined.uns = dict(table.uns)
    return with_table(sdata, joined)


def test_the_encoder_that_sees_the_signal_beats_a_blind_control(sections, plain):
    blind = hx.tl.benchmark({n: shuffled(s) for n, s in sections.items()}, **QUICK)
    seen = plain.table.set_index("encoder").loc["handcrafted"]
    control = blind.table.set_index("encoder").loc["handcrafted"]
    assert seen["pearson_per_section"] > 0.2
    assert seen["pearson_per_section"] > control["pearson_per_section"] + 0.15
    assert seen["pearson_pooled"] > control["pearson_pooled"]
    # every held-out section is scored alone, on its fold's 8 genes
    assert sorted(plain.sections["section"]) == ["a", "b", "c"]
    assert (plain.sections["n_genes"] == 8).all()
    per_section = plain.sections.groupby("section")["pearson"].mean()
    assert seen["pearson_per_section"] == pytest.approx(per_section.mean())
    assert seen["pearson_per_section_sd"] == pytest.approx(per_section.std(ddof=1))
    # pooled: one correlation per gene over all held-out spots, for the genes of every fold
    pooled = plain.genes[plain.genes["scope"] == "pooled"]
    assert len(pooled) == seen["n_genes_pooled"] > 0
    assert seen["pearson_pooled"] == pytest.approx(pooled["pearson"].mean())
    # each encoder's features were computed once per section and timed
    assert len(plain.timing) == 3 and (plain.timing["cpu_s"] >= 0).all()
    assert seen["fit_cpu_s"] > 0 and seen["features_cpu_s"] > 0


def test_a_section_offset_lowers_pooled_not_per_section_pearson(sections, plain):
    offset = dict(sections, c=scaled_genes(sections["c"], 6.0))
    moved = hx.tl.benchmark(offset, **QUICK)
    before = plain.table.iloc[0]
    after = moved.table.iloc[0]
    # within each section the pattern is the same, so the per-section score barely moves ...
    c_before = plain.sections.set_index("section").loc["c", "pearson"]
    c_after = moved.sections.set_index("section").loc["c", "pearson"]
    assert abs(c_after - c_before) < 0.05
    assert abs(after["pearson_per_section"] - before["pearson_per_section"]) < 0.05
    # ... but pooled over the sections, the offset nobody could predict from the image counts
    assert after["pearson_pooled"] < before["pearson_pooled"] - 0.1
    assert after["pearson_pooled"] < after["pearson_per_section"] - 0.1


def test_genes_are_chosen_on_the_training_sections_only(sections):
    n = {name: s.tables["table"].n_obs for name, s in sections.items()}
    marked = {name: with_gene(s, "ONLY_C", np.full(n[name], 2000.0 if name == "c" else 0.0))
              for name, s in sections.items()}
    result = hx.tl.benchmark(marked, **QUICK)
    scored = result.genes.groupby("scope")["gene"].apply(set)
    assert "ONLY_C" not in scored["c"]  # high only in the held-out section: never chosen for it
    assert "ONLY_C" in scored["a"] and "ONLY_C" in scored["b"]  # chosen where c trains
    assert "ONLY_C" not in scored["pooled"]  # not a gene of every fold


def test_peer_and_heads_are_rows_of_the_same_run(sections):
    result = hx.tl.benchmark(sections, encoders=["handcrafted"],
                             heads={"ridge": {}, "ridge, context": {"context_um": 80.0}},
                             n_genes=6, peer=True, **PATCH)
    table = result.table
    assert list(table["head"]) == ["ridge", "ridge, context", "peer: PCA (30) + ridge"]
    assert list(table["peer"]) == [False, False, True]
    assert set(result.timing["encoder"]) == {"handcrafted", "squidpy"}
    assert table["pearson_per_section"].notna().all() and table["pearson_pooled"].notna().all()
    # the sections given were not written to
    assert all("spot_tiles" not in s.shapes for s in sections.values())
    ax = hx.pl.benchmark(result)
    assert len(ax.get_yticklabels()) == 3
    assert ax.get_legend() is not None


@bad_input("obscure error", "`hx.tl.benchmark` given one section",
           says="ValueError: benchmark leaves sections out, so it needs at least two",
           fix="give every section of the data set (a dict of them by name)")
def test_one_section_is_refused(sections):
    with pytest.raises(ValueError, match="at least two"):
        hx.tl.benchmark({"a": sections["a"]}, **QUICK)


@bad_input("obscure error", "`hx.tl.benchmark(..., encoders=[...])` with an unknown encoder, or "
           "`'ssl'`",
           says="ValueError: Unknown encoder ... give 'handcrafted', 'squidpy', a combination",
           fix="name one of the encoders listed; for SSL pass a pretrained encoder's model file")
def test_unknown_encoder_is_refused_before_any_work(sections):
    with pytest.raises(ValueError, match="Unknown encoder 'resnet'"):
        hx.tl.benchmark(sections, **{**QUICK, "encoders": ["handcrafted", "resnet"]})
    with pytest.raises(ValueError, match="pretrained on the training sections inside each fold"):
        hx.tl.benchmark(sections, **{**QUICK, "encoders": ["ssl"]})
    assert all("spot_tiles" not in s.shapes for s in sections.values())


@bad_input("obscure error", "`hx.tl.benchmark(..., heads=[...])` with an unknown head, `'cnn'` "
           "or `'auto'`, or a head setting an option of the call",
           says="ValueError: Unknown head ... benchmark compares heads on frozen encoders",
           fix="use 'ridge' or 'mlp' (options in a mapping); measure 'cnn' and 'auto' with "
               "hx.tl.cross_validate")
def test_unknown_head_is_refused_before_any_work(sections):
    with pytest.raises(ValueError, match="Unknown head 'auto'"):
        hx.tl.benchmark(sections, **{**QUICK, "heads": ["ridge", "auto"]})
    with pytest.raises(ValueError, match="sets \\['size_um'\\]"):
        hx.tl.benchmark(sections, **{**QUICK, "heads": {"ridge": {"size_um": 10}}})


@bad_input("silently wrong", "`hx.tl.benchmark(..., groups={...})` that misses a section, names "
           "one not given, or puts all in one group",
           says="ValueError: groups does not match the sections: no group for ['c']",
           fix="give one group per section, keyed by the sections' names")
def test_groups_not_matching_the_sections_are_refused(sections):
    with pytest.raises(ValueError, match="no group for \\['c'\\]"):
        hx.tl.benchmark(sections, groups={"a": "p1", "b": "p2"}, **QUICK)
    with pytest.raises(ValueError, match="sections not given \\['d'\\]"):
        hx.tl.benchmark(sections, groups={"a": "p1", "b": "p2", "c": "p2", "d": "p3"}, **QUICK)
    with pytest.raises(ValueError, match="at least two groups"):
        hx.tl.benchmark(sections, groups=dict.fromkeys("abc", "p"), **QUICK)
