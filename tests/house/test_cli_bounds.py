"""The command line checks its arguments before any work: the model is not even loaded.
"""

from __future__ import annotations

import pytest
from _catalogue import bad_input

import histoexpr as hx


@bad_input("obscure error", "`histoexpr predict -o missing_folder/out.zarr` (or `--batch-size 0`, "
           "`--device gpu`, `--mpp -1`): the error came after the slide was read and predicted",
           says="exit 2 before the model is loaded: `The folder of the output, ..., does not "
                "exist` / `--batch-size must be at least 1` / `settings.device='gpu' is not a "
                "device` / `--mpp must be a positive pixel size`",
           fix="create the folder or fix the option")
@pytest.mark.parametrize(("extra", "said"), [
    (["-o", "{tmp}/missing/out.zarr"], "does not exist"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--device", "gpu"], "is not a device"),
    (["--mpp", "-1"], "--mpp must be a positive"),
])
def test_cli_arguments_are_checked_before_the_work(tmp_path, monkeypatch, capsys, extra, said):
    from histoexpr._cli import EXIT_BAD_INPUT, main

    model, image = tmp_path / "m.pt", tmp_path / "slide.tif"
    model.write_bytes(b"x")
    image.write_bytes(b"x")

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(hx.io, "load_model", never)
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    out = [] if "-o" in extra else ["-o", str(tmp_path / "out.zarr")]
    code = main(["predict", "-m", str(model), "-i", str(image), *out, *extra])
    assert code == EXIT_BAD_INPUT
    assert said in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()
