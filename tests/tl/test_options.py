"""Every option of every model is found where a user looks: its options class and the help of fit.

``hx.tl.fit(data, model="abmil", epochs=3)`` and ``hx.tl.fit(data, model=hx.tl.ABMILOptions(
epochs=3))`` are one call; renamed options still work with a FutureWarning; an unknown option is
an error that names the model's options.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch

import histoexpr as hx
from histoexpr.tl._api import predict_options
from histoexpr.tl._models import MODELS, OPTIONS
from histoexpr.tl._models import options_of as options_for
from histoexpr.tl._options import SHARED_DOCS, TrainingOptions

#: model name -> {old option name: new name}, from each options class's ``renamed``
RENAMED = {name: dict(cls.renamed) for name, cls in OPTIONS.items() if cls.renamed}

GENES = ["EPCAM", "KRT8", "PTPRC"]


def _help(function) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        help(function)
    return out.getvalue()


def test_every_model_has_a_public_options_class():
    assert set(OPTIONS) == set(MODELS)
    for name, cls in OPTIONS.items():
        assert getattr(hx.tl, cls.__name__) is cls and cls.model == name
        assert dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_is_documented_typed_and_keyword_only(name):
    cls = OPTIONS[name]
    signature = inspect.signature(cls)
    doc = inspect.getdoc(cls)
    for field in dataclasses.fields(cls):
        parameter = signature.parameters[field.name]
        assert parameter.kind is parameter.KEYWORD_ONLY, field.name
        assert field.type not in ("", None, inspect.Parameter.empty), field.name
        assert f"\n{field.name}\n    " in doc, f"{cls.__name__} does not document {field.name}"
    with pytest.raises(TypeError):
        cls(1)  # the options are keyword-only


def test_shared_training_options_are_defined_once():
    names = {f.name for f in dataclasses.fields(TrainingOptions)}
    assert {"epochs", "batch_size", "lr", "val_fraction", "seed", "device"} <= names
    for cls in OPTIONS.values():
        for field in dataclasses.fields(cls):
            if field.name in SHARED_DOCS and f"\n{field.name}\n" not in (cls.__doc__ or ""):
                pytest.fail(f"{cls.__name__}.{field.name} is not documented")
    gradient = [c for c in OPTIONS.values() if issubclass(c, TrainingOptions)]
    assert {c.model for c in gradient} == {"patch_classifier", "abmil", "spot_regressor"}


def test_help_of_fit_shows_every_option_of_every_model():
    text = _help(hx.tl.fit)
    for name, cls in OPTIONS.items():
        assert cls.__name__ in text and f'model="{name}"' in text
        for field in dataclasses.fields(cls):
            assert f"    {field.name} : " in text, (name, field.name)


def test_help_of_predict_and_cross_validate_show_their_options():
    text = _help(hx.tl.predict)
    for name in MODELS:
        assert f"**{name}**" in text
        for option in predict_options(name):
            if option not in ("key_added", "overwrite"):
                assert f"    {option} : " in text, (name, option)
    text = _help(hx.tl.cross_validate)
    for option in ("n_folds", "check_attention", "n_genes", "gene_flavor"):
        assert f"    {option} : " in text, option
    assert "stride_um" in predict_options("spot_regressor")


def test_unknown_option_names_the_model_and_its_options():
    with pytest.raises(TypeError, match=r"'rout' is not an option of model 'spot_regressor'\. "
                                        r"Did you mean 'route'\?.*n_members"):
        options_for("spot_regressor", rout="mlp")
    with pytest.raises(TypeError, match="'epochs' is not an option of model 'meanpool_ridge'"):
        hx.tl.fit({}, model="meanpool_ridge", epochs=3)
    with pytest.raises(ValueError, match="Unknown model 'abmill'.*Did you mean 'abmil'"):
        options_for("abmill")
    with pytest.raises(ValueError, match="route must be one of 'ridge', 'mlp', 'cnn', 'auto'"):
        hx.tl.SpotRegressorOptions(route="forest")
    with pytest.raises(ValueError, match=r"val_fraction must be a fraction in \[0, 1\)"):
        hx.tl.ABMILOptions(val_fraction=1.0)
    with pytest.raises(ValueError, match="cannot train without a validation split"):
        hx.tl.PatchClassifierOptions(val_fraction=0)
    with pytest.raises(ValueError, match="'mlp' route cannot train without a validation split"):
        hx.tl.SpotRegressorOptions(route="mlp", val_fraction=0)
    assert hx.tl.SpotRegressorOptions(route="ridge", val_fraction=0).val_fraction == 0
    with pytest.raises(ValueError, match="n_folds"):
        hx.tl.CellMorphologyOptions(n_folds=1)


@pytest.mark.parametrize("model", list(RENAMED))
def test_old_option_names_warn_and_mean_the_new_ones(model):
    for old, new in RENAMED[model].items():
        value = 5 if new == "n_folds" else 40.0
        with pytest.warns(FutureWarning, match=f"'{old}' is deprecated.*use '{new}'"):
            old_form = options_for(model, **{old: value})
        assert old_form == options_for(model, **{new: value})
        with pytest.raises(TypeError, match="pass only"):
            options_for(model, **{old: value, new: value})


def test_cross_validate_spots_takes_data_and_warns_for_sections():
    from histoexpr.tl._spot._cross_validate import cross_validate_spots

    with pytest.warns(FutureWarning, match="'sections' is deprecated.*'data'"), \
            pytest.raises(ValueError, match="trains spot regressors"):
        cross_validate_spots(sections={}, model="abmil")


def test_options_object_replaces_fields_and_is_stored_in_the_model():
    base = hx.tl.SpotRegressorOptions(route="mlp", n_members=3)
    changed = options_for(base, n_members=2)
    assert (changed.route, changed.n_members, base.n_members) == ("mlp", 2, 3)
    record = changed.record()
    assert record["n_members"] == 2 and isinstance(record["alphas"], list)


@pytest.fixture(scope="module")
def tiny_cohort():
    cohort = hx.datasets.synthetic_cohort(6, seed=0, size_um=200)
    for sdata in cohort.values():
        hx.pp.tile(sdata, "he", size_px=32, mpp=2.0, min_tissue=0.5)
        hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
    return cohort


def test_string_and_class_forms_train_the_same_weights(tiny_cohort, tmp_path):
    options = {"genes": GENES, "epochs": 3, "val_fraction": 0, "seed": 0, "batch_size": 2,
               "hidden": 8, "attention_hidden": 4}
    by_name = hx.tl.fit(tiny_cohort, model="abmil", **options)
    by_class = hx.tl.fit(tiny_cohort, model=hx.tl.ABMILOptions(**options))
    mixed = hx.tl.fit(tiny_cohort, model=hx.tl.ABMILOptions(genes=GENES, seed=0),
                      **{k: v for k, v in options.items() if k not in ("genes", "seed")})
    for other in (by_class, mixed):
        state, expected = other.state_dict(), by_name.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in state)
    assert by_name.metadata["options"] == by_class.metadata["options"]
    assert by_name.metadata["options"]["epochs"] == 3
    path = hx.io.save_model(by_name, tmp_path / "abmil.pt")  # the options record is plain data
    loaded = hx.io.load_model(path, device="cpu")
    assert loaded.metadata["options"] == by_name.metadata["options"]
    with_other_seed = hx.tl.fit(tiny_cohort, model="abmil", **{**options, "seed": 1})
    assert not all(np.array_equal(a.numpy(), b.numpy()) for a, b in
                   zip(with_other_seed.state_dict().values(), by_name.state_dict().values(),
                       strict=True))
