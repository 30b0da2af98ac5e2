"""The slide-level baseline: mean-pooled tile features and ridge regression (``"meanpool_ridge"``).

Train with ``hx.tl.fit(bags_or_cohort, model="meanpool_ridge", genes=...)``; apply with
``hx.tl.predict``, which writes per-tile predictions and (uniform) attention like the attention
MIL does, so both are compared with the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._options import MeanPoolRidgeOptions
from ._abmil import predict  # noqa: F401 (the model's predict, found through tl._api.MODELS)
from ._bag_targets import standardised_features, training_data

if TYPE_CHECKING:
    from ...models import Network

__all__ = ["fit", "predict"]


def fit(data: Any, *, options: MeanPoolRidgeOptions | None = None) -> Network:
    """Fit ridge regression of the bags' expression on their mean tile features.

    Features are standardised over the training tiles; the penalty is chosen among ``alphas`` by
    efficient leave-one-out cross-validation on the training bags (scikit-learn's ``RidgeCV``).

    Parameters
    ----------
    data
        A Cohort, a SpatialData with pseudo-bulk bags, or a mapping of them (as for
        ``model="abmil"``).
    options
        The model's options, each documented in :class:`~histoexpr.tl.MeanPoolRidgeOptions`;
        ``None`` uses the defaults. ``hx.tl.fit(data, model=..., **options)`` builds
        them from keywords.

    Returns
    -------
    A :class:`histoexpr.models.MeanPoolLinear` holding the ridge weights.

    """
    options = MeanPoolRidgeOptions() if options is None else options
    network = _fit(data, **options.kwargs())
    network.metadata["options"] = options.record()
    return network


def _fit(
    data: Any,
    *,
    genes: Any,
    tiles_key: str,
    features_key: str | None,
    bags_key: str,
    target_transform: str,
    alphas: Sequence[float],
) -> Network:
    """Train with the options of :class:`~histoexpr.tl.MeanPoolRidgeOptions` by name."""
    import torch
    from sklearn.linear_model import RidgeCV

    from ...models import MeanPoolLinear

    bags, y, metadata = training_data(data, genes=genes, target=None, task="regression",
                                      tiles_key=tiles_key, features_key=features_key,
                                      bags_key=bags_key, target_transform=target_transform)
    pooled = np.stack([f.mean(axis=0) for f in standardised_features(bags, metadata)])
    ridge = RidgeCV(alphas=list(alphas)).fit(pooled, y)
    network = MeanPoolLinear(in_features=pooled.shape[1], n_outputs=y.shape[1])
    with torch.no_grad():
        network.linear.weight.copy_(torch.as_tensor(ridge.coef_, dtype=torch.float32))
        network.linear.bias.copy_(torch.as_tensor(ridge.intercept_, dtype=torch.float32))
    metadata.update(model="meanpool_ridge", alpha=float(ridge.alpha_), branches=["attention"],
                    n_train_bags=int(len(pooled)))
    network.metadata = metadata
    return network.eval()
