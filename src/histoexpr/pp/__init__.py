"""Preparing: tissue detection, tiling and the torch tile dataset."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_tissue": ["detect_tissue"],
        "_tile": ["tile"],
        "_dataset": ["TileDataset"],
    },
)
