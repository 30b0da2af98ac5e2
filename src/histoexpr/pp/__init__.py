"""Preparing: tissue detection, tiling and the torch tile dataset."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_tissue": ["detect_tissue"],
        "_tile": ["tile"],
        "_dataset": ["TileDataset", "CachedDataset"],
        "_augment": ["augmentations"],
        "_bags": ["pseudobulk"],
        "_deg": ["deg_labels"],
        "_genes": ["select_genes", "expression_targets", "gene_panel"],
        "_transcript_labels": ["transcript_labels"],
        "_gene_pairs": ["rank_gene_pairs"],
        "_stain": ["stain_reference", "stain_normaliser", "StainNormaliser"],
    },
)
