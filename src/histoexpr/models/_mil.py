"""Gated attention multiple-instance learning with a prediction for every tile.

The network of Graziani et al. (2022) and, for classification, of HistCode (CLAM-style gated
attention, Ilse et al. 2018): each tile's features pass a small MLP; a gated attention branch
scores every tile, a softmax over the bag's tiles turns the scores into weights, and the bag's
output is the attention-weighted average of the tiles' own outputs. Per-tile outputs and
attention are therefore both readable for interpretation.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from ._base import Network


class _TilePooling(Network, abc.ABC):
    """Bag outputs as the attention-weighted average of per-tile outputs (subclasses score)."""

    in_features: int
    n_outputs: int
    n_branches: int

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None,
                return_att: bool = False):
        """Bag outputs, and optionally the attention weights and per-tile outputs.

        Parameters
        ----------
        X
            Tile features, ``(bags, tiles, in_features)`` (or ``(tiles, in_features)`` for one
            bag); padded tiles are marked by ``mask``.
        mask
            ``(bags, tiles)``, True for real tiles; ``None`` when no tile is padding.
        return_att
            Also return the attention ``(bags, tiles, branches)`` (summing to 1 over a bag's
            real tiles, 0 on padding) and the per-tile outputs ``(bags, tiles, n_outputs)``.

        Returns
        -------
        ``(bags, n_outputs)``; with ``return_att``, ``(outputs, attention, tile_outputs)``.

        """
        single = X.ndim == 2
        if single:
            X = X.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
        if X.shape[-1] != self.in_features:
            raise ValueError(f"The network takes {self.in_features} features per tile, got "
                             f"{X.shape[-1]}; use the features it was trained on.")
        scores, tile_outputs = self.score_tiles(X)
        if mask is not None:
            scores = scores.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        attention = torch.softmax(scores, dim=1)  # over the tiles
        weights = attention.repeat_interleave(self.n_outputs // self.n_branches, dim=-1)
        outputs = (weights * tile_outputs).sum(dim=1)
        if single:
            outputs, attention, tile_outputs = outputs[0], attention[0], tile_outputs[0]
        return (outputs, attention, tile_outputs) if return_att else outputs

    @abc.abstractmethod
    def score_tiles(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention scores and per-tile outputs of tiles ``X``: each pooling defines its own."""


class AttentionMIL(_TilePooling):
    """Gated attention MIL: per-tile outputs averaged with attention weights.

    With ``n_branches > 1`` the outputs are split among that many branches (MLP, attention and
    head each) that share no weight, so training them together on the summed loss is training one
    model per branch: one model per gene, as in Graziani et al.

    Parameters
    ----------
    in_features
        Size of a tile's feature vector.
    n_outputs
        Outputs per bag (genes, or the summed class counts of the classification targets).
    hidden
        Width of the tile MLP.
    attention_hidden
        Width of the gated attention branch.
    dropout
        Dropout after the tile MLP.
    n_branches
        Number of independent branches; ``n_outputs`` must be a multiple of it (each branch gives
        ``n_outputs / n_branches`` outputs and has its own attention).

    Examples
    --------
    >>> network = AttentionMIL(in_features=23, n_outputs=5)
    >>> bag_output, attention, tile_outputs = network(torch.randn(2, 40, 23), return_att=True)
    >>> attention.shape, tile_outputs.shape
    (torch.Size([2, 40, 1]), torch.Size([2, 40, 5]))

    """

    def __init__(self, *, in_features: int, n_outputs: int, hidden: int = 128,
                 attention_hidden: int = 64, dropout: float = 0.1,
                 n_branches: int = 1) -> None:
        super().__init__(config={"in_features": in_features, "n_outputs": n_outputs,
                                 "hidden": hidden, "attention_hidden": attention_hidden,
                                 "dropout": dropout, "n_branches": n_branches})
        if in_features < 1 or n_outputs < 1:
            raise ValueError(f"in_features and n_outputs must be positive, got {in_features} and "
                             f"{n_outputs}.")
        if n_branches < 1 or n_outputs % n_branches:
            raise ValueError(f"n_outputs ({n_outputs}) must be a positive multiple of n_branches "
                             f"({n_branches}).")
        self.in_features, self.n_outputs = in_features, n_outputs
        width = hidden * n_branches
        # independent branches are grouped 1x1 convolutions over the tiles: no weight is shared
        self.tile_mlp = nn.Sequential(
            nn.Conv1d(in_features * n_branches, width, 1, groups=n_branches), nn.ReLU(),
            nn.Dropout(dropout))
        self.attention_v = nn.Conv1d(width, attention_hidden * n_branches, 1, groups=n_branches)
        self.attention_u = nn.Conv1d(width, attention_hidden * n_branches, 1, groups=n_branches)
        self.attention_w = nn.Conv1d(attention_hidden * n_branches, n_branches, 1,
                                     groups=n_branches)
        self.head = nn.Conv1d(width, n_outputs, 1, groups=n_branches)
        self.n_branches = n_branches

    def score_tiles(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention scores (before the softmax) and outputs of every tile; bag-independent.

        Parameters
        ----------
        X
            Tile features ``(bags, tiles, in_features)``.

        Returns
        -------
        ``(scores (bags, tiles, branches), tile_outputs (bags, tiles, n_outputs))``.

        """
        x = X.transpose(1, 2)  # (bags, features, tiles) for the grouped convolutions
        if self.n_branches > 1:
            x = x.repeat(1, self.n_branches, 1)
        hidden = self.tile_mlp(x)
        gate = torch.tanh(self.attention_v(hidden)) * torch.sigmoid(self.attention_u(hidden))
        scores = self.attention_w(gate)
        return scores.transpose(1, 2), self.head(hidden).transpose(1, 2)


class MeanPoolLinear(_TilePooling):
    """A linear model of mean-pooled tile features: the MIL baseline (uniform attention).

    Because the mean of a linear map is the linear map of the mean, its per-tile outputs
    average exactly to its bag output, so it is read like :class:`AttentionMIL` (every tile has
    the same attention). ``hx.tl.fit(..., model="meanpool_ridge")`` sets its weights by ridge
    regression on the bags' mean features.

    Parameters
    ----------
    in_features
        Size of a tile's feature vector.
    n_outputs
        Outputs per bag (genes).

    """

    def __init__(self, *, in_features: int, n_outputs: int) -> None:
        super().__init__(config={"in_features": in_features, "n_outputs": n_outputs})
        self.in_features, self.n_outputs, self.n_branches = in_features, n_outputs, 1
        self.linear = nn.Linear(in_features, n_outputs)

    def score_tiles(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Equal attention scores and the linear outputs of every tile.

        Parameters
        ----------
        X
            Tile features ``(bags, tiles, in_features)``.

        Returns
        -------
        ``(scores (bags, tiles, 1) all zero, tile_outputs (bags, tiles, n_outputs))``.

        """
        return X.new_zeros(*X.shape[:2], 1), self.linear(X)
