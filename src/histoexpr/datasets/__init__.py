"""Data sets: the synthetic sections and cohorts that are histoexpr's embedded default."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_synthetic": ["synthetic_section"],
        "_cohort": ["synthetic_cohort"],
        "_slides": ["synthetic_slide_cohort"],
        "_artefacts": ["synthetic_artefact_slide"],
    },
)
