"""The network classes a model file may name: histoexpr's own, and those a user registers."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["network_class", "network_classes", "register_network"]

#: classes registered at run time by name (histoexpr's own are found in histoexpr.models)
_REGISTERED: dict[str, type] = {}
_LOCK = threading.Lock()


def _own(name: str) -> type | None:
    """The network class of histoexpr of that name (``None``: no such class)."""
    from . import __all__ as own_names

    if name not in own_names:
        return None
    from . import Network
    from . import __getattr__ as own

    found = own(name)
    return found if isinstance(found, type) and issubclass(found, Network) else None


def network_class(name: str) -> type | None:
    """The class a model file naming ``name`` is rebuilt as; ``None`` where there is none.

    histoexpr's own classes first (never shadowed), then the classes registered with
    :func:`register_network` in this process. No module is imported from the name.

    Parameters
    ----------
    name
        The class name a model file records.

    Returns
    -------
    The class, or ``None``.
    """
    if not isinstance(name, str):
        return None
    own = _own(name)
    if own is not None:
        return own
    with _LOCK:
        return _REGISTERED.get(name)


def network_classes() -> list[str]:
    """The names of every class a model file may name here (histoexpr's and registered)."""
    from . import __all__ as own_names

    with _LOCK:
        registered = sorted(_REGISTERED)
    return [name for name in own_names if _own(name) is not None] + registered


def register_network(cls: type, *, overwrite: bool = False) -> type:
    """Let :func:`histoexpr.io.save_model` and :func:`histoexpr.io.load_model` take a class.

    A model file records its network's class by name and is rebuilt, without running any code
    from the file, as the class of that name that this process knows: histoexpr's own
    (:mod:`histoexpr.models`) or one registered here. Register your
    :class:`~histoexpr.models.Network` subclass before saving it, and again (from your own
    code) in the Python process that loads it. A name of histoexpr's own classes is never taken.

    Parameters
    ----------
    cls
        A subclass of :class:`histoexpr.models.Network` whose constructor takes the keywords of
        its ``get_config()``.
    overwrite
        Replace a class registered earlier under the same name (a notebook cell run again, a
        module reloaded).

    Returns
    -------
    ``cls``, so that it can be used as a class decorator.

    Examples
    --------
    >>> import torch
    >>> import histoexpr as hx
    >>> @hx.models.register_network
    ... class MeanColour(hx.models.Network):
    ...     def __init__(self, *, in_channels: int = 3) -> None:
    ...         super().__init__(config={"in_channels": in_channels})
    ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
    ...         return x.mean(dim=(2, 3))
    >>> hx.models.network_class("MeanColour") is MeanColour
    True
    """
    from .._core.validate import check_bool
    from . import Network

    check_bool("overwrite", overwrite)
    if not (isinstance(cls, type) and issubclass(cls, Network)) or cls is Network:
        raise TypeError(f"register_network takes a subclass of hx.models.Network, got {cls!r}.")
    name = cls.__name__
    if _own(name) is not None:
        raise ValueError(
            f"{cls.__module__}.{cls.__qualname__} has the name of histoexpr's own network "
            f"hx.models.{name}: a model file naming {name!r} is rebuilt as histoexpr's. "
            "Give your class another name.")
    with _LOCK:
        known: Any = _REGISTERED.get(name)
        if known is not None and known is not cls and not overwrite:
            raise ValueError(
                f"A network class {name!r} is registered already ({known.__module__}."
                f"{known.__qualname__}). Pass overwrite=True to replace it (a cell run "
                "again), or give the class another name.")
        _REGISTERED[name] = cls
    return cls
