"""Bounded work in pp: tissue detection streams the image in blocks, grids and windows are
estimated before they are made, pixel sizes and centres are never assumed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx


@bad_input("obscure error", "`hx.pp.detect_tissue` on a large image without a pyramid (a "
           "200,000 px slide read whole at full resolution: 27.9 GiB)",
           says="nothing: the image is read in blocks at the working pixel size, memory stays at "
                "the result plus one block",
           fix="nothing to do (hx.settings.max_memory bounds the blocks)")
def test_detect_tissue_streams_an_image_without_pyramid():
    import tracemalloc

    from conftest import make_disk_section

    sdata = make_disk_section(2000, mpp=0.25)  # 0.5 x 0.5 mm, 12 MB, one level
    hx.settings.max_memory = 64 * 2**20
    tracemalloc.start()
    try:
        hx.pp.detect_tissue(sdata, mpp=8.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # whole, the level and its float32 copies for resampling took > 150 MB
    assert peak < 40 * 2**20, peak / 2**20
    tissue = np.asarray(sdata.labels["he_tissue"]) > 0
    assert abs(tissue.mean() - np.pi * 0.35**2) < 0.02  # the disk's area, 38 %


def test_block_reads_equal_whole_reads(monkeypatch):
    from conftest import make_disk_section

    from histoexpr._core import image as _image

    sdata = make_disk_section(1000, mpp=0.25)
    whole = hx.io.read_region(sdata, "he", (0, 0, 250, 250), mpp=8.0)
    monkeypatch.setattr(_image, "STREAM_BYTES", 8 * 2**20)
    blocks = hx.io.read_region(sdata, "he", (0, 0, 250, 250), mpp=8.0)
    assert whole.shape == blocks.shape == (3, 31, 31)
    assert np.abs(whole.astype(int) - blocks).max() <= 1


@bad_input("obscure error", "`hx.pp.detect_tissue(sdata, mpp=1e6)`: the whole image as one "
           "pixel (read at full resolution first)",
           says="ValueError: `mpp=1e+06 um/px would see the whole image ... as 1 x 1 pixels: "
                "tissue cannot be told from glass. Pass a finer mpp, at most ...`",
           fix="pass a finer mpp (the default is 8)")
def test_detect_tissue_refuses_a_pixel_size_coarser_than_the_image(disk_section):
    with pytest.raises(ValueError, match="as 1 x 1 pixels"):
        hx.pp.detect_tissue(disk_section, mpp=1e6)
    assert "he_tissue" not in disk_section.labels


@bad_input("obscure error", "`hx.pp.tile(sdata, stride_px=0.001)` or a grid of 175 million "
           "tiles (GiB to TiB allocated)",
           says="MemoryError: `A grid of 147,456,768,001 tiles (384,001 x 384,001) ... would "
                "allocate 137.3 TiB ...`, before anything is made",
           fix="pass a larger stride (the default is the tile size) or larger tiles")
def test_tile_grid_is_estimated_before_it_is_made(disk_section):
    hx.pp.detect_tissue(disk_section)
    before = set(disk_section.shapes) | set(disk_section.tables)
    with pytest.raises(MemoryError, match=r"A grid of 147,456,768,001 tiles.*larger stride"):
        hx.pp.tile(disk_section, size_px=16, stride_px=0.001)
    hx.settings.max_memory = "1 MiB"  # a grid within the limit of the machine, not of the user
    with pytest.raises(MemoryError, match="hx.settings.max_memory"):
        hx.pp.tile(disk_section, size_px=16, stride_px=1)
    assert set(disk_section.shapes) | set(disk_section.tables) == before


@bad_input("obscure error", "`hx.pp.transcript_labels(..., window_um=1e7)`: a window far wider "
           "than the section (hangs in the window filter); or a tiny `grid_um`",
           says="ValueError: `window_um=1e+07 is wider than twice the section ...`; MemoryError "
                "naming the grid for a tiny grid_um",
           fix="pass a window of a few cells (default 10 um), a larger grid_um")
def test_transcript_labels_bounds_the_window_and_the_grid():
    points = pd.DataFrame([(10.5, 30.5, "A")] * 4 + [(30.5, 30.5, "B")] * 4,
                          columns=["x", "y", "gene"])
    image = np.zeros((40, 40), dtype=np.uint8)
    image[:20, :20] = 200
    sdata = hx.io.read_transcripts(points, image=image, image_mpp=1.0)
    options = {"genes": ("A", "B"), "min_per_class": 1}
    with pytest.raises(ValueError, match="wider than twice the section"):
        hx.pp.transcript_labels(sdata, window_um=1e7, grid_um=1.0, **options)
    with pytest.raises(MemoryError, match="grid_um"):
        hx.pp.transcript_labels(sdata, grid_um=1e-6, **options)
    assert "tx_labels" not in sdata.labels


@bad_input("obscure error", "`hx.pp.tile(sdata, centres='spots')` where some spots are empty or "
           "NaN geometries (NaN tiles)",
           says="ValueError: `... of the ... shapes of sdata.shapes['spots'] have no centre (empty "
                "or NaN geometry, e.g. [...]); drop them first`, before anything is written",
           fix="drop the empty geometries")
def test_tiles_on_shapes_without_a_centre_are_refused(disk_section):
    import geopandas as gpd
    from shapely.geometry import Point, Polygon
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    frame = gpd.GeoDataFrame(
        {"radius": [5.0, 5.0, 5.0]},
        geometry=[Point(50, 50), Point(float("nan"), float("nan")), Point(100, 100)])
    disk_section.shapes["spots"] = ShapesModel.parse(frame, transformations={"global": Identity()})
    empty = gpd.GeoDataFrame(geometry=[Polygon([(0, 0), (10, 0), (10, 10)]), Polygon()])
    disk_section.shapes["cells"] = ShapesModel.parse(empty, transformations={"global": Identity()})
    hx.pp.detect_tissue(disk_section)
    for key in ("spots", "cells"):
        with pytest.raises(ValueError, match="have no centre"):
            hx.pp.tile(disk_section, centres=key, size_px=16)
    assert "he_tiles" not in disk_section.shapes


def _count_table(n_spots: int, n_genes: int, seed: int = 0):
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    rates = rng.gamma(0.3, 2.0, size=n_genes) * rng.uniform(0.5, 2.0, size=(n_spots, 1))
    counts = sp.csr_matrix(rng.poisson(rates).astype(np.float32))
    return ad.AnnData(counts, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


def test_log_normalised_means_are_those_of_the_dense_array(monkeypatch):
    from histoexpr._core import expression

    table = _count_table(300, 120)
    dense = expression.log_normalised(table).mean(axis=0)
    for block_bytes in (64 * 2**20, 8 * 120 * 7, 1):  # one block, blocks of 7 rows, row by row
        monkeypatch.setattr(expression, "_BLOCK_BYTES", block_bytes)
        assert np.array_equal(expression.log_normalised_means(table), dense)
    table.X = table.X.toarray()  # counts held dense: the same numbers
    assert np.array_equal(expression.log_normalised_means(table), dense)


@bad_input("obscure error", "`hx.pp.select_genes(tables, n_top=50)` (the default gene choice of "
           "`hx.tl.fit(..., model='spot_regressor')`) on sections measuring every gene: all "
           "genes of all spots log-normalised as one dense float64 array (88 GB for 30 Visium "
           "sections of 36,601 genes)",
           says="nothing for the default flavour (the spots are log-normalised in blocks, the "
                "genes ranked the same); MemoryError: `The log-normalised expression of 3,000 "
                "spots x 2,000 genes as one dense array would allocate ... Ask for fewer "
                "genes ...` for flavours that need the array",
           fix="nothing for flavor='top_expressed'; fewer genes or sections for the others")
def test_gene_choice_memory_does_not_grow_with_the_genes_of_every_spot(monkeypatch):
    from histoexpr._core import expression

    tables = [_count_table(1500, 2000, seed) for seed in (1, 2)]  # dense: 3,000 x 2,000 x 20 B
    free = hx.pp.select_genes(tables, n_top=20)
    import tracemalloc

    hx.settings.max_memory = "16 MiB"  # less than the dense array (114 MiB)
    monkeypatch.setattr(expression, "_BLOCK_BYTES", 2**20)
    tracemalloc.start()
    try:
        assert hx.pp.select_genes(tables, n_top=20) == free
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 60 * 2**20  # the pooled sparse counts and one block (143 MiB when dense)
    with pytest.raises(MemoryError, match=r"3,000 spots x 2,000 genes as one dense array.*"
                                          r"fewer genes"):
        hx.pp.select_genes(tables, n_top=20, flavor="cell_ranger")
    targets = hx.pp.expression_targets(tables[0], free[:5])  # a few genes: within the limit
    assert targets.shape == (1500, 5)
