"""The base class of histoexpr's networks: a torch module that can be saved and rebuilt."""

from __future__ import annotations

from typing import Any

from torch import nn


class Network(nn.Module):
    """A torch module that remembers how it was built and what it was trained on.

    Subclasses pass their constructor arguments to ``super().__init__(config=...)`` as plain
    values (numbers, strings, lists, dicts), so that :func:`histoexpr.io.load_model` can rebuild
    the network from a file without unpickling code. ``metadata`` holds what a trained model
    needs to be applied correctly (genes, classes, um/px, normalisation, training history).

    Parameters
    ----------
    config
        The keyword arguments that rebuild this network.
    """

    def __init__(self, *, config: dict[str, Any]) -> None:
        super().__init__()
        self._config = dict(config)
        self.metadata: dict[str, Any] = {}

    def get_config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this network (a copy)."""
        return dict(self._config)

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self._config.items())
