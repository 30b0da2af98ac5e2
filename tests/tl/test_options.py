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
from _catalogue import bad_input

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
    classes = [v for cls in OPTIONS.values() for v in cls._variants()]
    for cls in classes:
        for field in dataclasses.fields(cls):
            if field.name in SHARED_DOCS and f"\n{field.name}\n" not in (cls.__doc__ or ""):
                pytest.fail(f"{cls.__name__}.{field.name} is not documented")
    gradient = [c for c in classes if issubclass(c, TrainingOptions)]
    assert {c.model for c in gradient} == {"patch_classifier", "abmil", "spot_regressor"}
    # the spot regressor's routes trained by gradient descent, and only those
    assert {c.__name__ for c in gradient if c.model == "spot_regressor"} == {
        "MLPRouteOptions", "CNNRouteOptions", "AutoRouteOptions"}


def _declared(cls) -> set[str]:
    """The options ``cls`` itself declares (not its ClassVars)."""
    return {name for name in inspect.get_annotations(cls)
            if name in getattr(cls, "__dataclass_fields__", {})}


def test_a_class_declares_an_option_of_its_bases_again_only_to_change_its_default():
    from histoexpr.tl._options import ModelOptions

    classes = {c for cls in OPTIONS.values() for variant in cls._variants()
               for c in variant.__mro__ if isinstance(c, type) and issubclass(c, ModelOptions)}
    assert any(c.__name__ == "_BagInputs" for c in classes)  # the slide-level models' inputs
    again = []
    for cls in classes:
        for name in _declared(cls) - {"route"}:  # each route's class names its own route
            base = next((b for b in cls.__mro__[1:] if name in _declared(b)), None)
            if base is not None and (base.__dataclass_fields__[name].default
                                     == cls.__dataclass_fields__[name].default):
                again.append(f"{cls.__name__}.{name} (as in {base.__name__})")
    assert not again, f"declared again with the same default: {again}"
    # the inputs of the slide-level models: once, in their shared bases
    for name in ("genes", "tiles_key", "features_key", "bags_key", "target_transform",
                 "target", "labels"):
        owners = [c.__name__ for c in classes if c.model in ("", "abmil", "meanpool_ridge",
                                                             "meanpool_logistic")
                  and c.__module__.endswith("_mil._options") and name in _declared(c)]
        assert len(owners) == 1, (name, owners)
    assert hx.tl.ABMILOptions().attention_entropy == 10.0
    assert hx.tl.MeanPoolLogisticOptions().task == "classification"


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
    with pytest.raises(ValueError, match="val_fraction is an option of routes 'mlp', 'cnn', "
                                         "'auto'.*route='ridge'.*Drop val_fraction"):
        hx.tl.SpotRegressorOptions(route="ridge", val_fraction=0)  # the ridge has no split
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
    assert record["n_members"] == 2 and "alphas" not in record  # the ridge's, not the MLP's
    assert isinstance(hx.tl.SpotRegressorOptions().record()["alphas"], list)


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


#: the fields of the spot regressor's one options class before it was split by route
OLD_SPOT_FIELDS = (
    "seed", "device", "epochs", "batch_size", "lr", "val_fraction", "genes", "gene_flavor",
    "route", "encoder", "features_key", "image_key", "spots_key", "table_key", "tiles_key",
    "size_um", "mpp", "context_um", "standardise_sections", "n_components", "alphas", "arch",
    "hidden", "n_members", "candidates", "ssl_encoder", "pretrain_tiles_key", "pretrain_epochs",
    "subspot_um", "calibrate")

SHARED_SPOT = {"seed", "device", "genes", "gene_flavor", "route", "image_key", "spots_key",
               "table_key", "tiles_key", "size_um", "mpp", "batch_size"}
ON_FEATURES = {"ssl_encoder", "pretrain_tiles_key", "pretrain_epochs", "calibrate"}
ON_ENCODER = ON_FEATURES | {"encoder", "features_key", "context_um", "standardise_sections"}
#: route -> the options its class adds to the shared inputs (those the route reads)
ROUTE_FIELDS = {
    "ridge": ON_ENCODER | {"n_components", "alphas", "subspot_um"},
    "mlp": ON_ENCODER | {"hidden", "n_members", "epochs", "lr", "val_fraction"},
    "cnn": {"arch", "epochs", "lr", "val_fraction"},
    "auto": ON_FEATURES | {"candidates", "alphas", "hidden", "n_members", "epochs", "lr",
                           "val_fraction"},
}


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_each_spot_route_class_holds_only_its_options_and_none_is_lost():
    from histoexpr.tl._spot._options import ROUTE_OPTIONS

    assert _names(hx.tl.SpotRegressorOptions) == SHARED_SPOT
    classes = {"ridge": hx.tl.RidgeRouteOptions, "mlp": hx.tl.MLPRouteOptions,
               "cnn": hx.tl.CNNRouteOptions, "auto": hx.tl.AutoRouteOptions}
    assert ROUTE_OPTIONS == classes
    for route, cls in classes.items():
        assert _names(cls) == SHARED_SPOT | ROUTE_FIELDS[route], route
        assert issubclass(cls, hx.tl.SpotRegressorOptions) and cls().route == route
        doc = inspect.getdoc(cls)
        for name in _names(cls):  # each option documented in its route's class
            assert f"\n{name}\n    " in doc, (route, name)
    assert "\nhidden\n" not in inspect.getdoc(hx.tl.CNNRouteOptions)
    # nothing lost: every option of the one class of before belongs to a route's class, with
    # the same default
    union = set().union(*(_names(c) for c in classes.values()))
    assert set(OLD_SPOT_FIELDS) == union
    assert hx.tl.SpotRegressorOptions._all_options() == list(
        dict.fromkeys([*_names_in_order(hx.tl.SpotRegressorOptions),
                       *(n for c in classes.values() for n in _names_in_order(c))]))
    defaults = {"epochs": 30, "lr": 0.001, "val_fraction": 0.15, "batch_size": 32,
                "hidden": 256, "n_members": 1, "arch": "small_cnn", "calibrate": True,
                "encoder": "handcrafted", "genes": 50, "size_um": 112.0}
    for cls in classes.values():
        for name, value in defaults.items():
            if name in _names(cls):
                assert getattr(cls(), name) == value, (cls.__name__, name)


def _names_in_order(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@bad_input("silently wrong", "an option of another spot-regressor route (`route='cnn', "
           "hidden=64`; `route='ridge', epochs=5`): ignored before",
           says="ValueError at options construction: `hidden is an option of routes 'mlp', "
                "'auto' of the spot regressor; route='cnn' (CNNRouteOptions) does not read "
                "it. Drop hidden, or pass route='mlp'.`",
           fix="drop the option, or pass a route that reads it (the message names them)",
           match="hidden is an option of routes 'mlp', 'auto'")
def test_an_option_of_another_route_is_refused_naming_the_routes_that_read_it():
    with pytest.raises(ValueError, match="hidden is an option of routes 'mlp', 'auto' of the "
                                         "spot regressor; route='cnn'.*Drop hidden, or pass "
                                         "route='mlp'"):
        hx.tl.SpotRegressorOptions(route="cnn", hidden=64)
    with pytest.raises(ValueError, match="epochs is an option of routes 'mlp', 'cnn', 'auto'.*"
                                         "route='ridge'"):
        hx.tl.fit({}, model="spot_regressor", route="ridge", epochs=5)
    with pytest.raises(ValueError, match="arch is an option of route 'cnn'"):
        hx.tl.MLPRouteOptions(arch="resnet18")  # the route classes refuse alike
    with pytest.raises(ValueError, match="candidates is an option of route 'auto'"):
        dataclasses.replace(hx.tl.RidgeRouteOptions(), candidates={"head": ["mlp"]})
    with pytest.raises(ValueError, match="MLPRouteOptions is the options of route='mlp', not "
                                         "route='cnn'"):
        hx.tl.MLPRouteOptions(route="cnn")
    with pytest.raises(TypeError, match="unexpected keyword argument 'hiden'"):
        hx.tl.SpotRegressorOptions(route="mlp", hiden=64)  # a name of no route: the usual error


def test_the_spot_options_constructor_replace_and_record_work_as_before():
    options = hx.tl.SpotRegressorOptions(route="mlp", hidden=64, genes=["EPCAM"])
    assert type(options) is hx.tl.MLPRouteOptions and options.hidden == 64
    assert isinstance(options, hx.tl.SpotRegressorOptions)
    assert type(hx.tl.SpotRegressorOptions()) is hx.tl.RidgeRouteOptions  # the default route
    for route in ("ridge", "mlp", "cnn", "auto"):
        assert isinstance(hx.tl.SpotRegressorOptions(route=route), hx.tl.SpotRegressorOptions)
    copied = dataclasses.replace(options, genes=["KRT8", "PTPRC"])  # as hx.tl.benchmark does
    assert type(copied) is hx.tl.MLPRouteOptions and copied.hidden == 64
    assert copied.genes == ["KRT8", "PTPRC"]
    record = options.record()
    assert record["route"] == "mlp" and record["hidden"] == 64 and "arch" not in record
    assert hx.tl.SpotRegressorOptions(**record) == options  # a record builds the options again
    assert options_for("spot_regressor", **record) == options
    # a new route through options_for keeps the options that route reads
    mlp = hx.tl.SpotRegressorOptions(route="mlp", epochs=5, genes=["EPCAM"], hidden=256)
    cnn = options_for(mlp, route="cnn", lr=0.01)  # hidden at its default: left out
    assert type(cnn) is hx.tl.CNNRouteOptions and cnn.genes == ["EPCAM"]
    assert (cnn.epochs, cnn.lr) == (5, 0.01)
    with pytest.warns(FutureWarning, match="'patch_um' is deprecated"):
        assert options_for("spot_regressor", route="cnn", patch_um=56.0).size_um == 56.0
    assert inspect.signature(hx.tl.MLPRouteOptions).parameters["route"].default == "mlp"


def test_help_of_fit_lists_every_option_of_every_spot_route():
    text = _help(hx.tl.fit)
    for name in OLD_SPOT_FIELDS:
        assert f"    {name} : " in text, name
    for cls in ("RidgeRouteOptions", "MLPRouteOptions", "CNNRouteOptions", "AutoRouteOptions"):
        assert cls in text


def test_fit_dispatches_on_the_class_of_the_spot_options(monkeypatch, synthetic):
    from histoexpr.tl._spot import _spot_regressor

    section = synthetic(seed=0, size_um=300, spot_pitch_um=40, spot_diameter_um=35)
    called = []

    class Stub:
        metadata: dict = {}

    def stub(name):
        def run(*args, **kwargs):
            called.append(name)
            return Stub(), {}
        return run

    for name in ("_fit_head", "_fit_cnn", "fit_auto", "_fit_subspot"):
        monkeypatch.setattr(_spot_regressor, name, stub(name))
    cases = [({"route": "ridge"}, "_fit_head"), ({"route": "mlp"}, "_fit_head"),
             ({"route": "cnn"}, "_fit_cnn"), ({"route": "auto"}, "fit_auto"),
             ({"route": "ridge", "encoder": "random_cnn"}, "fit_auto"),
             ({"route": "ridge", "subspot_um": 28.0, "size_um": 56.0}, "_fit_subspot")]
    for options, expected in cases:
        options = hx.tl.SpotRegressorOptions(genes=["EPCAM"], mpp=2.0, **{"size_um": 56.0,
                                                                          **options})
        _spot_regressor.fit({"a": section}, options)
        assert called[-1] == expected, options


@bad_input("silently wrong", "an options object of one spot-regressor route given another route "
           "(`hx.tl.fit(data, model=hx.tl.SpotRegressorOptions(route='mlp', hidden=64), "
           "route='cnn')`): its options the new route does not read were dropped before",
           says="ValueError at options construction: `Changing route='mlp' to route='cnn' "
                "would drop hidden=64: options of route='mlp' (MLPRouteOptions) set to other "
                "values than their defaults, which route='cnn' (CNNRouteOptions) does not read. "
                "Drop them (leave them at their defaults), or pass options of route='cnn' ...`",
           fix="leave those options at their defaults, or build the options of the new route",
           match=r"would drop hidden=64: .* Drop them")
def test_a_new_route_refuses_to_drop_the_old_routes_options_set_by_the_user():
    mlp = hx.tl.SpotRegressorOptions(route="mlp", hidden=64, n_members=2, lr=0.01,
                                     context_um=(300, 600), genes=["EPCAM"])
    with pytest.raises(ValueError, match=r"Changing route='mlp' to route='cnn' would drop "
                                         r"context_um=\[300, 600\], hidden=64, n_members=2: "
                                         r"options of route='mlp' \(MLPRouteOptions\).*"
                                         r"route='cnn' \(CNNRouteOptions\) does not read\. "
                                         r"Drop them.*SpotRegressorOptions\(route='cnn'"):
        hx.tl.fit({}, model=mlp, route="cnn")  # lr is read by the CNN route: kept, not named
    encoder = hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8)
    auto = hx.tl.SpotRegressorOptions(route="auto", ssl_encoder=encoder)
    with pytest.raises(ValueError, match="would drop ssl_encoder=<TileEncoder>: "):
        options_for(auto, route="cnn")
    # the dropped options at their defaults were not chosen: the new route's options
    defaults = hx.tl.SpotRegressorOptions(route="mlp", hidden=256, context_um=None, lr=0.01,
                                          genes=["EPCAM"])
    cnn = options_for(defaults, route="cnn")
    assert cnn == hx.tl.SpotRegressorOptions(route="cnn", lr=0.01, genes=["EPCAM"])
    ridge = options_for(hx.tl.SpotRegressorOptions(route="auto", alphas=list(
        hx.tl.AutoRouteOptions().alphas)), route="ridge")  # a list equal to the default tuple
    assert type(ridge) is hx.tl.RidgeRouteOptions
    assert options_for(mlp, route="mlp", hidden=32).hidden == 32  # the same route: a copy
    with pytest.raises(ValueError, match=r"to route='ridge' would drop lr=0\.01, hidden=64, "
                                         r"n_members=2: "):
        options_for(mlp, route="ridge")  # the ridge reads context_um: kept


@bad_input("silently wrong", "a boolean option given as a string (`hx.tl.fit(..., "
           "calibrate='no')`, `standardise_sections='False'`, `augment='no'`, "
           "`per_gene='yes'`): a non-empty string is true, so 'no' calibrated",
           says="TypeError at options construction: `calibrate must be True or False, got "
                "'no' (str)`",
           fix="pass True or False")
@pytest.mark.parametrize(("model", "option", "value"), [
    ("spot_regressor", "calibrate", "no"),
    ("spot_regressor", "standardise_sections", "False"),
    ("patch_classifier", "augment", "no"),
    ("patch_classifier", "cache", 0),
    ("abmil", "per_gene", "yes"),
])
def test_a_boolean_option_refuses_anything_but_true_or_false(model, option, value, synthetic):
    with pytest.raises(TypeError, match=f"{option} must be True or False, got {value!r}"):
        options_for(model, **{option: value})
    if model == "spot_regressor":  # refused by fit before a section is touched
        section = synthetic(size_um=400, seed=0)
        before = {f"{kind}/{key}" for kind, key, _ in section.gen_elements()}
        with pytest.raises(TypeError, match=f"{option} must be True or False"):
            hx.tl.fit(section, model=model, genes=GENES, **{option: value})
        assert {f"{kind}/{key}" for kind, key, _ in section.gen_elements()} == before
    options_for(model, **{option: np.bool_(False)})  # numpy's booleans are booleans


def test_every_option_annotated_bool_is_checked_also_in_a_new_options_class():
    from histoexpr.tl._options import ModelOptions, _bool_options

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class NewOptions(ModelOptions):
        flag: bool = False
        maybe: bool | None = None
        count: int = 1

    assert _bool_options(NewOptions) == ["flag", "maybe"]
    assert NewOptions(maybe=None).maybe is None
    with pytest.raises(TypeError, match="maybe must be True or False"):
        NewOptions(maybe="False")
    with pytest.raises(TypeError, match="flag must be True or False"):
        NewOptions(flag=1)
