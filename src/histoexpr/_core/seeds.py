"""Seeds and the default device of a run."""

from __future__ import annotations

import numbers
import random

import numpy as np

from .._settings import settings

#: the largest seed every generator takes (torch's; numpy's and python's take any)
MAX_SEED = 2**64 - 1


def resolve_seed(seed: int | None) -> int:
    """``seed`` itself, or ``settings.seed`` when it is ``None``.

    A seed is an integer in ``[0, 2**64 - 1]``: a float (even a whole one, which a seed such
    as ``1.5`` would be silently truncated from), a string, a boolean or a negative number is
    a ``TypeError`` or ``ValueError`` naming ``seed``, raised before anything is made or
    written.
    """
    if seed is None:
        return settings.seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer (or None for hx.settings.seed), got {seed!r} "
                        f"({type(seed).__name__}); pass e.g. seed=0.")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to 2**64 - 1 (or None for "
                         f"hx.settings.seed), got {seed!r}; pass e.g. seed=0.")
    return int(seed)


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
