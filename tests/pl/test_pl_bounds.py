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


@bad_input("obscure error", "`hx.pl.labels(sdata, 'cells')` on a segmentation (one label value "
           "per cell) that records no classes: its whole full-resolution level read into memory "
           "to list the values, then a legend of thousands of 'classes'",
           says="ValueError: sdata.labels['cells'] holds 1,600 label values and records no "
                "classes: a segmentation (one value per cell), not a class map. Pass "
                "classes={name: value} ...",
           fix="pass classes={name: value}, or draw a class map")
def test_labels_plot_lists_values_lazily_and_refuses_a_segmentation():
    import matplotlib

    matplotlib.use("Agg")
    import dask.array as da
    import matplotlib.pyplot as plt
    from spatialdata import SpatialData
    from spatialdata.models import Labels2DModel

    cells = np.arange(1, 1601, dtype=np.int32).reshape(40, 40).repeat(5, 0).repeat(5, 1)
    regions = (np.arange(200)[None, :] // 70).repeat(200, 0).astype(np.int32)  # values 0, 1, 2
    sdata = SpatialData(labels={
        "cells": Labels2DModel.parse(da.from_array(cells, chunks=50), dims=("y", "x")),
        "regions": Labels2DModel.parse(da.from_array(regions, chunks=50), dims=("y", "x"))})
    with pytest.raises(ValueError, match=r"holds 1,600 label values and records no classes: "
                                         r"a segmentation.*classes=\{name: value\}"):
        hx.pl.labels(sdata, "cells")
    axes = hx.pl.labels(sdata, "regions")  # a class map: its values found chunk by chunk
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["class 1", "class 2"]
    plt.close("all")


@bad_input("obscure error", "`hx.pl.tiles(sdata)` / `hx.pl.spots` of hundreds of thousands of "
           "tiles or spots (one matplotlib patch each, 3-4 kB: GiB for a million)",
           says="MemoryError: `Drawing 10,000 shapes of 'he_tiles' (one matplotlib patch each) "
                "would allocate ... Pass region=(x_min, y_min, x_max, y_max) in um to draw part "
                "of the section, or draw fewer shapes ...`, before a figure is made",
           fix="pass region= to draw part of the section, or draw fewer (larger) tiles")
def test_drawing_many_shapes_is_estimated_before_the_figure(disk_section):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hx.pp.tile(disk_section, size_px=4, min_tissue=0)  # 100 x 100 tiles of 2 um
    table = disk_section.tables["he_tiles_table"]
    before = plt.get_fignums()
    hx.settings.max_memory = "16 MiB"  # 10,000 patches of 4 kB and 5 vertices each: 40.2 MiB
    with pytest.raises(MemoryError, match=r"Drawing 10,000 shapes of 'he_tiles' \(one "
                                          r"matplotlib patch each\) would allocate 40\.2 MiB.*"
                                          r"region=\(x_min, y_min, x_max, y_max\)"):
        hx.pl.tiles(disk_section, "he_tiles", color="tissue_fraction")
    with pytest.raises(MemoryError, match=r"Drawing 10,000 shapes of the table"):
        hx.pl.tiles(table, color="tissue_fraction")
    assert plt.get_fignums() == before  # no figure made
    region = (0, 0, 50, 50)  # a quarter of the section's side: within the limit
    ax = hx.pl.tiles(disk_section, "he_tiles", color="tissue_fraction", region=region)
    drawn = ax.collections[-1]
    assert len(drawn.get_paths()) == len(disk_section.shapes["he_tiles"].cx[0:50, 0:50]) > 600
    plt.close(ax.figure)
