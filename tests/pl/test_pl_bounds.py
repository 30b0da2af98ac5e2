"""Plots refuse values they cannot draw (all NaN) with a message, instead of an empty figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx


@bad_input("silently wrong", "`hx.pl.tiles(sdata, color=...)` / `hx.pl.gene_metrics` on values "
           "that are all NaN (an empty figure)",
           says="ValueError: `The values of 'score' to colour by are all NaN or infinite ...: the "
                "plot would show nothing`, before a figure is made",
           fix="check the column (a prediction that failed) or draw another")
def test_plots_of_all_nan_values_are_refused(disk_section):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hx.pp.detect_tissue(disk_section)
    hx.pp.tile(disk_section, size_px=32)
    table = disk_section.tables["he_tiles_table"]
    table.obs["score"] = np.nan
    before = plt.get_fignums()
    with pytest.raises(ValueError, match="all NaN or infinite"):
        hx.pl.tiles(disk_section, "he_tiles", color="score")
    with pytest.raises(ValueError, match="all NaN or infinite"):
        hx.pl.tiles(table, color="score")
    assert plt.get_fignums() == before
    metrics = pd.DataFrame({"pearson": [np.nan, np.nan]}, index=pd.Index(["A", "B"], name="gene"))
    with pytest.raises(ValueError, match="is NaN"):
        hx.pl.gene_metrics(metrics)
    table.obs["score"] = np.arange(table.n_obs, dtype=float)
    ax = hx.pl.tiles(disk_section, "he_tiles", color="score")
    plt.close(ax.figure)
