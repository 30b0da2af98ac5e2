"""Training and applying models: ``fit``, ``predict``, ``evaluate`` (one entry point each)."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_api": ["fit", "predict", "evaluate", "cross_validate"],
        "_embed": ["embed"],
        "_embed_cohort": ["embed_cohort"],
        "_attention_check": ["attention_check"],
        "_pretrain": ["pretrain"],
        "_probe": ["probe"],
        "_expression_metrics": ["gene_correlations"],
    },
)
