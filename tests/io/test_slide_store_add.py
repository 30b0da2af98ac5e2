"""A slide store's elements are added to a section only under names the section does not use."""

from __future__ import annotations

import numpy as np
import pytest
from _catalogue import bad_input

import histoexpr as hx


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A one-slide cohort on disk, embedded (tissue map, tiles, features) and with predictions."""
    import anndata as ad
    import pandas as pd

    root = tmp_path_factory.mktemp("store_add")
    manifest = hx.datasets.synthetic_slide_cohort(root, 1, seed=0, size_um=160, mpp=1.0)
    cohort = hx.io.read_cohort(manifest, bulk=manifest.parent / "bulk.h5ad")
    hx.tl.embed_cohort(cohort, encoder="handcrafted", size_um=32, mpp=2.0)
    slide_id = cohort.ids[0]
    store = cohort.store(slide_id)
    centres = np.array([[20.0, 20.0], [60.0, 20.0]])
    table = ad.AnnData(np.ones((2, 1), dtype=np.float32),
                       obs=pd.DataFrame({"tile_id": [0, 1]}, index=["0", "1"]),
                       obsm={"spatial": centres}, uns={"tiles": {"size_um": 40.0}})
    store.write_prediction("pred", table, record={"tiles_key": "pred_tiles"},
                           slide={"slide_id": slide_id, "slide_path": str(cohort.path(slide_id))})
    return cohort, slide_id


def _element_keys(sdata) -> dict:
    return {kind: sorted(getattr(sdata, kind)) for kind in ("images", "labels", "shapes",
                                                            "tables")}


@bad_input("data lost", "`SlideStore.add_to(sdata)` where `sdata` holds the user's own element "
           "under a name the store uses (e.g. their hand-drawn `labels['he_tissue']`): replaced "
           "without a word",
           says="KeyError: sdata.labels['he_tissue'] already exists: SlideStore.add_to would put "
                "the elements of the store slide_00.zarr under those names, and it never "
                "replaces an element of the section. ... Nothing was added.",
           fix="add them to the slide as read afresh, or rename the element first")
def test_add_to_never_replaces_an_element_of_the_section(stored):
    from spatialdata.models import Labels2DModel

    cohort, slide_id = stored
    sdata = hx.io.read_wsi(cohort.path(slide_id), image_key="he")
    mine = Labels2DModel.parse(np.ones((16, 16), np.uint8), dims=("y", "x"))
    sdata.labels["he_tissue"] = mine
    before = _element_keys(sdata)
    with pytest.raises(KeyError, match=r"sdata.labels\['he_tissue'\] already exists: "
                       "SlideStore.add_to would put"):
        cohort.store(slide_id).add_to(sdata)
    assert _element_keys(sdata) == before and sdata.labels["he_tissue"] is mine
    # on the slide as read afresh, everything is added
    fresh = cohort.store(slide_id).add_to(hx.io.read_wsi(cohort.path(slide_id), image_key="he"))
    assert "he_tissue" in fresh.labels and "he_tiles_table" in fresh.tables


@bad_input("data lost", "`SlideStore.add_predictions_to(sdata)` where `sdata` holds the user's "
           "own table under the key of a stored table of predictions: replaced without a word",
           says="KeyError: sdata.tables['pred'] already exists: SlideStore.add_predictions_to "
                "would put the elements of the store slide_00.zarr under those names, and it "
                "never replaces an element of the section.",
           fix="add them to the slide as read afresh, or rename the table first")
def test_add_predictions_to_never_replaces_an_element_of_the_section(stored):
    import anndata as ad

    cohort, slide_id = stored
    sdata = hx.io.read_wsi(cohort.path(slide_id), image_key="he")
    mine = ad.AnnData(np.zeros((3, 2), dtype=np.float32))
    sdata.tables["pred"] = mine
    before = _element_keys(sdata)
    with pytest.raises(KeyError, match=r"sdata.tables\['pred'\] already exists: "
                       "SlideStore.add_predictions_to would put"):
        cohort.store(slide_id).add_predictions_to(sdata)
    assert _element_keys(sdata) == before and sdata.tables["pred"] is mine
    fresh = cohort.store(slide_id).add_predictions_to(
        hx.io.read_wsi(cohort.path(slide_id), image_key="he"))
    assert fresh.tables["pred"].n_obs == 2 and len(fresh.shapes["pred_tiles"]) == 2
