"""hx.tl.probe on sparse features: the dense result, its memory estimated first."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _catalogue import bad_input
from conftest import dense_calls

import histoexpr as hx


def probe_inputs(n: int = 120, p: int = 30):
    rng = np.random.default_rng(0)
    features = sp.random(n, p, density=0.2, format="csr", random_state=0, dtype=np.float32)
    features.data[:2] = [np.nan, np.inf]  # one row left out
    target = rng.normal(size=n)
    target[5] = np.nan
    return features, target, np.repeat(list("abcd"), n // 4), rng.integers(0, 3, n)


def test_probe_of_sparse_features_equals_the_dense_probe(monkeypatch):
    features, target, groups, classes = probe_inputs()
    dense = features.toarray()
    expected = [hx.tl.probe(dense, target), hx.tl.probe(dense, classes, groups=groups),
                hx.tl.probe(dense, target, groups=groups, standardise="group")]
    calls = dense_calls(monkeypatch)
    table = ad.AnnData(X=np.zeros((features.shape[0], 1), dtype=np.float32),
                       obsm={"X_sparse": features})
    got = [hx.tl.probe(ad.AnnData(X=features), target),
           hx.tl.probe(table, classes, groups=groups, features_key="X_sparse"),
           hx.tl.probe(features, target, groups=groups, standardise="group")]
    for one, other in zip(expected, got, strict=True):
        pd.testing.assert_frame_equal(one, other, check_exact=True)
    # densified once per call, in float64, after the rows with missing values were dropped
    n, p = features.shape
    assert calls == [(n - 2, p), (n - 1, p), (n - 2, p)], calls
    assert features.dtype == np.float32  # the input is left as it was
    assert np.isnan(features.data[0])


@bad_input("obscure error", "`hx.tl.probe` of a large sparse feature matrix (an AnnData's X or "
           "obsm): densified whole, in float32 then float64, without a memory estimate",
           says="MemoryError: Probing 120 observations x 30 features (dense float64 features "
                "and their standardised copies per fold) would allocate ..., more than the "
                "... allowed ... Probe fewer features",
           fix="probe fewer features (e.g. a PCA of them) or a sample of the observations")
def test_probe_estimates_its_memory_before_densifying(monkeypatch):
    features, target, _, _ = probe_inputs()
    dense = features.toarray()
    calls = dense_calls(monkeypatch)
    hx.settings.max_memory = 10_000  # bytes
    with pytest.raises(MemoryError, match="Probing 120 observations x 30 features"):
        hx.tl.probe(ad.AnnData(X=features), target)
    with pytest.raises(MemoryError, match="Probing 120 observations x 30 features"):
        hx.tl.probe(dense, target)
    assert calls == []  # refused before anything was densified
