"""Reading: slides, spatial transcriptomics, transcripts, image regions, model and feature files."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_region": ["get_pixel_size", "image_levels", "read_region"],
        "_wsi": ["read_wsi"],
        "_st": ["read_st"],
        "_visium": ["read_visium"],
        "_platforms": ["read_xenium", "read_cosmx", "read_merscope"],
        "_transcripts": ["read_transcripts", "read_cell_boundaries"],
        "_model_files": ["save_model", "load_model"],
        "_cohort": ["Cohort", "read_cohort"],
        "_slide_store": ["SlideStore"],
        "_interop": ["read_trident_h5", "write_trident_h5", "read_hest"],
    },
)
