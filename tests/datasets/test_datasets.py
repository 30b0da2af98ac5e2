"""The synthetic section and cohort: determinism, morphology, coherence, counts, Cohort."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx

SIZE = 500.0  # um: small enough to be quick, large enough for every type and a few spots


def _array(element):
    """Full-resolution numpy array of an image or label element (plain or multiscale)."""
    import xarray as xr

    if isinstance(element, xr.DataArray):
        return np.asarray(element.data)
    return np.asarray(element["scale0"].ds["image"].data)


@pytest.fixture(scope="module")
def section():
    return hx.datasets.synthetic_section(seed=3, size_um=SIZE)


@pytest.fixture(scope="module")
def big_section():
    """The default section (built once for the module)."""
    return hx.datasets.synthetic_section(seed=0)


@pytest.fixture(scope="module")
def cohort():
    return hx.datasets.synthetic_cohort(8, seed=1, size_um=250)


# --- structure and units ------------------------------------------------------------------------


def test_elements_and_units(section):
    assert set(section.images) == {"he", "dapi"}
    assert set(section.labels) == {"cells", "regions"}
    assert set(section.points) == {"transcripts"}
    assert set(section.shapes) == {"spots"}
    assert set(section.tables) == {"table", "cells_table"}
    for key in ("he", "dapi"):
        assert hx.io.get_pixel_size(section, key) == pytest.approx(0.5)
    he, dapi = _array(section.images["he"]), _array(section.images["dapi"])
    assert he.dtype == np.uint8 and he.shape == (3, 1000, 1000)
    assert dapi.dtype == np.uint8 and dapi.shape == (1, 1000, 1000)
    assert list(section.images["he"].coords["c"].values) == ["r", "g", "b"]
    # a region read in um returns the pixels of the same place
    region = hx.io.read_region(section, "he", (100, 50, 150, 75))
    np.testing.assert_array_equal(region, he[:, 100:150, 200:300])
    table = section.tables["table"]
    assert table.uns["spatialdata_attrs"] == {"region": "spots", "region_key": "region",
                                              "instance_key": "spot_id"}
    assert table.X.dtype == np.float32 and table.X.format == "csr"
    assert (table.X != table.layers["counts"]).nnz == 0
    radius = section.shapes["spots"]["radius"].to_numpy()
    np.testing.assert_allclose(radius, 27.5)
    geometry = section.shapes["spots"].geometry
    centres = np.column_stack([geometry.x, geometry.y])
    np.testing.assert_allclose(table.obsm["spatial"], centres)
    pitch = np.sort(np.linalg.norm(centres[:, None] - centres[None], axis=-1), axis=1)[:, 1]
    np.testing.assert_allclose(pitch.min(), 100.0)


def test_default_is_multiscale(big_section):
    levels = hx.io.image_levels(big_section, "he")
    assert [lv.mpp for lv in levels] == pytest.approx([0.5, 1.0, 2.0])
    assert hx.io.get_pixel_size(big_section, "dapi") == pytest.approx(0.5)
    assert big_section.tables["cells_table"].n_obs > 2000
    assert big_section.tables["table"].n_obs > 30


def test_determinism():
    kwargs = {"size_um": 200.0, "transcripts": True, "spots": False}
    a = hx.datasets.synthetic_section(seed=5, **kwargs)
    b = hx.datasets.synthetic_section(seed=5, **kwargs)
    c = hx.datasets.synthetic_section(seed=6, **kwargs)
    for key in ("he", "dapi"):
        np.testing.assert_array_equal(_array(a.images[key]), _array(b.images[key]))
    np.testing.assert_array_equal(_array(a.labels["cells"]), _array(b.labels["cells"]))
    pd.testing.assert_frame_equal(a.points["transcripts"].compute(),
                                  b.points["transcripts"].compute())
    assert not np.array_equal(_array(a.images["he"]), _array(c.images["he"]))
    hx.settings.seed = 5
    d = hx.datasets.synthetic_section(**kwargs)
    np.testing.assert_array_equal(_array(a.images["he"]), _array(d.images["he"]))


# --- the generative rule --------------------------------------------------------------------------


def test_morphology_by_type(big_section):
    rule = big_section.attrs["synthetic"]
    obs = big_section.tables["cells_table"].obs
    labels = _array(big_section.labels["cells"])
    # areas measured from the label map agree with the table, and order as documented
    area = np.bincount(labels.ravel())[obs["cell_id"].to_numpy()] * 0.25
    np.testing.assert_allclose(area, obs["nucleus_area_um2"])
    mean_area = obs.groupby("cell_type", observed=True)["nucleus_area_um2"].mean()
    assert list(mean_area.sort_values(ascending=False).index) == [
        "tumour", "epithelium", "stroma", "lymphocyte"]
    elong = obs.groupby("cell_type", observed=True)["elongation"].median()
    assert elong.idxmax() == "stroma" and elong["stroma"] > 2
    density = obs.groupby("region_type", observed=True)["local_density"].median()
    assert density.idxmax() == "lymphocyte" and density.idxmin() == "stroma"
    assert set(rule["morphology"]) == set(rule["cell_types"])

    # H&E: nuclei darker than the rest of the tissue, which is darker than the glass
    he = _array(big_section.images["he"]).astype(float).mean(axis=0)
    regions = _array(big_section.labels["regions"])
    nuclei = labels > 0
    assert he[nuclei].mean() < he[(regions > 0) & ~nuclei].mean() - 40
    assert he[regions == 0].mean() > 220
    # DAPI: nuclei bright, lymphocytes brightest, epithelium palest
    dapi = _array(big_section.images["dapi"])[0].astype(float)
    assert dapi[nuclei].mean() > dapi[~nuclei].mean() + 60
    type_of = np.zeros(labels.max() + 1, dtype=int)
    type_of[obs["cell_id"].to_numpy()] = obs["cell_type"].cat.codes.to_numpy() + 1
    per_type = [dapi[type_of[labels] == k + 1].mean() for k in range(4)]
    names = rule["cell_types"]
    assert names[int(np.argmax(per_type))] == "lymphocyte"
    assert names[int(np.argmin(per_type))] == "epithelium"
    he_type = [he[type_of[labels] == k + 1].mean() for k in range(4)]
    assert names[int(np.argmin(he_type))] == "lymphocyte"


def test_regions_are_coherent(big_section):
    from scipy.spatial import cKDTree

    obs = big_section.tables["cells_table"].obs
    xy = obs[["x", "y"]].to_numpy()
    types = obs["cell_type"].cat.codes.to_numpy()
    _, nn = cKDTree(xy).query(xy, k=2)
    same = (types == types[nn[:, 1]]).mean()
    chance = (np.bincount(types) / len(types)) ** 2
    assert same > 0.6 and same > 2 * chance.sum()
    # cells are mostly of their region's type, and tumour cells only sit in tumour regions
    assert (obs["cell_type"] == obs["region_type"]).mean() > 0.75
    assert set(obs.loc[obs["cell_type"] == "tumour", "region_type"]) == {"tumour"}
    # region shares follow the proportions
    regions = _array(big_section.labels["regions"])
    share = np.bincount(regions[regions > 0], minlength=5)[1:] / (regions > 0).sum()
    proportions = big_section.attrs["synthetic"]["proportions"]
    expected = [proportions[t] for t in obs["cell_type"].cat.categories]
    np.testing.assert_allclose(share, expected, atol=0.06)


def test_expression_follows_programme(big_section):
    rule = big_section.attrs["synthetic"]
    table = big_section.tables["cells_table"]
    programme = pd.DataFrame(rule["programme"]).T.loc[rule["cell_types"], list(table.var_names)]
    counts = pd.DataFrame(table.layers["counts"].toarray(), columns=table.var_names)
    means = counts.groupby(table.obs["cell_type"].to_numpy()).mean().loc[rule["cell_types"]]
    rel = np.abs(means - programme) / programme
    assert float(np.median(rel.to_numpy())) < 0.08
    # markers: highest in their own type
    for cell_type, markers in rule["markers"].items():
        assert (means[markers[0]].idxmax()) == cell_type
    # continuous links within types
    obs = table.obs
    tumour = (obs["cell_type"] == "tumour").to_numpy()
    area_score = counts.loc[tumour, rule["area_genes"]].sum(axis=1)
    assert np.corrcoef(obs["nucleus_area_um2"].to_numpy()[tumour], area_score)[0, 1] > 0.2
    dens_score = counts.loc[tumour, rule["density_genes"]].sum(axis=1)
    assert np.corrcoef(obs["local_density"].to_numpy()[tumour], dens_score)[0, 1] > 0.1


def test_transcripts_and_spots_share_counts(section):
    cells = section.tables["cells_table"]
    points = section.points["transcripts"].compute()
    assert len(points) == cells.layers["counts"].sum()
    # transcripts of each cell and gene add up to the cell's counts
    per_cell = pd.crosstab(points["cell_id"], points["gene"]).reindex(
        index=cells.obs["cell_id"], columns=cells.var_names, fill_value=0)
    np.testing.assert_array_equal(per_cell.to_numpy(), cells.layers["counts"].toarray())
    # spot counts are exactly the transcripts within the spot's radius
    table = section.tables["table"]
    centres = table.obsm["spatial"]
    xy = points[["x", "y"]].to_numpy()
    dist = np.linalg.norm(xy[:, None, :] - centres[None], axis=-1)
    inside = dist <= 27.5
    assert inside.sum(axis=1).max() <= 1
    spot = np.where(inside.any(axis=1), inside.argmax(axis=1), -1)
    expected = pd.crosstab(spot[spot >= 0], points["gene"].to_numpy()[spot >= 0]).reindex(
        index=range(table.n_obs), columns=table.var_names, fill_value=0)
    np.testing.assert_array_equal(table.X.toarray(), expected.to_numpy())
    assert table.X.sum() > 0
    assert table.obsm["cell_type_counts"].to_numpy().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="transcripts=True"):
        hx.datasets.synthetic_section(spots=True, transcripts=False)
    with pytest.raises(ValueError, match="unknown cell types"):
        hx.datasets.synthetic_section(proportions={"tumor": 1.0})
    with pytest.raises(ValueError, match="mpp must be a positive"):
        hx.datasets.synthetic_section(mpp=0)
    with pytest.raises(ValueError, match="32 pixels"):
        hx.datasets.synthetic_section(size_um=5)
    with pytest.raises(ValueError, match="mixing"):
        hx.datasets.synthetic_section(mixing=2)
    with pytest.raises(ValueError, match="n_slides"):
        hx.datasets.synthetic_cohort(0)


@bad_input("silently wrong", "`hx.datasets.synthetic_section(transcripts='False')` (or "
           "`spots='no'`, `multiscale='False'`: a string, true in Python)",
           says="TypeError: transcripts must be True or False, got 'False' (str) (before: the "
                "transcripts were drawn)",
           fix="pass True or False")
def test_flags_must_be_bools():
    for flag in ("transcripts", "spots", "multiscale"):
        with pytest.raises(TypeError, match=rf"{flag} must be True or False, got 'False' "
                                            r"\(str\)"):
            hx.datasets.synthetic_section(size_um=100, **{flag: "False"})
    sdata = hx.datasets.synthetic_section(seed=2, size_um=100, transcripts=np.bool_(False),
                                          spots=False, multiscale=False)
    assert "transcripts" not in sdata.points


def test_proportions_argument():
    sdata = hx.datasets.synthetic_section(seed=2, size_um=300, transcripts=False, spots=False,
                                          proportions={"stroma": 1.0})
    obs = sdata.tables["cells_table"].obs
    assert set(obs["region_type"]) == {"stroma"}
    assert "tumour" not in set(obs["cell_type"])
    assert not sdata.points and not sdata.shapes


# --- the cohort --------------------------------------------------------------------------------


def test_cohort_bulk_and_labels(cohort):
    bulk = cohort.bulk
    assert len(cohort) == 8 and list(cohort) == list(bulk.obs_names)
    threshold = bulk.uns["synthetic"]["tumour_threshold"]
    for slide_id, sdata in cohort.items():
        cells = sdata.tables["cells_table"]
        np.testing.assert_array_equal(bulk[slide_id].X.ravel(),
                                      np.asarray(cells.layers["counts"].sum(axis=0)).ravel())
        frac = (cells.obs["cell_type"] == "tumour").mean()
        assert bulk.obs.loc[slide_id, "fraction_tumour"] == pytest.approx(frac)
        assert bulk.obs.loc[slide_id, "diagnosis"] == ("tumour" if frac >= threshold else "normal")
        assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(0.5)
    fractions = bulk.obs[[c for c in bulk.obs if c.startswith("fraction_")]].sum(axis=1)
    np.testing.assert_allclose(fractions, 1.0)
    assert bulk.obs["fraction_tumour"].std() > 0.05  # slides differ
    # same seed: same cohort; slide i does not depend on n_slides
    again = hx.datasets.synthetic_cohort(3, seed=1, size_um=250)
    np.testing.assert_array_equal(again.bulk.X, bulk.X[:3])


def test_cohort_class(cohort):
    from anndata import AnnData

    Cohort = hx.io.Cohort
    sub = cohort.subset(["slide_03", "slide_01"])
    assert sub.ids == ["slide_03", "slide_01"]
    assert list(sub.bulk.obs_names) == ["slide_03", "slide_01"]
    assert sub["slide_01"] is cohort["slide_01"]
    assert "slide_01" in sub and "slide_02" not in sub
    assert "Cohort of 8 slides x 46 genes" in repr(cohort)
    with pytest.raises(KeyError, match="slide_99"):
        cohort["slide_99"]
    with pytest.raises(KeyError, match="slide_99"):
        cohort.subset(["slide_99"])
    slides = cohort.slides
    bulk = cohort.bulk
    with pytest.raises(ValueError, match="slides without a bulk row.*slide_07"):
        Cohort(slides, bulk[:7].copy())
    with pytest.raises(ValueError, match="bulk rows without a slide.*slide_00"):
        Cohort({k: v for k, v in slides.items() if k != "slide_00"}, bulk)
    with pytest.raises(TypeError, match="AnnData"):
        Cohort(slides, bulk.X)
    dup = AnnData(np.zeros((2, 1)))
    dup.obs_names = ["a", "a"]
    with pytest.raises(ValueError, match="duplicated"):
        Cohort({"a": slides["slide_00"]}, dup)
    # bulk rows in another order: the slides follow the bulk's order
    reordered = Cohort(slides, bulk[::-1].copy())
    assert reordered.ids == list(bulk.obs_names[::-1])


@bad_input("obscure error", "`hx.datasets.synthetic_section(size_um=20000, mpp=0.25)` or "
           "`hx.datasets.synthetic_artefact_slide(tissue_um=..., mpp=...)` larger than the "
           "memory: hundreds of bytes a pixel allocated",
           says="MemoryError: `A synthetic section of 400 x 400 um at 0.5 um/px (800 x 800 px, "
                "about 96 bytes a pixel) would allocate ... Pass a smaller size_um or a coarser "
                "mpp ...`, before anything is drawn",
           fix="a smaller size_um (tissue_um) or a coarser mpp")
def test_synthetic_data_are_estimated_before_they_are_drawn(monkeypatch):
    import tracemalloc

    from histoexpr.datasets import _synthetic_tissue

    hx.settings.max_memory = "8 MiB"
    with monkeypatch.context() as patched:
        patched.setattr(_synthetic_tissue, "_smooth_field", lambda *a: pytest.fail("drawn"))
        with pytest.raises(MemoryError, match=r"A synthetic section of 400 x 400 um at 0\.5 "
                                              r"um/px \(800 x 800 px.*smaller size_um or a "
                                              r"coarser mpp"):
            hx.datasets.synthetic_section(seed=0, size_um=400, mpp=0.5)
        with pytest.raises(MemoryError, match=r"A synthetic artefact slide of 800 x 600 um at 2 "
                                              r"um/px \(400 x 300 px.*tissue_um=400\).*smaller "
                                              r"tissue_um"):
            hx.datasets.synthetic_artefact_slide(seed=0, tissue_um=400, mpp=2.0)
    # the fix, a smaller section, fits; and the estimate bounds what the build takes (measured
    # after a first, tiny build: the first one also imports and caches)
    hx.datasets.synthetic_section(seed=0, size_um=64, mpp=2.0, spots=False)
    tracemalloc.start()
    try:
        hx.datasets.synthetic_section(seed=0, size_um=200, mpp=1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= _synthetic_tissue.section_bytes((200, 200), 1.0) <= 8 * 2**20


@bad_input("obscure error", "`hx.datasets.synthetic_section(size_um=64)` with spots (the "
           "default) on a section smaller than the spots' pitch: no spot lies on the tissue",
           says="ValueError: No spot of the 55 um spots 100 um apart lies on the tissue of this "
                "64 x 64 um section. Pass a larger size_um (a few spot_pitch_um), a smaller "
                "spot_pitch_um, or spots=False. (before: IndexError: single positional indexer "
                "is out-of-bounds, from inside spatialdata)",
           fix="a larger size_um, a smaller spot_pitch_um, or spots=False")
def test_a_section_without_room_for_a_spot_says_so():
    with pytest.raises(ValueError, match=r"No spot of the 55 um spots 100 um apart lies on the "
                                         r"tissue of this 64 x 64 um section.*spots=False"):
        hx.datasets.synthetic_section(seed=0, size_um=64, mpp=2.0)
    small = hx.datasets.synthetic_section(seed=0, size_um=64, mpp=2.0, spot_pitch_um=20,
                                          spot_diameter_um=10)  # the fix: a smaller pitch
    assert small.tables["table"].n_obs > 0
    assert "spots" not in hx.datasets.synthetic_section(seed=0, size_um=64, mpp=2.0,
                                                        spots=False).shapes
