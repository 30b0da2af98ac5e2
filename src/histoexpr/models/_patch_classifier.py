"""CNN patch classifiers: one network per patch size, and their ensemble across sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._base import Network
from ._encoders import conv_block


class PatchClassifier(Network):
    """A small CNN that classifies square patches ``(N, C, patch_px, patch_px)`` into classes.

    Convolution blocks (3x3 convolution, batch norm, ReLU, 2x2 max pooling; the width doubles at
    each block), global average pooling, dropout and a linear layer giving class logits. The
    input is standardised inside the network by ``mean`` and ``std`` (per channel), so a saved
    model carries its own normalisation.

    Parameters
    ----------
    in_channels
        Channels of the patches: 1 for a nuclei stain, 3 for H&E.
    n_classes
        Number of classes.
    patch_px
        Side of the patches in pixels (recorded; any size at least ``2 ** depth`` works).
    width
        Channels of the first block.
    depth
        Number of convolution blocks.
    dropout
        Dropout before the linear layer.
    mean
        Per-channel mean of the inputs (values in [0, 1]); ``None`` is 0.
    std
        Per-channel standard deviation of the inputs; ``None`` is 1.

    Examples
    --------
    >>> import torch
    >>> from histoexpr.models import PatchClassifier
    >>> PatchClassifier(in_channels=1, n_classes=4, patch_px=32)(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 4])

    """

    def __init__(self, *, in_channels: int = 1, n_classes: int = 4, patch_px: int = 64,
                 width: int = 16, depth: int = 4, dropout: float = 0.2,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if in_channels < 1 or n_classes < 2 or depth < 1 or width < 1:
            raise ValueError(f"PatchClassifier needs in_channels >= 1, n_classes >= 2, depth >= 1 "
                             f"and width >= 1; got {in_channels}, {n_classes}, {depth}, {width}.")
        if patch_px < 2**depth:
            raise ValueError(f"patch_px={patch_px} is too small for depth={depth}; use patches of "
                             f"at least {2**depth} px or fewer blocks.")
        mean = [0.0] * in_channels if mean is None else [float(m) for m in mean]
        std = [1.0] * in_channels if std is None else [float(s) for s in std]
        if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
            raise ValueError(f"mean and std need {in_channels} value(s) (std > 0); got {mean}, "
                             f"{std}.")
        super().__init__(config={"in_channels": in_channels, "n_classes": n_classes,
                                 "patch_px": patch_px, "width": width, "depth": depth,
                                 "dropout": dropout, "mean": mean, "std": std})
        self.in_channels, self.n_classes, self.patch_px = in_channels, n_classes, patch_px
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        blocks, channels = [], in_channels
        for i in range(depth):
            out = width * 2**i
            blocks += conv_block(channels, out)
            channels = out
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, n_classes)`` of patches ``(N, C, H, W)`` with values in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PatchClassifier expects patches (N, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}. Check the image's channels (H&E: 3, DAPI: 1).")
        return self.head(self.body((x - self.mean) / self.std))


class PatchEnsemble(Network):
    """Patch classifiers of several patch sizes whose class probabilities are averaged.

    Every member looks at a square patch of its own size centred on the same place; the
    ensemble's probability of a class is the mean of the members' softmax probabilities.

    Parameters
    ----------
    members
        The configuration of each :class:`PatchClassifier` (``get_config()``), smallest patch
        first.

    Examples
    --------
    >>> members = [PatchClassifier(patch_px=px).get_config() for px in (32, 64)]
    >>> ensemble = PatchEnsemble(members=members)
    >>> ensemble([torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 64, 64)]).shape
    torch.Size([2, 4])

    """

    def __init__(self, *, members: Sequence[dict]) -> None:
        if not members:
            raise ValueError("PatchEnsemble needs at least one member.")
        members = [dict(m) for m in members]
        super().__init__(config={"members": members})
        self.members = nn.ModuleList(PatchClassifier(**m) for m in members)
        first = self.members[0]
        if any((m.in_channels, m.n_classes) != (first.in_channels, first.n_classes)
               for m in self.members):
            raise ValueError("All members of a PatchEnsemble must share in_channels and n_classes.")
        self.in_channels, self.n_classes = first.in_channels, first.n_classes
        self.patch_px = [m.patch_px for m in self.members]

    @classmethod
    def of(cls, networks: Sequence[PatchClassifier]) -> PatchEnsemble:
        """An ensemble holding trained classifiers (their weights are copied)."""
        ensemble = cls(members=[n.get_config() for n in networks])
        for member, network in zip(ensemble.members, networks, strict=True):
            member.load_state_dict(network.state_dict())
        return ensemble

    def forward(self, patches: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class probabilities ``(N, n_classes)``: one batch of patches per member, in order."""
        if len(patches) != len(self.members):
            raise ValueError(f"PatchEnsemble expects {len(self.members)} batches of patches (one "
                             f"per member, of {self.patch_px} px), got {len(patches)}.")
        probabilities = [member(x).softmax(dim=1) for member, x in
                         zip(self.members, patches, strict=True)]
        return torch.stack(probabilities).mean(dim=0)
