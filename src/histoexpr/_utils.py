"""Small helpers shared by every room: logging, key checks, progress bars, seeds."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ._core.records import WRITER_KEY, WriterRecord
from ._settings import settings

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger("histoexpr")
T = TypeVar("T")

#: how many loops over slides or folds (:func:`each_item`) the running code is inside
_ITEM_DEPTH: ContextVar[int] = ContextVar("histoexpr_item_depth", default=0)
#: how many logged steps (:func:`logged_step`) the running code is inside
_STEP_DEPTH: ContextVar[int] = ContextVar("histoexpr_step_depth", default=0)


class _ItemChatter(logging.Filter):
    """Inside a loop over slides or folds, a step's info lines are debug lines.

    As scanpy's ``deep`` messages: a 12-slide cohort logs its steps, not 9 lines per slide.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and _ITEM_DEPTH.get() > 0:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logger.isEnabledFor(logging.DEBUG)
        return True


logger.addFilter(_ItemChatter())


@contextmanager
def each_item() -> Iterator[None]:
    """The info lines logged inside (one slide, one fold) become debug lines."""
    token = _ITEM_DEPTH.set(_ITEM_DEPTH.get() + 1)
    try:
        yield
    finally:
        _ITEM_DEPTH.reset(token)


def elapsed(start: float) -> str:
    """The time since ``start`` (``time.perf_counter()``) as scanpy writes it: ``0:00:02``."""
    return str(timedelta(seconds=round(time.perf_counter() - start)))


def logged_step(what: str | Callable[..., str]) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Log ``what`` when the decorated step starts and ``finished (0:00:02)`` when it ends.

    ``what`` is a text or a function of the step's arguments that returns one. A step called
    inside another step logs at debug level, so that a call logs its own step once.
    """
    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(function)
        def step(*args: Any, **kwargs: Any) -> T:
            depth = _STEP_DEPTH.get()
            level = logging.INFO if depth == 0 else logging.DEBUG
            if logger.isEnabledFor(level):
                logger.log(level, "%s", what(*args, **kwargs) if callable(what) else what)
            token = _STEP_DEPTH.set(depth + 1)
            start = time.perf_counter()
            try:
                result = function(*args, **kwargs)
            finally:
                _STEP_DEPTH.reset(token)
            logger.log(level, "    finished (%s)", elapsed(start))
            return result
        return step
    return decorate

_ELEMENT_KINDS = ("images", "labels", "points", "shapes", "tables")


def element_kind(sdata: SpatialData, key: str) -> str | None:
    """Name of the SpatialData attribute (``"images"``, ``"shapes"``...) that holds ``key``."""
    for kind in _ELEMENT_KINDS:
        if key in getattr(sdata, kind):
            return kind
    return None


def require_element(sdata: SpatialData, key: str, kind: str) -> None:
    """Raise a clear ``KeyError`` when ``sdata.<kind>[key]`` does not exist.

    Something that is not a SpatialData (a numpy array, a path, an AnnData) is a
    ``TypeError`` naming what to pass instead.
    """
    require_spatialdata(sdata)
    container = getattr(sdata, kind)
    if key not in container:
        available = ", ".join(repr(k) for k in container.keys()) or "none"
        raise KeyError(f"sdata.{kind} has no element {key!r}; available: {available}.")


def require_spatialdata(sdata: object, name: str = "sdata") -> None:
    """Raise a ``TypeError`` naming what to pass when ``sdata`` is not a SpatialData."""
    from spatialdata import SpatialData

    if isinstance(sdata, SpatialData):
        return
    kind = type(sdata).__name__
    hint = ""
    if kind == "ndarray":
        hint = (" For an image array, wrap it first: hx.io.read_wsi(path) reads a slide file, "
                "or make one with spatialdata.SpatialData(images={'he': "
                "spatialdata.models.Image2DModel.parse(array, dims=('c', 'y', 'x'))}).")
    elif isinstance(sdata, str) or kind.endswith("Path"):
        hint = " Read the file first: hx.io.read_wsi(path) or spatialdata.read_zarr(path)."
    raise TypeError(f"{name} must be a SpatialData (a section or slide), got a {kind}.{hint}")



def _fingerprint(element) -> list:
    """What identifies an element's content cheaply: its shape (rasters), rows (shapes, tables)."""
    from anndata import AnnData

    if isinstance(element, AnnData):
        return [int(element.n_obs), int(element.n_vars)]
    if hasattr(element, "children") and "scale0" in getattr(element, "children", {}):
        return [int(n) for n in next(iter(element["scale0"].data_vars.values())).shape]
    if hasattr(element, "geometry"):
        return [len(element)]
    if hasattr(element, "dims") and hasattr(element, "shape"):
        return [int(n) for n in element.shape]
    return sorted(str(c) for c in getattr(element, "columns", []))


def _own_record(element) -> WriterRecord | None:
    from anndata import AnnData

    holder = element.uns if isinstance(element, AnnData) else getattr(element, "attrs", {})
    return WriterRecord.from_uns(holder.get(WRITER_KEY) if hasattr(holder, "get") else None)


def writer_of(sdata: SpatialData, key: str) -> str | None:
    """The histoexpr step that wrote the element ``key`` (e.g. ``"hx.pp.tile"``), or ``None``.

    An element records its writer in its own ``attrs`` (``uns`` for tables) and in
    ``sdata.attrs["histoexpr"]["written"]`` (which, unlike the attrs of images, labels and points,
    is kept in a .zarr store), with the kind and shape it had, so that an element the user put
    under that name later is not taken for histoexpr's. The element's own record names the
    key it was written under: a copy of it that the user stores under another name (e.g.
    ``sdata["mine"] = sdata["he_tiles"].copy()``) is the user's.
    """
    kind = element_kind(sdata, key)
    if kind is None:
        return None
    element = getattr(sdata, kind)[key]
    record = _own_record(element)
    if record is not None:
        if record.key is not None and record.key != key:
            return None  # a copy, put under another name by the user: the user's element
        return record.step
    attrs = getattr(sdata, "attrs", None) or {}
    written = (attrs.get(WRITER_KEY) or {}).get("written") or {}
    record = written.get(key)
    if (isinstance(record, dict) and record.get("kind") == kind
            and list(record.get("fingerprint", [])) == _fingerprint(element)):
        return str(record.get("step"))
    return None


def store_element(sdata: SpatialData, kind: str, key: str, element, *, step: str) -> None:
    """Put ``element`` at ``sdata.<kind>[key]``, recording that histoexpr's ``step`` wrote it.

    The record lets a later ``overwrite=True`` of the same step replace it (and nothing else):
    see :func:`check_key_free`. Call ``check_key_free`` first. Inside
    ``_core.records.made_within(name)`` the record also says ``within=name``.
    """
    from anndata import AnnData

    writer = WriterRecord.now(step, key)
    record = writer.to_uns()
    if isinstance(element, AnnData):
        element.uns[WRITER_KEY] = record
    else:
        element.attrs[WRITER_KEY] = record
    getattr(sdata, kind)[key] = element
    attrs = sdata.attrs
    mine = dict(attrs.get(WRITER_KEY) or {})
    written = dict(mine.get("written") or {})
    written[key] = {"kind": kind, "step": step, "fingerprint": _fingerprint(element)}
    if writer.within is not None:
        written[key]["within"] = writer.within
    mine["written"] = written
    attrs[WRITER_KEY] = mine


def check_key_writable(sdata: SpatialData, key: str, *, overwrite: bool,
                       step: str | None = None) -> bool:
    """Raise unless ``key`` is free, or ``overwrite`` and it holds what ``step`` wrote before.

    Returns whether an element would be replaced. Nothing is deleted (see
    :func:`check_key_free`): call this before any work, so that a bad key fails at once.
    ``step=None`` (older callers) accepts an element written by any histoexpr step.
    """
    kind = element_kind(sdata, key)
    if kind is None:
        return False
    writer = writer_of(sdata, key)
    same = writer is not None and (step is None or writer == step)
    if not same:
        origin = (f"it was written by {writer}" if writer is not None
                  else "it was not written by histoexpr")
        doer = step or "a histoexpr step"
        raise KeyError(
            f"sdata.{kind}[{key!r}] already exists and {origin}, not by {doer}: it is not "
            f"replaced, even with overwrite=True (which only replaces what the same step "
            f"wrote). Choose another key_added, e.g. {_free_name(sdata, key)!r}."
        )
    if not overwrite:
        raise KeyError(
            f"sdata.{kind}[{key!r}] already exists (written by {writer}). Pass overwrite=True "
            "to replace it, or choose another key_added."
        )
    return True


def check_key_free(sdata: SpatialData, key: str, *, overwrite: bool,
                   step: str | None = None) -> None:
    """Make ``key`` free for ``step``'s new element, or raise a clear ``KeyError``.

    Element names are unique across all kinds in a SpatialData, so any kind is checked. An
    existing element is deleted only when ``overwrite=True`` and it was written by the same
    ``step`` (see :func:`store_element`); an element of the user's, of a reader or of another
    step is never replaced: the error suggests another key. ``step=None`` (older callers)
    replaces only an element that some histoexpr step wrote.
    """
    if check_key_writable(sdata, key, overwrite=overwrite, step=step):
        kind = element_kind(sdata, key)
        logger.info("Overwriting `sdata.%s[%r]` (written by %s)", kind, key,
                    writer_of(sdata, key))
        del getattr(sdata, kind)[key]


def discard_element(sdata: SpatialData, key: str) -> None:
    """Remove the element ``key`` that the running call itself has just stored, and its record.

    For a call that refuses after one of its steps stored an element (e.g. ``hx.pp.tile``
    detecting the tissue map and then finding no tile on tissue): the refused call leaves
    ``sdata`` as it found it. Only for an element stored in this same call.
    """
    kind = element_kind(sdata, key)
    if kind is None:
        return
    del getattr(sdata, kind)[key]
    mine = dict(sdata.attrs.get(WRITER_KEY) or {})
    written = dict(mine.get("written") or {})
    if written.pop(key, None) is not None:
        mine["written"] = written
        if written or set(mine) != {"written"}:
            sdata.attrs[WRITER_KEY] = mine
        else:
            del sdata.attrs[WRITER_KEY]
    logger.info("Removed `sdata.%s[%r]`, written by this refused call.", kind, key)


def _free_name(sdata: SpatialData, key: str) -> str:
    for i in range(2, 1000):
        name = f"{key}_{i}"
        if element_kind(sdata, name) is None:
            return name
    return f"{key}_new"


def log_added(kind: str, key: str, what: str = "") -> None:
    """Log an added element the way squidpy does: ``Adding `sdata.shapes['he_tiles']```."""
    logger.info("Adding `sdata.%s[%r]`%s", kind, key, f" ({what})" if what else "")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None,
             show: bool | None = None) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm progress bar when ``settings.progress_bar`` (or ``show``).

    The bar itself is returned (not an iterator over it), so that a loop can call its
    ``set_postfix`` or ``set_description``; a disabled bar accepts those calls and draws
    nothing. An outer bar (none other open) stays when it is done, as scanpy's do; bars inside
    it (the batches of one slide, the epochs of one fold) go when they finish. In Jupyter the
    bars are widgets (``pip install histoexpr[jupyter]`` installs ipywidgets); without
    ipywidgets they are text bars, without a warning.
    """
    tqdm = _tqdm_class()
    enabled = settings.progress_bar if show is None else show
    outer = not any(not getattr(bar, "disable", True) for bar in list(tqdm._instances))
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=outer)


@functools.cache
def _tqdm_class():
    """The notebook bar of tqdm where it can draw (ipywidgets installed), its text bar else."""
    from tqdm.std import tqdm as text_bar

    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return text_bar
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return text_bar
    try:
        import ipywidgets  # noqa: F401
        from tqdm.notebook import tqdm as notebook_bar
    except ImportError:
        return text_bar
    return notebook_bar


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


#: the name part of a temporary file or folder written beside what it will replace
PARTIAL = "partial-"


def partial_path(target: str | Path, what: str = "new") -> Path:
    """A fresh hidden name beside ``target`` (same folder, so the final rename is atomic).

    It ends in ``target``'s suffix, for writers that choose the format by it.
    """
    import uuid

    target = Path(target)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in what)
    return target.parent / (f".{target.name}.{safe}.{PARTIAL}{uuid.uuid4().hex[:12]}"
                            f"{target.suffix}")


def swap_into_place(source: Path, target: Path, *, aside: Path | None = None) -> None:
    """Rename ``source`` to ``target``; an older ``target`` is moved aside first, then deleted.

    A file is replaced by one ``os.replace``. A folder (which ``os.replace`` cannot replace
    when it holds anything) is moved aside to ``aside``, the new one renamed into place and the
    old one deleted; if the second rename fails, the old one is put back. Either way, a run
    killed at any moment leaves the old content or the new one under ``target``.
    """
    import os
    import shutil

    source, target = Path(source), Path(target)
    if not target.is_dir() or target.is_symlink():
        os.replace(source, target)
        return
    old = partial_path(target, "old") if aside is None else aside
    os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        if not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def written_beside(target: str | Path) -> Iterator[Path]:
    """Write what replaces ``target`` beside it, and swap it in only when the write succeeded.

    Every write of histoexpr that replaces a file or folder goes through this: the ``with``
    block writes to the path it is given (a hidden name in ``target``'s folder); when the block
    ends without an error, that path replaces ``target`` (:func:`swap_into_place`). An error or
    a kill inside the block leaves ``target`` as it was, and the partial write is removed.
    """
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(target)
    try:
        yield temporary
        swap_into_place(temporary, target)
    finally:
        if temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists() or temporary.is_symlink():
            temporary.unlink()
