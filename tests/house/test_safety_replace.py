"""Nothing histoexpr did not write is ever replaced: model files, checkpoints, cohorts, figures.

Every write that may land on an existing file asks one check (``_core.files.check_replaceable``)
whether what is there carries the mark of the step that writes it; these tests put a file of
the user's at each such path and check that it is still there byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from _catalogue import bad_input
from conftest import tree_digest

import histoexpr as hx

USER_BYTES = b"the user's own file: not a histoexpr output\n"


def _user_file(path: Path) -> Path:
    path.write_bytes(USER_BYTES)
    return path


@bad_input("data lost", "`hx.io.save_model(model, \"results.csv\", overwrite=True)` where the "
           "path holds a file of the user's (not a model file): it was replaced",
           says="FileExistsError: results.csv is a file that hx.io.save_model did not write (it "
           "does not carry its mark), so histoexpr will not replace it. Choose another path, or "
           "move it away yourself if it is no longer needed.",
           match=r"did not write \(it does not carry its mark\)",
           fix="save the model under another name")
def test_save_model_replaces_only_a_model_file(tmp_path):
    model = hx.models.TileEncoder(arch="small_cnn", in_channels=3)
    user = _user_file(tmp_path / "results.csv")
    with pytest.raises(FileExistsError, match="did not write"):
        hx.io.save_model(model, user, overwrite=True)
    assert user.read_bytes() == USER_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]
    # a torch file of another program (a plain state dict) is not a histoexpr model file either
    import torch

    other = tmp_path / "weights.pt"
    torch.save(model.state_dict(), other)
    before = other.read_bytes()
    with pytest.raises(FileExistsError, match="did not write"):
        hx.io.save_model(model, other, overwrite=True)
    assert other.read_bytes() == before
    # its own file is replaced with overwrite=True, refused without
    path = hx.io.save_model(model, tmp_path / "model.pt")
    with pytest.raises(FileExistsError, match="Pass overwrite=True"):
        hx.io.save_model(model, path)
    wider = hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8)
    hx.io.save_model(wider, path, overwrite=True)
    assert hx.io.load_model(path, device="cpu").get_config()["width"] == 8


@bad_input("data lost", "`hx.tl.pretrain(..., checkpoint_dir=folder, overwrite=True)` where "
           "`folder/pretrain_checkpoint.pt` is a file of the user's: it was replaced",
           says="FileExistsError: ... is a file that hx.tl.pretrain did not write (it does not "
           "carry its mark), so histoexpr will not replace it.",
           match=r"hx\.tl\.pretrain did not write",
           fix="give another checkpoint_dir")
def test_pretrain_overwrite_replaces_only_its_checkpoint(tmp_path):
    sdata = hx.datasets.synthetic_section(seed=0, size_um=120, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=16, mpp=2.0, min_tissue=0.5)
    user = _user_file(tmp_path / "pretrain_checkpoint.pt")
    with pytest.raises(FileExistsError, match="did not write"):
        hx.tl.pretrain(sdata, "he_tiles", checkpoint_dir=tmp_path, overwrite=True, epochs=1,
                       encoder="small_cnn", batch_size=8)
    assert user.read_bytes() == USER_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pretrain_checkpoint.pt"]


@bad_input("data lost", "`hx.datasets.synthetic_slide_cohort(folder, ...)` into a folder holding "
           "the user's own `slide_00.tif` (or, with overwrite=True, their own `manifest.csv` or "
           "`bulk.h5ad`): the files were replaced",
           says="FileExistsError: .../slide_00.tif already exists. Pass overwrite=True to "
           "replace it (only if hx.datasets.synthetic_slide_cohort wrote it), or choose another "
           "path.",
           match=r"already exists\. Pass overwrite=True to replace it \(only if "
           r"hx\.datasets\.synthetic_slide_cohort wrote it\)",
           fix="write the cohort into another folder")
def test_synthetic_slide_cohort_replaces_only_its_own_files(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    _user_file(folder / "slide_00.tif")
    before = tree_digest(folder)
    with pytest.raises(FileExistsError, match="already exists"):
        hx.datasets.synthetic_slide_cohort(folder, 2, seed=0, size_um=100, mpp=1.0)
    with pytest.raises(FileExistsError, match="did not write"):
        hx.datasets.synthetic_slide_cohort(folder, 2, seed=0, size_um=100, mpp=1.0,
                                           overwrite=True)
    assert tree_digest(folder) == before
    (folder / "slide_00.tif").unlink()

    # its own cohort is replaced with overwrite=True
    manifest = hx.datasets.synthetic_slide_cohort(folder, 2, seed=0, size_um=100, mpp=1.0)
    hx.datasets.synthetic_slide_cohort(folder, 2, seed=1, size_um=100, mpp=1.0, overwrite=True)
    # a manifest the user edited is theirs now: refused, and nothing else is touched either
    manifest.write_text(manifest.read_text() + "extra.tif,extra,patient_99,normal\n")
    before = tree_digest(folder)
    with pytest.raises(FileExistsError, match="manifest.csv is a file that"):
        hx.datasets.synthetic_slide_cohort(folder, 2, seed=2, size_um=100, mpp=1.0,
                                           overwrite=True)
    assert tree_digest(folder) == before
    # so is a bulk table of another program
    import anndata as ad

    manifest.unlink()
    ad.AnnData(np.ones((2, 3), dtype=np.float32)).write_h5ad(folder / "bulk.h5ad")
    before = tree_digest(folder)
    with pytest.raises(FileExistsError, match="bulk.h5ad is a file that"):
        hx.datasets.synthetic_slide_cohort(folder, 2, seed=2, size_um=100, mpp=1.0,
                                           overwrite=True)
    assert tree_digest(folder) == before


@pytest.fixture(scope="module")
def history_model():
    """A network with a training history, the cheapest thing ``hx.pl`` draws."""
    model = hx.models.TileEncoder(arch="small_cnn", in_channels=3)
    model.metadata["history"] = {"train_loss": [1.0, 0.5, 0.25], "val_loss": [1.1, 0.7, 0.4]}
    return model


@bad_input("data lost", "`hx.pl.<function>(..., save=\"figure.png\")` where `figure.png` is a file "
           "of the user's: matplotlib wrote over it",
           says="FileExistsError: figure.png is a file that histoexpr's plotting functions did "
           "not write (it does not carry its mark), so histoexpr will not replace it.",
           match=r"plotting functions did not write",
           fix="save the figure under another name")
@pytest.mark.parametrize("name", ["figure.png", "figure.pdf", "figure.svg", "figure.jpg"])
def test_a_figure_replaces_only_a_figure_histoexpr_saved(tmp_path, history_model, name):
    user = _user_file(tmp_path / name)
    with pytest.raises(FileExistsError, match="did not write"):
        hx.pl.history(history_model, save=user)
    plt.close("all")
    assert user.read_bytes() == USER_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("name", ["figure.png", "figure.pdf", "figure.svg", "figure.eps"])
def test_saving_again_replaces_the_figure_histoexpr_saved(tmp_path, history_model, name):
    path = tmp_path / name
    hx.pl.history(history_model, save=path)
    first = path.read_bytes()
    history_model.metadata["history"]["train_loss"][-1] *= 0.5  # another curve each time
    hx.pl.history(history_model, save=path)
    plt.close("all")
    assert path.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


def test_a_figure_without_a_suffix_is_saved_as_png(tmp_path, history_model):
    hx.pl.history(history_model, save=tmp_path / "figure")
    plt.close("all")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@bad_input("obscure error", "`hx.pl.<function>(..., save=\"figure.xyz\")` (a format matplotlib "
           "does not write): the figure was drawn, then matplotlib failed",
           says="ValueError: Cannot save the figure to 'figure.xyz': matplotlib does not write "
           "the format 'xyz'. Give save= a file name ending in one of ...",
           match=r"matplotlib does not write the format 'xyz'",
           fix="use a suffix such as .png or .pdf")
def test_an_unknown_figure_format_is_refused_before_drawing(tmp_path, history_model):
    with pytest.raises(ValueError, match="does not write the format"):
        hx.pl.history(history_model, save=tmp_path / "figure.xyz")
    assert plt.get_fignums() == []
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- elements of a SpatialData


def _user_mask(sdata, key: str):
    """The user's hand-corrected copy of a label map (no record of its own), stored under key."""
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import get_transformation

    old = sdata.labels[key]
    edited = np.asarray(old.values).copy()
    edited[:3, :] = 0
    mine = Labels2DModel.parse(edited, dims=("y", "x"),
                               transformations=get_transformation(old, get_all=True))
    del sdata.labels[key]
    sdata.labels[key] = mine
    return mine


@bad_input("data lost", "`hx.pp.detect_tissue(sdata, 'he', overwrite=True)` where the user "
           "stored their own corrected mask (of the same shape) under `he_tissue`: the record of "
           "the earlier detection, a shape alone, took it for the step's own and replaced it",
           says="KeyError: sdata.labels['he_tissue'] already exists and it was not written by "
                "histoexpr, not by hx.pp.detect_tissue: it is not replaced, even with "
                "overwrite=True",
           fix="choose another key_added, or delete the mask yourself")
def test_a_mask_of_the_same_shape_is_not_taken_for_the_steps_own(synthetic):
    from histoexpr._core.ownership import writer_of

    sdata = synthetic(seed=0, size_um=300, transcripts=False, spots=False)
    hx.pp.detect_tissue(sdata, "he")
    assert writer_of(sdata, "he_tissue") == "hx.pp.detect_tissue"
    mine = _user_mask(sdata, "he_tissue")
    values = np.asarray(mine.values).copy()
    assert writer_of(sdata, "he_tissue") is None
    with pytest.raises(KeyError, match="it was not written by histoexpr, not by "
                       "hx.pp.detect_tissue"):
        hx.pp.detect_tissue(sdata, "he", overwrite=True)
    assert sdata.labels["he_tissue"] is mine
    np.testing.assert_array_equal(np.asarray(sdata.labels["he_tissue"].values), values)


@bad_input("data lost", "`hx.pp.detect_tissue(sdata, 'he', overwrite=True)` on a section saved "
           "by an earlier version, whose record of the mask is its shape alone",
           says="KeyError: sdata.labels['he_tissue'] already exists, and the record an earlier "
                "version of histoexpr made of it (written by hx.pp.detect_tissue) cannot tell it "
                "from an element put under that name since: it is not replaced, even with "
                "overwrite=True. If it is the one hx.pp.detect_tissue wrote, delete it first",
           fix="delete the mask first if it is the detected one, or choose another key_added")
def test_a_record_of_an_earlier_version_replaces_nothing(synthetic):
    from histoexpr._core.records import WRITER_KEY

    sdata = synthetic(seed=0, size_um=300, transcripts=False, spots=False)
    hx.pp.detect_tissue(sdata, "he")
    mask = sdata.labels["he_tissue"]
    del mask.attrs[WRITER_KEY]  # as read back from a store: the element's own record is lost
    written = sdata.attrs[WRITER_KEY]["written"]["he_tissue"]
    written["fingerprint"] = [int(n) for n in mask.shape]  # the earlier version's record
    with pytest.raises(KeyError, match="the record an earlier version of histoexpr made of it"):
        hx.pp.detect_tissue(sdata, "he", overwrite=True)
    assert sdata.labels["he_tissue"] is mask


@pytest.fixture(scope="module")
def spot_fit(synthetic):
    """A section with the spot tiles and features of a fit, and the spot regressor."""
    sdata = synthetic(seed=0, size_um=400, spot_pitch_um=40, spot_diameter_um=35, mpp=1.0)
    model = hx.tl.fit(sdata, model="spot_regressor", genes=["EPCAM", "COL1A1"], size_um=40.0,
                      mpp=1.0, encoder="handcrafted", seed=0)
    return sdata, model


@bad_input("data lost", "`hx.tl.fit(sdata, model='spot_regressor', size_um=...)` of another tile "
           "size after the user annotated the fit's tile table (an `obs` column, an `obsm` "
           "matrix, features of `hx.tl.embed`): the fit remade the tiles and the whole table "
           "with them",
           says="ValueError: The tiles 'spot_tiles' of section 'section_0' were made by an "
                "earlier fit otherwise (size_um: 40 um wide, not 30 um), but their table "
                "'spot_tiles_table' now holds entries that fit did not write: "
                "obs['my_annotation'], obsm['my_features']. Remaking the tiles would delete "
                "them, so they are kept: pass another tiles_key",
           fix="pass another tiles_key, or move the entries to a table of your own first")
def test_a_fit_remakes_only_a_tile_table_holding_nothing_else(spot_fit):
    sdata, _ = spot_fit
    table = sdata.tables["spot_tiles_table"]
    table.obs["my_annotation"] = "reviewed"
    table.obsm["my_features"] = np.ones((table.n_obs, 3))
    tiles = sdata.shapes["spot_tiles"].geometry.to_wkb().tolist()
    try:
        with pytest.raises(ValueError, match=r"now holds entries that fit did not write: "
                           r"obs\['my_annotation'\], obsm\['my_features'\]"):
            hx.tl.fit(sdata, model="spot_regressor", genes=["EPCAM", "COL1A1"], size_um=30.0,
                      mpp=1.0, encoder="handcrafted", seed=0)
        assert sdata.tables["spot_tiles_table"] is table
        assert "my_annotation" in table.obs and "my_features" in table.obsm
        assert sdata.shapes["spot_tiles"].geometry.to_wkb().tolist() == tiles
    finally:
        del table.obs["my_annotation"], table.obsm["my_features"]


def _foreign_predictions(sdata, key: str, **record) -> None:
    """A per-cell table under ``key``, as another model's predict (or an earlier one) wrote it."""
    import anndata as ad

    from histoexpr._core.ownership import store_element

    table = ad.AnnData(np.full((3, 2), 0.5, dtype=np.float32))
    store_element(sdata, "tables", key, table, step="hx.tl.predict", **record)


@bad_input("data lost", "`hx.tl.predict(spot_model, sdata, key_added='pred_cells', "
           "overwrite=True)` where `pred_cells` is the per-cell table of a cell-morphology map "
           "(`key_added='pred'`): every model's predict was one step, so it was replaced",
           says="KeyError: sdata.tables['pred_cells'] already exists and it was written by "
                "hx.tl.predict (a cell_morphology model, key_added='pred'), not by hx.tl.predict "
                "(a spot_regressor model, key_added='pred_cells'): it is not replaced, even with "
                "overwrite=True",
           fix="choose another key_added")
def test_predict_replaces_only_what_the_same_kind_of_model_wrote(spot_fit):
    sdata, model = spot_fit
    _foreign_predictions(sdata, "pred_cells", model="cell_morphology", group="pred")
    _foreign_predictions(sdata, "old_cells")  # an earlier version's: no kind recorded
    theirs = sdata.tables["pred_cells"]
    before = {kind: sorted(getattr(sdata, kind)) for kind in ("labels", "shapes", "tables")}
    try:
        with pytest.raises(KeyError, match=r"written by hx.tl.predict \(a cell_morphology "
                           r"model, key_added='pred'\), not by hx.tl.predict \(a spot_regressor"):
            hx.tl.predict(model, sdata, key_added="pred_cells", overwrite=True)
        with pytest.raises(KeyError, match="an earlier version of histoexpr, which did not "
                           "record the kind of model"):
            hx.tl.predict(model, sdata, key_added="old_cells", overwrite=True)
        assert sdata.tables["pred_cells"] is theirs
        assert {kind: sorted(getattr(sdata, kind))
                for kind in ("labels", "shapes", "tables")} == before
        # its own table is replaced
        first = hx.tl.predict(model, sdata, tiles_key="spot_tiles", key_added="spot_pred")
        again = hx.tl.predict(model, sdata, tiles_key="spot_tiles", key_added="spot_pred",
                              overwrite=True)
        assert again is not first and sdata.tables["spot_pred"] is again
    finally:
        for key in ("pred_cells", "old_cells", "spot_pred"):
            if key in sdata.tables:
                del sdata.tables[key]


@bad_input("data lost", "`hx.tl.fit({'a': s1, 'b': s2}, model='spot_regressor')` where only the "
           "second section holds tiles of the user's under the regressor's tiles key: the first "
           "section was tiled before the second was refused",
           says="ValueError: The tiles sdata.shapes['spot_tiles'] of section 'b' were not made "
           "for this fit (size_um: 50 um wide, not 112 um; ...",
           fix="another `tiles_key`, or move the user's tiles")
def test_a_refused_fit_tiles_no_section():
    first = hx.datasets.synthetic_section(seed=0, size_um=300)
    second = hx.datasets.synthetic_section(seed=1, size_um=300)
    hx.pp.tile(second, "he", size_um=50, mpp=1.0, centres="spots", min_tissue=0,
               key_added="spot_tiles")
    before = (sorted(first.shapes), sorted(first.tables), sorted(first.labels))
    with pytest.raises(ValueError, match="The tiles sdata.shapes\\['spot_tiles'\\] of section "
                       "'b' were not made for this fit"):
        hx.tl.fit({"a": first, "b": second}, model="spot_regressor", genes=["EPCAM"],
                  encoder="handcrafted", seed=0)
    assert (sorted(first.shapes), sorted(first.tables), sorted(first.labels)) == before


@bad_input("data lost", "`hx.pp.tile(sdata, overwrite=True)` again on tiles whose table holds "
           "the features of `hx.tl.embed` and the user's own columns: the whole table was "
           "replaced, those entries lost",
           says="KeyError: The tile table 'he_tiles_table' holds entries hx.pp.tile did not "
           "write: obs['my_annotation'], obsm['my_features'], obsm['X_handcrafted']",
           fix="another `key_added`, or move those entries to a table of your own first")
def test_retiling_keeps_a_tile_table_holding_other_entries():
    section = hx.datasets.synthetic_section(seed=0, size_um=300)
    hx.pp.tile(section, "he", size_um=100, mpp=2.0)
    table = section.tables["he_tiles_table"]
    table.obs["my_annotation"] = "reviewed"
    table.obsm["my_features"] = np.ones((table.n_obs, 3))
    hx.tl.embed(section, "he_tiles", encoder="handcrafted")
    kept = table.obsm["X_handcrafted"].copy()
    with pytest.raises(KeyError, match=r"holds entries hx.pp.tile did not write: "
                       r"obs\['my_annotation'\], obsm\['my_features'\], obsm\['X_handcrafted'\]"):
        hx.pp.tile(section, "he", size_um=50, mpp=2.0, overwrite=True)
    assert section.tables["he_tiles_table"] is table
    np.testing.assert_array_equal(table.obsm["X_handcrafted"], kept)
    # tiles of its own alone are remade
    hx.pp.tile(section, "he", size_um=100, mpp=2.0, key_added="plain")
    hx.pp.tile(section, "he", size_um=50, mpp=2.0, key_added="plain", overwrite=True)
    assert section.tables["plain_table"].uns["tiles"]["size_um"] == pytest.approx(50)
