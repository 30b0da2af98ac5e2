"""The typed records of tiles, embeddings, model metadata and writers (``histoexpr._core.records``).

Round trips, the forms earlier versions stored (``made_by`` stamps, ``patch_um`` in model
files), ``differences`` naming the field, and the reuse checks that refuse with it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from _catalogue import bad_input
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, Labels2DModel
from spatialdata.transformations import Scale

import histoexpr as hx
from histoexpr._core.records import (
    EmbeddingRecord,
    ModelMetadata,
    TileRecord,
    WriterRecord,
    made_within,
    migrate_model_metadata,
    within_of,
)
from histoexpr.io._elements import spot_elements

GENES = ["A", "B", "C"]


def small_section(seed: int = 0) -> SpatialData:
    """A 96 x 96 um section at 1 um/px with spots every 16 um and their counts."""
    rng = np.random.default_rng(seed)
    image = rng.integers(80, 240, (3, 96, 96), dtype=np.uint8)
    he = Image2DModel.parse(
        image,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        transformations={"global": Scale([1.0, 1.0], axes=("y", "x"))},
    )
    tissue = Labels2DModel.parse(
        np.ones((24, 24), dtype=np.uint8),
        dims=("y", "x"),
        transformations={"global": Scale([4.0, 4.0], axes=("y", "x"))},
    )
    grid = np.arange(16, 81, 16, dtype=float)
    centres = np.array([(x, y) for y in grid for x in grid])
    counts = rng.poisson(20, (len(centres), len(GENES))).astype(np.float32)
    spots, table = spot_elements(
        centres,
        counts,
        obs=pd.DataFrame(index=[f"s{i}" for i in range(len(centres))]),
        var=pd.DataFrame(index=GENES),
        radius_um=6.0,
    )
    return SpatialData(
        images={"he": he},
        labels={"he_tissue": tissue},
        shapes={"spots": spots},
        tables={"table": table},
    )


# --- records: round trips, earlier forms, differences ----------------------------------------


def test_tile_record_round_trip_is_what_tile_writes():
    sdata = small_section()
    hx.pp.tile(
        sdata, "he", size_um=16, mpp=1.0, centres="spots", min_tissue=0, key_added="spot_tiles"
    )
    stored = dict(sdata.tables["spot_tiles_table"].uns["tiles"])
    record = TileRecord.from_uns(stored)
    assert record == TileRecord(
        image_key="he",
        size_px=16,
        mpp=1.0,
        size_um=16.0,
        stride_um=None,
        centres="spots",
        min_tissue=0.0,
    )
    assert record.to_uns() == stored
    assert TileRecord.from_uns(record.to_uns()) == record
    with pytest.raises(AttributeError):
        record.size_um = 2.0  # frozen


def test_tile_record_reads_the_made_by_stamp_of_earlier_versions():
    old = {
        "image_key": "he",
        "size_px": 16,
        "mpp": 1.0,
        "size_um": 16.0,
        "stride_um": None,
        "centres": "spots",
        "min_tissue": 0.0,
        "made_by": "spot_regressor",
    }
    record = TileRecord.from_uns(old)
    assert "made_by" not in record.to_uns()
    assert within_of({"tiles": old}) == "spot_regressor"  # the old stamp, still read
    new = {
        "tiles": record.to_uns(),
        "histoexpr": WriterRecord("hx.pp.tile", "t_table", "spot_regressor").to_uns(),
    }
    assert within_of(new) == "spot_regressor"
    assert within_of({"tiles": record.to_uns()}) is None


def test_tile_differences_name_the_field():
    stored = TileRecord(image_key="he", size_px=16, mpp=1.0, size_um=16.0, centres="spots")
    assert stored.differences(TileRecord(size_um=16.5, mpp=1.04)) == []  # within 5 %
    differences = stored.differences(
        TileRecord(image_key="dapi", size_um=24.0, mpp=2.0, centres="cells")
    )
    assert [d.split(":")[0] for d in differences] == ["size_um", "mpp", "image_key", "centres"]
    assert differences[0] == "size_um: 16 um wide, not 24 um"
    assert differences[1] == "mpp: at 1 um/px, not 2 um/px"
    # an older record without image key or centres is not held against the tiles
    assert (
        TileRecord(size_px=16, mpp=1.0, size_um=16.0).differences(
            TileRecord(image_key="he", centres="spots")
        )
        == []
    )
    read = stored.read_at(2.0)
    assert (read.size_px, read.mpp, read.size_um) == (8, 2.0, 16.0)


def test_embedding_record_round_trip_old_form_and_differences():
    old = {
        "encoder": "handcrafted",
        "fingerprint": "handcrafted",
        "image_key": "he",
        "mpp": 1.0,
        "size_px": 16,
        "n_off_image": 0,
        "n_features": 30,
        "made_by": "spot_regressor",
    }
    record = EmbeddingRecord.from_uns(old)
    assert record.within == "spot_regressor"  # the old stamp, read as the writer's
    new = record.to_uns()
    assert "made_by" not in new and new["histoexpr"]["within"] == "spot_regressor"
    assert EmbeddingRecord.from_uns(new) == record
    assert {k: v for k, v in new.items() if k != "histoexpr"} == {
        k: v for k, v in old.items() if k != "made_by"
    }

    other = EmbeddingRecord(
        encoder="handcrafted",
        fingerprint="x",
        image_key="he",
        mpp=2.0,
        size_px=8,
        transform={"method": "macenko"},
    )
    fields = [d.split(":")[0] for d in record.differences(other)]
    assert fields == ["fingerprint", "mpp", "size_px", "transform"]
    named = EmbeddingRecord(encoder="squidpy", image_key="he", mpp=1.0, size_px=16)
    assert record.differences(named) == ["encoder: 'handcrafted', not 'squidpy'"]


def test_embedding_differences_of_chosen_fields_and_across_sections():
    stain = {
        "method": "macenko",
        "reference": {"stain_matrix": [[0.6, 0.1], [0.7, 0.9], [0.3, 0.4]]},
        "source": {"stain_matrix": [[0.5, 0.2], [0.8, 0.8], [0.3, 0.5]]},
    }
    mine = EmbeddingRecord(
        encoder="handcrafted",
        fingerprint="f",
        image_key="he_a",
        mpp=1.0,
        size_px=16,
        transform=stain,
        params={"seed": 3, "key": "X"},
    )
    other_source = {**stain, "source": {"stain_matrix": [[0.4, 0.2], [0.9, 0.8], [0.2, 0.5]]}}
    theirs = EmbeddingRecord(
        encoder="handcrafted",
        fingerprint="f",
        image_key="he_b",
        mpp=1.02,
        size_px=16,
        transform=other_source,
        params={"seed": 4, "key": "X"},
    )
    fields = [d.split(":")[0] for d in mine.differences(theirs)]
    assert fields == ["image_key", "transform"]  # params only when named
    # another section: its own image and its own stain (mapped onto the same reference) are fine
    assert mine.differences(theirs, across_sections=True) == []
    target = {**stain, "reference": {"stain_matrix": [[0.1, 0.1], [0.1, 0.1], [0.1, 0.1]]}}
    (text,) = mine.differences(replace(theirs, transform=target), across_sections=True)
    assert text.startswith("transform: macenko (") and text.count("macenko") == 2
    assert mine.differences(replace(theirs, transform=None), across_sections=True) == [
        text.split(", not ")[0] + ", not none"
    ]
    # only the fields named: e.g. those an older stored record has
    assert mine.differences(replace(theirs, mpp=2.0, transform=None), fields={"mpp"}) == [
        "mpp: tiles at 1 um/px, not 2"
    ]
    assert mine.differences(replace(theirs, transform=None), fields={"encoder", "size_px"}) == []
    assert mine.differences(theirs, fields={"params"}) == ["params['seed']: 3, not 4"]
    with pytest.raises(ValueError, match="not \\['n_features'\\]"):
        mine.differences(theirs, fields={"n_features"})


def test_tile_options_compared_exactly():
    """Tile options (a slide store's) differ by any field, None included, and by extra keys."""
    stored = TileRecord(size_px=16, mpp=2.0, min_tissue=0.5, extra={"stride_px": None})
    assert stored.differences(TileRecord.from_uns(stored.to_uns()), exact=True) == []
    assert stored.differences(replace(stored, mpp=2.05), exact=True) == ["mpp: 2.0, not 2.05"]
    assert stored.differences(replace(stored, mpp=2.05)) == []  # made tiles: within 5 %
    assert stored.differences(replace(stored, size_px=None, size_um=32.0), exact=True) == [
        "size_px: 16, not None",
        "size_um: None, not 32.0",
    ]
    assert stored.differences(replace(stored, extra={"stride_px": 8}), exact=True) == [
        "stride_px: None, not 8"
    ]


def test_embed_records_its_writer_and_made_within():
    sdata = small_section()
    hx.pp.tile(sdata, "he", size_um=16, mpp=1.0, min_tissue=0)
    hx.tl.embed(sdata, encoder="handcrafted", key_added="X_plain")
    with made_within("spot_regressor"):
        hx.tl.embed(sdata, encoder="handcrafted", key_added="X_mine")
    records = sdata.tables["he_tiles_table"].uns["embeddings"]
    assert records["X_plain"]["histoexpr"] == {"step": "hx.tl.embed", "key": "X_plain"}
    assert EmbeddingRecord.from_uns(records["X_mine"]).within == "spot_regressor"
    assert EmbeddingRecord.from_uns(records["X_plain"]).within is None
    table = sdata.tables["he_tiles_table"]
    assert table.uns["histoexpr"] == {"step": "hx.pp.tile", "key": "he_tiles_table"}


def test_model_metadata_migrates_the_old_names_of_the_tile_side():
    for old in ("patch_um", "tile_um"):
        metadata = {"model": "spot_regressor", "genes": ["A"], old: 40.0, "mpp": 1.0}
        migrated = migrate_model_metadata(metadata)
        assert migrated == {"model": "spot_regressor", "genes": ["A"], "size_um": 40.0, "mpp": 1.0}
        assert list(migrated) == ["model", "genes", "size_um", "mpp"]  # same place
    patch = {
        "model": "patch_classifier",
        "patch_size_um": [16.0, 32.0],
        "mpp": 1.0,
        "report": [{"name": "16 um", "patch_size_um": 16.0, "patch_px": 16}],
    }
    migrated = migrate_model_metadata(patch)
    assert migrated["size_um"] == [16.0, 32.0] and "patch_size_um" not in migrated
    assert migrated["report"] == [{"name": "16 um", "size_um": 16.0, "patch_px": 16}]
    current = {"model": "spot_regressor", "size_um": 40.0, "mpp": 1.0}
    assert migrate_model_metadata(current) is current  # nothing to migrate
    record = ModelMetadata.from_uns(
        {"model": "spot_regressor", "patch_um": 40.0, "mpp": 1.0, "image_key": "he"}
    )
    assert record.tiles() == TileRecord(image_key="he", size_um=40.0, mpp=1.0)
    assert ModelMetadata.from_uns(record.to_uns()) == record


def test_a_model_file_of_the_old_form_loads_migrated(tmp_path):
    network = hx.models.LinearHead(n_features=3, n_genes=2)
    network.metadata = {
        "model": "spot_regressor",
        "patch_um": 40.0,
        "mpp": 1.0,
        "image_key": "he",
        "tiles_key": "tiles",
    }
    path = hx.io.save_model(network, tmp_path / "old.pt")  # written as an earlier version did
    import torch

    assert torch.load(path, weights_only=True)["metadata"]["patch_um"] == 40.0
    loaded = hx.io.load_model(path, device="cpu")
    assert loaded.metadata["size_um"] == 40.0 and "patch_um" not in loaded.metadata

    from histoexpr._cli import _tile_as_trained

    sdata = small_section()
    _tile_as_trained(sdata, loaded.metadata, "he")
    assert sdata.tables["tiles_table"].uns["tiles"]["size_um"] == 40.0


# --- the reuse checks refuse naming the field; old stores still read ------------------------


def test_spot_regressor_refuses_user_tiles_naming_the_field():
    from histoexpr.tl._spot._spot_inputs import _tiles_at

    sdata = small_section()
    hx.pp.tile(
        sdata, "he", size_um=24, mpp=1.0, centres="spots", min_tissue=0, key_added="spot_tiles"
    )
    with pytest.raises(
        ValueError,
        match=r"not made for this fit \(size_um: 24 um wide, not "
        r"16 um\)",
    ):
        hx.tl.fit(sdata, model="spot_regressor", genes=GENES, size_um=16.0, mpp=1.0)
    with pytest.raises(ValueError, match=r"\(size_um: 24 um wide, not 16 um\).*trained on 16 um"):
        _tiles_at(sdata, "spot_tiles", size_um=16.0, mpp=1.0)


def test_tiles_the_spot_regressor_made_are_remade_old_stamp_included():
    from histoexpr.tl._spot._spot_inputs import _prepare_section

    sdata = small_section()
    options = {
        "image_key": "he",
        "spots_key": "spots",
        "table_key": "table",
        "tiles_key": "spot_tiles",
        "mpp": 1.0,
    }
    _prepare_section("a", sdata, GENES, size_um=16.0, **options)
    table = sdata.tables["spot_tiles_table"]
    assert table.uns["histoexpr"]["within"] == "spot_regressor"
    assert "made_by" not in table.uns["tiles"]
    _prepare_section("a", sdata, GENES, size_um=24.0, **options)  # its own: remade
    assert sdata.tables["spot_tiles_table"].uns["tiles"]["size_um"] == 24.0

    # tiles an earlier version made for the spot regressor: the stamp in uns["tiles"]
    hx.pp.tile(
        sdata, "he", size_um=24, mpp=1.0, centres="spots", min_tissue=0, key_added="old_tiles"
    )
    old = sdata.tables["old_tiles_table"]
    old.uns["tiles"]["made_by"] = "spot_regressor"
    _prepare_section("a", sdata, GENES, size_um=16.0, **{**options, "tiles_key": "old_tiles"})
    assert sdata.tables["old_tiles_table"].uns["tiles"]["size_um"] == 16.0


def test_a_store_of_the_earlier_form_still_reads(tmp_path):
    """A .zarr whose tiles and features carry the ``made_by`` stamps of earlier versions."""
    from histoexpr.tl._spot._spot_features import section_features

    sdata = small_section()
    hx.pp.tile(
        sdata, "he", size_um=16, mpp=1.0, centres="spots", min_tissue=0, key_added="spot_tiles"
    )
    hx.tl.embed(sdata, "spot_tiles", encoder="handcrafted", key_added="X_handcrafted")
    table = sdata.tables["spot_tiles_table"]
    record = dict(table.uns["embeddings"]["X_handcrafted"])
    del record["histoexpr"]
    table.uns["embeddings"]["X_handcrafted"] = {
        **record,
        "mpp": 2.0,  # made otherwise
        "made_by": "spot_regressor",
    }
    table.uns["tiles"]["made_by"] = "spot_regressor"
    sdata.write(tmp_path / "old.zarr")
    back = sd.read_zarr(tmp_path / "old.zarr")
    uns = back.tables["spot_tiles_table"].uns
    assert within_of(uns) == "spot_regressor"
    assert TileRecord.from_uns(uns["tiles"]) == TileRecord.from_uns(table.uns["tiles"])
    assert EmbeddingRecord.from_uns(uns["embeddings"]["X_handcrafted"]).within == "spot_regressor"
    # the spot regressor's check reads the old stamp: its own features, remade (not refused)
    features, made = section_features(
        back, "spot_tiles", encoder="handcrafted", features_key="X_handcrafted"
    )
    assert made["mpp"] == 1.0 and np.isfinite(features).all()
    remade = back.tables["spot_tiles_table"].uns["embeddings"]["X_handcrafted"]
    assert "made_by" not in remade and remade["histoexpr"]["within"] == "spot_regressor"


def test_too_large_patches_are_refused_naming_size_um():
    from histoexpr._core.image import image_levels
    from histoexpr.tl._patch._patch_data import _patch_scales

    sdata = small_section()
    with pytest.raises(ValueError, match=r"use a smaller size_um") as error:
        _patch_scales(500.0, 1.0, image_levels(sdata, "he")[0])
    assert "patch_size_um" not in str(error.value)


def _painted(tree, box_um, base_mpp):
    """The same pyramid with a box (um) painted white on every level (a pen mark wiped off)."""
    import dask.array as da
    import xarray as xr

    nodes = {}
    for name in tree.children:
        ds = tree[name].to_dataset()
        array = ds["image"]
        mpp = base_mpp * 2 ** int(name.removeprefix("scale"))
        values = np.asarray(array.values).copy()
        values[:, int(box_um[1] / mpp):int(box_um[3] / mpp),
               int(box_um[0] / mpp):int(box_um[2] / mpp)] = 255
        nodes[name] = ds.assign(image=array.copy(data=da.from_array(values,
                                                                    chunks=array.data.chunks)))
    new = xr.DataTree.from_dict(nodes)
    new.attrs.update(tree.attrs)
    return new


@bad_input("silently wrong", "part of a section's image edited after its tile features were "
           "made (a 160 um box painted over on every level: the image's fingerprint sampled 36 "
           "pixels and missed it): `hx.tl.fit(model='spot_regressor')` reused the old features",
           says="nothing: the features are made again from the pixels as they are now",
           fix="nothing to do")
def test_a_local_edit_of_the_image_is_seen_by_its_fingerprint():
    from histoexpr._core.image_facts import image_fingerprint

    section = hx.datasets.synthetic_section(seed=0, size_um=1000)
    fit = {"model": "spot_regressor", "genes": ["EPCAM", "PTPRC"], "size_um": 55, "mpp": 1.0,
           "route": "ridge", "encoder": "handcrafted"}
    hx.tl.fit({"a": section}, **fit)
    key = next(k for k in section.tables if "X_handcrafted" in section.tables[k].obsm)
    old = section.tables[key].obsm["X_handcrafted"].copy()
    before = image_fingerprint(section, "he")
    section.images["he"] = _painted(section.images["he"], (220, 220, 380, 380), 0.5)
    assert image_fingerprint(section, "he") != before
    hx.tl.fit({"a": section}, **fit)
    now = section.tables[key].obsm["X_handcrafted"]
    hx.tl.embed(section, key.removesuffix("_table"), encoder="handcrafted", key_added="X_fresh")
    np.testing.assert_allclose(now, section.tables[key].obsm["X_fresh"], rtol=1e-6, atol=1e-6)
    assert 0 < (~np.isclose(old, now).all(axis=1)).sum() < len(old) / 4
