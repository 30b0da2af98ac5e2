"""Hand-crafted colour and texture features: the cheap baseline every learned encoder must beat."""

from __future__ import annotations

import torch
from torch import nn

from ._base import Network

#: Haematoxylin, eosin and residual stain vectors (rows) in optical density (Ruifrok & Johnston)
_HED_FROM_RGB = torch.linalg.inv(torch.tensor([
    [0.65, 0.70, 0.29],
    [0.07, 0.99, 0.11],
    [0.27, 0.57, 0.78],
]))
_QUANTILES = torch.tensor([0.1, 0.5, 0.9])


class HandcraftedEncoder(Network):
    """Colour, stain and texture statistics of each tile, computed without learning.

    Per channel: mean, standard deviation and the 10th, 50th and 90th percentiles. On the grey
    image: mean and standard deviation of the Sobel gradient magnitude, mean absolute Laplacian
    (sharpness) and the fraction of dark pixels (below half the tile's median, nuclei-like).
    For RGB tiles also the mean and standard deviation of the haematoxylin and eosin optical
    densities from colour deconvolution.

    Parameters
    ----------
    in_channels
        Channels of the tiles (3 for H&E, 1 for a nuclei stain).
    """

    def __init__(self, *, in_channels: int = 3) -> None:
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}.")
        super().__init__(config={"in_channels": in_channels})
        self.in_channels = in_channels
        self.out_features = 5 * in_channels + 4 + (4 if in_channels == 3 else 0)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        laplace = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        kernels = torch.stack([sobel, sobel.T, laplace])[:, None]
        self.register_buffer("kernels", kernels, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, out_features)`` of tiles ``(N, C, H, W)`` with values in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"HandcraftedEncoder expects tiles (N, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}.")
        flat = x.flatten(2)
        colour = [flat.mean(-1), flat.std(-1),
                  *torch.quantile(flat, _QUANTILES.to(x), dim=-1)]
        grey = x.mean(1, keepdim=True)
        filtered = nn.functional.conv2d(grey, self.kernels.to(x), padding=1)
        gradient = filtered[:, :2].pow(2).sum(1).sqrt().flatten(1)
        median = grey.flatten(1).median(-1).values[:, None]
        texture = [gradient.mean(-1, keepdim=True), gradient.std(-1, keepdim=True),
                   filtered[:, 2].abs().flatten(1).mean(-1, keepdim=True),
                   (grey.flatten(1) < 0.5 * median).float().mean(-1, keepdim=True)]
        parts = colour + texture
        if self.in_channels == 3:
            density = -torch.log10(x.clamp(min=1 / 255)).flatten(2)  # (N, 3, HW)
            stains = torch.einsum("nch,cs->nsh", density, _HED_FROM_RGB.to(x))[:, :2]
            parts += [stains.mean(-1), stains.std(-1)]
        return torch.cat(parts, dim=1)
