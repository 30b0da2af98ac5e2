"""The shared training loop and the tl entry points."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import histoexpr as hx
from histoexpr.tl._train import train


def batches(x, y, batch_size=16, shuffle=False):
    dataset = TensorDataset(x, y)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)
    return [{"x": xb, "y": yb} for xb, yb in loader]


def mse(network, batch):
    return nn.functional.mse_loss(network(batch["x"]).squeeze(-1), batch["y"])


def test_learns_a_linear_rule_better_than_the_mean_on_held_out_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=generator)
    y = x @ torch.tensor([2.0, -1.0, 0.5]) + 1 + 0.1 * torch.randn(400, generator=generator)
    network = nn.Linear(3, 1)
    history = train(network, batches(x[:300], y[:300]), batches(x[300:], y[300:]), mse,
                    epochs=60, lr=0.05, device="cpu", seed=0)
    with torch.no_grad():
        held_out = nn.functional.mse_loss(network(x[300:]).squeeze(-1), y[300:]).item()
    baseline = ((y[300:] - y[:300].mean()) ** 2).mean().item()
    assert held_out < 0.05 * baseline
    assert history["val_loss"][history["best_epoch"]] == min(history["val_loss"])


def test_early_stopping_restores_the_best_weights():
    network = nn.Linear(1, 1)
    val_losses = iter([3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    snapshots = []

    def scripted_loss(net, batch):
        if net.training:
            return mse(net, batch)
        snapshots.append(net.weight.detach().clone())
        return torch.tensor(next(val_losses))

    x, y = torch.randn(32, 1), torch.randn(32)
    history = train(network, batches(x, y), [{"x": x, "y": y}], scripted_loss,
                    epochs=8, lr=0.1, patience=2, device="cpu")
    assert history["best_epoch"] == 2
    assert history["epochs_run"] == 5  # two epochs without improvement after the best
    torch.testing.assert_close(network.weight.detach(), snapshots[2])


def test_the_seed_argument_fixes_the_result_whatever_the_global_random_state():
    # the same starting weights for every run; between runs the global torch RNG is moved to
    # another state, so runs agree only if train() seeds the dropout masks (and all else) itself
    x, y = torch.randn(64, 2), torch.randn(64)
    torch.manual_seed(123)
    start = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 1))

    def run(seed, rng_state):
        network = copy.deepcopy(start)
        torch.manual_seed(rng_state)
        train(network, batches(x, y), None, mse, epochs=3, device="cpu", seed=seed)
        return network[0].weight.detach().clone()

    torch.testing.assert_close(run(5, rng_state=1), run(5, rng_state=2))
    # and the seed matters: another one draws other dropout masks, hence other weights
    assert not torch.allclose(run(5, rng_state=1), run(6, rng_state=1))


def test_the_progress_bar_shows_the_losses(capsys, monkeypatch):
    monkeypatch.setattr(hx.settings, "progress_bar", True)
    x, y = torch.randn(32, 1), torch.randn(32)
    train(nn.Linear(1, 1), batches(x, y), batches(x, y), mse, epochs=2, device="cpu",
          desc="bar-test")
    shown = capsys.readouterr().err
    assert "bar-test" in shown and "train=" in shown and "val=" in shown, shown


def test_diverging_loss_is_a_clear_error():
    x, y = torch.randn(16, 1), torch.full((16,), float("nan"))
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(nn.Linear(1, 1), batches(x, y), None, mse, epochs=1, device="cpu")


def test_empty_data_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        train(nn.Linear(1, 1), [], None, mse, epochs=1, device="cpu")


def test_entry_points_reject_unknown_models():
    with pytest.raises(ValueError, match="Unknown model 'magic'"):
        hx.tl.fit(None, model="magic")
    with pytest.raises(ValueError, match="not a model trained by hx.tl.fit"):
        hx.tl.predict(hx.models.TileEncoder(), None)


def test_evaluate_needs_an_existing_element(disk_section):
    with pytest.raises(KeyError, match="not an element"):
        hx.tl.evaluate(disk_section, "nope", "he")


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(tmp_path):
    """DDP on two CPU processes (gloo, launched by torchrun) matches one process.

    Same global batches (each process takes half of every batch, the last one unevenly), so the
    averaged gradients are the one-process gradients: the weights agree to float summation order.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import _ddp_worker

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
         "--nproc_per_node=2", str(Path(_ddp_worker.__file__)), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)

    network, train_batches, val_batches = _ddp_worker.data_and_network()
    single = train(network, train_batches, val_batches, _ddp_worker.loss, epochs=4, lr=0.05,
                   patience=None, device="cpu", seed=3)
    assert ddp["history"]["world_size"] == 2 and single["world_size"] == 1
    for name, value in network.state_dict().items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ddp["history"]["train_loss"], single["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(ddp["history"]["val_loss"], single["val_loss"], rtol=1e-5)
    # training moved the weights (the comparison is not between two untouched networks)
    start, _, _ = _ddp_worker.data_and_network()
    assert not torch.allclose(start.state_dict()["members.0.1.weight"],
                              network.state_dict()["members.0.1.weight"])
    # only rank 0 writes
    assert (tmp_path / "model_from_rank0.pt").exists()
    assert not (tmp_path / "model_from_rank1.pt").exists()


def test_batches_built_in_memory_are_split_among_processes():
    from histoexpr._core.distributed import Context, ShardedBatches

    batches = [{"x": torch.arange(5), "y": torch.arange(5) * 10, "name": "a"},
               {"x": torch.arange(1), "y": torch.zeros(1), "name": "b"}]
    second = ShardedBatches(batches, Context(rank=1, world_size=2, local_rank=1))
    shares = list(second)
    assert shares[0]["x"].tolist() == [1, 3] and shares[0]["y"].tolist() == [10, 30]
    assert shares[0]["name"] == "a"
    # the last global batch has one item: the second process gets a stand-in weighted by zero
    assert shares[1]["x"].tolist() == [0] and second.shares == [(5, True), (1, False)]
    first = ShardedBatches(batches, Context(rank=0, world_size=2, local_rank=0))
    assert [s["x"].tolist() for s in first] == [[0, 2, 4], [0]]
    assert first.shares == [(5, True), (1, True)]
