"""A saved figure is replaced by the next save only while it is as histoexpr saved it, there."""

from __future__ import annotations

import shutil

import matplotlib.pyplot as plt
import pytest
from _catalogue import bad_input

import histoexpr as hx


@pytest.fixture(scope="module")
def history_model():
    model = hx.models.TileEncoder(arch="small_cnn", in_channels=3)
    model.metadata["history"] = {"train_loss": [1.0, 0.5, 0.25], "val_loss": [1.1, 0.7, 0.4]}
    return model


def _save(model, path) -> None:
    hx.pl.history(model, save=path)
    plt.close("all")


@bad_input("data lost", "`hx.pl.<function>(..., save=\"fig.svg\")` where the user annotated the "
           "SVG histoexpr saved there by hand (the editor kept its metadata, the mark with it): "
           "the next save replaced it",
           says="FileExistsError: ... is a file that histoexpr's plotting functions wrote, but "
           "it changed since histoexpr wrote it",
           fix="save the figure under another name, or move the annotated one away")
@pytest.mark.parametrize("name", ["fig.svg", "fig.pdf", "fig.png", "fig.eps"])
def test_a_figure_edited_since_it_was_saved_is_not_replaced(tmp_path, history_model, name):
    path = tmp_path / name
    _save(history_model, path)
    _save(history_model, path)  # as saved: replaced
    data = path.read_bytes()
    if name.endswith(".svg"):
        edited = data.replace(b"</svg>", b'<text x="10" y="10">reviewed</text></svg>')
    else:
        edited = data[:-1] + bytes([data[-1] ^ 1])  # one bit of the drawing
    path.write_bytes(edited)
    with pytest.raises(FileExistsError, match="changed since histoexpr wrote it"):
        _save(history_model, path)
    assert path.read_bytes() == edited
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@bad_input("data lost", "`hx.pl.<function>(..., save=\"paper_figure_1.png\")` where the user had "
           "copied a figure histoexpr saved (`draft.png`) to that name: it was replaced",
           says="FileExistsError: ... is a file that histoexpr's plotting functions wrote, but "
           "it was written at another path: this one is a copy of it",
           fix="save the figure under another name")
def test_a_copy_of_a_saved_figure_is_not_replaced(tmp_path, history_model):
    _save(history_model, tmp_path / "draft.png")
    shutil.copy2(tmp_path / "draft.png", tmp_path / "paper_figure_1.png")
    copy = (tmp_path / "paper_figure_1.png").read_bytes()
    with pytest.raises(FileExistsError, match="written at another path"):
        _save(history_model, tmp_path / "paper_figure_1.png")
    assert (tmp_path / "paper_figure_1.png").read_bytes() == copy


def test_a_sealed_png_is_a_valid_png(tmp_path, history_model):
    from PIL import Image

    _save(history_model, tmp_path / "fig.png")
    with Image.open(tmp_path / "fig.png") as image:
        image.verify()  # every chunk's CRC, the sealed text one included
    with Image.open(tmp_path / "fig.png") as image:
        assert image.text["Software"].startswith("histoexpr figure hx-seal1:")
