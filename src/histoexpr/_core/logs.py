"""Logging of the package's steps: the ``histoexpr`` logger, timed steps, progress bars."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeVar

from .._settings import settings

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
    inside another step logs at debug level, so that a call logs its own step once. The step
    computes its lazy arrays here (:func:`computed_here`), even with a dask.distributed Client
    open in the process.
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
                with computed_here():
                    result = function(*args, **kwargs)
            finally:
                _STEP_DEPTH.reset(token)
            logger.log(level, "    finished (%s)", elapsed(start))
            return result
        return step
    return decorate


class SlidesFailedError(RuntimeError):
    """Every slide a cohort step tried failed (each one's error is in the message)."""


def computed_here() -> contextlib.AbstractContextManager:
    """Dask's threaded scheduler inside, where a dask.distributed Client is the default.

    A Client opened in the process becomes dask's scheduler for every ``compute``; a step on
    one slide would then send each tile's read to the cluster and its pixels back (workers on
    other machines may not even reach the file). Steps compute here instead; the cohort
    functions map whole slides over a Client only when given one (``client=``).
    """
    if "distributed" not in sys.modules:  # no Client can be open
        return contextlib.nullcontext()
    import dask

    if dask.config.get("scheduler", None) != "dask.distributed":
        return contextlib.nullcontext()
    return dask.config.set(scheduler="threads")


def shown(items: Iterable[str], n: int = 6, *, sep: str = ", ") -> str:
    """The first ``n`` items joined for a message, and how many more there are."""
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return sep.join(items[:n]) + more


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
