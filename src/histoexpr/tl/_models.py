"""The model table: one :class:`ModelSpec` per model, the one place a model is registered.

``hx.tl.fit``, ``hx.tl.predict``, ``hx.tl.cross_validate`` and their help read this table, and
so do the documentation and the tests. The lookups by name (:data:`MODELS`, :data:`OPTIONS`,
:data:`CROSS_VALIDATORS`, :data:`COHORT_MODELS`, :data:`BAG_MODELS`) are views of it, never
written by hand.

Adding a model is one module, one options class and one entry: the module (in the job room
that trains it) defines ``fit(data, options)``, which reads ``options.<name>`` and returns a
:class:`histoexpr.models.Network` whose ``metadata["model"]`` is the model's name, and
``predict(model, data, *, key_added=..., overwrite=False, ...)``; the options class (a frozen
dataclass subclassing :class:`~histoexpr.tl._options.ModelOptions` in the room's
``_options.py``, its options documented in its ``Parameters`` section, ``model = "<name>"``)
holds the options and their cross-option rules; the entry below names both (and the
cross-validation procedure, if any). The options class is also exported from
:mod:`histoexpr.tl` (its ``__init__``) and listed in ``docs/api.md``.

The model modules import torch, so the table names them by module path and ``fit`` imports a
model's module when it trains it; ``import histoexpr`` and ``help(hx.tl.fit)`` import none.
The ``TYPE_CHECKING`` imports below declare the same arrows to import-linter, and a test checks
that they name every module of the table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from ._mil._options import ABMILOptions, MeanPoolLogisticOptions, MeanPoolRidgeOptions
from ._options import ModelOptions
from ._patch._options import CellMorphologyOptions, PatchClassifierOptions
from ._spot._options import SpotRegressorOptions

if TYPE_CHECKING:  # the arrows of MODEL_TABLE, for import-linter (imported when used)
    from ._mil import _abmil, _logistic, _ridge  # noqa: F401
    from ._mil import _cross_validate as _mil_cross_validate  # noqa: F401
    from ._patch import _cell_morphology, _patch_classifier  # noqa: F401
    from ._spot import _cross_validate as _spot_cross_validate  # noqa: F401
    from ._spot import _spot_regressor  # noqa: F401

Kind = Literal["patch", "cell", "bag", "spot", "other"]


@dataclass(frozen=True)
class ModelSpec:
    """One model: its name, options class, module and how it is cross-validated.

    ``hx.tl.register_model(ModelSpec("my_model", MyOptions, "mypackage.my_model", kind="spot"))``
    adds a model written outside histoexpr.

    Parameters
    ----------
    name
        The model's name (``hx.tl.fit(..., model=name)``, ``metadata["model"]``).
    options
        Its options class (a frozen dataclass subclassing :class:`ModelOptions`);
        ``options.model`` must be ``name``.
    module
        Full name of the module whose ``fit(data, options)`` trains the model and whose
        ``predict`` applies it (``"__main__"`` for a model written in a script or notebook).
    kind
        What it predicts from what: ``"patch"`` (class maps from image patches), ``"cell"``
        (a class per cell), ``"bag"`` (slide-level models on bags of tile features; the bag
        cross-validation trains them), ``"spot"`` (spot expression from tiles centred on the
        spots: the HEST protocol cross-validates it and ``hx.tl.predict`` runs it over a cohort
        on disk slide by slide, with its module's one-section ``predict``) or ``"other"``.
    cross_validator
        ``"module:function"`` of its cross-validation procedure, called as
        ``function(data, model=options, module=model_module, groups=..., **options)``;
        ``None``: ``hx.tl.cross_validate`` refuses the model.
    cohort
        Whether its ``predict`` takes a :class:`~histoexpr.io.Cohort` itself.
    """

    name: str
    options: type[ModelOptions]
    module: str
    _: KW_ONLY
    kind: Kind = "other"
    cross_validator: str | None = None
    cohort: bool = False

    def __post_init__(self) -> None:
        from .._core.validate import check_bool, check_choice

        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"ModelSpec: name must be a non-empty string, got {self.name!r}.")
        if not (isinstance(self.options, type) and issubclass(self.options, ModelOptions)):
            raise TypeError(f"ModelSpec {self.name!r}: options must be an options class (a "
                            "frozen dataclass subclassing histoexpr.tl.ModelOptions), got "
                            f"{self.options!r}.")
        for what in ("module", *(("cross_validator",) if self.cross_validator else ())):
            value = getattr(self, what)
            if not isinstance(value, str) or not value or (what == "cross_validator") != (
                    value.count(":") == 1):
                form = "'package.module:function'" if what == "cross_validator" else \
                    "'package.module'"
                raise TypeError(f"ModelSpec {self.name!r}: {what} must be a string {form}, "
                                f"got {value!r}.")
        check_choice("kind", self.kind, Kind)
        check_bool("cohort", self.cohort)
        if self.options.model != self.name:
            raise ValueError(f"ModelSpec {self.name!r}: its options class "
                             f"{self.options.__name__} trains model {self.options.model!r}; "
                             f"set {self.options.__name__}.model = {self.name!r}.")
        if self.cross_validator == _SPOT_CV and self.kind != "spot":
            raise ValueError(f"ModelSpec {self.name!r}: the HEST protocol ({_SPOT_CV}) "
                             f"cross-validates spot models, not kind={self.kind!r}; pass "
                             "kind='spot' if the model predicts spot expression from tiles.")

    def load(self) -> ModuleType:
        """The model's module (its ``fit`` and ``predict``), imported on first use."""
        return importlib.import_module(self.module)

    def load_cross_validator(self) -> Callable[..., Any]:
        """The model's cross-validation procedure."""
        module, function = self.cross_validator.split(":")
        return getattr(importlib.import_module(module), function)


def _keyword_spec(init: Callable[..., None]) -> Callable[..., None]:
    """``ModelSpec``'s ``__init__``, still taking ``kind`` and the rest by position.

    ``kind`` (and after it ``cross_validator``, ``cohort``) were positional before they were
    keyword-only; by position they still work, with a ``FutureWarning``.
    """
    import functools

    @functools.wraps(init)
    def __init__(self, name: str, options: type[ModelOptions], module: str, *by_position: Any,
                 **keywords: Any) -> None:
        if by_position:
            import warnings

            names = ("kind", "cross_validator", "cohort")[:len(by_position)]
            if len(by_position) > 3 or set(names) & set(keywords):
                raise TypeError(f"ModelSpec takes name, options and module by position and "
                                f"kind, cross_validator, cohort by keyword; got {by_position!r}.")
            warnings.warn(f"ModelSpec({name!r}, ...): pass {', '.join(names)} by keyword "
                          f"({names[0]}=...); by position is deprecated.", FutureWarning,
                          stacklevel=2)
            keywords.update(zip(names, by_position, strict=True))
        init(self, name, options, module, **keywords)

    return __init__


ModelSpec.__init__ = _keyword_spec(ModelSpec.__init__)

_BAG_CV = "histoexpr.tl._mil._cross_validate:cross_validate_bags"
_SPOT_CV = "histoexpr.tl._spot._cross_validate:cross_validate_spots"

#: every model histoexpr trains, by name
MODEL_TABLE: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("patch_classifier", PatchClassifierOptions,
              "histoexpr.tl._patch._patch_classifier", kind="patch"),
    ModelSpec("cell_morphology", CellMorphologyOptions,
              "histoexpr.tl._patch._cell_morphology", kind="cell"),
    ModelSpec("abmil", ABMILOptions, "histoexpr.tl._mil._abmil", kind="bag",
              cross_validator=_BAG_CV, cohort=True),
    ModelSpec("meanpool_ridge", MeanPoolRidgeOptions, "histoexpr.tl._mil._ridge", kind="bag",
              cross_validator=_BAG_CV, cohort=True),
    ModelSpec("meanpool_logistic", MeanPoolLogisticOptions, "histoexpr.tl._mil._logistic",
              kind="bag", cross_validator=_BAG_CV, cohort=True),
    ModelSpec("spot_regressor", SpotRegressorOptions, "histoexpr.tl._spot._spot_regressor",
              kind="spot", cross_validator=_SPOT_CV, cohort=True),
)}
#: the models of histoexpr itself: :func:`histoexpr.tl.register_model` never replaces them
OWN_MODELS: frozenset[str] = frozenset(MODEL_TABLE)


class _View(Mapping):
    """A read-only view of :data:`MODEL_TABLE`: ``{name: value(spec)}`` of the specs kept."""

    def __init__(self, value: Callable[[ModelSpec], Any],
                 keep: Callable[[ModelSpec], bool] = lambda spec: True) -> None:
        self._value, self._keep = value, keep

    def __getitem__(self, name: str) -> Any:
        spec = MODEL_TABLE.get(name)
        if spec is None or not self._keep(spec):
            raise KeyError(name)
        return self._value(spec)

    def __iter__(self) -> Iterator[str]:
        return (name for name, spec in MODEL_TABLE.items() if self._keep(spec))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(dict(self))


#: model name -> full name of the module that trains and applies it
MODELS: Mapping[str, str] = _View(lambda spec: spec.module)
#: model name -> its options class
OPTIONS: Mapping[str, type[ModelOptions]] = _View(lambda spec: spec.options)
#: model name -> (module, function) of its cross-validation procedure
CROSS_VALIDATORS: Mapping[str, tuple[str, str]] = _View(
    lambda spec: tuple(spec.cross_validator.split(":")),
    lambda spec: spec.cross_validator is not None)
#: the models whose predict takes a cohort (name -> spec)
COHORT_MODELS: Mapping[str, ModelSpec] = _View(lambda spec: spec, lambda spec: spec.cohort)
#: the slide-level models on bags of tile features (name -> spec)
BAG_MODELS: Mapping[str, ModelSpec] = _View(lambda spec: spec, lambda spec: spec.kind == "bag")


def spec_of(model: str | ModelOptions) -> ModelSpec:
    """The table entry of a model given by name or by its options object.

    Unknown names, options classes that are no model's (the bases, such as
    ``hx.tl.TrainingOptions()``) and other objects are refused with the models to choose from.
    """
    import difflib

    known = ", ".join(repr(m) for m in MODEL_TABLE)
    if isinstance(model, ModelOptions):
        spec = MODEL_TABLE.get(model.model)
        if spec is None or not isinstance(model, spec.options):
            classes = ", ".join(f"hx.tl.{s.options.__name__}" for s in MODEL_TABLE.values())
            raise TypeError(f"{type(model).__name__} is not the options of a model (it is a "
                            f"base the models' options share); pass one of {classes}, or a "
                            f"model name ({known}).")
        return spec
    if isinstance(model, str):
        if model not in MODEL_TABLE:
            close = difflib.get_close_matches(model, list(MODEL_TABLE), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown model {model!r}; histoexpr trains: {known}.{hint}")
        return MODEL_TABLE[model]
    raise TypeError(f"model must be a model name ({known}) or an options object such as "
                    f"hx.tl.SpotRegressorOptions(...), got {type(model).__name__}.")


def options_of(model: str | ModelOptions, **overrides: Any) -> ModelOptions:
    """The options of ``model`` (a name or an options object) with ``overrides`` set.

    A name gives its options class's defaults; an object is copied with the overrides replaced.
    Renamed and unknown options as :func:`histoexpr.tl._options.options_for` says.
    """
    from ._options import options_for

    spec = spec_of(model)
    return options_for(model if isinstance(model, ModelOptions) else spec.options, **overrides)
