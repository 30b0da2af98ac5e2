"""A model written outside histoexpr: registered with ``hx.tl.register_model``, then trained,
applied and cross-validated through ``hx.tl`` like histoexpr's own.

The models are written as a user writes them: a package re-exporting its functions with an
absolute import, a notebook (module ``__main__``, no file), a spot model that reuses histoexpr's
HEST protocol and cohort runner. A registration that fails leaves nothing behind; options are
checked by their own annotations (every ``Literal``, a ``width`` that is a float).
"""

from __future__ import annotations

import sys
import textwrap
import types

import numpy as np
import pytest
from _catalogue import bad_input

import histoexpr as hx
from histoexpr.tl import _api, _models

SPOT_CV = "histoexpr.tl._spot._cross_validate:cross_validate_spots"

PACKAGE_IMPL = '''
"""A toy model: the mean of the training values plus ``shift``, times ``width``."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from histoexpr.models import Network
from histoexpr.tl import ModelOptions, TrainingOptions

FITTED = []


@dataclass(frozen=True, kw_only=True)
class PackageOptions(TrainingOptions):
    """Options of model ``"package_toy"`` (the training options are histoexpr's).

    Parameters
    ----------
    shift
        Added to the learnt number.
    width
        Multiplies the learnt number (a float, whatever histoexpr's own ``width`` means).
    centre
        ``"mean"`` or ``"median"`` of the training values.
    pool
        How values are pooled, or ``None``.
    """

    model: ClassVar[str] = "package_toy"

    shift: float = 0.0
    width: float = 12.5
    centre: Literal["mean", "median"] = "mean"
    pool: typing.Literal["max", "avg"] | None = None


def fit(data: dict[str, Any], options: PackageOptions) -> Network:
    """Learn one number from every value of ``data``."""
    FITTED.append(options)
    values = np.concatenate([np.asarray(v, dtype=float) for v in data.values()])
    centre = np.mean(values) if options.centre == "mean" else np.median(values)
    network = Network(config={})
    network.metadata = {"model": "package_toy",
                        "value": (float(centre) + options.shift) * options.width}
    return network


def predict(model: Network, data: dict[str, Any], *, key_added: str = "package_pred",
            overwrite: bool = False, package_scale: float = 1.0) -> dict[str, Any]:
    """Predict the learnt number for every value.

    Parameters
    ----------
    model
        The trained toy.
    data
        A mapping of arrays by name.
    key_added
        Where the predictions go.
    overwrite
        Replace an earlier prediction.
    package_scale
        Multiplies the learnt number.
    """
    data[key_added] = {name: np.full(len(v), model.metadata["value"] * package_scale)
                       for name, v in data.items() if name != key_added}
    return data[key_added]
'''

NOTEBOOK_CELL = '''
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from histoexpr.models import Network
from histoexpr.tl import ModelOptions


@dataclass(frozen=True, kw_only=True)
class NotebookOptions(ModelOptions):
    """Options of model ``"notebook_toy"``, written in a notebook.

    Parameters
    ----------
    shift
        Added to the mean of the training values.
    """

    model: ClassVar[str] = "notebook_toy"

    shift: float = VERSION


def fit(data, options):
    network = Network(config={})
    values = np.concatenate([np.asarray(v, dtype=float) for v in data.values()])
    network.metadata = {"model": "notebook_toy", "value": float(values.mean()) + options.shift}
    return network


def _predict(model, data, *, key_added: str = "notebook_pred", overwrite: bool = False,
             notebook_scale: float = 1.0):
    """Predict the learnt number for every value.

    Parameters
    ----------
    model
        The trained toy.
    data
        A mapping of arrays by name.
    key_added
        Where the predictions go.
    overwrite
        Replace an earlier prediction.
    notebook_scale
        Multiplies the learnt number.
    """
    data[key_added] = {n: np.full(len(v), model.metadata["value"] * notebook_scale)
                       for n, v in data.items() if n != key_added}
    return data[key_added]


predict = _predict  # assigned, not defined: its help is read from the function itself
'''

SPOT_MODULE = '''
"""An outside spot model: a ridge from the hand-crafted features of spot-centred tiles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

import histoexpr as hx
from histoexpr.models import Network
from histoexpr.tl import ModelOptions


@dataclass(frozen=True, kw_only=True)
class ColourOptions(ModelOptions):
    """Options of model ``"colour_spots"``: a ridge from each tile's colour and texture.

    Parameters
    ----------
    genes
        The genes to predict.
    alpha
        Ridge penalty.
    size_um
        Tile side in um.
    tiles_key
        Key of the spot tiles.
    """

    model: ClassVar[str] = "colour_spots"

    genes: tuple[str, ...] = ("EPCAM",)
    alpha: float = 10.0
    size_um: float = 40.0
    tiles_key: str = "colour_tiles"


def _features(sdata, tiles_key, size_um, image_key="he"):
    if tiles_key not in sdata.shapes:
        where = ({"centres": "spots", "min_tissue": 0} if "spots" in sdata.shapes
                 else {"min_tissue": 0.1})
        hx.pp.tile(sdata, image_key, size_um=size_um, mpp=1.0, key_added=tiles_key, **where)
    table = sdata.tables[f"{tiles_key}_table"]
    if "X_handcrafted" not in table.obsm:
        hx.tl.embed(sdata, tiles_key, encoder="handcrafted")
    return table, np.nan_to_num(np.asarray(table.obsm["X_handcrafted"], dtype=float))


def targets(sdata, table, genes):
    """The measured targets of the tiles centred on a spot with counts (and which tiles)."""
    spots = sdata.tables["table"]
    row = {str(s): i for i, s in enumerate(spots.obs["spot_id"].to_numpy())}
    ids = np.array([str(i) for i in table.obs["spot_id"].to_numpy()])
    keep = np.array([i in row for i in ids])
    y = np.asarray(hx.pp.expression_targets(spots, list(genes)))
    return keep, y[[row[i] for i in ids[keep]]]


def fit(data: Any, options: ColourOptions) -> Network:
    xs, ys = [], []
    for sdata in (data.values() if isinstance(data, dict) else [data]):
        table, x = _features(sdata, options.tiles_key, options.size_um)
        keep, y = targets(sdata, table, options.genes)
        xs.append(x[keep])
        ys.append(y)
    x, y = np.vstack(xs), np.vstack(ys)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    weights = np.linalg.solve(z.T @ z + options.alpha * np.eye(z.shape[1]),
                              z.T @ (y - y.mean(0)))
    network = Network(config={})
    network.metadata = {"model": "colour_spots", "genes": list(options.genes),
                        "image_key": "he", "size_um": float(options.size_um), "mpp": 1.0,
                        "mean": mean.tolist(), "scale": scale.tolist(),
                        "weights": weights.tolist(), "bias": y.mean(0).tolist()}
    return network


def predict(model: Network, sdata: Any, *, tiles_key: str | None = None,
            key_added: str = "colour_pred", overwrite: bool = False, image_key: str = "he"):
    """Predict every tile's expression into a table annotating the tiles.

    Parameters
    ----------
    model
        The trained model.
    sdata
        A section.
    tiles_key
        Tiles to predict on (made if absent).
    key_added
        Key of the table of predictions.
    overwrite
        Replace that table.
    image_key
        The image.
    """
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    meta = model.metadata
    tiles_key = tiles_key or "colour_tiles"
    if key_added in sdata.tables and not overwrite:
        raise KeyError(f"{key_added!r} exists; pass overwrite=True.")
    table, x = _features(sdata, tiles_key, meta["size_um"], image_key)
    z = (x - np.asarray(meta["mean"])) / np.asarray(meta["scale"])
    values = z @ np.asarray(meta["weights"]) + np.asarray(meta["bias"])
    obs = table.obs.copy()
    obs["region"] = pd.Categorical([tiles_key] * len(obs))
    out = ad.AnnData(X=values.astype(np.float32), obs=obs,
                     var=pd.DataFrame(index=pd.Index(meta["genes"])),
                     obsm={"spatial": np.asarray(table.obsm["spatial"], dtype=float)},
                     uns={"tiles": dict(table.uns["tiles"])})
    out = TableModel.parse(out, region=tiles_key, region_key="region", instance_key="tile_id")
    sdata.tables[key_added] = out
    return out
'''


@pytest.fixture
def table_restored():
    """The model table and the help as they were before the test, whatever it registered."""
    before = dict(_models.MODEL_TABLE)
    yield
    _models.MODEL_TABLE.clear()
    _models.MODEL_TABLE.update(before)
    _api.write_help()


def _write_module(tmp_path, monkeypatch, name: str, source: str) -> types.ModuleType:
    import importlib

    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


@pytest.fixture
def package(tmp_path, monkeypatch, table_restored):
    """A package whose ``__init__`` re-exports its model with an absolute import."""
    import importlib

    root = tmp_path / "histoexpr_ext_package"
    root.mkdir()
    (root / "_impl.py").write_text(textwrap.dedent(PACKAGE_IMPL))
    (root / "__init__.py").write_text(
        '"""A model package."""\n\nfrom histoexpr_ext_package._impl import (  # noqa: F401\n'
        "    PackageOptions,\n    fit,\n    predict,\n)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("histoexpr_ext_package", "histoexpr_ext_package._impl"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield importlib.import_module("histoexpr_ext_package")
    for name in ("histoexpr_ext_package", "histoexpr_ext_package._impl"):
        sys.modules.pop(name, None)


def _notebook(monkeypatch, version: float) -> types.ModuleType:
    """A notebook's namespace: module ``__main__`` without a spec or a file, run once more."""
    main = types.ModuleType("__main__")
    main.__spec__ = None
    main.VERSION = version
    monkeypatch.setitem(sys.modules, "__main__", main)
    exec(compile(textwrap.dedent(NOTEBOOK_CELL), "<cell>", "exec"), main.__dict__)  # noqa: S102
    return main


def test_a_package_with_an_absolute_re_export_registers_trains_and_predicts(package):
    hx.tl.register_model(hx.tl.ModelSpec("package_toy", package.PackageOptions,
                                         "histoexpr_ext_package"))
    data = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([6.0])}
    network = hx.tl.fit(data, model="package_toy", shift=1.0, width=2.5)
    assert network.metadata["value"] == pytest.approx((3.0 + 1.0) * 2.5)
    assert network.metadata["options"]["width"] == 2.5
    predicted = hx.tl.predict(network, data, package_scale=2.0)
    np.testing.assert_allclose(predicted["b"], [20.0])
    # its help is read through the re-export, and the training options are histoexpr's
    assert "package_scale" in hx.tl.predict_options("package_toy")
    assert "    package_scale : float = 1.0" in hx.tl.predict.__doc__
    assert 'model="package_toy"' in hx.tl.fit.__doc__
    assert "Maximum number of epochs" in package.PackageOptions.__doc__  # documented at register


def test_a_model_written_in_a_notebook_registers_trains_and_predicts(monkeypatch,
                                                                    table_restored):
    main = _notebook(monkeypatch, 1.0)
    hx.tl.register_model(hx.tl.ModelSpec("notebook_toy", main.NotebookOptions, "__main__"))
    data = {"a": np.array([1.0, 3.0])}
    network = hx.tl.fit(data, model="notebook_toy")
    assert network.metadata["value"] == pytest.approx(3.0)
    predicted = hx.tl.predict(network, data, notebook_scale=3.0)
    np.testing.assert_allclose(predicted["a"], [9.0, 9.0])
    assert hx.tl.predict_options("notebook_toy") == ("key_added", "overwrite", "notebook_scale")
    assert "Multiplies the learnt number." in hx.tl.predict.__doc__
    # the cell run again: the same name is refused, unless it replaces the earlier one
    again = _notebook(monkeypatch, 10.0)
    spec = hx.tl.ModelSpec("notebook_toy", again.NotebookOptions, "__main__")
    with pytest.raises(ValueError, match="exists already.*overwrite=True"):
        hx.tl.register_model(spec)
    hx.tl.register_model(spec, overwrite=True)
    again_trained = hx.tl.fit({"a": np.array([1.0, 3.0])}, model="notebook_toy")
    assert again_trained.metadata["value"] == pytest.approx(12.0)
    assert _models.OPTIONS["notebook_toy"] is again.NotebookOptions


@bad_input("obscure error", "`hx.tl.register_model(spec)` of a model whose module lacks "
           "`predict` (or whose options are not documented)",
           says="TypeError: `Module 'histoexpr_ext_broken' of model 'broken_toy' has no "
                "function predict: it needs fit(data, options) and predict(model, data, ...`",
           fix="add the function (or the options' Parameters entries) and register again: "
               "the failed registration left nothing behind")
def test_a_failed_registration_leaves_no_entry(tmp_path, monkeypatch, table_restored):
    source = PACKAGE_IMPL.replace("package_toy", "broken_toy")
    broken = _write_module(tmp_path, monkeypatch, "histoexpr_ext_broken",
                           source.split("def predict(")[0])
    fit_help = hx.tl.fit.__doc__
    spec = hx.tl.ModelSpec("broken_toy", broken.PackageOptions, "histoexpr_ext_broken")
    with pytest.raises(TypeError, match="has no function predict"):
        hx.tl.register_model(spec)
    assert "broken_toy" not in _models.MODEL_TABLE and hx.tl.fit.__doc__ == fit_help
    undocumented = _write_module(tmp_path, monkeypatch, "histoexpr_ext_undocumented",
                                 source.replace("    pool\n        How values are pooled, or "
                                                "``None``.\n", ""))
    with pytest.raises(TypeError, match=r"does not document \['pool'\]"):
        hx.tl.register_model(hx.tl.ModelSpec("broken_toy", undocumented.PackageOptions,
                                             "histoexpr_ext_undocumented"))
    assert "broken_toy" not in _models.MODEL_TABLE and hx.tl.fit.__doc__ == fit_help
    with pytest.raises(TypeError, match="cross_validator must be a string 'package.module:"):
        hx.tl.ModelSpec("broken_toy", broken.PackageOptions, "histoexpr_ext_broken",
                        cross_validator="histoexpr_ext_broken")  # not module:function
    fixed = _write_module(tmp_path, monkeypatch, "histoexpr_ext_fixed", source)
    hx.tl.register_model(hx.tl.ModelSpec("broken_toy", fixed.PackageOptions,
                                         "histoexpr_ext_fixed"))  # no half entry in the way
    assert hx.tl.fit({"a": np.ones(2)}, model="broken_toy", width=1.0).metadata["value"] == 1.0


def test_overwrite_replaces_outside_models_only(package):
    spec = hx.tl.ModelSpec("package_toy", package.PackageOptions, "histoexpr_ext_package")
    hx.tl.register_model(spec)
    hx.tl.register_model(spec, overwrite=True)
    assert _models.MODEL_TABLE["package_toy"] is spec
    own = hx.tl.ModelSpec("spot_regressor", hx.tl.SpotRegressorOptions,
                          "histoexpr_ext_package", kind="spot")
    with pytest.raises(ValueError, match="one of histoexpr's own models and is never replaced"):
        hx.tl.register_model(own, overwrite=True)
    assert _models.MODEL_TABLE["spot_regressor"].module == "histoexpr.tl._spot._spot_regressor"
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        hx.tl.register_model(spec, overwrite="no")


def test_positional_kind_still_works_with_a_warning(package):
    with pytest.warns(FutureWarning, match="pass kind by keyword"):
        spec = hx.tl.ModelSpec("package_toy", package.PackageOptions, "histoexpr_ext_package",
                               "other")
    assert spec.kind == "other"


@bad_input("silently wrong", "an outside model's choice written as an inline `Literal` "
           "(`centre: Literal['mean', 'median']`) given another value",
           says="ValueError: `centre must be one of 'mean', 'median'; got 'mode'`",
           fix="pass one of the choices; the class is refused before training")
def test_an_inline_literal_refuses_a_wrong_value_before_training(package):
    hx.tl.register_model(hx.tl.ModelSpec("package_toy", package.PackageOptions,
                                         "histoexpr_ext_package"))
    with pytest.raises(ValueError, match="centre must be one of 'mean', 'median'; got 'mode'"):
        hx.tl.fit({"a": np.ones(2)}, model="package_toy", centre="mode")
    with pytest.raises(ValueError, match="pool must be one of 'max', 'avg'; got 'sum'"):
        package.PackageOptions(pool="sum")  # typing.Literal, with None allowed
    assert package.PackageOptions(pool=None).pool is None
    assert package.PackageOptions(centre="median", pool="avg").pool == "avg"
    assert sys.modules["histoexpr_ext_package._impl"].FITTED == []  # nothing was trained


def test_an_outside_option_is_checked_by_its_own_annotation(package):
    options = package.PackageOptions()  # histoexpr's width is an integer; this one a float
    assert options.width == 12.5 and package.PackageOptions(width=2.5).width == 2.5
    with pytest.raises(TypeError, match=r"shift must be float \(its annotation\), got 'abc'"):
        package.PackageOptions(shift="abc")
    with pytest.raises(ValueError, match="epochs must be an integer in"):
        package.PackageOptions(epochs=0)  # an option histoexpr declares keeps its check


@bad_input("obscure error", "an outside model's `fit` returning a network whose "
           "`metadata['model']` is not the model's name",
           says="ValueError: `histoexpr_ext_package.fit returned a network with "
                "metadata['model'] = 'package_toy', not 'renamed_toy'`",
           fix="set network.metadata['model'] to the registered name in that fit")
def test_fit_refuses_a_network_named_for_another_model(package, monkeypatch):
    monkeypatch.setattr(package.PackageOptions, "model", "renamed_toy")
    hx.tl.register_model(hx.tl.ModelSpec("renamed_toy", package.PackageOptions,
                                         "histoexpr_ext_package"))
    with pytest.raises(ValueError, match=r"histoexpr_ext_package.fit returned a network with "
                                         r"metadata\['model'\] = 'package_toy', not "
                                         r"'renamed_toy'.*Fix that fit"):
        hx.tl.fit({"a": np.ones(2)}, model="renamed_toy")


@pytest.fixture
def spot_model(tmp_path, monkeypatch, table_restored):
    hx.settings.progress_bar = False
    module = _write_module(tmp_path, monkeypatch, "histoexpr_ext_spots", SPOT_MODULE)
    hx.tl.register_model(hx.tl.ModelSpec("colour_spots", module.ColourOptions,
                                         "histoexpr_ext_spots", kind="spot",
                                         cross_validator=SPOT_CV))
    yield module
    sys.modules.pop("histoexpr_ext_spots", None)


@pytest.fixture(scope="module")
def sections():
    return {name: hx.datasets.synthetic_section(seed=seed, size_um=300, spot_pitch_um=40,
                                                spot_diameter_um=35, mpp=1.0)
            for seed, name in enumerate("abc")}


@pytest.mark.slow
def test_the_hest_protocol_cross_validates_an_outside_spot_model(spot_model, sections):
    elements = {name: (set(s.shapes), set(s.tables)) for name, s in sections.items()}
    frame = hx.tl.cross_validate(sections, model="colour_spots", n_genes=8)
    assert set(frame["section"]) == set(sections) and frame.groupby("fold").size().eq(8).all()
    assert frame.groupby("fold")["pearson"].mean().min() > 0.2  # colour predicts expression
    assert elements == {name: (set(s.shapes), set(s.tables))  # it worked on copies
                        for name, s in sections.items()}
    assert '"colour_spots"' in hx.tl.cross_validate.__doc__
    # on a held-out section it beats the training mean of each gene
    genes = list(frame["gene"].unique())
    train = {n: s for n, s in sections.items() if n != "c"}
    network = hx.tl.fit(train, model="colour_spots", genes=genes)
    held = sections["c"]
    predicted = hx.tl.predict(network, held, key_added="colour_pred")
    keep, truth = spot_model.targets(held, predicted, genes)
    baseline = np.asarray(network.metadata["bias"])
    model_error = np.mean((np.asarray(predicted.X)[keep] - truth) ** 2)
    assert model_error < np.mean((baseline - truth) ** 2)
    for name in ("colour_pred", "colour_tiles_table"):
        del held.tables[name]
    del held.shapes["colour_tiles"]


@bad_input("obscure error", "`hx.tl.cross_validate` of an outside spot model whose options "
           "have no `genes`",
           says="ValueError: `Model 'colour_spots' cannot run the HEST protocol: its options "
                "(ColourOptions) have no genes`",
           fix="add an option genes (the fold's genes are passed through it)")
def test_the_hest_protocol_names_what_a_spot_model_lacks(tmp_path, monkeypatch, table_restored):
    source = SPOT_MODULE.replace('    genes: tuple[str, ...] = ("EPCAM",)\n', "").replace(
        "    genes\n        The genes to predict.\n", "")
    module = _write_module(tmp_path, monkeypatch, "histoexpr_ext_geneless", source)
    hx.tl.register_model(hx.tl.ModelSpec("colour_spots", module.ColourOptions,
                                         "histoexpr_ext_geneless", kind="spot",
                                         cross_validator=SPOT_CV))
    with pytest.raises(ValueError, match=r"cannot run the HEST protocol: its options "
                                         r"\(ColourOptions\) have no genes"):
        hx.tl.cross_validate({"a": None, "b": None}, model="colour_spots")
    with pytest.raises(ValueError, match="the HEST protocol .* cross-validates spot models"):
        hx.tl.ModelSpec("colour_spots", module.ColourOptions, "histoexpr_ext_geneless",
                        kind="other", cross_validator=SPOT_CV)


def test_the_cohort_runner_predicts_an_outside_spot_model_slide_by_slide(spot_model, sections,
                                                                        tmp_path):
    train = {n: s for n, s in sections.items() if n != "c"}
    network = hx.tl.fit(train, model="colour_spots", genes=["EPCAM", "COL1A1"])
    slides = hx.datasets.synthetic_slide_cohort(tmp_path / "slides", 2, seed=0, size_um=300,
                                                mpp=1.0)
    cohort = hx.io.read_cohort(slides, store_dir=tmp_path / "stores")
    first = hx.tl.predict(network, cohort)
    assert (first["status"] == "computed").all() and (first["n_tiles"] > 5).all()
    slide_id = cohort.ids[0]
    stored = cohort.store(slide_id).prediction("he_expr_tiles_expression")
    alone = hx.tl.predict(network, hx.io.read_wsi(cohort.path(slide_id), image_key="he"),
                          tiles_key="he_expr_tiles")
    np.testing.assert_allclose(np.asarray(stored.X), np.asarray(alone.X), rtol=1e-5)
    assert list(stored.var_names) == ["EPCAM", "COL1A1"]
    assert (hx.tl.predict(network, cohort)["status"] == "skipped").all()  # resumable
    with pytest.raises(TypeError, match="takes no level=0.9"):
        hx.tl.predict(network, cohort, level=0.9)
