"""GPU-ready defaults change nothing on a CPU: precision "auto" is fp32 there, no workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import histoexpr as hx
from histoexpr.tl._train import train


@pytest.fixture(scope="module")
def section():
    sdata = hx.datasets.synthetic_section(seed=3, size_um=300, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=32, mpp=0.5, min_tissue=0.5)
    return sdata


def _with_batch_statistics(network: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from their initial values."""
    generator = torch.Generator().manual_seed(5)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(0.5 + 2 * torch.rand(n, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return network


def test_embed_on_a_cpu_with_default_settings_is_the_fp32_forward_pass(section):
    """fp32, and the network's eval-mode output to float32 rounding (batch norm folded)."""
    torch.manual_seed(0)
    network = _with_batch_statistics(hx.models.TileEncoder(arch="small_cnn", in_channels=3,
                                                           width=8))
    network.metadata = {"normalisation": {"mean": [0.7, 0.5, 0.7], "std": [0.2, 0.2, 0.2]}}
    before = {k: v.clone() for k, v in network.state_dict().items()}
    assert hx.settings.precision == "auto" and hx.settings.n_workers is None
    hx.tl.embed(section, "he_tiles", encoder=network, key_added="X_default", batch_size=16)
    # the caller's network is left as it was: training mode, weights, usual layout
    assert network.training
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    first = network.body[0].weight
    assert first.is_contiguous() and not first.is_contiguous(memory_format=torch.channels_last)
    dataset = hx.pp.TileDataset(section, "he_tiles")
    images = torch.stack([dataset[i]["image"] for i in range(16)])
    mean = torch.tensor([0.7, 0.5, 0.7]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        direct = network.eval()((images - mean) / 0.2).numpy()
    obsm = section.tables["he_tiles_table"].obsm
    scale = np.abs(direct).max()
    np.testing.assert_allclose(obsm["X_default"][:16], direct, rtol=0, atol=1e-5 * scale)
    # bf16 forced on the CPU goes through autocast: close, but not the same numbers
    hx.settings.precision = "bf16"
    hx.tl.embed(section, "he_tiles", encoder=network, key_added="X_bf16", batch_size=16)
    assert not np.array_equal(obsm["X_bf16"], obsm["X_default"])
    np.testing.assert_allclose(obsm["X_bf16"], obsm["X_default"], rtol=0.1, atol=0.05)


def test_training_on_a_cpu_with_default_settings_is_fp32():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, generator=generator), torch.randn(96, generator=generator)
    batches = [{"x": x[i: i + 16], "y": y[i: i + 16]} for i in range(0, 96, 16)]

    def loss(network, batch):
        return nn.functional.mse_loss(network(batch["x"]).squeeze(-1), batch["y"])

    def run(precision):
        hx.settings.precision = precision
        torch.manual_seed(1)
        network = nn.Sequential(nn.Linear(3, 32), nn.GELU(), nn.Linear(32, 1))
        history = train(network, batches, None, loss, epochs=3, lr=0.01, device="cpu", seed=0)
        return history, [p.detach().clone() for p in network.parameters()]

    default, weights = run("auto")
    explicit, explicit_weights = run("fp32")
    assert default["precision"] == "fp32" and default["train_loss"] == explicit["train_loss"]
    for a, b in zip(weights, explicit_weights, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    bf16, bf16_weights = run("bf16")
    assert bf16["precision"] == "bf16" and bf16["train_loss"] != default["train_loss"]
    np.testing.assert_allclose(bf16["train_loss"], default["train_loss"], rtol=0.05)


def test_batch_size_none_is_64_tiles_on_a_cpu_and_changes_no_feature(section, monkeypatch):
    from histoexpr._core import devices as _devices
    from histoexpr.tl._features import _embed

    network = hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8)
    network.metadata = {"normalisation": {"mean": [0.7, 0.5, 0.7], "std": [0.2, 0.2, 0.2]}}
    chosen = []

    def spy(*args, **kwargs):
        chosen.append((args[1], args[2], _devices.auto_batch_size(*args, **kwargs)))
        return chosen[-1][-1]

    monkeypatch.setattr(_embed, "auto_batch_size", spy)
    hx.tl.embed(section, "he_tiles", encoder=network, key_added="X_auto", device="cpu")
    hx.tl.embed(section, "he_tiles", encoder=network, key_added="X_64", device="cpu",
                batch_size=64)
    assert chosen == [((3, 32, 32), "cpu", 64)]  # called once: only for batch_size=None
    obsm = section.tables["he_tiles_table"].obsm
    np.testing.assert_array_equal(obsm["X_auto"], obsm["X_64"])


def test_batch_size_none_on_a_cuda_gpu_takes_half_its_free_memory(monkeypatch):
    """The CUDA branch with the memory faked: free memory / (bytes a tile takes), halved."""
    from histoexpr._core import devices as _devices

    def probe(network, tile_shape, device, precision):
        assert device == "cuda:0" and tile_shape == (3, 224, 224)
        return 30e6  # 30 MB per tile, as measured by the probe batch on a GPU

    monkeypatch.setattr(_devices, "_cuda_bytes_per_tile", probe)
    for free, expected in ((4e9, 64), (1e9, 16), (40e9, 512), (50e6, 1)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 80e9))
        network = nn.Identity()
        assert _devices.auto_batch_size(network, (3, 224, 224), "cuda:0") == expected
    # the rule itself: a multiple of 8 from 8 up, at least 1, at most 512
    assert _devices.batch_size_for_memory(1e9, 7e6) == 64  # 71 fit in half: 64
    assert _devices.batch_size_for_memory(1e9, 80e6) == 6
    assert _devices.batch_size_for_memory(1e9, 5e9) == 1  # not even one fits: one at a time
    assert _devices.batch_size_for_memory(1e12, 1e3) == _devices.MAX_AUTO_BATCH_SIZE == 512
    # a CPU or MPS device never looks at GPU memory
    assert _devices.auto_batch_size(nn.Identity(), (3, 224, 224), "cpu") == 64


def test_inference_network_folds_batch_norm_and_leaves_the_callers_network_alone():
    from histoexpr._core.devices import inference_network

    torch.manual_seed(0)
    network = _with_batch_statistics(hx.models.TileEncoder(arch="small_cnn", in_channels=3,
                                                           width=8, pool_levels=True))
    tiles = torch.rand(6, 3, 40, 40)
    with torch.no_grad():
        expected = network.eval()(tiles)
    network.train()
    fast, channels_last = inference_network(network, "cpu")
    assert channels_last and fast is not network and network.training and not fast.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    with torch.inference_mode():
        got = fast(tiles.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    # without batch norm to fold: the network itself, not a copy (a large model is not doubled)
    plain = nn.Sequential(nn.Linear(4, 3))
    same, channels_last = inference_network(plain, "cpu")
    assert same is plain and not channels_last and not plain.training


def _minor_page_faults(allocations: int) -> int:
    """Minor page faults of allocating, writing and freeing 64 MiB ``allocations`` times."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(allocations):
        block = torch.empty(16 * 2**20)  # 64 MiB of float32: above glibc's mmap threshold
        block.fill_(1.0)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_large_blocks_are_reused_while_a_cpu_trains_and_malloc_is_set_back_after():
    from histoexpr._core import devices as _devices

    if _devices._glibc() is None:
        pytest.skip("the C library here is not glibc: reused_host_memory changes nothing")
    outside = _minor_page_faults(16)
    with _devices.reused_host_memory("cpu"):
        with _devices.reused_host_memory("cpu"):  # nested: applied once
            assert _devices._HEAP["depth"] == 2
        inside = _minor_page_faults(16)
    assert _devices._HEAP["depth"] == 0
    import resource

    pages = 64 * 2**20 // resource.getpagesize()
    # outside, each 64 MiB block is mapped and faulted in afresh (fewer faults where the kernel
    # backs part of a block with huge pages); inside, the heap grows a few times at most (how
    # often depends on what the process freed before), then is reused
    assert outside > 8 * pages
    assert inside < 4 * pages
    with _devices.reused_host_memory("cuda:0"):  # another device: nothing is changed
        assert _devices._HEAP["depth"] == 0


def test_reused_host_memory_changes_no_number_of_a_training_run(monkeypatch):
    from histoexpr._core import devices as _devices

    generator = torch.Generator().manual_seed(0)
    tiles = torch.rand(64, 3, 48, 48, generator=generator)
    targets = torch.randn(64, generator=generator)
    batches = [{"x": tiles[i: i + 32], "y": targets[i: i + 32]} for i in (0, 32)]

    def loss(network, batch):
        return nn.functional.mse_loss(network(batch["x"]).mean(dim=1), batch["y"])

    def run():
        torch.manual_seed(1)
        network = hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8)
        history = train(network, batches, None, loss, epochs=2, lr=0.01, device="cpu", seed=0)
        return history["train_loss"], [p.detach().clone() for p in network.parameters()]

    reused, reused_weights = run()
    monkeypatch.setattr(_devices, "_glibc", lambda: None)  # malloc as it is
    plain, plain_weights = run()
    assert reused == plain
    for a, b in zip(reused_weights, plain_weights, strict=True):
        assert torch.equal(a, b)
