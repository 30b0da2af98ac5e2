"""One set of argument checks and the one deprecation shim for renamed keywords.

Every public function checks its options through these functions, so that a bad value gets
the same kind of message everywhere: the parameter's name, the value given, what is allowed
and how to fix it. Errors are raised before anything is written.

The conventions these names follow are in ``docs/design.md`` ("Conventions").
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, get_args

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "check_bool",
    "check_choice",
    "check_element_name",
    "check_store_name",
    "check_fraction",
    "check_int",
    "check_positive",
    "apply_renames",
    "renamed_parameters",
]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_fraction(name: str, value: Any, *,
                   closed: Literal["neither", "left", "right", "both"] = "neither") -> float:
    """Return ``value`` as a float after checking it is a fraction in the stated interval.

    ``closed="neither"`` allows ``(0, 1)``, ``"left"`` ``[0, 1)``, ``"right"`` ``(0, 1]`` and
    ``"both"`` ``[0, 1]``.
    """
    if closed not in ("neither", "left", "right", "both"):
        raise ValueError(f"closed must be 'neither', 'left', 'right' or 'both', got {closed!r}.")
    low_in = closed in ("left", "both")
    high_in = closed in ("right", "both")
    interval = f"{'[' if low_in else '('}0, 1{']' if high_in else ')'}"
    if not _is_real(value):
        raise TypeError(f"{name} must be a number in {interval}, got {value!r} "
                        f"({type(value).__name__}); pass e.g. {name}=0.5.")
    number = float(value)
    ok = (math.isfinite(number) and (number >= 0 if low_in else number > 0)
          and (number <= 1 if high_in else number < 1))
    if not ok:
        raise ValueError(f"{name} must be a fraction in {interval}, got {value!r}; "
                         f"pass a value in {interval}, e.g. {name}=0.5.")
    return number


def check_positive(name: str, value: Any, *, allow_zero: bool = False,
                   unit: str = "") -> float:
    """Return ``value`` as a float after checking it is finite and positive (or zero).

    ``unit`` (e.g. ``"um"``) is named in the message.
    """
    what = "a non-negative" if allow_zero else "a positive"
    unit_text = f" in {unit}" if unit else ""
    if not _is_real(value):
        raise TypeError(f"{name} must be {what} number{unit_text}, got {value!r} "
                        f"({type(value).__name__}).")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {what} number{unit_text} ({name} {bound}), "
                         f"got {value!r}; pass a finite value {bound}.")
    return number


def check_int(name: str, value: Any, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """Return ``value`` as an int after checking it is an integer in ``[minimum, maximum]``.

    Booleans and floats (even whole ones) are refused: a count is an ``int``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}); "
                        f"pass e.g. {name}={minimum if minimum is not None else 1}.")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        low = "-inf" if minimum is None else str(minimum)
        high = "inf" if maximum is None else str(maximum)
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}; "
                         f"pass a value in that range.")
    return number


def check_choice(name: str, value: Any, choices: Iterable[Any] | Any) -> Any:
    """Return ``value`` after checking it is one of ``choices``.

    ``choices`` is an iterable or a ``typing.Literal`` type (the one in the signature), so the
    allowed values are written once.
    """
    allowed = get_args(choices) or tuple(choices)
    if value not in allowed:
        listed = ", ".join(repr(c) for c in allowed)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}. "
                         f"Pass one of these, e.g. {name}={allowed[0]!r}.")
    return value


def stride_name(kwargs: Mapping[str, Any]) -> str:
    """The new name of a tiling step's old ``stride`` (it was in the unit of the tile size).

    For :func:`renamed_parameters`: ``stride_um`` when ``size_um`` is given, else ``stride_px``.
    """
    return "stride_um" if kwargs.get("size_um") is not None else "stride_px"


def apply_renames(renames: Mapping[str, str | Callable[[Mapping[str, Any]], str]],
                  kwargs: Mapping[str, Any], *, owner: str, stacklevel: int = 3) -> dict[str, Any]:
    """``kwargs`` with old names replaced by new ones, each with a ``FutureWarning``.

    The one rename mechanism: :func:`renamed_parameters` (functions) and the options classes
    (their ``renamed``, applied by ``hx.tl.fit``) both use it. A new name may be a function of
    the keyword arguments. Passing both the old and the new name is an error.
    """
    kwargs = dict(kwargs)
    for old, new in renames.items():
        if old not in kwargs:
            continue
        new_name = new if isinstance(new, str) else new(kwargs)
        if new_name in kwargs:
            raise TypeError(f"{owner} got both {old!r} (deprecated) and {new_name!r}; pass "
                            f"only {new_name!r}.")
        warnings.warn(f"{owner}: {old!r} is deprecated and will be removed; use {new_name!r} "
                      "instead.", FutureWarning, stacklevel=stacklevel)
        kwargs[new_name] = kwargs.pop(old)
    return kwargs


def renamed_parameters(**renames: str | Callable[[Mapping[str, Any]], str]) -> Callable[[F], F]:
    """Accept old keyword names for a while, with a ``FutureWarning`` naming the new one.

    ``renamed_parameters(centers="centres")`` lets ``f(centers=...)`` still work; the old name
    is not in the signature that ``help()`` shows. The new name may depend on the other
    arguments: give a function of the keyword arguments that returns the new name. Passing
    both the old and the new name is an error.
    """

    def decorate(function: F) -> F:
        parameters = inspect.signature(function).parameters
        for old, new in renames.items():
            if old in parameters:
                raise TypeError(f"{function.__qualname__} still has the old parameter {old!r}.")
            if isinstance(new, str) and new not in parameters:
                raise TypeError(f"{function.__qualname__} has no parameter {new!r}.")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs = apply_renames(renames, kwargs, owner=f"{function.__name__}()")
            return function(*args, **kwargs)

        wrapper.__renamed_parameters__ = dict(renames)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


#: characters no store name may hold: path separators, and those Windows file names refuse
_NOT_IN_NAMES = set('/\\<>:"|?*')
#: names a store, zarr or the operating system keeps for itself
_RESERVED_NAMES = {"zarr.json", "con", "prn", "aux", "nul",
                   *(f"{d}{i}" for d in ("com", "lpt") for i in (*range(1, 10), "¹", "²", "³"))}
#: characters drawn like a path separator (a name holding one reads as a path)
_SLASH_LOOKALIKES = set("\u2044\u2215\u29f8\u29f9\uff0f\uff3c\u2216")
#: Unicode categories a name may not hold: controls, invisible formatting (bidi overrides,
#: zero-width characters, BOM), private use, unassigned, surrogates, line/paragraph separators
_UNSEEN_CATEGORIES = {"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"}


#: the longest name (UTF-8 bytes) that may become part of a path: ``<name>.zarr`` and the
#: temporary names beside it (:func:`histoexpr._core.files.partial_path`) fit in 255 bytes
MAX_NAME_BYTES = 150


def check_store_name(name: str, value: Any, *, what: str = "key") -> str:
    r"""Return ``value`` after checking it can name one folder inside a store, and nothing else.

    The one rule for every name that becomes part of a path (a key of features or results
    written into slide stores, a tile set's key, a slide id that names its store): a non-empty
    string of at most :data:`MAX_NAME_BYTES` bytes (its folder ``<name>.zarr`` and the
    temporary names beside it must fit a file name's 255), one path component (no ``/`` or
    ``\``, not ``.`` or ``..``, so never absolute and never outside the store), no control
    characters nor ``<>:"|?*``, not starting with ``.`` (temporary and hidden files) or
    ``__`` (zarr's own), no space at either end nor a final ``.``, and none of the reserved names
    (``zarr.json``; ``CON``, ``NUL``, ``COM1``... on Windows). Checked before anything is
    written; the error names the value and what to pass instead.
    """
    fix = (f"use letters, digits and '_', '-', '.' or '+' (e.g. {name}="
           f"{_suggest_name(value)!r})")
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string naming a {what}, got {value!r} "
                        f"({type(value).__name__}); {fix}.")
    problem = None
    if not value:
        problem = "is empty"
    elif value in (".", ".."):
        problem = "would name the folder itself or the one above it"
    elif "/" in value or "\\" in value:
        problem = "holds a path separator ('/' or '\\'): it would be a path, not one name"
    elif unseen := [c for c in value if unicodedata.category(c) in _UNSEEN_CATEGORIES]:
        problem = (f"holds {', '.join(f'U+{ord(c):04X}' for c in unseen[:3])}: a control, "
                   "invisible or unassigned character (a name that reads as another)")
    elif _SLASH_LOOKALIKES & set(value):
        problem = "holds a character drawn like a path separator ('/' or '\\')"
    elif unicodedata.category(value[0]).startswith("M") or value != unicodedata.normalize(
            "NFC", value):
        problem = ("is not in Unicode's composed form (NFC), or starts with a combining mark: "
                   "the same name could be written two ways, as two folders")
    elif _NOT_IN_NAMES & set(value):
        held = "".join(sorted(_NOT_IN_NAMES & set(value)))
        problem = f"holds {held!r}, not allowed in file names"
    elif value.startswith("."):
        problem = "starts with '.' (hidden and temporary files start so)"
    elif value.startswith("__"):
        problem = "starts with '__' (kept for zarr's own use)"
    elif value != value.strip() or value.endswith("."):
        problem = "starts or ends with a space, or ends with '.'"
    elif value.split(".")[0].lower() in _RESERVED_NAMES or value.lower() in _RESERVED_NAMES:
        problem = "is a name reserved by zarr or the operating system"
    elif len(value.encode("utf-8")) > MAX_NAME_BYTES:
        problem = (f"is longer than {MAX_NAME_BYTES} bytes (its folder's name and the "
                   "temporary names written beside it add up to 80 bytes, and a file name "
                   "holds 255)")
    if problem is not None:
        raise ValueError(f"{name}={value!r} cannot name a {what}: it {problem}. It becomes a "
                         f"folder name on disk, so it must be one plain name; {fix}. Nothing "
                         "was written.")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` after checking it is ``True`` or ``False`` (numpy's bools too).

    A string is refused: ``overwrite="no"`` or ``"False"`` (from a configuration file or a
    command line) is true in Python and would replace what it was meant to keep.
    """
    import numpy as np

    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}); "
                    f"pass {name}=True or {name}=False (a string such as 'no' or 'False' is "
                    "true in Python). Nothing was done.")


def check_element_name(name: str, value: Any) -> str:
    """Return ``value`` after checking it can name an element of a SpatialData.

    SpatialData's own rule (letters, digits, ``_``, ``-`` and ``.``; not empty, not ``.`` or
    ``..``, not starting with ``__``), checked before any work so that a bad key fails at once
    with the name of the parameter and a name that would do, not after the results were
    computed (or with some elements of a step already added).
    """
    suggestion = (_suggest_name(value).replace("+", "_") if str(value).strip("._ ")
                  else "my_key")
    fix = f"use letters, digits and '_', '-' or '.' (e.g. {name}={suggestion!r})"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string naming an element of the SpatialData, got "
                        f"{value!r} ({type(value).__name__}); {fix}.")
    try:
        _spatialdata_name_rule()(value)
    except ValueError as error:
        raise ValueError(f"{name}={value!r} cannot name an element of a SpatialData ({error}); "
                         f"{fix}. Nothing was written.") from None
    return value


def _spatialdata_name_rule() -> Callable[[str], None]:
    """SpatialData's own check of element names.

    Where the installed spatialdata does not expose it under that (internal) name, its rule as
    of spatialdata 0.7.
    """
    try:
        from spatialdata._core.validation import check_valid_name
    except ImportError:
        def check_valid_name(value: str) -> None:
            import re

            if not value or value in (".", "..") or value.startswith("__"):
                raise ValueError("a name must not be empty, '.' or '..', nor start with '__'")
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", value):
                raise ValueError("a name may hold only letters, digits, '_', '-' and '.'")
    return check_valid_name


def _suggest_name(value: Any) -> str:
    """A name close to ``value`` that :func:`check_store_name` accepts."""
    text = "".join(c if c.isalnum() or c in "_-.+" else "_"
                   for c in unicodedata.normalize("NFC", str(value))
                   if unicodedata.category(c) not in _UNSEEN_CATEGORIES)
    text = text.strip("._ ") or "X_features"
    if text.split(".")[0].lower() in _RESERVED_NAMES:
        text = f"my_{text}"
    return text[:64]

