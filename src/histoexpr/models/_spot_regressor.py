"""Spot regressors: networks from tile features or tile images to the expression of genes."""

from __future__ import annotations

import torch
from torch import nn

from ._base import Network
from ._encoders import TileEncoder


class LinearHead(Network):
    """A fitted linear map from tile features to expression, held as buffers.

    The ridge route of :func:`histoexpr.tl.fit` (``model="spot_regressor"``) fits feature
    standardisation, an optional PCA and a ridge regression with scikit-learn, and folds the
    three into one affine map ``features @ weight + bias``; storing it as a network lets it be
    saved, loaded and applied like every other model.

    Parameters
    ----------
    n_features
        Length of the feature vector of a tile.
    n_genes
        Number of genes predicted.

    """

    def __init__(self, *, n_features: int, n_genes: int) -> None:
        super().__init__(config={"n_features": n_features, "n_genes": n_genes})
        self.register_buffer("weight", torch.zeros(n_features, n_genes))
        self.register_buffer("bias", torch.zeros(n_genes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expression ``(N, n_genes)`` of features ``(N, n_features)``."""
        return x @ self.weight + self.bias


class MLPHead(Network):
    """A small multilayer perceptron (or an ensemble of them) from tile features to expression.

    The features are standardised with the training set's mean and scale (buffers set by
    :func:`histoexpr.tl.fit`), then pass through one hidden layer with dropout. With several
    members, each is trained on its own (another seed and validation split) and the prediction
    is the members' mean, which is steadier than any one of them.

    Parameters
    ----------
    n_features
        Length of the feature vector of a tile.
    n_genes
        Number of genes predicted.
    hidden
        Width of the hidden layer.
    dropout
        Dropout probability on the input and hidden layer.
    n_members
        Number of perceptrons whose predictions are averaged.

    """

    def __init__(self, *, n_features: int, n_genes: int, hidden: int = 256,
                 dropout: float = 0.25, n_members: int = 1) -> None:
        if n_members < 1:
            raise ValueError(f"n_members must be at least 1, got {n_members}.")
        super().__init__(config={"n_features": n_features, "n_genes": n_genes, "hidden": hidden,
                                 "dropout": dropout, "n_members": n_members})
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.members = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, hidden), nn.GELU(),
                          nn.Dropout(dropout), nn.Linear(hidden, n_genes))
            for _ in range(n_members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expression ``(N, n_genes)`` of features ``(N, n_features)``."""
        x = (x - self.mean) / self.scale
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


class SpotCNN(Network):
    """A convolutional network from a spot-centred patch to the expression of genes.

    A :class:`TileEncoder` followed by a linear layer, trained end to end on patches.

    Parameters
    ----------
    n_genes
        Number of genes predicted.
    arch
        Architecture of the :class:`TileEncoder` (``"small_cnn"``, ``"resnet18"``...).
    in_channels
        Channels of the patches (3 for H&E).
    width
        Channels of the first block of ``"small_cnn"``.
    dropout
        Dropout probability before the last layer.

    """

    def __init__(self, *, n_genes: int, arch: str = "small_cnn", in_channels: int = 3,
                 width: int = 16, dropout: float = 0.25) -> None:
        super().__init__(config={"n_genes": n_genes, "arch": arch, "in_channels": in_channels,
                                 "width": width, "dropout": dropout})
        self.in_channels = in_channels
        self.encoder = TileEncoder(arch=arch, in_channels=in_channels, width=width)
        self.head = nn.Sequential(nn.Dropout(dropout),
                                  nn.Linear(self.encoder.out_features, n_genes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expression ``(N, n_genes)`` of patches ``(N, C, H, W)`` with values in [0, 1]."""
        return self.head(self.encoder(x))


class EncoderHead(Network):
    """A spot regressor head together with the tile encoder whose features it reads.

    ``hx.tl.fit(..., model="spot_regressor", route="auto")`` returns one when the chosen
    features come from a network it made (a CNN pretrained on the training sections, or one at
    random initialisation), so that prediction recomputes exactly those features on new tiles.
    Prediction embeds the tiles with ``encoder``, adds the context and scaling recorded in the
    metadata, and applies ``head``.

    Parameters
    ----------
    encoder
        Configuration of the :class:`TileEncoder`.
    head
        ``"LinearHead"`` or ``"MLPHead"``.
    head_config
        Configuration of the head.

    """

    def __init__(self, *, encoder: dict, head: str, head_config: dict) -> None:
        heads = {"LinearHead": LinearHead, "MLPHead": MLPHead}
        if head not in heads:
            raise ValueError(f"Unknown head {head!r}; choose one of {list(heads)}.")
        super().__init__(config={"encoder": dict(encoder), "head": head,
                                 "head_config": dict(head_config)})
        self.encoder = TileEncoder(**encoder)
        self.head = heads[head](**head_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expression ``(N, n_genes)`` of features ``(N, n_features)`` (from ``encoder``)."""
        return self.head(x)
