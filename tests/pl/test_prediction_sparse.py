"""hx.pl.prediction densifies only the genes it draws."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import dense_calls

import histoexpr as hx


def drawn(figure) -> list:
    """What a figure shows: each collection's values and positions, titles and limits."""
    out = []
    for ax in figure.axes:
        for collection in ax.collections:
            values = collection.get_array()
            out.append(None if values is None
                       else np.ma.filled(np.asarray(values, dtype=float), np.nan))
            out.append(np.asarray(collection.get_offsets(), dtype=float))
        out += [ax.get_title(), (*ax.get_xlim(), *ax.get_ylim())]
    plt.close(figure)
    return out


def assert_same_figure(first, second) -> None:
    a, b = drawn(first), drawn(second)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y


@pytest.fixture(scope="module")
def predicted():
    """A section, the prediction table of 3 genes hx.tl.predict wrote into it, with intervals."""
    train, test = (hx.datasets.synthetic_section(seed=seed, size_um=300, spot_pitch_um=40,
                                                 spot_diameter_um=35) for seed in (0, 1))
    model = hx.tl.fit({"train": train}, model="spot_regressor", genes=["EPCAM", "KRT8", "PTPRC"],
                      size_um=40, mpp=1.0, route="ridge")
    table = hx.tl.predict(model, test, key_added="pred")
    rng = np.random.default_rng(0)
    table.layers["lower"] = table.X - rng.uniform(0, 1, table.X.shape).astype(np.float32)
    table.layers["upper"] = table.X + rng.uniform(0, 1, table.X.shape).astype(np.float32)
    return test, table


def sparse_copy(table: ad.AnnData) -> ad.AnnData:
    out = table.copy()
    out.X = sp.csr_matrix(table.X)
    for key in list(out.layers):
        out.layers[key] = sp.csr_matrix(table.layers[key])
    return out


def test_prediction_maps_densify_only_the_genes_drawn(predicted, monkeypatch):
    section, table = predicted
    sparse_table = sparse_copy(table)
    truth = section.tables["table"]
    dense = [hx.pl.prediction(table, "X", truth, genes="KRT8", interval=True),
             hx.pl.prediction(table, "upper", "lower", genes=["PTPRC", "EPCAM"]),
             hx.pl.prediction(section, "pred", "table", genes="EPCAM")]
    section.tables["pred"] = sparse_table
    calls = dense_calls(monkeypatch)
    try:
        drawn_sparse = [
            hx.pl.prediction(sparse_table, "X", truth, genes="KRT8", interval=True),
            hx.pl.prediction(sparse_table, "upper", "lower", genes=["PTPRC", "EPCAM"]),
            hx.pl.prediction(section, "pred", "table", genes="EPCAM")]
    finally:
        section.tables["pred"] = table
    for first, second in zip(dense, drawn_sparse, strict=True):
        assert_same_figure(first, second)
    assert calls and all(columns <= 2 for _, columns in calls), calls
    assert (table.n_obs, table.n_vars) not in calls


def test_prediction_scatters_densify_only_the_genes_drawn(predicted, monkeypatch):
    _, table = predicted
    plain = ad.AnnData(X=table.X.copy(), obs=pd.DataFrame(index=table.obs_names),
                       var=pd.DataFrame(index=table.var_names),
                       layers={"measured": table.layers["upper"].copy()})
    measured = ad.AnnData(X=table.layers["lower"][::-1].copy(),
                          obs=pd.DataFrame(index=table.obs_names[::-1]),
                          var=pd.DataFrame(index=table.var_names))
    dense = [hx.pl.prediction(plain, "X", "measured", genes="KRT8"),
             hx.pl.prediction(plain, "X", measured, genes=["PTPRC", "EPCAM"])]
    sparse_plain, sparse_measured = sparse_copy(plain), sparse_copy(measured)
    calls = dense_calls(monkeypatch)
    drawn_sparse = [hx.pl.prediction(sparse_plain, "X", "measured", genes="KRT8"),
                    hx.pl.prediction(sparse_plain, "X", sparse_measured,
                                     genes=["PTPRC", "EPCAM"])]
    for first, second in zip(dense, drawn_sparse, strict=True):
        assert_same_figure(first, second)
    assert calls and all(columns <= 2 for _, columns in calls), calls


def test_prediction_checks_every_interval_of_a_sparse_table(predicted, monkeypatch):
    _, table = predicted
    upper = table.layers["upper"].copy()
    upper[:, 2] = table.layers["lower"][:, 2] - 1.0  # a gene not drawn
    swapped = sparse_copy(table)
    swapped.layers["upper"] = sp.csr_matrix(upper)
    calls = dense_calls(monkeypatch)
    with pytest.raises(ValueError, match=rf"layers\['upper'\] below layers\['lower'\] in "
                                         rf"{table.n_obs} values"):
        hx.pl.prediction(swapped, "X", "lower", genes="EPCAM", interval=True)
    assert (table.n_obs, table.n_vars) not in calls
