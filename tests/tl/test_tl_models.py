"""The model table: adding a model is one module, one options class and one entry.

A toy model written to a file here (its module holds its options class, ``fit``, ``predict``
and a cross-validation procedure) is registered with one ``ModelSpec``; ``hx.tl.fit``,
``hx.tl.predict``, ``hx.tl.cross_validate`` and their help then know it. The registries, the
choices of the options and the rules between options are read from one place each.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import sys
import textwrap
from contextlib import redirect_stdout
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from _catalogue import bad_input

import histoexpr as hx
from histoexpr.tl import _api, _models

TOY_MODULE = '''
"""A toy model: the mean of the training values plus ``shift``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from histoexpr.models import Network
from histoexpr.tl._options import ModelOptions, _documented, options_for

Centre = Literal["mean", "median"]


@_documented
@dataclass(frozen=True, kw_only=True)
class ToyOptions(ModelOptions):
    """Options of model ``"toy"``: one number learnt from the training values.

    Parameters
    ----------
    shift
        Added to the learnt number.
    centre
        ``"mean"`` or ``"median"`` of the training values.
    """

    model: ClassVar[str] = "toy"
    renamed: ClassVar[dict[str, str]] = {"offset": "shift"}

    shift: float = 0.0
    centre: Centre = "mean"


def fit(data: dict[str, Any], options: ToyOptions) -> Network:
    """Learn one number from every value of ``data`` (a mapping of arrays by name)."""
    values = np.concatenate([np.asarray(v, dtype=float) for v in data.values()])
    network = Network(config={})
    centre = np.mean(values) if options.centre == "mean" else np.median(values)
    network.metadata = {"model": "toy", "value": float(centre) + options.shift}
    return network


def predict(model: Network, data: dict[str, Any], *, key_added: str = "toy_pred",
            overwrite: bool = False, toy_scale: float = 1.0) -> dict[str, Any]:
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
    toy_scale
        Multiplies the learnt number.
    """
    if key_added in data and not overwrite:
        raise ValueError(f"{key_added!r} exists; pass overwrite=True.")
    data[key_added] = {name: np.full(len(v), model.metadata["value"] * toy_scale)
                       for name, v in data.items() if name != key_added}
    return data[key_added]


def cross_validate_toy(data: dict[str, Any], *, model: ToyOptions, module: Any,
                       groups: Any = None, toy_folds: int = 2, **fit_kwargs: Any) -> dict:
    """Hold out each name in turn; the absolute error of the held-out values.

    Parameters
    ----------
    data
        A mapping of arrays by name.
    model
        The toy's options.
    module
        The toy's module.
    groups
        Unused.
    toy_folds
        Unused (shown in the help).
    **fit_kwargs
        Options of the toy.
    """
    options = options_for(model, **fit_kwargs)
    errors = {}
    for name in data:
        trained = module.fit({n: v for n, v in data.items() if n != name}, options)
        errors[name] = float(np.abs(np.asarray(data[name]) - trained.metadata["value"]).mean())
    return errors
'''


def _help(function) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        help(function)
    return out.getvalue()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy model's module, registered for one test and removed after it."""
    (tmp_path / "histoexpr_toy_model.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import histoexpr_toy_model as module

    spec = _models.ModelSpec("toy", module.ToyOptions, "histoexpr_toy_model", kind="other",
                             cross_validator="histoexpr_toy_model:cross_validate_toy")
    _api.register_model(spec)  # the one entry
    yield module
    del _models.MODEL_TABLE["toy"]
    _api.write_help()
    sys.modules.pop("histoexpr_toy_model", None)


def test_a_model_added_with_one_entry_trains_predicts_and_cross_validates(toy):
    data = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([5.0, 7.0])}
    model = hx.tl.fit(data, model="toy", shift=1.0)
    assert model.metadata["value"] == pytest.approx(np.mean([1, 2, 3, 5, 7]) + 1.0)
    assert model.metadata["options"] == {"shift": 1.0, "centre": "mean"}  # recorded by fit
    by_class = hx.tl.fit(data, model=toy.ToyOptions(shift=1.0, centre="median"))
    assert by_class.metadata["value"] == pytest.approx(3.0 + 1.0)
    with pytest.warns(FutureWarning, match="'offset' is deprecated.*'shift'"):
        renamed = hx.tl.fit(data, model="toy", offset=1.0)
    assert renamed.metadata == model.metadata
    errors = hx.tl.cross_validate(data, model="toy")
    assert errors == {"a": pytest.approx(4.0), "b": pytest.approx(4.0)}  # |x - mean of other|
    predicted = hx.tl.predict(model, data, toy_scale=2.0)
    np.testing.assert_allclose(predicted["b"], [2 * model.metadata["value"]] * 2)
    assert data["toy_pred"] is predicted
    with pytest.raises(TypeError, match="'shfit' is not an option of model 'toy'.*'shift'"):
        hx.tl.fit(data, model="toy", shfit=1.0)
    with pytest.raises(ValueError, match="centre must be one of 'mean', 'median'"):
        toy.ToyOptions(centre="mode")  # the choices of its Literal, checked at construction
    assert "toy" in _models.MODELS and _models.OPTIONS["toy"] is toy.ToyOptions
    assert "toy" in _models.CROSS_VALIDATORS and "toy" not in _models.COHORT_MODELS


def test_a_model_added_with_one_entry_is_in_the_help(toy):
    fit_help = _help(hx.tl.fit)
    assert 'model="toy"' in fit_help and "ToyOptions" in fit_help
    assert "    shift : float = 0.0" in fit_help and "Added to the learnt number." in fit_help
    assert "**toy**" in _help(hx.tl.predict) and "    toy_scale : float = 1.0" in _help(
        hx.tl.predict)
    cv_help = _help(hx.tl.cross_validate)
    assert "    toy_folds : int = 2" in cv_help
    listed = cv_help.split("The models cross-validated:")[1].split("groups")[0]
    assert all(f'"{name}"' in listed for name in _models.CROSS_VALIDATORS)  # toy's too
    assert '"toy"' in listed
    assert "toy_scale" in hx.tl.predict_options("toy")


def test_a_taken_name_is_refused(toy):
    spec = _models.ModelSpec("toy", toy.ToyOptions, "histoexpr_toy_model")
    with pytest.raises(ValueError, match="Model 'toy' exists already"):
        _api.register_model(spec)
    with pytest.raises(ValueError, match="trains model 'toy'; set ToyOptions.model = 'other'"):
        _models.ModelSpec("other", toy.ToyOptions, "histoexpr_toy_model")


def test_the_registries_are_views_of_the_one_table():
    table = _models.MODEL_TABLE
    assert list(_models.MODELS) == list(table) == list(_models.OPTIONS)
    assert {name: _models.MODELS[name] for name in table} == {
        name: spec.module for name, spec in table.items()}
    assert list(_models.BAG_MODELS) == [n for n, s in table.items() if s.kind == "bag"]
    assert list(_models.COHORT_MODELS) == [n for n, s in table.items() if s.cohort]
    assert dict(_models.CROSS_VALIDATORS) == {
        n: tuple(s.cross_validator.split(":")) for n, s in table.items() if s.cross_validator}
    assert _models.BAG_MODELS and _models.COHORT_MODELS and _models.CROSS_VALIDATORS
    # histoexpr's own models in the views they belong to
    assert {"abmil", "meanpool_ridge", "meanpool_logistic"} <= set(_models.BAG_MODELS)
    assert {"abmil", "meanpool_ridge", "meanpool_logistic", "spot_regressor"} <= set(
        _models.COHORT_MODELS)
    assert set(_models.OWN_MODELS) == set(table)  # nothing registered from outside here
    for name, spec in table.items():
        assert spec.options.model == name
        assert spec.options.__module__.rsplit(".", 1)[0] == spec.module.rsplit(".", 1)[0], (
            "an options class lives in the job room of its model")


def test_the_table_declares_its_arrows_to_import_linter():
    """The TYPE_CHECKING imports of tl/_models.py name every module of the table."""
    source = Path(_models.__file__).read_text(encoding="utf-8")
    block = next(node for node in ast.parse(source).body if isinstance(node, ast.If)
                 and ast.unparse(node.test) == "TYPE_CHECKING")
    declared = {f"histoexpr.tl.{node.module}.{alias.name}".replace("tl..", "tl.")
                for node in block.body for alias in node.names}
    needed = {spec.module for spec in _models.MODEL_TABLE.values()}
    needed |= {spec.cross_validator.split(":")[0] for spec in _models.MODEL_TABLE.values()
               if spec.cross_validator}
    assert needed <= declared, needed - declared


def test_choice_tuples_come_from_their_one_literal():
    from histoexpr.tl._mil import _bag_targets
    from histoexpr.tl._mil import _options as mil
    from histoexpr.tl._patch import _options as patch
    from histoexpr.tl._spot import _options as spot

    assert spot.ROUTES == get_args(spot.Route) == ("ridge", "mlp", "cnn", "auto")
    assert mil.TASKS == get_args(mil.Task) and _bag_targets.TASKS is mil.TASKS
    assert mil.LABELS == get_args(mil.Labels) and _bag_targets.LABELS is mil.LABELS
    assert mil.TARGET_TRANSFORMS == get_args(mil.TargetTransform)
    assert patch.COMBINES == get_args(patch.Combine)


def test_model_fit_reads_its_options_object():
    """Each model's fit takes (data, options): no keyword re-declaration of the options."""
    import inspect

    for spec in _models.MODEL_TABLE.values():
        parameters = list(inspect.signature(spec.load().fit).parameters.values())
        assert [p.name for p in parameters][1:] == ["options"], spec.name
        assert parameters[1].default is inspect.Parameter.empty
        assert not hasattr(spec.load(), "_fit"), spec.name


@bad_input("obscure error", "`hx.tl.fit(data, model=hx.tl.TrainingOptions())`: the options "
           "base class instead of a model's options",
           says="TypeError: `TrainingOptions is not the options of a model (it is a base the "
                "models' options share); pass one of hx.tl.PatchClassifierOptions, ...`",
           fix="pass a model's options class (e.g. hx.tl.ABMILOptions) or a model name")
def test_the_options_base_class_is_not_a_model():
    with pytest.raises(TypeError, match="TrainingOptions is not the options of a model"):
        hx.tl.fit({}, model=hx.tl.TrainingOptions())
    with pytest.raises(TypeError, match="TrainingOptions is not the options of a model"):
        hx.tl.cross_validate({}, model=hx.tl.TrainingOptions())


@bad_input("silently wrong", "spot-regressor options that cannot train together "
           "(`route='cnn'` with `context_um` or `n_components`; `candidates` without "
           "`route='auto'`)",
           says="ValueError at options construction: `context_um is an option of routes "
                "'ridge', 'mlp' of the spot regressor; route='cnn' (CNNRouteOptions) does not "
                "read it. Drop context_um, or pass route='ridge'. The CNN route learns from the "
                "patch alone: give a larger size_um.`",
           fix="the fix the message names (here: drop context_um, or use a head route)",
           match="context_um is an option of routes 'ridge', 'mlp'")
def test_spot_options_that_cannot_train_together_fail_at_construction():
    with pytest.raises(ValueError, match="context_um is an option of routes 'ridge', 'mlp'.*"
                                         "give a larger size_um"):
        hx.tl.SpotRegressorOptions(route="cnn", context_um=300, n_components=5)
    with pytest.raises(ValueError, match="n_components is an option of route 'ridge'.*Drop "
                                         "n_components"):
        hx.tl.SpotRegressorOptions(route="cnn", n_components=5)
    with pytest.raises(ValueError, match="candidates is an option of route 'auto'"):
        hx.tl.SpotRegressorOptions(route="ridge", candidates={"head": ["ridge"]})
    with pytest.raises(ValueError, match="route='auto' chooses the encoder"):
        hx.tl.SpotRegressorOptions(route="auto", context_um=300)
    with pytest.raises(ValueError, match="n_components applies to named encoders"):
        hx.tl.SpotRegressorOptions(route="ridge", encoder="ssl", n_components=5)
    with pytest.raises(ValueError, match="subspot_um is an option of route 'ridge'"):
        hx.tl.SpotRegressorOptions(route="mlp", subspot_um=56.0)
    with pytest.raises(ValueError, match="meanpool_logistic classifies"):
        hx.tl.MeanPoolLogisticOptions(task="regression")
    base = hx.tl.SpotRegressorOptions(route="cnn")
    with pytest.raises(ValueError, match="context_um is an option of routes 'ridge', 'mlp'"):
        dataclasses.replace(base, context_um=300)  # a copy is checked too
