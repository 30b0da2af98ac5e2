"""Tables of predictions in slide stores are replaced only as histoexpr wrote them.

``hx.tl.predict(model, cohort, overwrite=True)`` (and ``histoexpr predict --manifest
--overwrite``) replaces a stored table only where it holds the files written with it, unchanged:
a file of the user's put inside it since is named, and nothing of any store is touched.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _catalogue import bad_input
from conftest import tree_digest

import histoexpr as hx

GENES = ["EPCAM", "KRT8", "COL1A1", "PTPRC"]
KEY = "he_expr_tiles_expression"
NOTE = b"tile_id,pathologist_call\n0,tumour\n"


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Two small pyramidal TIFF slides (H&E only) and their manifest."""
    hx.settings.progress_bar = False
    folder = tmp_path_factory.mktemp("store_files_slides")
    return hx.datasets.synthetic_slide_cohort(folder, 2, seed=0, size_um=300, mpp=1.0)


@pytest.fixture(scope="module")
def network():
    """A spot regressor (ridge on hand-crafted features of 40 um tiles)."""
    train = {
        name: hx.datasets.synthetic_section(
            seed=seed, size_um=400, spot_pitch_um=40, spot_diameter_um=35, mpp=1.0
        )
        for seed, name in enumerate("ab")
    }
    return hx.tl.fit(train, model="spot_regressor", genes=GENES, size_um=40.0, mpp=1.0)


def _table(cohort, slide_id):
    return cohort.store(slide_id).path / "predictions" / KEY


def _single_slide(network, cohort, slide_id, **options):
    sdata = hx.io.read_wsi(cohort.path(slide_id), image_key="he")
    return hx.tl.predict(network, sdata, **options)


@bad_input(
    "data lost",
    "`hx.tl.predict(model, cohort, overwrite=True)` with other options after the user put a "
    "file (`my_annotations.csv`) inside a stored table of predictions "
    "(`<slide>.zarr/predictions/<key>/`): the file was deleted without a word",
    says="ValueError: The predictions 'he_expr_tiles_expression' in the store of 'slide_01' "
         "... hold files that histoexpr did not write there: my_annotations.csv (added since "
         "hx.tl.predict wrote the table). overwrite=True (--overwrite on the command line) "
         "replaces only what hx.tl.predict wrote, never a file of yours, so nothing was "
         "deleted. Move those files out of ...",
    fix="move the file out of the table (or the table away), or predict into another "
        "key_added or store_dir",
)
def test_a_file_of_the_users_in_a_stored_table_stops_the_cohort_before_any_slide(
        slides, network, tmp_path):
    cohort = hx.io.read_cohort(slides, store_dir=tmp_path / "stores")
    hx.tl.predict(network, cohort)
    before = {i: np.asarray(cohort.store(i).prediction(KEY).X) for i in cohort.ids}
    note = _table(cohort, "slide_01") / "my_annotations.csv"  # in the later slide's table
    note.write_bytes(NOTE)
    digest = tree_digest(tmp_path / "stores")

    with pytest.raises(ValueError, match=r"'slide_01' \(.*predictions.he_expr_tiles_expression\)"
                       r".*my_annotations\.csv \(added since.*nothing was deleted") as caught:
        hx.tl.predict(network, cohort, min_tissue=0.0, overwrite=True)
    assert str(_table(cohort, "slide_01")) in str(caught.value)
    assert "--store-dir" in str(caught.value)
    # refused while the plan was made: neither store was written (nor the first slide's)
    assert tree_digest(tmp_path / "stores") == digest
    assert note.read_bytes() == NOTE
    for slide_id in cohort.ids:
        np.testing.assert_array_equal(np.asarray(cohort.store(slide_id).prediction(KEY).X),
                                      before[slide_id])
        assert cohort.store(slide_id).prediction_records()[KEY]["min_tissue"] == 0.5

    # the same options again: nothing to write, the table and the file are kept as they are
    assert (hx.tl.predict(network, cohort)["status"] == "skipped").all()
    assert note.read_bytes() == NOTE


def test_the_store_itself_refuses_a_table_with_added_or_changed_files(slides, network, tmp_path):
    """SlideStore.write_prediction checks too (a file added after the cohort's plan)."""
    cohort = hx.io.read_cohort(slides, store_dir=tmp_path / "stores").subset(["slide_00"])
    hx.tl.predict(network, cohort)
    store, table = cohort.store("slide_00"), _table(cohort, "slide_00")
    record = {"made": "by hand"}
    new = _single_slide(network, cohort, "slide_00", min_tissue=0.0)
    note = table / "obs" / "my_notes.txt"
    note.write_bytes(NOTE)
    digest = tree_digest(tmp_path / "stores")
    with pytest.raises(ValueError, match=r"obs/my_notes\.txt \(added since"):
        store.write_prediction(KEY, new, record=record, slide={}, overwrite=True)
    assert tree_digest(tmp_path / "stores") == digest
    note.unlink()

    chunk = next(p for p in sorted(table.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes() + b"\0")  # a part of the table edited since
    name = chunk.relative_to(table).as_posix()
    digest = tree_digest(tmp_path / "stores")
    with pytest.raises(ValueError, match=rf"{name} \(changed since.*nothing was deleted"):
        store.write_prediction(KEY, new, record=record, slide={}, overwrite=True)
    assert tree_digest(tmp_path / "stores") == digest


def test_a_table_of_histoexprs_files_only_is_replaced_with_the_new_options(
        slides, network, tmp_path):
    cohort = hx.io.read_cohort(slides, store_dir=tmp_path / "stores")
    first = hx.tl.predict(network, cohort)
    with pytest.raises(ValueError, match=r"min_tissue differ.*--overwrite on the command line"):
        hx.tl.predict(network, cohort, min_tissue=0.0)

    frame = hx.tl.predict(network, cohort, min_tissue=0.0, overwrite=True)
    assert (frame["status"] == "computed").all()
    assert (frame["n_tiles"] > first["n_tiles"]).all()  # tiles with less tissue now kept
    for slide_id in cohort.ids:
        stored = cohort.store(slide_id).prediction(KEY)
        expected = _single_slide(network, cohort, slide_id, min_tissue=0.0)
        assert stored.n_obs == expected.n_obs == frame.loc[slide_id, "n_tiles"]
        np.testing.assert_array_equal(np.asarray(stored.X), np.asarray(expected.X))
        assert cohort.store(slide_id).prediction_records()[KEY]["min_tissue"] == 0.0
        assert not sorted(_table(cohort, slide_id).parent.glob("*partial*"))

    # a rewrite of the store by embed_cohort keeps the table as written: still replaceable
    hx.tl.embed_cohort(cohort.subset(["slide_00"]), encoder="handcrafted", size_px=16, mpp=2.0)
    frame = hx.tl.predict(network, cohort, min_tissue=0.25, overwrite=True)
    assert (frame["status"] == "computed").all()
    assert cohort.store("slide_00").prediction_records()[KEY]["min_tissue"] == 0.25


def _as_an_earlier_version_wrote_it(table):
    """Drop the list of files from the table's attributes (earlier versions kept none)."""
    meta = table / "zarr.json"
    content = json.loads(meta.read_text())
    assert content["attributes"].pop("histoexpr_prediction_files")
    meta.write_text(json.dumps(content))


def test_a_table_of_an_earlier_version_is_replaced_only_when_it_holds_zarr_parts_alone(
        slides, network, tmp_path):
    cohort = hx.io.read_cohort(slides, store_dir=tmp_path / "stores").subset(["slide_00"])
    hx.tl.predict(network, cohort)
    table = _table(cohort, "slide_00")
    _as_an_earlier_version_wrote_it(table)
    note = table / "X" / "notes.txt"  # beside the chunks of an array
    note.write_bytes(NOTE)
    os.symlink(note, table / "link.csv")
    digest = tree_digest(tmp_path / "stores")
    with pytest.raises(ValueError, match=r"X/notes\.txt, link\.csv \(not part of the zarr table"
                       r".*earlier version"):
        hx.tl.predict(network, cohort, min_tissue=0.0, overwrite=True)
    assert tree_digest(tmp_path / "stores") == digest

    note.unlink()
    (table / "link.csv").unlink()
    frame = hx.tl.predict(network, cohort, min_tissue=0.0, overwrite=True)
    assert frame["status"].tolist() == ["computed"]
    assert cohort.store("slide_00").prediction_records()[KEY]["min_tissue"] == 0.0
    assert "histoexpr_prediction_files" in json.loads(
        (table / "zarr.json").read_text())["attributes"]
