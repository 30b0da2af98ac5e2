"""Transcript labels (the rule, on hand-made and synthetic sections) and the gene-pair helper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input
from conftest import without_pixel_size

import histoexpr as hx
from histoexpr._core.image import read_region

GENES = ("PTPRC", "COL1A1")  # lymphocyte and stroma markers of the synthetic rule


@pytest.fixture(scope="module")
def section():
    return hx.datasets.synthetic_section(seed=0, size_um=400, spots=False)


def hand_made(points: list[tuple[float, float, str]], bright=(slice(0, 20), slice(0, 20))):
    """A 40 x 40 um DAPI section (1 um/px) with a bright square and the given transcripts."""
    image = np.zeros((40, 40), dtype=np.uint8)
    image[bright] = 200
    table = pd.DataFrame(points, columns=["x", "y", "gene"])
    return hx.io.read_transcripts(table, image=image, image_mpp=1.0)


def label_at(sdata, x: float, y: float, key: str = "tx_labels") -> int:
    return int(read_region(sdata, key, (x - 0.5, y - 0.5, x + 0.5, y + 0.5), mpp=1.0)[0, 0])


def test_old_option_names_still_work_with_a_future_warning():
    points = [(10.5, 30.5, "A")] * 4 + [(30.5, 30.5, "B")] * 4
    options = {"genes": ("A", "B"), "grid_um": 1.0, "window_um": 5.0, "min_per_class": 1}
    new, old = hand_made(points), hand_made(points)
    hx.pp.transcript_labels(new, min_tissue=0.5, stride_um=2.0, **options)
    with (pytest.warns(FutureWarning, match="'min_tissue_fraction' is deprecated.*'min_tissue'"),
          pytest.warns(FutureWarning, match="'patch_stride_um' is deprecated.*'stride_um'")):
        hx.pp.transcript_labels(old, min_tissue_fraction=0.5, patch_stride_um=2.0, **options)
    np.testing.assert_array_equal(old.labels["tx_labels"].values, new.labels["tx_labels"].values)
    a, b = old.tables["tx_labels_patches"], new.tables["tx_labels_patches"]
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    # a fraction outside [0, 1] is refused before anything is written
    with pytest.raises(ValueError, match=r"min_tissue must be a fraction in \[0, 1\]"):
        hx.pp.transcript_labels(new, min_tissue=50, overwrite=True, **options)


def test_the_rule_on_a_hand_made_section():
    points = ([(10.5, 30.5, "A")] * 4 + [(30.5, 30.5, "B")] * 4  # pure A, pure B
              + [(30.5, 10.5, "A")] * 3 + [(30.5, 10.5, "B")] * 3)  # mixed: unassigned
    sdata = hand_made(points)
    hx.pp.transcript_labels(sdata, genes=("A", "B"), grid_um=1.0, window_um=5.0, min_counts=3,
                            enrichment=2.0, min_tissue=0.5, min_per_class=1)
    assert label_at(sdata, 10.5, 30.5) == 3  # gene A
    assert label_at(sdata, 30.5, 30.5) == 4  # gene B
    assert label_at(sdata, 30.5, 10.5) == 0  # both genes, neither enriched
    assert label_at(sdata, 5.5, 5.5) == 2  # bright nuclei, no gene: tissue
    assert label_at(sdata, 20.5, 25.5) == 1  # dark, no gene: background
    # the window: A's counts reach 2 cells (window 5 um) around its place, not 3
    assert label_at(sdata, 12.5, 30.5) == 3 and label_at(sdata, 13.5, 30.5) != 3
    table = sdata.tables["tx_labels_patches"]
    rule = table.uns["transcript_labels"]
    assert rule["classes"] == {"background": 1, "tissue": 2, "A": 3, "B": 4}
    names = dict(zip(table.obs["label"], table.obs["class"].astype(str), strict=False))
    assert all(names[value] == name for name, value in rule["classes"].items() if value in names)


def test_labels_follow_the_generating_cell_types(section):
    hx.pp.transcript_labels(section, genes=GENES, overwrite=True)
    cells = section.tables["cells_table"].obs
    at_cells = np.array([label_at(section, x, y) for x, y in zip(cells["x"], cells["y"],
                                                                   strict=True)])
    for value, cell_type in ((3, "lymphocyte"), (4, "stroma")):
        share = (cells["cell_type"][at_cells == value] == cell_type).mean()
        assert share > 0.75, f"{cell_type}: {share:.2f}"
    # off the tissue (region 0) is background; on DAPI, background is "no nuclei" (the paper's)
    labels = section.labels["tx_labels"].values
    regions = read_region(section, "regions", (0, 0, 400, 400), mpp=2.0)
    nuclei = read_region(section, "cells", (0, 0, 400, 400), mpp=2.0) > 0
    assert (labels[regions == 0] == 1).mean() > 0.9
    assert nuclei[labels == 1].mean() < 0.05 < 0.3 < nuclei[labels == 2].mean()
    assert (regions[labels >= 3] > 0).mean() > 0.9
    table = section.tables["tx_labels_patches"]
    assert set(table.obs["class"].unique()) == {"background", "tissue", *GENES}
    positions = np.asarray(table.obsm["spatial"])
    assert np.allclose((positions - 3.0) % 4.0, 0)  # centres of every 2nd 2-um cell, from 3 um


def test_he_images_and_transcript_tissue(section):
    hx.pp.transcript_labels(section, image_key="he", genes=GENES, key_added="he_labels",
                            max_per_class=50, seed=0)
    counts = section.tables["he_labels_patches"].obs["class"].value_counts()
    assert (counts == 50).all() and len(counts) == 4
    regions = read_region(section, "regions", (0, 0, 400, 400), mpp=2.0)
    he_labels = section.labels["he_labels"].values
    assert (regions[he_labels == 2] > 0).mean() > 0.9
    hx.pp.transcript_labels(section, genes=GENES, tissue="transcripts", min_total=5,
                            key_added="tx_tissue")
    assert (regions[section.labels["tx_tissue"].values == 2] > 0).mean() > 0.9


def test_per_cell_labels_on_hand_made_polygons():
    # cell "a": 4 A; cell "b": 4 B; cell "c": no gene; "d": 3 A and 3 B (mixed); x+100 in the table
    points = ([(4.5, 4.5, "A")] * 4 + [(34.5, 4.5, "B")] * 4 + [(34.5, 34.5, "A")] * 3
              + [(34.5, 34.5, "B")] * 3 + [(15.5, 25.5, "A")] * 5)  # the last, outside cells
    sdata = hand_made(points, bright=(slice(0, 40), slice(0, 10)))
    boxes = {"a": (2, 2, 8, 8), "b": (32, 2, 38, 8), "c": (2, 32, 8, 38), "d": (32, 32, 38, 38)}
    vertices = pd.DataFrame(
        [(name, x + 100, -y) for name, (x0, y0, x1, y1) in boxes.items()
         for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], columns=["id", "x", "y"])
    sdata.shapes["cells"] = hx.io.read_cell_boundaries(vertices, cell="id", offset=(100, 0),
                                                       flip_y=True)
    assert sdata.shapes["cells"].geometry["b"].bounds == (32, 2, 38, 8)
    hx.pp.transcript_labels(sdata, genes=("A", "B"), cells="cells", grid_um=1.0,
                            window_um=5.0, min_counts=3, min_tissue=0.5,
                            min_per_class=1)
    cells = sdata.tables["tx_labels_cells"].obs
    assert cells["label"].to_dict() == {"a": 3, "b": 4, "c": 2, "d": 0}
    assert cells[["n_a", "n_b"]].loc[["a", "b", "d"]].values.tolist() == [[4, 0], [0, 4], [3, 3]]
    np.testing.assert_allclose(cells["area_um2"], 36)
    assert label_at(sdata, 5.5, 5.5) == 3 and label_at(sdata, 35.5, 5.5) == 4
    assert label_at(sdata, 5.5, 35.5) == 2 and label_at(sdata, 35.5, 35.5) == 0
    # outside the cells: bright nuclei (x < 10) are not scored, dark places are background,
    # and the 5 A transcripts outside every cell label nothing
    assert label_at(sdata, 5.5, 20.5) == 0 and label_at(sdata, 15.5, 25.5) == 1
    with pytest.raises(KeyError, match="read_cell_boundaries"):
        hx.pp.transcript_labels(sdata, genes=("A", "B"), cells="nope", key_added="bad")


def test_per_cell_labels_follow_the_generating_cell_types(section):
    hx.pp.transcript_labels(section, genes=GENES, cells="cells", grid_um=1.0,
                            key_added="cell_labels", min_counts=2)
    labelled = section.tables["cell_labels_cells"].obs
    truth = section.tables["cells_table"].obs.set_index(
        section.tables["cells_table"].obs["cell_id"].astype(str))["cell_type"]
    cell_type = truth.reindex(labelled.index)
    for value, name in ((3, "lymphocyte"), (4, "stroma")):
        chosen = cell_type[labelled["label"] == value]
        assert len(chosen) > 20 and (chosen == name).mean() > 0.9, (name, len(chosen))
    others = cell_type[labelled["label"] == 2]
    assert others.isin(["lymphocyte", "stroma"]).mean() < 0.5  # mostly tumour, epithelium
    labels = section.labels["cell_labels"].values
    nuclei = read_region(section, "cells", (0, 0, 400, 400), mpp=1.0)
    assert (labels[nuclei > 0] != 1).all() and (labels[nuclei == 0] >= 2).sum() == 0


def test_bad_input_is_explained(section):
    with pytest.raises(KeyError, match="NOPE"):
        hx.pp.transcript_labels(section, genes=("PTPRC", "NOPE"), key_added="bad")
    with pytest.raises(ValueError, match="two different"):
        hx.pp.transcript_labels(section, genes=("PTPRC",), key_added="bad")
    with pytest.raises(ValueError, match="min_per_class"):
        hx.pp.transcript_labels(section, genes=GENES, min_per_class=10**6, key_added="bad")
    hx.pp.transcript_labels(section, genes=GENES, key_added="twice")
    with pytest.raises(KeyError, match="overwrite=True"):
        hx.pp.transcript_labels(section, genes=GENES, key_added="twice")
    far = hand_made([(10.5, 10.5, "A"), (30.5, 30.5, "B")])
    far.points["transcripts"]["x"] = far.points["transcripts"]["x"] + 1000
    with pytest.raises(ValueError, match="pixel_size and offset"):
        hx.pp.transcript_labels(far, genes=("A", "B"))


@bad_input(
    "silently wrong",
    "`hx.pp.transcript_labels(sdata, image_key=...)` on an image parsed without a pixel size "
    "(the identity to 'global'), the transcripts in um",
    says="ValueError: sdata.images['dapi_bare'] does not state its pixel size ... State it "
    "(before: transcripts in um placed on pixels as if the image were at 1 um/px)",
    fix="set a Scale([mpp, mpp]) transformation to 'global', or read the data with the "
    "platform's reader (hx.io.read_transcripts(..., image_mpp=...))",
)
def test_transcripts_on_an_image_without_a_pixel_size_are_refused(section):
    section.images["dapi_bare"] = without_pixel_size(section.images["dapi"])
    try:
        with pytest.raises(ValueError, match=r"'dapi_bare'\] does not state its pixel size"):
            hx.pp.transcript_labels(section, image_key="dapi_bare", genes=GENES,
                                    key_added="bare_labels")
        assert "bare_labels" not in section.labels
        assert "bare_labels_patches" not in section.tables
    finally:
        del section.images["dapi_bare"]


def test_gene_pairs_prefer_markers_of_different_cell_types(section):
    pairs = hx.pp.rank_gene_pairs(section, n_candidates=12, min_counts=50)
    assert list(pairs.columns) == ["gene_a", "gene_b", "count_a", "count_b", "clustering_a",
                                   "clustering_b", "correlation", "overlap", "score"]
    assert pairs["score"].is_monotonic_decreasing
    markers = section.attrs["synthetic"]["markers"]
    owner = {gene: cell_type for cell_type, genes in markers.items() for gene in genes}
    best = pairs.iloc[0]
    assert best["gene_a"] in owner and best["gene_b"] in owner
    assert owner[best["gene_a"]] != owner[best["gene_b"]]
    housekeeping = pairs[pairs["gene_a"].isin(["ACTB", "GAPDH"]) & pairs["gene_b"].isin(owner)]
    assert housekeeping.empty or housekeeping["score"].max() < best["score"]


@pytest.mark.realdata
def test_merfish_labels_find_the_two_bands(data_dir):
    folder = data_dir / "merfish_mouse_brain"
    sdata = hx.io.read_transcripts(
        folder / "vizgen_transcripts.csv.gz", x="global_x", y="global_y",
        offset=(6400.029, 4699.967), image=folder / "images" / "mini_dataset_dapi_z0.jpg",
        image_mpp=0.108627, outside="drop")
    best = hx.pp.rank_gene_pairs(sdata).iloc[0]
    assert {best["gene_a"], best["gene_b"]} == {"Slc17a7", "Gfap"}
    hx.pp.transcript_labels(sdata, genes=("Slc17a7", "Gfap"))
    labels = sdata.labels["tx_labels"].values
    columns = np.arange(labels.shape[1]) * 2.0
    mean_x = {v: (labels == v).sum(axis=0) @ columns / (labels == v).sum() for v in (3, 4)}
    assert mean_x[3] > 300 and mean_x[4] < 200  # excitatory band right, astrocyte band left
    assert 0.05 < (labels == 2).mean() < 0.5  # nuclei without either gene exist
    # per cell: the Vizgen polygons (y stored negated) overlay the nuclei and the bands
    sdata.shapes["cells"] = hx.io.read_cell_boundaries(
        folder / "cell_boundaries" / "z0_polygons.gz", offset=(6400.029, 4699.967), flip_y=True)
    assert len(sdata.shapes["cells"]) == 498
    hx.pp.transcript_labels(sdata, genes=("Slc17a7", "Gfap"), cells="cells",
                            key_added="cell_labels")
    cells = sdata.tables["cell_labels_cells"]
    x = pd.Series(cells.obsm["spatial"][:, 0], index=cells.obs_names)
    by_class = x.groupby(cells.obs["class"].astype(str)).agg(["mean", "size"])
    assert by_class.loc["Slc17a7", "mean"] > 300 > 200 > by_class.loc["Gfap", "mean"], by_class
    assert (by_class["size"][["tissue", "Slc17a7", "Gfap"]] > 50).all(), by_class
    assert cells.obs["n_all"].sum() > 0.3 * len(sdata.points["transcripts"])  # on the nuclei


@pytest.mark.realdata
def test_iss_labels_from_a_nuclei_label_image(data_dir):
    folder = data_dir / "iss_mouse_ca1"
    reads = pd.read_csv(folder / "spots.csv")
    reads = reads[(reads["x"] >= 0) & (reads["y"] >= 0)]
    # coordinates stay in pixels of the label image (pixel_size 1): lengths below are in px
    sdata = hx.io.read_transcripts(reads, gene="Gene", labels=folder / "label_image.coo.npz",
                                   outside="drop")
    pair = hx.pp.rank_gene_pairs(sdata, bin_um=50, smooth_um=100, n_candidates=10).iloc[0]
    genes = (pair["gene_a"], pair["gene_b"])
    hx.pp.transcript_labels(sdata, image_key="nuclei", genes=genes, grid_um=20, window_um=60)
    labels = sdata.labels["tx_labels"].values
    points = sdata.points["transcripts"].compute()
    for gene, value in zip(genes, (3, 4), strict=True):
        chosen = points[points["gene"] == gene]
        at = labels[(chosen["y"] // 20).astype(int), (chosen["x"] // 20).astype(int)]
        assert (at == value).mean() > 0.5, gene
    assert (labels == 2).any() and (labels == 1).any()


@bad_input("silently wrong", "`hx.pp.transcript_labels(..., max_per_class=0)` (a patch table of "
           "no rows despite min_per_class=20), `-5` or `2.5` (numpy errors)",
           says="ValueError: `max_per_class must be an integer in [20, inf], got 0`",
           fix="pass a cap of at least min_per_class, or None")
def test_max_per_class_is_at_least_min_per_class(section):
    before = {f"{kind}/{key}" for kind, key, _ in section.gen_elements()}
    for value, error in ((0, ValueError), (-5, ValueError), (5, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="max_per_class must be an integer"):
            hx.pp.transcript_labels(section, genes=GENES, max_per_class=value,
                                    key_added="capped")
    with pytest.raises(TypeError, match="min_per_class must be an integer"):
        hx.pp.transcript_labels(section, genes=GENES, min_per_class=2.5, key_added="capped")
    assert {f"{kind}/{key}" for kind, key, _ in section.gen_elements()} == before
