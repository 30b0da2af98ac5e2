"""A per-cell classifier: logistic regression on cell features, optionally stacked with CNNs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._base import Network
from ._patch_classifier import PatchEnsemble


class CellClassifier(Network):
    """Multinomial logistic regression on per-cell features, held as buffers.

    :func:`histoexpr.tl.fit` with ``model="cell_morphology"`` fits the feature standardisation
    and a regularised logistic regression with scikit-learn and stores them here, so that the
    model is saved, loaded and applied like every other. With patch classifiers
    (``patch_models``), a second logistic regression combines the first one's log-probabilities
    with the patch classifiers' per-cell log-probabilities (stacking).

    Parameters
    ----------
    n_features
        Length of a cell's feature vector.
    n_classes
        Number of cell classes.
    patch_models
        The configuration (``get_config()["members"]``) of each
        :class:`~histoexpr.models.PatchEnsemble` whose per-cell probabilities are stacked.

    Examples
    --------
    >>> model = CellClassifier(n_features=10, n_classes=3)
    >>> model(torch.zeros(5, 10)).shape
    torch.Size([5, 3])

    """

    def __init__(self, *, n_features: int, n_classes: int,
                 patch_models: Sequence[Sequence[dict]] = ()) -> None:
        patch_models = [[dict(m) for m in members] for members in patch_models]
        super().__init__(config={"n_features": n_features, "n_classes": n_classes,
                                 "patch_models": patch_models})
        self.n_features, self.n_classes = n_features, n_classes
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("weight", torch.zeros(n_features, n_classes))
        self.register_buffer("bias", torch.zeros(n_classes))
        self.patch_models = nn.ModuleList(PatchEnsemble(members=m) for m in patch_models)
        if patch_models:
            self.register_buffer("stack_weight", torch.zeros(2 * n_classes, n_classes))
            self.register_buffer("stack_bias", torch.zeros(n_classes))

    def forward(self, features: torch.Tensor,
                patch_log_probabilities: torch.Tensor | None = None) -> torch.Tensor:
        """Class probabilities ``(N, n_classes)`` of cell features ``(N, n_features)``.

        With patch models, ``patch_log_probabilities`` ``(N, n_classes)`` is the mean over the
        patch models of their per-cell log-probabilities.
        """
        logits = ((features - self.mean) / self.scale) @ self.weight + self.bias
        if len(self.patch_models) == 0:
            return logits.softmax(dim=1)
        if patch_log_probabilities is None:
            raise ValueError("This cell classifier stacks patch classifiers: pass their per-cell "
                             "log-probabilities.")
        stacked = torch.cat([logits.log_softmax(dim=1), patch_log_probabilities], dim=1)
        return (stacked @ self.stack_weight + self.stack_bias).softmax(dim=1)
