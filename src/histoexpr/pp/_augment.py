"""Random views of tiles for self-supervised learning, suited to the stain (kornia, batched).

A pipeline is described by a *spec*: a list of ``{"name": ..., **arguments}`` dicts of plain
values. The spec is what a pretrained encoder's metadata records, and the pipeline can be
rebuilt from it exactly.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import nn

from .._core.validate import check_positive

Stain = Literal["he", "fluorescence"]
STAINS = get_args(Stain)

# optical density of one unit of haematoxylin, eosin and DAB in (r, g, b) (skimage's rgb_from_hed,
# Ruifrok & Johnston 2001)
_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


def augmentations(
    stain: Stain = "he",
    *,
    size_px: int,
    crop_scale: tuple[float, float] = (0.4, 1.0),
    strength: float = 1.0,
) -> nn.Module:
    """Build a random augmentation pipeline for batches of tiles, suited to the stain.

    For H&E: random resized crop, flips, 90-degree rotations, stain jitter in HED space (Tellez
    et al. 2018; it changes hue and saturation the way stains vary), brightness / contrast jitter
    and Gaussian blur. For fluorescence (any number of channels): random resized crop, flips,
    90-degree rotations, per-channel intensity scaling and offset, gamma jitter, Gaussian noise
    and blur. Each call of the returned module draws new random parameters for every tile.

    Parameters
    ----------
    stain
        ``"he"`` (RGB brightfield) or ``"fluorescence"`` (any number of channels; histoexpr's
        own steps choose from the image's channels: 3 is H&E).
    size_px
        Side of the tiles, in pixels (the crops are resized back to it).
    crop_scale
        Range of the area share of a tile that a random crop keeps.
    strength
        Multiplies the amplitude of the colour, intensity and blur jitter (0 turns them off).

    Returns
    -------
    A torch module mapping tiles ``(N, C, H, W)`` in [0, 1] to augmented tiles of the same
    shape; its ``spec`` attribute lists the steps and their arguments as plain values.

    """
    if stain not in STAINS:
        raise ValueError(f"Unknown stain {stain!r}; choose one of {STAINS} (or let "
                         "histoexpr choose from the image's channels).")
    if size_px < 8:
        raise ValueError(f"size_px must be at least 8, got {size_px}.")
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got "
                         f"{crop_scale}.")
    check_positive("strength", strength, allow_zero=True)
    s = float(strength)
    geometry = [
        {"name": "RandomResizedCrop", "size": [size_px, size_px], "scale": list(crop_scale)},
        {"name": "RandomHorizontalFlip"},
        {"name": "RandomVerticalFlip"},
        {"name": "RandomTranspose"},
    ]
    blur = {"name": "RandomGaussianBlur", "kernel_size": [5, 5], "sigma": [0.1, 0.1 + 1.4 * s],
            "p": 0.5}
    if stain == "he":
        colour = [
            {"name": "HEDJitter", "sigma": 0.05 * s, "p": 0.8},
            {"name": "ColorJiggle", "brightness": 0.2 * s, "contrast": 0.2 * s, "p": 0.8},
        ]
    else:
        colour = [
            {"name": "IntensityJitter", "scale": 0.3 * s, "offset": 0.05 * s, "p": 0.8},
            {"name": "RandomGamma", "gamma": [1 / (1 + 0.5 * s), 1 + 0.5 * s], "p": 0.5},
            {"name": "RandomGaussianNoise", "std": 0.02 * s, "p": 0.3},
        ]
    return build_augmentations([*geometry, *colour, blur])


def build_augmentations(spec: list[dict[str, Any]]) -> nn.Module:
    """Build the pipeline a spec (from :func:`augmentations` or a model's metadata) describes."""
    import kornia.augmentation as K

    steps = []
    for step in spec:
        options = {key: tuple(value) if isinstance(value, list) else value
                   for key, value in step.items() if key != "name"}
        if step["name"] in _OWN_STEPS:
            steps.append(_OWN_STEPS[step["name"]](**options))
        else:
            steps.append(getattr(K, step["name"])(**options))
    pipeline = nn.Sequential(*steps)
    pipeline.spec = [dict(step) for step in spec]
    return pipeline


class HEDJitter(nn.Module):
    """Random scaling and shift of each stain's optical density in HED space.

    Written here because kornia has no HED stain jitter: pixels go to optical density, are
    unmixed into haematoxylin, eosin and DAB, each stain ``s`` becomes ``s * a + b`` with ``a``
    drawn from ``[1 - sigma, 1 + sigma]`` and ``b`` from ``[-sigma, sigma]`` per tile, and the
    result is mixed back to RGB.
    """

    def __init__(self, *, sigma: float = 0.05, p: float = 0.8) -> None:
        super().__init__()
        self.sigma, self.p = sigma, p
        rgb_from_hed = torch.tensor(_RGB_FROM_HED)
        rgb_from_hed = rgb_from_hed / rgb_from_hed.norm(dim=1, keepdim=True)
        self.register_buffer("rgb_from_hed", rgb_from_hed, persistent=False)
        self.register_buffer("hed_from_rgb", torch.linalg.inv(rgb_from_hed), persistent=False)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        n = tiles.shape[0]
        scale = 1 + (torch.rand((n, 3), device=tiles.device) * 2 - 1) * self.sigma
        shift = (torch.rand((n, 1, 3), device=tiles.device) * 2 - 1) * self.sigma
        apply = (torch.rand((n, 1), device=tiles.device) < self.p).float()
        scale, shift = 1 + apply * (scale - 1), apply[:, :, None] * shift
        # the jitter is linear in optical density: one (3 x 3) matrix and offset per tile
        mixing = self.hed_from_rgb @ torch.diag_embed(scale) @ self.rgb_from_hed
        density = torch.einsum("nchw,ncd->ndhw", torch.log(tiles.clamp(min=1e-3)), mixing)
        density -= (shift @ self.rgb_from_hed).reshape(n, 3, 1, 1)  # minus: log is -density
        return density.exp_().clamp_(0, 1)


class RandomTranspose(nn.Module):
    """Swap the rows and columns of half of the tiles (chosen at random).

    With random horizontal and vertical flips this gives every rotation by a multiple of 90
    degrees and every reflection with equal chance, moving pixels exactly; kornia's
    ``RandomRotation90`` resamples through an affine warp and costs several times more.
    """

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        if tiles.shape[-1] != tiles.shape[-2]:
            raise ValueError(f"RandomTranspose needs square tiles, got {tuple(tiles.shape)}.")
        chosen = torch.rand((tiles.shape[0], 1, 1, 1), device=tiles.device) < 0.5
        return torch.where(chosen, tiles.transpose(-1, -2), tiles)


class IntensityJitter(nn.Module):
    """Random gain ``1 +- scale`` and offset ``+- offset`` per tile and channel (fluorescence)."""

    def __init__(self, *, scale: float = 0.3, offset: float = 0.05, p: float = 0.8) -> None:
        super().__init__()
        self.scale, self.offset, self.p = scale, offset, p

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        shape = (tiles.shape[0], tiles.shape[1], 1, 1)
        gain = 1 + (torch.rand(shape, device=tiles.device) * 2 - 1) * self.scale
        shift = (torch.rand(shape, device=tiles.device) * 2 - 1) * self.offset
        apply = (torch.rand((tiles.shape[0], 1, 1, 1), device=tiles.device) < self.p).float()
        return (tiles * (1 + apply * (gain - 1)) + apply * shift).clamp(0, 1)


_OWN_STEPS = {"HEDJitter": HEDJitter, "IntensityJitter": IntensityJitter,
              "RandomTranspose": RandomTranspose}
