"""The bases of every model's options, defined once with their documentation and checks.

Each model's options class lives in its job room, beside the code that reads it
(``tl/_spot/_options.py``, ``tl/_mil/_options.py``, ``tl/_patch/_options.py``) and subclasses
:class:`ModelOptions` (or :class:`CommonOptions`, :class:`TrainingOptions`). The options shared
by the models trained by gradient descent (:class:`TrainingOptions`) and by every model that
draws random numbers or runs on a device (:class:`CommonOptions`) are written once here; their
documentation is appended to each class that has them (:func:`_documented`). The model table
(:mod:`histoexpr.tl._models`) maps model names to these classes. This module imports nothing
else from ``tl``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
import sys
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from .._core.validate import (
    apply_renames,
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_positive,
)

__all__ = [
    "CommonOptions",
    "ModelOptions",
    "TrainingOptions",
    "options_for",
]

#: documentation of the options several models share (one text per option)
SHARED_DOCS: dict[str, str] = {
    "epochs": "Maximum number of epochs (early stopping on the validation loss).",
    "batch_size": "Samples (patches, spots or bags) per training batch.",
    "lr": "Learning rate of AdamW.",
    "weight_decay": "Weight decay of AdamW.",
    "patience": ("Early stopping: epochs without a better validation loss before stopping; "
                 "``None`` never stops early."),
    "val_fraction": ("Share of the training data held out for early stopping, in ``[0, 1)``; "
                     "0 trains ``epochs`` without a validation split where the model can (a "
                     "model that cannot says so)."),
    "seed": "Random seed; ``None`` uses ``hx.settings.seed``.",
    "device": "Torch device; ``None`` uses ``hx.settings.device``.",
}



def _own_docs(doc: str) -> dict[str, str]:
    """``{option: its numpydoc lines}`` of the ``Parameters`` section a class itself writes."""
    doc = inspect.cleandoc(doc or "")
    if "Parameters\n----------\n" not in doc:
        return {}
    entries: dict[str, list[str]] = {}
    name = None
    for line in doc.split("Parameters\n----------\n", 1)[1].splitlines():
        if line and not line.startswith(" "):
            name = line.strip()
            entries[name] = []
        elif name is not None:
            entries[name].append(line)
    return {k: "\n".join(v).rstrip() for k, v in entries.items()}


def _inherited_doc(cls: type, name: str) -> str | None:
    """The lines of option ``name`` written by the nearest base of ``cls`` that documents it."""
    return next((c.__dict__["_option_docs"][name] for c in cls.__mro__[1:]
                 if name in c.__dict__.get("_option_docs", {})), None)


def _documented(cls: type) -> type:
    """Document the options ``cls`` has and does not document itself.

    Each class writes the ``Parameters`` of the options it declares (or gives a meaning of its
    own). An option declared by a base that documents it (e.g. the bag inputs of the slide-level
    models) takes that base's text, nearest base first, listed before the class's own; the
    options of :data:`SHARED_DOCS` take their one text, appended.
    """
    doc = inspect.cleandoc(cls.__doc__ or "")
    own = _own_docs(doc)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in own]
    inherited = {name: text for name in missing
                 if (text := _inherited_doc(cls, name)) is not None}
    shared = [name for name in missing if name not in inherited]
    undocumented = [name for name in shared if name not in SHARED_DOCS]
    if undocumented:
        raise TypeError(f"{cls.__name__} does not document {undocumented}: write one entry per "
                        "option in the Parameters section of its docstring (the option's name "
                        "on a line, its meaning indented below).")
    cls._option_docs = own  # set once documented: a class refused here is documented again
    if "Parameters\n----------" not in doc:
        doc += "\n\nParameters\n----------"
    head, rest = doc.split("Parameters\n----------", 1)
    doc = (head + "Parameters\n----------"
           + "".join(f"\n{name}\n{text}" for name, text in inherited.items()) + rest)
    for name in shared:
        doc += f"\n{name}\n" + textwrap.indent(textwrap.fill(SHARED_DOCS[name], 88), "    ")
    cls.__doc__ = doc
    return cls


def _int_at_least(minimum: int) -> Any:
    return lambda name, value: check_int(name, value, minimum=minimum)


#: option name -> its range check (applied to a value that is not None), one per name; applied
#: to the options a class of histoexpr declares (:func:`_is_histoexpr_option`)
CHECKS: dict[str, Any] = {
    "seed": lambda name, value: check_int(name, value),
    "epochs": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "lr": check_positive,
    "weight_decay": lambda name, value: check_positive(name, value, allow_zero=True),
    "patience": _int_at_least(1),
    "val_fraction": lambda name, value: check_fraction(name, value, closed="left"),
    "n_folds": _int_at_least(2),
    "size_um": lambda name, value: [check_positive(name, v, unit="um") for v in
                                    (value if isinstance(value, Sequence) else [value])],
    "dropout": lambda name, value: check_fraction(name, value, closed="left"),
    "attention_entropy": lambda name, value: check_positive(name, value, allow_zero=True),
    "width": _int_at_least(1),
    "hidden": _int_at_least(1),
    "attention_hidden": _int_at_least(1),
    "n_members": _int_at_least(1),
    "max_tiles": _int_at_least(1),
    "feature_mpp": lambda name, value: check_positive(name, value, unit="um/px"),
    "val_block_um": lambda name, value: check_positive(name, value, unit="um"),
    "pretrain_epochs": _int_at_least(1),
    "n_components": _int_at_least(1),
    "subspot_um": lambda name, value: check_positive(name, value, unit="um"),
    "alphas": lambda name, value: _each_positive(name, value),
    "Cs": lambda name, value: _each_positive(name, value),
}


def _each_positive(name: str, value: Any) -> None:
    """A penalty grid: one positive number, or a non-empty list of them."""
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not values:
        raise ValueError(f"{name} is empty; give at least one value, e.g. {name}=[1.0].")
    for one in values:
        check_positive(name, one)


def _non_finite(value: Any, path: str) -> str | None:
    """Where ``value`` (a number, or numbers nested in lists and mappings) is NaN or infinite."""
    if isinstance(value, bool) or value is None or isinstance(value, str | Path):
        return None
    if isinstance(value, numbers.Real):
        return None if math.isfinite(float(value)) else f"{path}={value!r}"
    if hasattr(value, "ndim") and hasattr(value, "tolist") and getattr(value, "dtype", None) \
            is not None and value.dtype.kind in "fc":  # a numpy array of numbers
        return _non_finite(value.tolist(), path)
    if isinstance(value, Mapping):
        return next((found for key, item in value.items()
                     if (found := _non_finite(item, f"{path}[{key!r}]"))), None)
    if isinstance(value, Sequence):
        return next((found for i, item in enumerate(value)
                     if (found := _non_finite(item, f"{path}[{i}]"))), None)
    return None


def _bool_options(cls: type) -> list[str]:
    """The options annotated ``bool`` (or ``bool | None``), from the class's annotations.

    Each is checked by :func:`histoexpr._core.validate.check_bool`: a string such as ``"no"``
    or ``"False"`` (from a configuration file or a command line) is true in Python and would
    turn on what it was meant to turn off. Read from the annotations, so that a new ``bool``
    option is checked without being listed anywhere.
    """
    found = []
    for f in dataclasses.fields(cls):
        hint = f.type
        if isinstance(hint, str):
            parts = {part.strip() for part in hint.replace("Optional[", "").rstrip("]")
                     .split("|")}
        else:
            parts = {getattr(arg, "__name__", str(arg)) for arg in (get_args(hint) or (hint,))}
            parts = {"None" if part == "NoneType" else part for part in parts}
        if "bool" in parts and parts <= {"bool", "None"}:
            found.append(f.name)
    return found


def _hints(cls: type) -> dict[str, Any]:
    """Option name -> its annotation, evaluated (``Literal[...]``, ``float``, ``int | None``...).

    The annotations are strings (``from __future__ import annotations``): they are evaluated in
    the module of the class that declares them (:func:`typing.get_type_hints`), or, where one of
    them names what only a type checker imports, one by one; an option whose annotation cannot
    be evaluated is left out.
    """
    if cls in _HINTS:
        return _HINTS[cls]
    try:
        hints = get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a name imported for type checkers only: one by one
        hints = {}
        for owner in reversed(cls.__mro__):
            names = vars(sys.modules.get(owner.__module__, typing))
            for name, hint in owner.__dict__.get("__annotations__", {}).items():
                try:
                    hints[name] = eval(hint, dict(names)) if isinstance(hint, str) else hint
                except Exception:  # noqa: BLE001, S307 - an annotation, not user input
                    hints.pop(name, None)
    _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name in hints}
    return _HINTS[cls]


#: class -> its evaluated annotations (:func:`_hints`), computed once per class
_HINTS: dict[type, dict[str, Any]] = {}


def _choices(cls: type) -> dict[str, tuple[tuple[Any, ...], bool]]:
    """Option name -> (its choices, whether ``None`` is allowed), for ``Literal`` options.

    Every ``Literal`` counts, however written: a name of the module holding one (``route:
    Route``), inline (``centre: Literal["mean", "median"]``, ``typing.Literal[...]``), or with
    ``None`` (``Literal[...] | None``). A union with other types (``float | Literal["auto"]``)
    is not a list of choices.
    """
    found = {}
    for name, hint in _hints(cls).items():
        parts = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
        optional = type(None) in parts
        literals = [p for p in parts if p is not type(None)]
        if literals and all(get_origin(p) is Literal for p in literals):
            found[name] = (tuple(v for p in literals for v in get_args(p)), optional)
    return found


def _is_histoexpr_option(cls: type, name: str) -> bool:
    """Whether a class of histoexpr in ``cls``'s bases declares option ``name``.

    The range checks of :data:`CHECKS` give a name histoexpr's meaning (``width``: a number of
    units); an option a class outside histoexpr declares itself means what that class says, and
    is checked by its own annotation (:func:`_check_annotation`).
    """
    return any(name in c.__dict__.get("__annotations__", {}) for c in cls.__mro__
               if c.__module__.split(".")[0] == "histoexpr")


def _check_annotation(name: str, value: Any, hint: Any) -> None:
    """Refuse a value whose type is not the option's plain annotation (int, float, str, bool).

    For the options a class outside histoexpr declares. ``None`` passes where the annotation
    allows it; other annotations (sequences, mappings, classes) are the class's to check.
    """
    parts = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None and type(None) in parts:
        return
    plain = [p for p in parts if p is not type(None)]
    if not plain or not all(p in (int, float, str, bool) for p in plain):
        return
    if bool in plain and isinstance(value, bool):
        return
    if int in plain and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return
    if float in plain and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return
    if str in plain and isinstance(value, str):
        return
    wanted = " or ".join(p.__name__ for p in plain) + (" or None" if len(plain) < len(parts)
                                                          else "")
    raise TypeError(f"{name} must be {wanted} (its annotation), got {value!r} "
                    f"({type(value).__name__}); pass a value of that type.")


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Base of every model's options: :meth:`record` and the checks of ``__post_init__``.

    A model's options are a frozen ``kw_only`` dataclass subclassing this class (or
    :class:`TrainingOptions`), with ``model: ClassVar[str] = "<name>"`` and each option
    documented in the ``Parameters`` section of its docstring; it is added with
    :func:`histoexpr.tl.register_model`. Every ``Literal`` option is checked against its
    choices; an option a class outside histoexpr declares, annotated ``int``, ``float``,
    ``str`` or ``bool``, against its type (histoexpr's own options keep their range checks).
    Rules between options go in ``_check`` (call ``super()._check()`` first).
    """

    #: the model these options train (``hx.tl.fit(..., model=...)``); ``""`` for the bases
    model: ClassVar[str] = ""
    #: {old option name: new name}: the old names still work, with a ``FutureWarning``
    renamed: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        """Checks of the options: histoexpr's range checks (:data:`CHECKS`) and the annotations.

        First, for every option: a number that is NaN or infinite, alone or inside a list or a
        mapping (``alphas=[nan]``, ``candidates={"lr": [inf]}``), is refused, whatever the option.
        Then every option annotated ``bool`` must be ``True`` or ``False`` (:func:`_bool_options`),
        an option histoexpr declares passes its range check and one a class outside histoexpr
        declares its plain annotation (:func:`_is_histoexpr_option`), and every ``Literal``
        option is one of its choices (:func:`_choices`).
        """
        for f in dataclasses.fields(self):
            found = _non_finite(getattr(self, f.name), f.name)
            if found is not None:
                raise ValueError(f"{type(self).__name__}: {found} is not a finite number; "
                                 f"every number of an option must be finite. Pass a finite "
                                 f"value for {f.name} (or leave its default).")
        for name in _bool_options(type(self)):
            if getattr(self, name) is not None:
                check_bool(name, getattr(self, name))
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _is_histoexpr_option(type(self), f.name):
                if f.name in hints:
                    _check_annotation(f.name, value, hints[f.name])
            elif f.name in CHECKS and value is not None:
                CHECKS[f.name](f.name, value)
        for name, (choices, optional) in _choices(type(self)).items():
            if not (optional and getattr(self, name) is None):
                check_choice(name, getattr(self, name), choices)

    @classmethod
    def _variants(cls) -> list[type[ModelOptions]]:
        """The classes of the model's options: itself, or its base and one class per variant."""
        return [cls]

    @classmethod
    def _all_options(cls) -> list[str]:
        """Every option name the model takes (of all its variants' classes)."""
        return list(dict.fromkeys(f.name for c in cls._variants() for f in dataclasses.fields(c)))

    def _replaced(self, **overrides: Any) -> ModelOptions:
        """A copy with ``overrides`` set, checked again."""
        return dataclasses.replace(self, **overrides)

    def kwargs(self) -> dict[str, Any]:
        """The options by name (the values themselves, not copies)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def record(self) -> dict[str, Any]:
        """The options as JSON-safe values (stored in the model's ``metadata["options"]``)."""
        return {name: _json_safe(value) for name, value in self.kwargs().items()}


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return None if value is None else str(value)
    if isinstance(value, bool | numbers.Integral | numbers.Real) and not hasattr(value, "ndim"):
        return (bool(value) if isinstance(value, bool) else
                int(value) if isinstance(value, numbers.Integral) else float(value))
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy arrays and scalars
        return _json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_json_safe(v) for v in value]
    return f"<{type(value).__name__}>"  # a network given as an option


@dataclass(frozen=True, kw_only=True)
class CommonOptions(ModelOptions):
    """Options of every model that draws random numbers and runs on a torch device."""

    seed: int | None = None
    device: str | None = None


@_documented
@dataclass(frozen=True, kw_only=True)
class TrainingOptions(CommonOptions):
    """Options shared by every model trained by gradient descent (with the one training loop).

    Each model's options class subclasses this one and sets its own defaults.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    val_fraction: float = 0.2


def options_for(model: ModelOptions | type[ModelOptions], **overrides: Any) -> ModelOptions:
    """The options ``model`` (an options object or class) with ``overrides`` set.

    A class gives its defaults; an options object is copied with the overrides replaced
    (:func:`dataclasses.replace`). Renamed options (the class's ``renamed``) still work, with a
    ``FutureWarning`` naming the new one (the rename mechanism of every function,
    :func:`histoexpr._core.validate.apply_renames`). An unknown option raises a ``TypeError`` naming
    it, the model and the model's options. Model names are looked up in the model table
    (:func:`histoexpr.tl._models.options_of`).
    """
    base = model if isinstance(model, ModelOptions) else None
    cls = type(model) if base is not None else model
    overrides = apply_renames(cls.renamed, overrides, owner=cls.__name__, stacklevel=4)
    valid = cls._all_options()
    unknown = [key for key in overrides if key not in valid]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{unknown[0]!r} is not an option of model {cls.model!r}.{hint} Its "
                        f"options ({cls.__name__}) are: {', '.join(valid)}.")
    return base._replaced(**overrides) if base is not None else cls(**overrides)
