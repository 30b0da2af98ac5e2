"""Small helpers shared by every room: logging, key checks, progress bars, seeds."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ._settings import settings

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger("histoexpr")
T = TypeVar("T")

_ELEMENT_KINDS = ("images", "labels", "points", "shapes", "tables")


def element_kind(sdata: SpatialData, key: str) -> str | None:
    """Name of the SpatialData attribute (``"images"``, ``"shapes"``...) that holds ``key``."""
    for kind in _ELEMENT_KINDS:
        if key in getattr(sdata, kind):
            return kind
    return None


def require_element(sdata: SpatialData, key: str, kind: str) -> None:
    """Raise a clear ``KeyError`` when ``sdata.<kind>[key]`` does not exist."""
    container = getattr(sdata, kind)
    if key not in container:
        available = ", ".join(repr(k) for k in container.keys()) or "none"
        raise KeyError(f"sdata.{kind} has no element {key!r}; available: {available}.")


def check_key_free(sdata: SpatialData, key: str, *, overwrite: bool) -> None:
    """Refuse to overwrite an existing element unless ``overwrite=True``.

    Element names are unique across all kinds in a SpatialData, so any kind is checked.
    """
    kind = element_kind(sdata, key)
    if kind is not None and not overwrite:
        raise KeyError(
            f"sdata.{kind}[{key!r}] already exists. Pass overwrite=True to replace it, "
            "or choose another key_added."
        )
    if kind is not None:
        logger.info("Overwriting `sdata.%s[%r]`", kind, key)
        del getattr(sdata, kind)[key]


def log_added(kind: str, key: str, what: str = "") -> None:
    """Log an added element the way squidpy does: ``Adding `sdata.shapes['he_tiles']```."""
    logger.info("Adding `sdata.%s[%r]`%s", kind, key, f" ({what})" if what else "")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None,
             show: bool | None = None) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm progress bar when ``settings.progress_bar`` (or ``show``).

    The bar itself is returned (not an iterator over it), so that a loop can call its
    ``set_postfix`` to show losses; a disabled bar accepts those calls and draws nothing.
    """
    from tqdm.auto import tqdm

    enabled = settings.progress_bar if show is None else show
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False)


def resolve_seed(seed: int | None) -> int:
    """``seed`` itself, or ``settings.seed`` when it is ``None``."""
    return settings.seed if seed is None else int(seed)


def seed_everything(seed: int | None) -> np.random.Generator:
    """Seed python, numpy and torch (when it is imported) and return a numpy generator."""
    import sys

    value = resolve_seed(seed)
    random.seed(value)
    np.random.seed(value % 2**32)  # noqa: NPY002 (seeds the legacy RNG other libraries use)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(value)
    return np.random.default_rng(value)


def resolve_device(device: str | None) -> str:
    """``device`` itself, or ``settings.device`` (cuda -> mps -> cpu) when it is ``None``."""
    return settings.device if device is None else device
