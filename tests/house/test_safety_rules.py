"""Safety rules: a refused call writes nothing, reused
features say exactly how they were made, a user's copy of an element is the user's, and a
``save=`` into a missing folder fails before drawing.

Each test is one bad input of the catalogue (``docs/bad_inputs.md``).
"""

from __future__ import annotations

import numpy as np
import pytest
from _catalogue import bad_input

import histoexpr as hx


def _elements(sdata) -> dict[str, list[str]]:
    return {kind: sorted(getattr(sdata, kind)) for kind in ("images", "labels", "shapes",
                                                             "points", "tables")}


def _glass_with_a_speck():
    """Bright glass with noise and one small stained speck: tissue is found, but no tile on it."""
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel

    from histoexpr._core.elements import scale_to_global

    rng = np.random.default_rng(0)
    pixels = rng.integers(225, 250, (3, 600, 600)).astype(np.uint8)
    pixels[:, 10:90, 10:90] = np.array([200, 110, 180], dtype=np.uint8)[:, None, None]
    image = Image2DModel.parse(pixels, dims=("c", "y", "x"), transformations=scale_to_global(1.0))
    return SpatialData(images={"he": image})


# --- 1. a refused hx.pp.tile leaves no tissue map behind ----------------------------------------

@bad_input("data lost", "`hx.pp.tile` on an image with (almost) no tissue and no tissue map",
           says="ValueError: No tile of ... has at least min_tissue=0.5 of its area on tissue "
                "... Lower min_tissue or use smaller tiles — the tissue map it detected on the "
                "way is removed again, so sdata is as before",
           fix="lower min_tissue or use smaller tiles")
@pytest.mark.filterwarnings("ignore:The tissue detected")
def test_tile_refusal_leaves_no_tissue_map():
    sdata = _glass_with_a_speck()
    before, attrs = _elements(sdata), dict(sdata.attrs)
    with pytest.raises(ValueError, match="min_tissue.*Lower min_tissue or use smaller tiles"):
        hx.pp.tile(sdata, "he", size_px=224)
    assert _elements(sdata) == before
    assert dict(sdata.attrs) == attrs
    # the same image with small enough tiles: the map is detected and kept with the tiles
    hx.pp.tile(sdata, "he", size_px=40)
    assert "he_tissue" in sdata.labels and len(sdata.shapes["he_tiles"]) >= 1


# --- 2. features of random-weight encoders record the weights drawn -----------------------------

@pytest.fixture(scope="module")
def small_section():
    sdata = hx.datasets.synthetic_section(seed=1, size_um=300, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=32, mpp=1.0, min_tissue=0.5)
    return sdata


@bad_input("silently wrong", "features of an architecture at random weights (no checkpoint) "
                             "drawn with another seed, reused as if the same",
           says="the features' fingerprint holds a digest of the weights drawn "
                "(`small_cnn:random:<digest>`): another draw differs, so the features are "
                "remade or refused as for any other encoder",
           fix="embed every section with the same seed, or give checkpoint= (fixed weights)")
@pytest.mark.filterwarnings("ignore:encoder='small_cnn' without checkpoint")
def test_random_encoders_of_other_seeds_have_other_fingerprints(small_section):
    import torch

    from histoexpr._core.records import EmbeddingRecord

    table = small_section.tables["he_tiles_table"]
    for key, seed in (("X_a", 0), ("X_b", 1), ("X_c", 0)):
        torch.manual_seed(seed)
        hx.tl.embed(small_section, encoder="small_cnn", key_added=key)
    records = table.uns["embeddings"]
    a, b, c = (records[k]["fingerprint"] for k in ("X_a", "X_b", "X_c"))
    assert a.startswith("small_cnn:random:") and a != b and a == c
    assert not np.allclose(table.obsm["X_a"], table.obsm["X_b"])
    np.testing.assert_array_equal(table.obsm["X_a"], table.obsm["X_c"])
    # the reuse check of the spot regressor (as any other) now tells the two draws apart
    x_a, x_b, x_c = (EmbeddingRecord.from_uns(records[k]) for k in ("X_a", "X_b", "X_c"))
    differences = x_a.differences(x_b)
    assert len(differences) == 1 and a in differences[0] and b in differences[0]
    assert differences[0].startswith("fingerprint:")
    assert x_a.differences(x_c) == []
    # fixed encoders keep their fingerprints as before
    hx.tl.embed(small_section, encoder="handcrafted", key_added="X_h")
    assert records["X_h"]["fingerprint"] == "handcrafted"


# --- 3. a user's copy of histoexpr's element, under another name, is the user's -----------------

@bad_input("data lost", "`sdata.shapes['mine'] = sdata.shapes['he_tiles'].copy()` (a copy of "
                        "histoexpr's element under the user's name), then `hx.pp.tile(..., "
                        "key_added='mine', overwrite=True)`",
           says="KeyError: sdata.shapes['mine'] already exists and it was not written by "
                "histoexpr ... it is not replaced, even with overwrite=True — the writer "
                "record names the key it was written under; a copy under another key is the "
                "user's",
           fix="choose another key_added")
def test_a_users_copy_under_another_key_is_not_replaced(synthetic):
    sdata = synthetic(seed=2, size_um=200, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=32, mpp=1.0, min_tissue=0.5)
    sdata.shapes["mine"] = sdata.shapes["he_tiles"].copy()
    sdata.tables["mine_table"] = sdata.tables["he_tiles_table"].copy()
    shapes, table = sdata.shapes["mine"].copy(), sdata.tables["mine_table"].copy()
    with pytest.raises(KeyError, match=r"sdata.shapes\['mine'\].*not written by histoexpr.*"
                                       r"Choose another key_added"):
        hx.pp.tile(sdata, "he", size_px=16, mpp=1.0, key_added="mine", overwrite=True)
    assert sdata.shapes["mine"].geometry.equals(shapes.geometry)
    assert sdata.tables["mine_table"].obs.equals(table.obs)
    with pytest.raises(KeyError, match="not written by histoexpr"):  # the table alone as well
        del sdata.shapes["mine"]
        hx.pp.tile(sdata, "he", size_px=16, mpp=1.0, key_added="mine", overwrite=True)
    assert sdata.tables["mine_table"].obs.equals(table.obs)
    # histoexpr's own element under its own key is still replaced by the same step
    hx.pp.tile(sdata, "he", size_px=16, mpp=1.0, overwrite=True)
    assert sdata.tables["he_tiles_table"].uns["tiles"]["size_px"] == 16


# --- 4. save= into a folder that does not exist: a clear error before drawing -------------------

@bad_input("obscure error", "`hx.pl.<function>(..., save='results/figure.png')` when the folder "
                            "`results` does not exist",
           says="FileNotFoundError: Cannot save the figure to ...: the folder ... does not exist "
                "(it is not created for you) — raised before anything is drawn (was "
                "matplotlib's own FileNotFoundError after drawing)",
           fix="create the folder first, or give save= a path in an existing folder")
def test_save_into_a_missing_folder_is_named_before_drawing(tmp_path, synthetic):
    import inspect

    import matplotlib.pyplot as plt
    import pandas as pd

    sdata = synthetic(seed=2, size_um=200, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=32, mpp=1.0, min_tissue=0.5)
    metrics = pd.DataFrame({"pearson": [0.5, 0.2]}, index=["GENE1", "GENE2"])
    missing = tmp_path / "results" / "figures"
    plt.close("all")
    for name, call in (("tiles", lambda path: hx.pl.tiles(sdata, "he_tiles", save=path)),
                       ("gene_metrics", lambda path: hx.pl.gene_metrics(metrics, save=path))):
        with pytest.raises(FileNotFoundError, match=r"folder .*results/figures' does not exist"
                                                    r".*Create it first"):
            call(missing / f"{name}.png")
        assert plt.get_fignums() == []  # nothing was drawn
        assert not (tmp_path / "results").exists()  # and no folder made
        ax = call(tmp_path / f"{name}.png")  # an existing folder: saved as before
        assert (tmp_path / f"{name}.png").stat().st_size > 0
        plt.close(ax.figure)
    # every plotting function with save= checks it first
    for name in hx.pl.__all__:
        function = getattr(hx.pl, name)
        if callable(function) and "save" in inspect.signature(function).parameters:
            assert "check_save(save)" in inspect.getsource(function), name


# --- 5. hx.tl.embed(overwrite=True) replaces only features it wrote ---------------------------

@bad_input("data lost", "`hx.tl.embed(..., key_added=K, overwrite=True)` where `obsm[K]` of the "
                        "tile table holds the user's own matrix (e.g. features of their own "
                        "pipeline)",
           says="KeyError: obsm[...] of the tile table was not written by hx.tl.embed ... "
                "does not replace it, even with overwrite=True",
           fix="choose another key_added")
def test_embed_overwrite_never_replaces_the_users_own_matrix(small_section):
    table = small_section.tables["he_tiles_table"]
    mine = np.random.default_rng(0).normal(size=(table.n_obs, 5))
    table.obsm["X_mine"] = mine.copy()
    with pytest.raises(KeyError, match="not written by hx.tl.embed"):
        hx.tl.embed(small_section, encoder="handcrafted", key_added="X_mine", overwrite=True)
    assert table.obsm["X_mine"].tobytes() == mine.tobytes()
    assert "X_mine" not in table.uns.get("embeddings", {})
    # histoexpr's own features are replaced by the same step with overwrite=True
    hx.tl.embed(small_section, encoder="handcrafted", key_added="X_ours")
    first = table.obsm["X_ours"].copy()
    hx.tl.embed(small_section, encoder="handcrafted", key_added="X_ours", overwrite=True)
    np.testing.assert_array_equal(table.obsm["X_ours"], first)
