"""The slide-level baseline: mean-pooled tile features and ridge regression (``"meanpool_ridge"``).

Train with ``hx.tl.fit(bags_or_cohort, model="meanpool_ridge", genes=...)``; apply with
``hx.tl.predict``, which writes per-tile predictions and (uniform) attention like the attention
MIL does, so both are compared with the same code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._abmil import predict  # noqa: F401 (the model's predict, found through tl._models.MODEL_TABLE)
from ._bag_targets import standardised_features, training_data
from ._options import MeanPoolRidgeOptions

if TYPE_CHECKING:
    from ...models import Network

__all__ = ["fit", "predict"]


def fit(data: Any, options: MeanPoolRidgeOptions) -> Network:
    """Fit ridge regression of the bags' expression on their mean tile features.

    Features are standardised over the training tiles; the penalty is chosen among ``alphas`` by
    efficient leave-one-out cross-validation on the training bags (scikit-learn's ``RidgeCV``).

    Parameters
    ----------
    data
        A Cohort, a SpatialData with pseudo-bulk bags, or a mapping of them (as for
        ``model="abmil"``).
    options
        The model's options, each documented in :class:`~histoexpr.tl.MeanPoolRidgeOptions`.
        ``hx.tl.fit(data, model=..., **options)`` builds them from keywords and
        records them in ``metadata["options"]``.

    Returns
    -------
    A :class:`histoexpr.models.MeanPoolLinear` holding the ridge weights.

    """
    import torch
    from sklearn.linear_model import RidgeCV

    from ...models import MeanPoolLinear

    bags, y, metadata = training_data(
        data, genes=options.genes, target=None, task="regression", tiles_key=options.tiles_key,
        features_key=options.features_key, bags_key=options.bags_key,
        target_transform=options.target_transform)
    pooled = np.stack([f.mean(axis=0) for f in standardised_features(bags, metadata)])
    ridge = RidgeCV(alphas=list(options.alphas)).fit(pooled, y)
    network = MeanPoolLinear(in_features=pooled.shape[1], n_outputs=y.shape[1])
    with torch.no_grad():
        network.linear.weight.copy_(torch.as_tensor(ridge.coef_, dtype=torch.float32))
        network.linear.bias.copy_(torch.as_tensor(ridge.intercept_, dtype=torch.float32))
    metadata.update(model="meanpool_ridge", alpha=float(ridge.alpha_), branches=["attention"],
                    n_train_bags=int(len(pooled)))
    network.metadata = metadata
    return network.eval()
