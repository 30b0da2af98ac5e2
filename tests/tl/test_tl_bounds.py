"""Bounded work in tl: hyper-parameters that are not finite numbers refused when the options are
made, the same section never scored by a model trained on its copy.
"""

from __future__ import annotations

import pytest
from _catalogue import bad_input

import histoexpr as hx


@pytest.mark.parametrize(("model", "options"), [
    ("meanpool_ridge", {"alphas": [float("nan")]}),
    ("spot_regressor", {"alphas": [1.0, float("inf")]}),
    ("spot_regressor", {"route": "auto", "candidates": {"lr": [1e-3, float("nan")]}}),
    ("abmil", {"dropout": float("nan")}),
    ("meanpool_logistic", {"Cs": [0.1, -1.0]}),
])
@bad_input("silently wrong", "hyper-parameters that are not finite numbers (`alphas=[nan]`, "
           "`candidates={'lr': [nan]}`, `dropout=nan`) or negative penalties",
           says="ValueError at options construction: `alphas[0]=nan is not a finite number`",
           fix="pass finite values (or leave the default)")
def test_hyper_parameters_must_be_finite_numbers(model, options, synthetic_cohort):
    from histoexpr.tl._models import options_of as options_for

    with pytest.raises(ValueError, match="finite|positive"):
        options_for(model, **options)
    with pytest.raises(ValueError, match="finite|positive"):
        hx.tl.fit(synthetic_cohort(2, seed=0, size_um=100), model=model, **options)


@bad_input("silently wrong", "`hx.tl.cross_validate` given the same section twice under two "
           "names (a fold trains on the copy of the section it scores: 0.335 instead of 0.182)",
           says="ValueError: `Sections 'a' and 'a_copy' hold the same image ... in different "
                "groups`, before any fold is trained",
           fix="drop one copy, or give both the same group (groups=)")
def test_cross_validate_refuses_a_section_and_its_copy():
    from test_tl_safety import PATCH, make_section

    a = make_section(0)
    copy = make_section(0)
    sections = {"a": a, "b": make_section(1), "a_copy": copy}
    with pytest.raises(ValueError, match="hold the same image"):
        hx.tl.cross_validate(sections, model="spot_regressor", n_genes=3,
                             gene_flavor="top_expressed", **PATCH)
    cohort = hx.datasets.synthetic_cohort(3, seed=0, size_um=100)
    twice = {"x": cohort["slide_00"], "y": cohort["slide_01"], "z": cohort["slide_00"]}
    with pytest.raises(ValueError, match="hold the same image"):
        hx.tl.cross_validate(twice, model="meanpool_ridge")


@bad_input("obscure error", "`hx.tl.cross_validate([section, section, section], ...)`: a list "
           "of sections, as `hx.tl.fit` takes (AttributeError: 'list' object has no attribute "
           "'items')",
           says="nothing: the sections are named section_0, section_1, ... as fit names them",
           fix="nothing to do")
def test_cross_validate_takes_a_list_of_sections():
    from test_tl_safety import PATCH, make_section

    sections = [make_section(seed) for seed in range(3)]
    frame = hx.tl.cross_validate(sections, model="spot_regressor",
                                 genes=["ERBB2", "COL1A1"], **PATCH)
    assert set(frame["section"]) == {"section_0", "section_1", "section_2"}
    # the rule is learnt: ERBB2 follows the purple share under a spot on held-out sections
    assert frame[frame["gene"] == "ERBB2"]["pearson"].mean() > 0.3
