"""Drawing: images, spots and tiles over the tissue."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_spatial": ["tiles", "spots"],
        "_attention": ["attention", "top_tiles"],
        "_prediction": ["prediction", "gene_metrics"],
        "_labels": ["labels"],
        "_napari": ["napari"],
        "_history": ["history"],
        "_benchmark": ["benchmark"],
    },
)
