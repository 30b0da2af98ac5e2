"""hx.pl.prediction draws the predictions of a slide without measurements (H&E only)."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx

GENES = ["EPCAM", "KRT8", "PTPRC"]


@pytest.fixture(scope="module")
def he_only():
    """A section without its measured table, and the prediction table (with intervals) in it."""
    train, test = (hx.datasets.synthetic_section(seed=seed, size_um=300, spot_pitch_um=40,
                                                 spot_diameter_um=35) for seed in (0, 1))
    model = hx.tl.fit({"train": train}, model="spot_regressor", genes=GENES,
                      size_um=40, mpp=1.0, route="ridge")
    table = hx.tl.predict(model, test, key_added="pred")
    rng = np.random.default_rng(0)
    table.layers["lower"] = table.X - rng.uniform(0, 1, table.X.shape).astype(np.float32)
    table.layers["upper"] = table.X + rng.uniform(0, 2, table.X.shape).astype(np.float32)
    del test.tables["table"]
    return test, table


def panels(figure) -> dict[str, np.ndarray]:
    """The values of each titled map (``"EPCAM: predicted"``), and its colour limits."""
    out = {}
    for ax in figure.axes:
        if ax.get_title():
            collection = ax.collections[0]
            values = np.ma.filled(np.asarray(collection.get_array(), dtype=float), np.nan)
            out[ax.get_title()] = (values, collection.get_clim())
    plt.close(figure)
    return out


def on_shapes(section, table, values: np.ndarray) -> np.ndarray:
    """``values`` (one per row of ``table``) in the order of the shapes the table annotates."""
    attrs = table.uns["spatialdata_attrs"]
    region = attrs["region"][0] if isinstance(attrs["region"], list) else attrs["region"]
    index = table.obs[attrs["instance_key"]].to_numpy()
    return pd.Series(values, index=index).reindex(section.shapes[region].index).to_numpy(float)


@pytest.mark.parametrize("interval", [False, True])
@pytest.mark.parametrize("form", ["section", "table"])
def test_predictions_alone_are_the_table_values(he_only, form, interval):
    section, table = he_only
    genes = ["KRT8", "EPCAM"]
    if form == "section":
        figure = hx.pl.prediction(section, "pred", None, genes=genes, interval=interval)
    else:
        figure = hx.pl.prediction(table, "X", None, genes=genes, interval=interval)
    assert figure.get_size_inches()[1] == pytest.approx(3.5 * len(genes))  # a row per gene
    drawn = panels(figure)
    expected_titles = {f"{gene}: {what}" for gene in genes
                       for what in ("predicted", "interval width")[:1 + interval]}
    assert set(drawn) == expected_titles  # no measured map
    for gene in genes:
        column = list(table.var_names).index(gene)
        maps = {"predicted": table.X[:, column]}
        if interval:
            maps["interval width"] = (table.layers["upper"][:, column]
                                      - table.layers["lower"][:, column])
        for what, values in maps.items():
            expected = (on_shapes(section, table, values) if form == "section"
                        else np.asarray(values, dtype=float))
            shown, (low, high) = drawn[f"{gene}: {what}"]
            np.testing.assert_allclose(shown, expected, rtol=1e-6)
            assert (low, high) == pytest.approx((np.nanmin(expected), np.nanmax(expected)))


def test_defaults_are_the_first_four_predicted_genes(he_only):
    section, table = he_only
    drawn = panels(hx.pl.prediction(section, "pred", None))
    assert set(drawn) == {f"{gene}: predicted" for gene in list(table.var_names)[:4]}


@bad_input("obscure error", "`hx.pl.prediction(sdata, pred_key)` on an H&E-only slide (no "
           "measured table 'table', the default truth_key)",
           says="KeyError: sdata.tables has no element 'table' (truth_key, ... pass "
                "truth_key=None to draw the predictions alone; to compare, pass the key of the "
                "measured spot table",
           fix="pass truth_key=None, or the key of the measured table")
def test_missing_measured_table_names_truth_key_none(he_only):
    section, table = he_only
    with pytest.raises(KeyError, match="truth_key=None"):
        hx.pl.prediction(section, "pred", genes="EPCAM", interval=True)
    with pytest.raises(KeyError, match="truth_key=None"):  # a prediction table: no such layer
        hx.pl.prediction(table, "X", genes="EPCAM")


def test_scatters_refuse_no_measurements(he_only):
    _, table = he_only
    slides = ad.AnnData(X=table.X.copy(), obs=pd.DataFrame(index=table.obs_names),
                        var=pd.DataFrame(index=table.var_names))
    with pytest.raises(ValueError, match="scatters need the measurements"):
        hx.pl.prediction(slides, "X", None, genes="EPCAM")


def test_genes_not_predicted_are_named(he_only):
    section, table = he_only
    with pytest.raises(KeyError, match=r"\['CD3E'\] are not predicted"):
        hx.pl.prediction(section, "pred", None, genes=["EPCAM", "CD3E"])
    with pytest.raises(KeyError, match=r"\['CD3E'\] are not predicted"):
        hx.pl.prediction(table, "X", None, genes="CD3E")


def test_one_width_for_every_tile_is_drawn_as_one(he_only):
    # an H&E-only slide's intervals are as wide on every tile: the float32 bounds' rounding
    # (about 1e-7 of the values) must not be drawn as a map of differences
    _, table = he_only
    table = table.copy()
    table.X = np.asarray(table.X, dtype=np.float32).copy()
    table.X[:, :] = np.linspace(0.1, 7.3, table.n_obs, dtype=np.float32)[:, None]
    half = np.float32(1.24145)
    table.layers["lower"] = table.X - half
    table.layers["upper"] = table.X + half
    widths = table.layers["upper"] - table.layers["lower"]
    assert np.ptp(widths) > 0  # the rounding is there
    drawn = panels(hx.pl.prediction(table, "X", None, genes=["EPCAM"], interval=True))
    shown, _ = drawn["EPCAM: interval width"]
    assert np.ptp(shown) == 0 and shown[0] == pytest.approx(2 * 1.24145, rel=1e-6)
