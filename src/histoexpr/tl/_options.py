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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

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
    cls._option_docs = own
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in own]
    inherited = {name: text for name in missing
                 if (text := _inherited_doc(cls, name)) is not None}
    shared = [name for name in missing if name not in inherited]
    undocumented = [name for name in shared if name not in SHARED_DOCS]
    if undocumented:
        raise TypeError(f"{cls.__name__} does not document {undocumented}.")
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


#: option name -> its range check (applied to a value that is not None), one per name
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


def _choices(cls: type) -> dict[str, Any]:
    """Option name -> its ``Literal`` type, for the options annotated with one.

    The annotations are strings (``from __future__ import annotations``); a name of the class's
    module that holds a ``Literal`` (e.g. ``route: Route``) is that option's one list of choices.
    """
    names = vars(sys.modules[cls.__module__])
    found = {}
    for f in dataclasses.fields(cls):
        hint = names.get(f.type) if isinstance(f.type, str) else f.type
        if get_origin(hint) is Literal:
            found[f.name] = hint
    return found


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Base of every model's options: :meth:`record` and the checks of ``__post_init__``."""

    #: the model these options train (``hx.tl.fit(..., model=...)``); ``""`` for the bases
    model: ClassVar[str] = ""
    #: {old option name: new name}: the old names still work, with a ``FutureWarning``
    renamed: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        """Range checks of the options, one per option name (:data:`CHECKS`).

        First, for every option: a number that is NaN or infinite, alone or inside a list or a
        mapping (``alphas=[nan]``, ``candidates={"lr": [inf]}``), is refused, whatever the option.
        Then every option annotated ``bool`` must be ``True`` or ``False`` (:func:`_bool_options`).
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
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in CHECKS and value is not None:
                CHECKS[f.name](f.name, value)
        for name, choices in _choices(type(self)).items():
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
