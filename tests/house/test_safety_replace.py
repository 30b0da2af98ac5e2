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
