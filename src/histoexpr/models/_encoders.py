"""Tile encoders: networks that turn a tile image into a feature vector."""

from __future__ import annotations

import torch
from torch import nn

from ._base import Network

_MONAI_RESNETS = ("resnet10", "resnet18", "resnet34", "resnet50")
ARCHITECTURES = ("small_cnn", *_MONAI_RESNETS)


class TileEncoder(Network):
    """A convolutional encoder from tiles ``(N, C, H, W)`` to features ``(N, out_features)``.

    Parameters
    ----------
    arch
        ``"small_cnn"`` (four convolution blocks, fast on a CPU) or a MONAI ResNet
        (``"resnet10"``, ``"resnet18"``, ``"resnet34"``, ``"resnet50"``), randomly initialised.
    in_channels
        Channels of the tiles: 3 for H&E, 1 for a nuclei stain.
    width
        Channels of the first block of ``"small_cnn"`` (doubled at each block); unused by ResNets.
    pool_levels
        ``"small_cnn"`` only: the features are the global averages of every block's output, one
        after the other (``15 * width`` features: colour and fine texture from the first blocks,
        larger structures from the last), instead of the last block's only (``8 * width``).

    Examples
    --------
    >>> import torch
    >>> from histoexpr.models import TileEncoder
    >>> TileEncoder(arch="small_cnn", in_channels=3)(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 128])
    """

    #: the names ``arch`` accepts
    ARCHITECTURES = ARCHITECTURES

    def __init__(self, *, arch: str = "small_cnn", in_channels: int = 3, width: int = 16,
                 pool_levels: bool = False) -> None:
        if arch not in ARCHITECTURES:
            raise ValueError(f"Unknown encoder arch={arch!r}; choose one of {ARCHITECTURES}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}.")
        if pool_levels and arch != "small_cnn":
            raise ValueError(f"pool_levels=True is an option of arch='small_cnn', not {arch!r}.")
        config = {"arch": arch, "in_channels": in_channels, "width": width}
        if pool_levels:  # only when set, so that the configs of earlier models stay the same
            config["pool_levels"] = True
        super().__init__(config=config)
        self.in_channels, self.pool_levels = in_channels, pool_levels
        if arch == "small_cnn":
            self.body, self.out_features = _small_cnn(in_channels, width)
            if pool_levels:
                self.out_features = 15 * width
        else:
            from monai.networks.nets import resnet

            self.body = getattr(resnet, arch)(
                spatial_dims=2, n_input_channels=in_channels, feed_forward=False
            )
            self.out_features = 2048 if arch == "resnet50" else 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch of tiles."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"TileEncoder expects tiles of shape (N, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}. Check the image's channels (H&E: 3, nuclei stain: 1)."
            )
        if not self.pool_levels:
            return self.body(x)
        levels = []
        pooled = False
        for layer in self.body:
            x = layer(x)
            if pooled and isinstance(layer, nn.ReLU):  # the end of a pooled block
                levels.append(x.mean(dim=(2, 3)))
            pooled = isinstance(layer, nn.MaxPool2d)
        return torch.cat([*levels, x], dim=1)  # x: the last block's global average


def conv_block(in_channels: int, out_channels: int, *, pool: bool = True) -> list[nn.Module]:
    """A 3x3 convolution, batch normalisation, 2x2 max pooling and ReLU, as a list of layers.

    Max pooling comes before the ReLU: the two commute exactly (the ReLU is monotone, so the
    largest of four rectified values is the rectified largest, and the gradient reaches the
    same position or none), so outputs and gradients equal those of the usual order bit for
    bit, while the ReLU and its backward pass run on a quarter of the values (a SimCLR step of
    the small CNN takes about a tenth less time on a CPU). Without ``pool`` the block ends at
    the ReLU. The layers hold the same weights at the same positions in either order, so model
    files written before load unchanged.
    """
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1,
                                         bias=False), nn.BatchNorm2d(out_channels)]
    return [*layers, nn.MaxPool2d(2), nn.ReLU(inplace=True)] if pool else [
        *layers, nn.ReLU(inplace=True)]


def _small_cnn(in_channels: int, width: int) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    channels = in_channels
    for block in range(4):
        out = width * 2**block
        layers += conv_block(channels, out, pool=block < 3)
        if block == 3:
            layers.append(nn.AdaptiveAvgPool2d(1))
        channels = out
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), channels
