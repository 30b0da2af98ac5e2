"""Training and applying models: ``fit``, ``predict``, ``evaluate`` (one entry point each).

The code is grouped by job (see ``docs/design.md``): ``_features`` (embeddings, pretraining,
probes), ``_patch`` (patch classifier, dense and per-cell maps), ``_spot`` (spot regressor and
its HEST protocol), ``_mil`` (slide-level bag models), ``_metrics`` (scores; imports nothing
else from ``tl``), ``_train`` (the training loop of the networks), ``_options`` (the bases
of the options classes), ``_models`` (the model table) and ``_api`` (the entry points).
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_api": ["fit", "predict", "evaluate", "cross_validate", "predict_options",
                 "register_model"],
        "_models": ["ModelSpec"],
        "_options": ["ModelOptions", "TrainingOptions"],
        "_mil._options": ["ABMILOptions", "MeanPoolLogisticOptions", "MeanPoolRidgeOptions"],
        "_patch._options": ["CellMorphologyOptions", "PatchClassifierOptions"],
        "_spot._options": [
            "SpotRegressorOptions",
            "RidgeRouteOptions",
            "MLPRouteOptions",
            "CNNRouteOptions",
            "AutoRouteOptions",
        ],
        "_features._embed": ["embed"],
        "_features._embed_cohort": ["embed_cohort"],
        "_mil._attention_check": ["attention_check"],
        "_mil._bag_data": ["bag_tiles"],
        "_features._pretrain": ["pretrain"],
        "_features._probe": ["probe"],
        "_metrics._expression_metrics": ["gene_correlations"],
        "_spot._benchmark": ["benchmark", "BenchmarkResult"],
    },
)
