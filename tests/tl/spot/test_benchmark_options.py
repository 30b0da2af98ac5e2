"""hx.tl.benchmark checks its options before any work."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import pytest
from _catalogue import bad_input

import histoexpr as hx


@pytest.fixture(scope="module")
def pair():
    return {name: hx.datasets.synthetic_section(seed=seed, size_um=200, spot_pitch_um=40,
                                                spot_diameter_um=35)
            for seed, name in enumerate("ab")}


@bad_input("silently wrong", "`hx.tl.benchmark(..., peer='no')` (a string from a "
           "configuration file or a command line): true in Python, so the peer was measured",
           says="TypeError: peer must be True or False, got 'no' (str); pass peer=True or "
                "peer=False",
           fix="pass True or False")
def test_benchmark_checks_its_options_before_any_work(pair, monkeypatch):
    import histoexpr.tl._spot._benchmark as benchmark

    def tiled_copies(*args, **kwargs):
        raise AssertionError("the sections were tiled")

    monkeypatch.setattr(benchmark, "_tiled_copies", tiled_copies)
    quick = {"encoders": ["handcrafted"], "heads": ["ridge"], "n_genes": 4, "size_um": 40.0,
             "mpp": 1.0, "peer": False}
    before = {name: sorted(s.shapes) for name, s in pair.items()}
    for peer in ("no", "False", 0, None):
        with pytest.raises(TypeError, match=f"peer must be True or False, got {peer!r}"):
            hx.tl.benchmark(pair, **{**quick, "peer": peer})
    for option, value, error, says in (
            ("n_genes", "8", TypeError, "n_genes must be an integer"),
            ("n_genes", 0, ValueError, r"n_genes must be an integer in \[1, inf\]"),
            ("size_um", "40", TypeError, "size_um must be a positive number in um"),
            ("mpp", 0.0, ValueError, "mpp must be a positive number"),
            ("seed", 1.5, TypeError, "seed must be an integer"),
            ("gene_flavor", "best", ValueError, "flavor must be one of 'top_expressed'")):
        with pytest.raises(error, match=says):
            hx.tl.benchmark(pair, **{**quick, option: value})
    with pytest.raises(AssertionError, match="the sections were tiled"):  # valid: it goes on
        hx.tl.benchmark(pair, **quick)
    assert {name: sorted(s.shapes) for name, s in pair.items()} == before
