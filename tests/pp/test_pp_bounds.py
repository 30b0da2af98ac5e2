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


def _element_keys(sdata) -> set:
    return {(kind, key) for kind in ("images", "labels", "points", "shapes", "tables")
            for key in getattr(sdata, kind)}


def _scattered_transcripts(n: int, extent_um: float, genes: str = "ABCD", seed: int = 0):
    """``n`` transcripts of ``genes`` spread over a square of ``extent_um`` (corners included)."""
    rng = np.random.default_rng(seed)
    points = pd.DataFrame({"x": rng.uniform(0, extent_um, n), "y": rng.uniform(0, extent_um, n),
                           "gene": rng.choice(list(genes), n)})
    points.loc[0, ["x", "y"]] = 0.0
    points.loc[1, ["x", "y"]] = extent_um
    return points


@bad_input("obscure error", "`hx.pp.rank_gene_pairs(sdata, bin_um=...)` with tiny bins or many "
           "`n_candidates` (two float64 grids per candidate gene over the whole section: GiB "
           "for 1 um bins of a 2 cm section)",
           says="MemoryError: `rank_gene_pairs on a grid of 15,001 x 15,001 bins of 0.02 um for "
                "4 candidate genes would allocate ... Pass a larger bin_um or fewer "
                "n_candidates.`, before any grid is made",
           fix="pass a larger bin_um (the default is 10 um) or fewer n_candidates")
def test_gene_pair_grids_are_estimated_before_they_are_made():
    sdata = hx.io.read_transcripts(_scattered_transcripts(3000, 300.0))
    before = _element_keys(sdata)
    hx.settings.max_memory = "8 MiB"  # the transcripts (0.4 MiB) fit, fine grids do not
    with pytest.raises(MemoryError, match=r"rank_gene_pairs on a grid of 15,001 x 15,001 bins "
                                          r"of 0\.02 um for 4 candidate genes would allocate "
                                          r"22\.0 GiB.*larger bin_um or fewer n_candidates"):
        hx.pp.rank_gene_pairs(sdata, min_counts=1, bin_um=0.02)
    # 301 x 301 bins of 1 um: 105 B a bin for 4 genes (9.1 MiB) but 73 B for 2 (6.3 MiB)
    with pytest.raises(MemoryError, match=r"301 x 301 bins of 1 um for 4 candidate genes"):
        hx.pp.rank_gene_pairs(sdata, min_counts=1, bin_um=1.0)
    assert _element_keys(sdata) == before
    assert len(hx.pp.rank_gene_pairs(sdata, min_counts=1, bin_um=1.0, n_candidates=2)) == 1
    assert len(hx.pp.rank_gene_pairs(sdata, min_counts=1)) == 6  # the default 10 um bins


@bad_input("obscure error", "`hx.pp.transcript_labels` or `hx.pp.rank_gene_pairs` on the points "
           "of a whole large section (every transcript held in pandas, ~136 B each: 13 GiB for "
           "100 million transcripts)",
           says="MemoryError: `The 20,008 transcripts of sdata.points['transcripts'] held in "
                "memory (x, y and gene, ~136 B each) would allocate 2.6 MiB, more than ... Crop "
                "the points first (e.g. with spatialdata's bounding_box_query) or keep fewer "
                "genes ...`, before anything is computed or written",
           fix="crop the points (spatialdata's `bounding_box_query`) or keep fewer genes")
def test_transcripts_are_estimated_before_they_are_held():
    from spatialdata import bounding_box_query

    clusters = pd.DataFrame([(10.5, 30.5, "A")] * 4 + [(30.5, 30.5, "B")] * 4,
                            columns=["x", "y", "gene"])
    points = pd.concat([clusters, _scattered_transcripts(20000, 39.9, genes="CDE")],
                       ignore_index=True)
    image = np.zeros((40, 40), dtype=np.uint8)
    image[:20, :20] = 200
    sdata = hx.io.read_transcripts(points, image=image, image_mpp=1.0)
    before = _element_keys(sdata)
    hx.settings.max_memory = "2 MiB"
    options = {"genes": ("A", "B"), "min_per_class": 1}
    message = (r"The 20,008 transcripts of sdata.points\['transcripts'\] held in memory \(x, y "
               r"and gene, ~136 B each\) would allocate 2\.6 MiB.*bounding_box_query")
    with pytest.raises(MemoryError, match=message):
        hx.pp.transcript_labels(sdata, **options)
    with pytest.raises(MemoryError, match=message):
        hx.pp.rank_gene_pairs(sdata, min_counts=1)
    assert _element_keys(sdata) == before
    # the fix: the points of the part to label (y 25..40 um: 7,500 transcripts, 1 MiB)
    sdata.points["transcripts"] = bounding_box_query(
        sdata.points["transcripts"], axes=("x", "y"), min_coordinate=[0, 25],
        max_coordinate=[40, 40], target_coordinate_system="global")
    hx.pp.transcript_labels(sdata, **options)
    classes = set(sdata.tables["tx_labels_patches"].obs["class"].astype(str))
    assert classes == {"background", "tissue", "A", "B"}


@bad_input("obscure error", "`hx.pp.transcript_labels(..., cells=...)` with a fine `grid_um`: "
           "the cells rasterised 4 times finer than the grid (16 pixels of ~44 B per grid "
           "cell of a label image)",
           says="MemoryError: `transcript_labels on a grid of 200 x 200 cells of 0.5 um, with "
                "the cells of 'cells' on a grid 4 times finer would allocate ... Pass a larger "
                "grid_um.`, before the transcripts are read",
           fix="pass a larger grid_um (the default is 2 um)")
def test_transcript_labels_estimates_the_cell_raster():
    sdata = hx.datasets.synthetic_section(seed=0, size_um=100, spots=False)
    before = _element_keys(sdata)
    hx.settings.max_memory = "8 MiB"  # the grid alone (3.7 MiB) fits, with the cells (31 MiB) not
    options = {"genes": ("PTPRC", "COL1A1"), "cells": "cells", "min_counts": 1,
               "min_per_class": 1}
    with pytest.raises(MemoryError, match=r"grid of 200 x 200 cells of 0\.5 um, with the cells "
                                          r"of 'cells' on a grid 4 times finer would allocate "
                                          r"30\.5 MiB.*larger grid_um"):
        hx.pp.transcript_labels(sdata, grid_um=0.5, **options)
    assert _element_keys(sdata) == before
    hx.pp.transcript_labels(sdata, grid_um=2.0, **options)  # the fix: 50 x 50 cells, 1.9 MiB
    assert len(sdata.tables["tx_labels_cells"]) > 10


@bad_input("obscure error", "`hx.pp.stain_reference(sections)` on many sections (torchstain holds "
           "float64 optical densities for every pooled pixel: 1.6 GiB for 8 sections of 64 "
           "tiles of 224 px)",
           says="MemoryError: `Estimating the stain of ... pixels (... section(s), up to "
                "n_tiles=... tiles each) would allocate ... Pass a smaller n_tiles= ... or fewer "
                "sections.`, before any tile is read",
           fix="pass a smaller n_tiles= (tiles read per section) or fewer sections")
def test_stain_reference_is_estimated_before_a_tile_is_read(synthetic, monkeypatch):
    from histoexpr.pp import _dataset

    section = synthetic(seed=0, size_um=300)
    hx.pp.tile(section, "he", size_px=32, mpp=1.0, min_tissue=0.3)
    reference = hx.pp.stain_reference([section, section], n_tiles=16)
    reads = []
    read = _dataset.TileDataset.__getitem__
    monkeypatch.setattr(_dataset.TileDataset, "__getitem__",
                        lambda self, index: reads.append(index) or read(self, index))
    hx.settings.max_memory = "2 MiB"  # 2 x 16 tiles of 32 x 32 px at 96 B a pixel: 3 MiB
    with pytest.raises(MemoryError, match=r"Estimating the stain of 32,768 pixels \(2 section"
                                          r"\(s\), up to n_tiles=16 tiles each\) would allocate "
                                          r"3\.0 MiB.*smaller n_tiles="):
        hx.pp.stain_reference([section, section], n_tiles=16)
    assert reads == []  # refused before any tile was read
    smaller = hx.pp.stain_reference([section, section], n_tiles=4)  # 0.8 MiB: within the limit
    assert len(reads) == 8 and smaller["method"] == "macenko"
    hx.settings.max_memory = None
    assert hx.pp.stain_reference([section, section], n_tiles=16) == reference  # unchanged


@bad_input("obscure error", "`hx.pp.tile` over a fine tissue map (a mask at full resolution: its "
           "summed-area table and sums took 25 bytes a pixel, estimated as 1)",
           says="MemoryError: `Measuring the tissue under the tiles on 'mask' (1,200 x 1,200 px "
                "at 0.166667 um/px) would allocate ... Detect the tissue at a coarser pixel size "
                "...`, before anything is written",
           fix="detect the tissue at a coarser mpp (the default 8 um/px), pass a coarser "
               "tissue_key=, or use larger tiles")
def test_tile_estimates_the_tissue_measure_before_reading_the_map(disk_section):
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import Scale

    # a mask of 1,200 px at 1/6 um/px over the 200 um section: 60 x 60 px under a 10 um tile
    mask = (np.random.default_rng(0).random((1200, 1200)) < 0.6).astype(np.uint8)
    disk_section.labels["mask"] = Labels2DModel.parse(
        mask, dims=("y", "x"), transformations={"global": Scale([1 / 6, 1 / 6], axes=("y", "x"))})
    before = _element_keys(disk_section)
    hx.settings.max_memory = "4 MiB"  # the map read (1.4 MiB) fits; with its table, 13.7 MiB
    with pytest.raises(MemoryError, match=r"Measuring the tissue under the tiles on 'mask' "
                                          r"\(1,200 x 1,200 px at 0\.166667 um/px\) would "
                                          r"allocate 13\.7 MiB.*coarser pixel size"):
        hx.pp.tile(disk_section, size_px=20, tissue_key="mask", min_tissue=0)
    assert _element_keys(disk_section) == before
    hx.settings.max_memory = None
    hx.pp.tile(disk_section, size_px=20, tissue_key="mask", min_tissue=0)
    obs = disk_section.tables["he_tiles_table"].obs
    exact = mask.reshape(20, 60, 20, 60).mean(axis=(1, 3))  # each tile's share of tissue
    np.testing.assert_allclose(obs["tissue_fraction"],
                               np.round(exact[obs["grid_row"], obs["grid_col"]], 6), atol=1e-12)
