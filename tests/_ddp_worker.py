"""One process of the two-process DDP tests (tests/tl/test_train.py,
tests/tl/features/test_pretrain.py); run by torchrun.

``_ddp_worker.py OUT``: trains a small deterministic network with histoexpr's training loop and,
on rank 0 only, writes its weights and history; every rank also asks hx.io.save_model to write
its own file, which only rank 0 may do.

``_ddp_worker.py OUT pretrain``: pretrains a small encoder with hx.tl.pretrain by SimCLR and by
MoCo (deterministic views, no batch-normalisation statistics) and, on rank 0, writes both.

``_ddp_worker.py OUT mil SLIDES STORES``: cross-validates attention MIL on a cohort whose stores
are already embedded (tests/tl/mil/test_mil_cohort.py); the out-of-fold per-tile results go into the
stores, which rank 0 alone may write; rank 0 writes the bag predictions.
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


class DeterministicViews(torch.nn.Module):
    """Two views without randomness (the second mirrored and dimmed), so that views do not
    depend on which process draws them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x) // 2
        return torch.cat([x[:n], 0.8 * x[n:].flip(-1) + 0.1])


def without_batch_statistics() -> None:
    """Build networks without batch normalisation, in float64: on CPUs batch statistics are
    per process (SyncBatchNorm needs GPUs), and in float32 the different order of the sums of
    one and two processes grows over AdamW's steps (sign-like first steps) to ~3e-4."""
    torch.nn.BatchNorm1d = torch.nn.Identity
    torch.nn.BatchNorm2d = torch.nn.Identity
    torch.set_default_dtype(torch.float64)


def pretrain_sections():
    import histoexpr as hx

    sdata = hx.datasets.synthetic_section(seed=5, size_um=400, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=16, mpp=2.0, min_tissue=0.5)  # 32 um tiles
    return [sdata]


def pretrain_both(sections) -> dict:
    """SimCLR and MoCo encoders, their loss per epoch and number of processes."""
    import histoexpr as hx

    results = {}
    for method in ("simclr", "moco"):
        encoder = hx.tl.pretrain(
            sections, "he_tiles", method=method, encoder="small_cnn", epochs=2, batch_size=8,
            lr=3e-3, schedule="cosine", warmup=0.2, projection_dim=16, queue_size=24,
            augment=DeterministicViews(), device="cpu", seed=0)
        results[method] = {"state": encoder.state_dict(),
                           "loss": encoder.metadata["pretraining"]["loss"],
                           "processes": encoder.metadata["pretraining"]["processes"]}
    return results


def run_pretrain(out: Path) -> None:
    import histoexpr as hx

    hx.settings.progress_bar = False
    without_batch_statistics()
    results = pretrain_both(pretrain_sections())
    if dist.get_rank() == 0:
        torch.save(results, out / "pretrain_ddp.pt")
    dist.destroy_process_group()


MIL_OPTIONS = {"genes": ["EPCAM", "KRT8"], "groups": "patient", "n_folds": 3, "epochs": 4,
               "hidden": 16, "val_fraction": 0, "seed": 0, "batch_size": 4, "device": "cpu"}


def run_mil(out: Path, slides: Path, stores: Path) -> None:
    import histoexpr as hx

    hx.settings.progress_bar = False
    torch.set_num_threads(1)
    cohort = hx.io.read_cohort(slides, bulk=slides.parent / "bulk.h5ad", store_dir=stores)
    result = hx.tl.cross_validate(cohort, model="abmil", key_added="cv_ddp", **MIL_OPTIONS)
    if dist.get_rank() == 0:
        torch.save({"X": torch.as_tensor(result.X)}, out / "mil_ddp.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[2:3] == ["mil"]:
        run_mil(Path(sys.argv[1]), Path(sys.argv[3]), Path(sys.argv[4]))
    elif sys.argv[2:] == ["pretrain"]:
        run_pretrain(Path(sys.argv[1]))
    else:
        run(Path(sys.argv[1]))
