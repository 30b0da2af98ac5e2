"""Networks.

Every class listed here, and every class registered with :func:`register_network`, can be
rebuilt from a model file by its name.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_base": ["Network"],
        "_encoders": ["TileEncoder"],
        "_foundation": ["HuggingFaceEncoder"],
        "_handcrafted": ["HandcraftedEncoder"],
        "_contrastive": ["ContrastiveLearner"],
        "_mil": ["AttentionMIL", "MeanPoolLinear"],
        "_spot_regressor": ["LinearHead", "MLPHead", "SpotCNN", "EncoderHead"],
        "_patch_classifier": ["PatchClassifier", "PatchEnsemble"],
        "_cell_classifier": ["CellClassifier"],
        "_registry": ["register_network", "network_class"],
    },
)
