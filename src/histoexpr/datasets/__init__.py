"""Data sets: synthetic sections and cohorts, and small real public data sets (downloaded)."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_synthetic": ["synthetic_section"],
        "_cohort": ["synthetic_cohort"],
        "_slides": ["synthetic_slide_cohort"],
        "_artefacts": ["synthetic_artefact_slide"],
        "_public": ["her2st", "mob_st", "merfish_mouse_brain", "iss_mouse_ca1", "example_slide"],
        "_registry": ["data_dir", "fetch"],
    },
)
