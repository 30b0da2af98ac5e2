"""``histoexpr predict --import MODULE``: a model written outside histoexpr, on the command line.

The user's module (written into a folder put on ``sys.path`` / ``PYTHONPATH``) registers its
model and network class when imported; ``--import`` imports it by name before the model file
is loaded. Without it, the model (or its network class) is unknown and the message says how.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import spatialdata as sd
from _catalogue import bad_input
from conftest import tree_digest

import histoexpr as hx
from histoexpr._cli import EXIT_BAD_INPUT, EXIT_CANNOT_PREDICT, main

MODULE = "cli_toy_model"

TOY = '''
"""A model of one's own: each tile's centre (um) times a learnt weight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

import histoexpr as hx
from histoexpr.models import Network


class ToyNet(Network):
    """One weight (a network class of one's own)."""

    def __init__(self, *, weight: float = 1.0) -> None:
        super().__init__(config={"weight": weight})
        self.weight = torch.nn.Parameter(torch.tensor(float(weight)))

    def forward(self, x):
        return x * self.weight


@dataclass(frozen=True, kw_only=True)
class ToyOptions(hx.tl.ModelOptions):
    """Options of model ``"cli_toy"``.

    Parameters
    ----------
    weight
        The weight learnt.
    """

    model: ClassVar[str] = "cli_toy"

    weight: float = 0.5


def fit(data, options):
    network = ToyNet(weight=options.weight)
    network.metadata = {"model": "cli_toy", "tiles_key": "toy_tiles", "size_um": 40.0,
                        "mpp": 1.0, "image_key": "he"}
    return network


def predict(model, data, *, key_added="cli_toy", overwrite=False, tiles_key=None,
            image_key="he"):
    """Each tile's centre times the weight, as a table.

    Parameters
    ----------
    model
        The trained toy.
    data
        A SpatialData.
    key_added
        The table written.
    overwrite
        Replace it.
    tiles_key
        The tiles; those of training by default.
    image_key
        The image.
    """
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    tiles_key = tiles_key or model.metadata["tiles_key"]
    if key_added in data.tables and not overwrite:
        raise KeyError(f"{key_added} exists")
    if tiles_key not in data.shapes:
        hx.pp.tile(data, image_key, size_um=40.0, mpp=1.0, min_tissue=0, key_added=tiles_key)
    tiles = data.tables[f"{tiles_key}_table"]
    with torch.no_grad():
        values = model(torch.as_tensor(np.asarray(tiles.obsm["spatial"], dtype=np.float32)))
    obs = tiles.obs.copy()
    obs["region"] = pd.Categorical([tiles_key] * len(obs))
    table = ad.AnnData(X=values.numpy(), obs=obs, var=pd.DataFrame(index=["x", "y"]))
    data.tables[key_added] = TableModel.parse(table, region=tiles_key, region_key="region",
                                              instance_key="tile_id")
    return data.tables[key_added]


hx.models.register_network(ToyNet, overwrite=True)
hx.tl.register_model(hx.tl.ModelSpec("cli_toy", ToyOptions, __name__), overwrite=True)
'''


def _forget_toy() -> None:
    """The registrations of the toy module gone, as in a process that never imported it."""
    from histoexpr.models import _registry
    from histoexpr.tl import _models

    _models.MODEL_TABLE.pop("cli_toy", None)
    _registry._REGISTERED.pop("ToyNet", None)
    sys.modules.pop(MODULE, None)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy module in a folder on sys.path, a model file of it and a slide store."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(folder))
    module = __import__(MODULE)
    slide = tmp_path / "slide.zarr"
    hx.datasets.synthetic_section(seed=1, size_um=200).write(slide)
    model = hx.tl.fit(sd.read_zarr(slide), model="cli_toy", weight=2.0)
    assert isinstance(model, module.ToyNet)
    path = hx.io.save_model(model, tmp_path / "toy.pt")
    _forget_toy()  # the command line starts without it
    yield folder, path, slide
    _forget_toy()


@bad_input("obscure error", "`histoexpr predict -m model.pt` with the file of a model written "
           "outside histoexpr (registered with `hx.tl.register_model` in the user's code)",
           says="exit 3: model.pt holds a 'ToyNet' network, which this histoexpr does not have "
                "... --import MODULE, e.g. --import mypackage.models (before: 'Unknown model "
                "... It may come from another version of histoexpr', with no way to load it)",
           fix="`--import MODULE`: the module of yours that registers the model and its "
               "network class when imported")
def test_import_applies_a_model_of_ones_own(toy, tmp_path, capsys):
    folder, path, slide = toy
    out = tmp_path / "pred.zarr"
    base = ["predict", "-m", str(path), "-i", str(slide), "-o", str(out)]
    assert main(base) == EXIT_CANNOT_PREDICT  # its network class is unknown here
    error = capsys.readouterr().err
    assert "holds a 'ToyNet' network, which this histoexpr does not have" in error
    assert "--import MODULE, e.g. --import mypackage.models" in error
    assert not out.exists() and MODULE not in sys.modules
    assert main([*base, "--import", MODULE]) == 0
    written = sd.read_zarr(out)
    values = np.asarray(written.tables["cli_toy"].X)
    # each tile's centre times the learnt weight, 2
    centres = np.asarray(written.tables["toy_tiles_table"].obsm["spatial"])
    np.testing.assert_allclose(values, 2.0 * centres, rtol=1e-6)
    # what hx.tl.predict gives on the slide in Python (tiled as the command line tiles it:
    # the model's tile and pixel size), with the module imported
    section = sd.read_zarr(slide)
    hx.pp.tile(section, "he", size_um=40.0, mpp=1.0, key_added="toy_tiles")
    expected = hx.tl.predict(hx.io.load_model(path), section)
    np.testing.assert_allclose(values, np.asarray(expected.X), rtol=1e-6)


def test_a_known_network_of_an_unknown_model_names_import(toy, tmp_path, capsys):
    _, path, slide = toy
    network = hx.models.LinearHead(n_features=2, n_genes=2)
    network.metadata = {"model": "cli_toy"}  # histoexpr's class, the outside model's name
    head = hx.io.save_model(network, tmp_path / "head.pt")
    stores = tmp_path / "stores"
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"path\n{slide}\n")
    for source in (["-i", str(slide), "-o", str(tmp_path / "out.zarr")],
                   ["--manifest", str(manifest), "--store-dir", str(stores)]):
        for imports in ([], ["--import", "json"]):  # an import that registers nothing
            assert main(["predict", "-m", str(head), *source, *imports]) == EXIT_CANNOT_PREDICT
            error = capsys.readouterr().err
            assert "holds a 'cli_toy' model, which this histoexpr cannot apply" in error
            assert "--import MODULE" in error
            assert ("The modules given with --import (json) do not register it" in error) == \
                bool(imports)
    assert not stores.exists() and not (tmp_path / "out.zarr").exists()


@bad_input("obscure error", "`histoexpr predict --import mymodel.py` (a path), `--import` of a "
           "module that cannot be imported, or one that fails while imported",
           says="exit 2: --import takes the name of a module (e.g. mypackage.models), not "
                "'.../mymodel.py': histoexpr imports your code by name, never from a path",
           fix="install the package, or put its folder on PYTHONPATH, and give the module's "
               "name")
def test_import_refuses_paths_and_names_what_failed(toy, tmp_path, capsys):
    folder, path, slide = toy
    (folder / "broken_toy.py").write_text("raise RuntimeError('no licence file')\n")
    base = ["predict", "-m", str(path), "-i", str(slide), "-o", str(tmp_path / "out.zarr")]
    before = tree_digest(tmp_path)
    cases = {
        str(folder / f"{MODULE}.py"): f"(for {folder / MODULE}.py: PYTHONPATH={folder} ... "
                                      f"--import {MODULE})",
        "no_such_module_here": "no module 'no_such_module_here' can be imported here",
        "broken_toy": "--import broken_toy: importing it failed: RuntimeError: no licence file",
    }
    for name, said in cases.items():
        assert main([*base, "--import", name]) == EXIT_BAD_INPUT
        assert said in capsys.readouterr().err
    assert tree_digest(tmp_path) == before
    assert MODULE not in sys.modules  # nothing was imported from the path


def test_import_on_the_real_command_line(toy, tmp_path):
    """``python -m histoexpr`` in a fresh process, the module's folder on PYTHONPATH."""
    folder, path, slide = toy
    out = tmp_path / "pred.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(folder), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "histoexpr", "predict", "-m", str(path), "-i",
                           str(slide), "-o", str(out), "--import", MODULE],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sd.read_zarr(out).tables["cli_toy"].n_obs > 0
    help_text = subprocess.run([sys.executable, "-m", "histoexpr", "predict", "--help"],
                               capture_output=True, text=True).stdout
    assert "--import MODULE" in help_text


def test_the_command_line_module_imports_no_torch():
    code = "import sys, histoexpr._cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
