"""Seeds and the default device of a run."""

from __future__ import annotations

import random

import numpy as np

from .._settings import settings


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
    """``device`` itself, or ``settings.device`` (cuda -> mps -> cpu) when it is ``None``.

    A ``device`` that names no device of this machine (``"gpu"``, ``"cuda"`` without one) is a
    ``ValueError`` naming the ones to pass, before any work.
    """
    from .._settings import _validate_device

    if device is None:
        return settings.device
    if type(device).__name__ == "device":  # a torch.device
        device = str(device)
    return _validate_device(device, "device")
