"""The slide-level classification baseline: mean-pooled tile features and logistic regression.

Train with ``hx.tl.fit(bags_or_cohort, model="meanpool_logistic", task="classification", ...)``
(the options of ``model="abmil"`` for labels); apply with ``hx.tl.predict``, which writes
per-tile class probabilities and (uniform) attention like the attention MIL does.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core.logs import logger
from ._abmil import predict  # noqa: F401 (the model's predict, found through tl._models.MODEL_TABLE)
from ._bag_targets import standardised_features, training_data
from ._options import MeanPoolLogisticOptions

if TYPE_CHECKING:
    from ...models import Network

__all__ = ["fit", "predict"]


def fit(data: Any, options: MeanPoolLogisticOptions) -> Network:
    """Fit logistic regression of the bags' labels on their mean tile features.

    Features are standardised over the training tiles. The inverse penalty ``C`` is chosen
    among ``Cs`` by log-loss in inner folds of the training bags alone: leave one section
    (slide) out where the training bags come from at least three, else 3 stratified folds.

    Parameters
    ----------
    data
        A Cohort, a SpatialData with pseudo-bulk bags, or a mapping of them (as for
        ``model="abmil"``).
    options
        The model's options, each documented in :class:`~histoexpr.tl.MeanPoolLogisticOptions`.
        ``hx.tl.fit(data, model=..., **options)`` builds them from keywords and
        records them in ``metadata["options"]``.

    Returns
    -------
    A :class:`histoexpr.models.MeanPoolLinear` whose outputs are the class logits of every
    target.

    Examples
    --------
    >>> baseline = hx.tl.fit(sections, model="meanpool_logistic", task="classification",
    ...                      genes=["ERBB2"], labels="median")

    """
    import torch
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold

    from ..._core.seeds import seed_everything
    from ...models import MeanPoolLinear

    seed_everything(options.seed)
    bags, y, metadata = training_data(
        data, genes=options.genes, target=options.target, task=options.task,
        tiles_key=options.tiles_key, features_key=options.features_key,
        bags_key=options.bags_key, target_transform=options.target_transform,
        labels=options.labels)
    pooled = np.stack([f.mean(axis=0) for f in standardised_features(bags, metadata)])
    sections = bags.bulk.obs["section"].to_numpy()
    network = MeanPoolLinear(in_features=pooled.shape[1], n_outputs=len(metadata["columns"]))
    weight = np.zeros((len(metadata["columns"]), pooled.shape[1]))
    bias = np.zeros(len(metadata["columns"]))
    chosen, start = {}, 0
    for j, name in enumerate(metadata["targets"]):
        n_classes = len(metadata["classes"][name])
        labels_j = y[:, j]
        if len(set(sections)) >= 3:
            folds = list(LeaveOneGroupOut().split(pooled, labels_j, groups=sections))
        else:
            n_splits = int(min(3, np.bincount(labels_j).min()))
            if n_splits < 2:
                raise ValueError(f"Too few bags of every class of {name!r} for inner folds "
                                 "(need 2 of each).")
            folds = list(StratifiedKFold(n_splits, shuffle=True,
                                         random_state=0).split(pooled, labels_j))
        with warnings.catch_warnings():  # scikit-learn's notices of future defaults
            warnings.simplefilter("ignore", FutureWarning)
            model = LogisticRegressionCV(Cs=list(options.Cs), cv=folds, scoring="neg_log_loss",
                                         max_iter=2000).fit(pooled, labels_j)
        present = model.classes_
        if n_classes == 2:  # one decision function: logits (0, w.x + b)
            weight[start + 1], bias[start + 1] = model.coef_[0], model.intercept_[0]
        else:
            weight[start + present], bias[start + present] = model.coef_, model.intercept_
            bias[start + np.setdiff1d(np.arange(n_classes), present)] = -1e4
        chosen[name] = float(np.ravel(model.C_)[0])
        start += n_classes
    with torch.no_grad():
        network.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        network.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    logger.info("meanpool_logistic: C chosen in inner folds: %s.", str(chosen))
    metadata.update(model="meanpool_logistic", C=chosen, branches=["attention"],
                    n_train_bags=int(len(pooled)))
    network.metadata = metadata
    return network.eval()
