"""Global settings: ``hx.settings``.

Every option is validated when it is assigned, so a typo fails at once instead of deep inside a
training run. Functions that take ``device=None``, ``seed=None`` or ``progress_bar=None`` fall
back to these values.
"""

from __future__ import annotations

import logging
import os
from enum import IntEnum
from pathlib import Path
from typing import Any

_LOGGER_NAME = "histoexpr"


class Verbosity(IntEnum):
    """The levels of ``hx.settings.verbosity``, by name or number (as scanpy's).

    ``error`` (0) shows errors only, ``warning`` (1) warnings too, ``info`` (2, the default)
    one line per step with its time ("finished (0:00:02)"), ``debug`` (3) also what happens
    inside loops over slides, folds and steps within steps.
    """

    error = 0
    warning = 1
    info = 2
    debug = 3


_VERBOSITY_LEVELS = {Verbosity.error: logging.ERROR, Verbosity.warning: logging.WARNING,
                     Verbosity.info: logging.INFO, Verbosity.debug: logging.DEBUG}
_DEVICE_KINDS = ("cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class Settings:
    """Global options of histoexpr.

    Attributes
    ----------
    device
        ``None`` picks the best available device (cuda, then mps, then cpu) each time it is read;
        otherwise a torch device string such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.
    seed
        Seed used by functions whose ``seed`` argument is ``None``.
    progress_bar
        Whether long loops show a tqdm progress bar.
    verbosity
        How much histoexpr logs, by name or number: ``"error"`` (0), ``"warning"`` (1),
        ``"info"`` (2, default: each step and its time) or ``"debug"`` (3: also each slide of a
        cohort, each fold of a cross-validation and the steps inside a step). Read back as an
        integer enum with a ``name`` (``hx.settings.verbosity >= 2`` works).
    n_workers
        Worker processes for reading tiles (``0`` reads them in the main process). ``None``
        (default) chooses: ``0`` on a CPU, and on a GPU one fewer than the CPUs (shared among
        the processes of a ``torchrun`` launch), at most 8. Loaders feeding a GPU also pin their
        batches in page-locked memory.
    precision
        Arithmetic of training, embedding and prediction: ``"auto"`` (default) is bf16 autocast
        on a CUDA GPU that supports it, fp16 autocast with a gradient scaler on older GPUs, and
        fp32 on a CPU or MPS (so CPU results do not change); ``"fp32"``, ``"bf16"`` or ``"fp16"``
        force one.
    datasets_dir
        Folder of the public data sets of :mod:`histoexpr.datasets` (``her2st/``, ``mob_st/``...):
        read from there, and downloaded into it where missing. ``None`` (default) is the
        environment variable ``HISTOEXPR_DATA_DIR``, else ``~/.cache/histoexpr/data``.
    max_memory
        The most memory (bytes) one step may allocate: steps whose memory grows with an argument
        (a pixel size, a stride, a window, a network's size) estimate it first and refuse,
        naming the estimate and the fix, above it. ``None`` (default) is the memory the machine
        has available at the time; a number of bytes or a text such as ``"16 GiB"`` sets it.
    """

    def __init__(self) -> None:
        self._device: str | None = None
        self._seed = 0
        self._progress_bar = True
        self._verbosity = Verbosity.info
        self._n_workers: int | None = None
        self._precision = "auto"
        self._datasets_dir: Path | None = None
        self._max_memory: int | None = None
        self._apply_verbosity()

    # device ------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """The torch device string that functions use when given ``device=None``."""
        return self._device if self._device is not None else _best_device()

    @device.setter
    def device(self, value: str | None) -> None:
        self._device = None if value is None else _validate_device(value)

    # seed --------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        """Default random seed."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"settings.seed must be a non-negative integer, got {value!r}.")
        self._seed = value

    # progress bar ------------------------------------------------------------------------
    @property
    def progress_bar(self) -> bool:
        """Whether long loops show a progress bar."""
        return self._progress_bar

    @progress_bar.setter
    def progress_bar(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"settings.progress_bar must be True or False, got {value!r}.")
        self._progress_bar = value

    # verbosity ---------------------------------------------------------------------------
    @property
    def verbosity(self) -> Verbosity:
        """``Verbosity.error`` (0), ``warning`` (1), ``info`` (2) or ``debug`` (3)."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int | str | Verbosity) -> None:
        self._verbosity = _validate_verbosity(value)
        self._apply_verbosity()

    # workers -----------------------------------------------------------------------------
    @property
    def n_workers(self) -> int | None:
        """Worker processes for data loading; ``None`` chooses from the device."""
        return self._n_workers

    @n_workers.setter
    def n_workers(self, value: int | None) -> None:
        cpus = os.cpu_count() or 1
        if value is None:
            self._n_workers = None
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"settings.n_workers must be an integer >= 0 or None (automatic), "
                             f"got {value!r}.")
        if value > 4 * cpus:
            raise ValueError(
                f"settings.n_workers={value} is far more than the {cpus} CPUs of this machine; "
                f"use at most {cpus}."
            )
        self._n_workers = value

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and not isinstance(getattr(type(self), name, None), property):
            import difflib

            valid = _option_names()
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise AttributeError(
                f"hx.settings has no option {name!r}, so setting it would do nothing.{hint} "
                f"The options are: {', '.join(valid)}."
            )
        super().__setattr__(name, value)

    # precision ---------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``: the arithmetic of networks."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"settings.precision must be one of {PRECISIONS} ('auto': bf16 or "
                             f"fp16 on a GPU, fp32 on a CPU), got {value!r}.")
        self._precision = value

    # data sets ---------------------------------------------------------------------------
    @property
    def datasets_dir(self) -> Path | None:
        """Folder of the public data sets; ``None``: ``$HISTOEXPR_DATA_DIR`` or the cache."""
        return self._datasets_dir

    @datasets_dir.setter
    def datasets_dir(self, value: str | os.PathLike | None) -> None:
        if value is not None and not isinstance(value, str | os.PathLike):
            raise ValueError(f"settings.datasets_dir must be a folder (a str or Path) or None, "
                             f"got {value!r}.")
        self._datasets_dir = None if value is None else Path(value).expanduser()
    # memory ------------------------------------------------------------------------------
    @property
    def max_memory(self) -> int | None:
        """The most bytes one step may allocate; ``None``: what is available at the time."""
        return self._max_memory

    @max_memory.setter
    def max_memory(self, value: int | float | str | None) -> None:
        self._max_memory = None if value is None else _parse_bytes(value)

    def _apply_verbosity(self) -> None:
        logger = logging.getLogger(_LOGGER_NAME)
        logger.setLevel(_VERBOSITY_LEVELS[self._verbosity])
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        logger.propagate = False

    def __repr__(self) -> str:
        fields: dict[str, Any] = {
            "device": self._device if self._device is not None else f"None (-> {self.device})",
            "seed": self.seed,
            "progress_bar": self.progress_bar,
            "verbosity": self.verbosity.name,
            "n_workers": "None (automatic)" if self.n_workers is None else self.n_workers,
            "precision": self.precision,
            "datasets_dir": self.datasets_dir,
            "max_memory": "None (available)" if self.max_memory is None else self.max_memory,
        }
        inner = ", ".join(f"{k}={v}" for k, v in fields.items())
        return f"Settings({inner})"


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _parse_bytes(value: int | float | str) -> int:
    """A number of bytes from ``8e9``, ``"8 GB"`` or ``"16GiB"``."""
    import re

    number: float | None = None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if match and match.group(2).lower() in _BYTE_UNITS:
            try:
                number = float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()]
            except ValueError:
                number = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    if number is None or not number >= 1 or number == float("inf"):
        raise ValueError(f"settings.max_memory must be a positive number of bytes or a text such "
                         f"as '16 GiB' (or None: the memory available), got {value!r}.")
    return int(number)


def _option_names() -> list[str]:
    return [name for name, value in vars(Settings).items() if isinstance(value, property)]


def _validate_verbosity(value: int | str | Verbosity) -> Verbosity:
    names = ", ".join(f"{v.name!r} ({v.value})" for v in Verbosity)
    if isinstance(value, str):
        try:
            return Verbosity[value.strip().lower()]
        except KeyError:
            raise ValueError(f"settings.verbosity must be one of {names}, got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, int) or value not in set(Verbosity):
        raise ValueError(f"settings.verbosity must be one of {names}, got {value!r}.")
    return Verbosity(value)


def _best_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _validate_device(value: str, name: str = "settings.device") -> str:
    """``value`` if it names a torch device this machine has; else a ValueError naming ``name``."""
    if not isinstance(value, str):
        raise ValueError(
            f"{name} must be a string such as 'cpu' or 'cuda', got {value!r}.")
    kind, _, index = value.partition(":")
    if kind not in _DEVICE_KINDS or (index and not index.isdigit()):
        raise ValueError(
            f"{name}={value!r} is not a device: use None (automatic), "
            f"'cpu', 'cuda', 'cuda:N' or 'mps'."
        )
    if kind != "cpu":
        import torch

        backend = torch.cuda if kind == "cuda" else torch.backends.mps
        available = backend.is_available()
        if not available:
            raise ValueError(
                f"{name}={value!r} but this machine has no {kind} device; "
                "use None to pick the best available one, or 'cpu'."
            )
    return value


settings = Settings()
