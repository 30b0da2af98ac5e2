"""histoexpr: link what tissue looks like to what it expresses.

The subpackages ``io``, ``pp``, ``tl``, ``pl``, ``models`` and ``datasets`` are imported on
first use, so ``import histoexpr as hx`` stays fast; heavy libraries (torch, spatialdata,
napari) are only loaded when a function that needs them is called.
"""

from importlib.metadata import PackageNotFoundError, version

import lazy_loader as _lazy

from ._settings import settings

try:
    __version__ = version("histoexpr")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__getattr__, __dir__, _ = _lazy.attach(
    __name__, submodules=["io", "pp", "tl", "pl", "models", "datasets"]
)
__all__ = ["io", "pp", "tl", "pl", "models", "datasets", "settings", "__version__"]
