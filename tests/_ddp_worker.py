"""One process of the two-process DDP test (tests/test_train.py); run by torchrun.

Trains a small deterministic network with histoexpr's training loop and, on rank 0 only, writes
its weights and history; every rank also asks hx.io.save_model to write its own file, which only
rank 0 may do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist


def data_and_network():
    """The same data, loaders and starting weights in every process (and in the test)."""
    from torch.utils.data import DataLoader, Dataset

    from histoexpr.models import MLPHead

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(57, 4, generator=generator)
    y = torch.stack([x[:, 0] - 2 * x[:, 1], x[:, 2] * x[:, 3]], dim=1)

    class Items(Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return {"x": x[self.rows[i]], "y": y[self.rows[i]]}

    # 41 training items in global batches of 8: the last global batch holds one item, so the
    # second process has no share of it (uneven inputs); shuffled by a seeded generator
    train = DataLoader(Items(list(range(41))), batch_size=8, shuffle=True,
                       generator=torch.Generator().manual_seed(1))
    val = DataLoader(Items(list(range(41, 57))), batch_size=5)
    torch.manual_seed(2)
    network = MLPHead(n_features=4, n_genes=2, hidden=16, dropout=0.0)
    return network, train, val


def loss(network, batch):
    return torch.nn.functional.mse_loss(network(batch["x"]), batch["y"])


def run(out: Path) -> None:
    import histoexpr as hx
    from histoexpr.tl._train import train

    hx.settings.progress_bar = False
    network, train_batches, val_batches = data_and_network()
    history = train(network, train_batches, val_batches, loss, epochs=4, lr=0.05,
                    patience=None, device="cpu", seed=3)
    rank = dist.get_rank()
    hx.io.save_model(network, out / f"model_from_rank{rank}.pt")
    if rank == 0:
        torch.save({"state": network.state_dict(), "history": history}, out / "ddp.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    run(Path(sys.argv[1]))
