"""The CNN blocks pool before their ReLU: the same numbers, bit for bit, as the usual order."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from histoexpr._core.devices import inference_network
from histoexpr.models import PatchClassifier, TileEncoder


def _usual_order(network: nn.Module) -> nn.Module:
    """A copy of ``network`` whose blocks run ReLU then max pooling (the textbook order)."""
    copied = copy.deepcopy(network)
    layers = list(copied.body)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    copied.body = nn.Sequential(*layers)
    if isinstance(copied, TileEncoder) and copied.pool_levels:
        def forward(self, x):  # levels after each block's max pooling, as before
            levels = []
            for layer in self.body:
                x = layer(x)
                if isinstance(layer, nn.MaxPool2d):
                    levels.append(x.mean(dim=(2, 3)))
            return torch.cat([*levels, x], dim=1)
        copied.forward = types.MethodType(forward, copied)
    return copied


def _networks():
    torch.manual_seed(0)
    return [TileEncoder(arch="small_cnn", in_channels=3, width=8),
            TileEncoder(arch="small_cnn", in_channels=3, width=8, pool_levels=True),
            PatchClassifier(in_channels=1, patch_px=37, width=8, depth=3)]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_pooling_before_the_relu_gives_the_usual_outputs_and_gradients_bit_for_bit(index):
    network = _networks()[index]
    layers = list(network.body)
    assert any(isinstance(a, nn.MaxPool2d) and isinstance(b, nn.ReLU)
               for a, b in zip(layers, layers[1:], strict=False))  # pooling first
    usual = _usual_order(network)
    assert [name for name, _ in network.named_parameters()] == \
        [name for name, _ in usual.named_parameters()]  # model files: the same keys
    channels = network.in_channels
    size = 37 if isinstance(network, PatchClassifier) else 48  # odd maps: pooling floors them
    torch.manual_seed(1)
    tiles = torch.randn(6, channels, size, size)
    for net in (network, usual):
        net.train()
        net.zero_grad()
    torch.manual_seed(2)  # the same dropout mask for both
    ours = network(tiles)
    torch.manual_seed(2)
    theirs = usual(tiles)
    assert torch.equal(ours, theirs)
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    for (name, a), (_, b) in zip(network.named_parameters(), usual.named_parameters(),
                                 strict=True):
        assert torch.equal(a.grad, b.grad), name
    # and in eval mode, also as the folded copy inference runs
    network.eval()
    usual.eval()
    with torch.no_grad():
        assert torch.equal(network(tiles), usual(tiles))
        folded_ours, _ = inference_network(network, "cpu")
        folded_theirs, _ = inference_network(usual, "cpu")
        assert torch.equal(folded_ours(tiles), folded_theirs(tiles))


def test_pool_levels_still_average_every_block():
    encoder = _networks()[1].eval()
    assert encoder(torch.rand(2, 3, 48, 48)).shape == (2, 15 * 8)
    with torch.no_grad():  # the first level: the first block's output (ReLU'd), averaged
        tiles = torch.rand(2, 3, 48, 48)
        first = encoder.body[:4](tiles).mean(dim=(2, 3))
        assert torch.equal(encoder(tiles)[:, :8], first)
        assert (first >= 0).all()
