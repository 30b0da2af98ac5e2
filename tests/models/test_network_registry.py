"""Networks of one's own in model files: saved and loaded once registered, never rebuilt as
another class, and loading still runs no code from the file."""

from __future__ import annotations

import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx
from histoexpr.models import _registry


class ColourNet(hx.models.Network):
    """A network outside histoexpr: a linear map of a tile's mean colour."""

    def __init__(self, *, width: int = 4) -> None:
        super().__init__(config={"width": width})
        self.linear = torch.nn.Linear(3, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


@pytest.fixture
def registry():
    """The registry as it was, put back after the test."""
    kept = dict(_registry._REGISTERED)
    yield
    _registry._REGISTERED.clear()
    _registry._REGISTERED.update(kept)


@bad_input("obscure error", "`hx.io.save_model(net, path)` with a network class of the user's "
           "(a `hx.models.Network` subclass defined outside histoexpr)",
           says="TypeError: `save_model saves networks that load_model can rebuild ... "
                "Register it (hx.models.register_network(YourClass)) before saving` (before: "
                "saved, then load_model refused the file: 'which this histoexpr does not have')",
           fix="`hx.models.register_network(YourClass)` before saving and before loading")
def test_a_registered_network_is_saved_and_loaded_as_itself(registry, tmp_path):
    torch.manual_seed(0)
    net = ColourNet(width=5)
    net.metadata = {"genes": ["A", "B"]}
    with pytest.raises(TypeError, match=r"test_network_registry\.ColourNet is neither.*"
                                        r"register_network.*Nothing was written"):
        hx.io.save_model(net, tmp_path / "net.pt")
    assert not (tmp_path / "net.pt").exists()
    hx.models.register_network(ColourNet)
    hx.io.save_model(net, tmp_path / "net.pt")
    back = hx.io.load_model(tmp_path / "net.pt", device="cpu")
    tiles = torch.rand(4, 3, 8, 8)
    assert type(back) is ColourNet and back.metadata["genes"] == ["A", "B"]
    torch.testing.assert_close(back(tiles), net.eval()(tiles))
    # another Python process that has not registered it: told how, nothing run from the file
    _registry._REGISTERED.clear()
    with pytest.raises(ValueError, match=r"holds a 'ColourNet' network.*register it first "
                                         r"\(hx\.models\.register_network\(ColourNet\)\)"):
        hx.io.load_model(tmp_path / "net.pt")


@bad_input("silently wrong", "`hx.io.save_model(net, path)` with a class of the user's that has "
           "the name of histoexpr's own (a subclass `LinearHead(hx.models.LinearHead)` whose "
           "forward differs)",
           says="TypeError: `... is neither, and a file naming 'LinearHead' is rebuilt as "
                "histoexpr.models._spot_regressor.LinearHead` (before: saved, and loaded as "
                "histoexpr's LinearHead: other outputs)",
           fix="give the class another name and register it")
def test_a_class_named_as_histoexprs_own_is_refused(registry, tmp_path):
    class LinearHead(hx.models.LinearHead):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.softplus(super().forward(x))

    with pytest.raises(TypeError, match=r"is neither, and a file naming 'LinearHead' is rebuilt "
                                        r"as histoexpr\.models\._spot_regressor\.LinearHead"):
        hx.io.save_model(LinearHead(n_features=3, n_genes=2), tmp_path / "head.pt")
    with pytest.raises(ValueError, match="has the name of histoexpr's own network"):
        hx.models.register_network(LinearHead)
    assert not (tmp_path / "head.pt").exists()


def test_registering_again_asks_for_overwrite(registry):
    hx.models.register_network(ColourNet)
    hx.models.register_network(ColourNet)  # the same class again: nothing to replace

    class ColourNet2(ColourNet):
        pass

    ColourNet2.__name__ = "ColourNet"
    with pytest.raises(ValueError, match="registered already .*overwrite=True"):
        hx.models.register_network(ColourNet2)
    assert hx.models.register_network(ColourNet2, overwrite=True) is ColourNet2
    assert hx.models.network_class("ColourNet") is ColourNet2
    with pytest.raises(TypeError, match="subclass of hx.models.Network"):
        hx.models.register_network(torch.nn.Linear)


def test_the_bare_base_class_round_trips(tmp_path):
    hx.io.save_model(hx.models.Network(config={}), tmp_path / "bare.pt")
    assert type(hx.io.load_model(tmp_path / "bare.pt", device="cpu")) is hx.models.Network
