"""Contrastive pretraining: its speed, and what it brings on real data.

``speed``: pretraining images/s through hx.tl.pretrain (tiles streamed from a section through
TileDataset, two augmented views per tile) against a bare forward/backward step of the same
network (encoder + projection head, the same contrastive loss) on tensors already in memory.

``her2st``: her2st sections C2, C3, C4, leave-one-section-out ridge probe of spot expression
(the 50 most expressed genes, log-normalised; Pearson per gene; ridge alpha by inner CV) on the
features of spot-centred tiles from: a random-init small CNN, the same CNN pretrained (on all
three sections' unlabelled tiles, and on the two training sections only), a random-init
ResNet-18, squidpy's features and histoexpr's hand-crafted features.

    .venv/bin/python benchmarks/bench_pretrain.py speed
    nice .venv/bin/python benchmarks/bench_pretrain.py her2st --epochs 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import histoexpr as hx

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HISTOEXPR_SHARED_DATA", REPO.parent / "shared" / "data"))
SECTIONS = ("C2", "C3", "C4")


def speed(args) -> None:
    from histoexpr.models import ContrastiveLearner
    from histoexpr.pp._augment import augmentations

    hx.settings.progress_bar = False
    sdata = hx.datasets.synthetic_section(seed=0, size_um=args.size_um, transcripts=False,
                                          spots=False)
    hx.pp.tile(sdata, "he", size=args.tile_px, mpp=0.5, min_tissue=0.5)  # the image's um/px
    n_tiles = sdata.tables["he_tiles_table"].n_obs
    steps = n_tiles // args.batch_size
    print(f"{n_tiles} tiles of {args.tile_px} px, batch {args.batch_size}, {steps} steps/epoch, "
          f"torch threads {torch.get_num_threads()}, n_workers {hx.settings.n_workers}")

    # the bare step: the same learner and loss on two views already in memory
    torch.manual_seed(0)
    learner = ContrastiveLearner(encoder={"arch": args.arch, "in_channels": 3, "width": 16},
                                 method=args.method, queue_size=1024, projection_dim=64)
    optimiser = torch.optim.AdamW(learner.parameters(), lr=1e-3)
    views = torch.rand(2, args.batch_size, 3, args.tile_px, args.tile_px)
    learner.train()
    for _ in range(2):  # warm-up
        _bare_step(learner, optimiser, views)
    began = time.perf_counter()
    for _ in range(steps):
        _bare_step(learner, optimiser, views)
    bare = steps * args.batch_size / (time.perf_counter() - began)

    # hx.tl.pretrain: the first epoch also decodes the image chunks; time the second
    augment = augmentations("he", size_px=args.tile_px)
    began = time.perf_counter()
    encoder = hx.tl.pretrain(sdata, "he_tiles", method=args.method, encoder=args.arch,
                             epochs=1 + args.epochs, batch_size=args.batch_size,
                             queue_size=1024, projection_dim=64, augment=augment, seed=0)
    total = time.perf_counter() - began
    seconds = encoder.metadata["pretraining"]["seconds"]
    full = (1 + args.epochs) * steps * args.batch_size / seconds
    print(f"bare forward/backward: {bare:.1f} tiles/s")
    print(f"hx.tl.pretrain ({1 + args.epochs} epochs, {seconds:.1f} s in epochs, {total:.1f} s "
          f"with setup): {full:.1f} tiles/s; ratio {full / bare:.2f}")
    _profile_parts(sdata, augment, args)


def _bare_step(learner, optimiser, views) -> None:
    loss = learner(views[0], views[1])
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def _profile_parts(sdata, augment, args) -> None:
    """Where a pretraining step's time goes: reading tiles, augmenting, the network."""
    dataset = hx.pp.TileDataset(sdata, "he_tiles")
    began = time.perf_counter()
    images = torch.stack([dataset[i]["image"] for i in range(args.batch_size)])
    read = (time.perf_counter() - began) / args.batch_size
    began = time.perf_counter()
    for _ in range(5):
        augment(images)
    augmenting = (time.perf_counter() - began) / 5 / args.batch_size
    print(f"per tile: reading {1000 * read:.2f} ms, one augmented view {1000 * augmenting:.2f} ms")


def her2st(args) -> None:
    hx.settings.progress_bar = False
    began = time.perf_counter()
    sections = {name: _read_section(name, args) for name in SECTIONS}
    genes, targets = _expression_targets(sections, args.n_genes)
    groups = np.concatenate([[name] * len(targets[name]) for name in SECTIONS])
    y = pd.concat([targets[name] for name in SECTIONS], ignore_index=True)
    print(f"read and tiled in {time.perf_counter() - began:.0f} s; spots per section "
          f"{[len(targets[n]) for n in SECTIONS]}; grid tiles "
          f"{[sections[n].tables['he_tiles_table'].n_obs for n in SECTIONS]}")

    def features(encoder, key):
        for sdata in sections.values():
            hx.tl.embed(sdata, "he_spot_tiles", encoder=encoder, key_added=key, overwrite=True)
        return np.concatenate([sections[n].tables["he_spot_tiles_table"].obsm[key]
                               for n in SECTIONS])

    def score(x):
        scores = hx.tl.probe(x, y, groups=groups)
        return scores.groupby("fold")["pearson"].mean()

    options = {"method": args.method, "encoder": "small_cnn", "epochs": args.epochs,
               "batch_size": args.batch_size, "seed": 0}
    results = {}
    torch.manual_seed(0)
    random_init = hx.models.TileEncoder(arch="small_cnn", in_channels=3)
    began = time.perf_counter()
    pretrained = hx.tl.pretrain(list(sections.values()), "he_tiles",
                                **{**options, "encoder": random_init})
    print(f"pretrained on all sections: {time.perf_counter() - began:.0f} s, loss "
          f"{np.round(pretrained.metadata['pretraining']['loss'], 3).tolist()}")
    random_init.metadata = {"normalisation": pretrained.metadata["normalisation"]}
    results["small CNN, random init"] = score(features(random_init, "X_random"))
    results["small CNN, pretrained (test section's tiles included)"] = score(
        features(pretrained, "X_pretrained"))
    held_out = {}
    for name in SECTIONS:
        train = [sections[n] for n in SECTIONS if n != name]
        encoder = hx.tl.pretrain(train, "he_tiles", **{**options, "encoder": random_init})
        held_out[name] = score(features(encoder, "X_pretrained_held_out"))[name]
    results["small CNN, pretrained (training sections only)"] = pd.Series(held_out)
    results["ResNet-18, random init"] = score(features("resnet18", "X_resnet18"))
    results["squidpy features"] = score(features("squidpy", "X_squidpy"))
    results["hand-crafted features"] = score(features("handcrafted", "X_handcrafted"))
    table = pd.DataFrame(results).T[list(SECTIONS)]
    table["mean"] = table.mean(axis=1)
    print(f"\nmean Pearson over {len(genes)} genes, leave-one-section-out "
          f"(tiles {args.tile_px} px at {args.mpp} um/px; {args.method}, {args.epochs} epochs, "
          f"batch {args.batch_size}); total {time.perf_counter() - began:.0f} s")
    print(table.round(3).to_markdown())


def _read_section(name: str, args):
    folder = DATA / "her2st"
    sdata = hx.io.read_st(folder / "counts" / f"{name}.tsv.gz",
                          folder / "spots" / f"{name}_selection.tsv",
                          next((folder / "images").glob(f"{name}_*.jpg")))
    hx.pp.detect_tissue(sdata, "he")
    hx.pp.tile(sdata, "he", size=args.tile_px, mpp=args.mpp, min_tissue=0.5)
    hx.pp.tile(sdata, "he", size=args.tile_px, mpp=args.mpp, centers="spots",
               key_added="he_spot_tiles")
    return sdata


def _expression_targets(sections, n_genes: int):
    """Log-normalised expression of the most expressed shared genes, in spot-tile order."""
    import scanpy as sc

    tables = {}
    for name, sdata in sections.items():
        table = sdata.tables["table"].copy()
        sc.pp.normalize_total(table, target_sum=1e4)
        sc.pp.log1p(table)
        tables[name] = table
    shared = sorted(set.intersection(*(set(t.var_names) for t in tables.values())))
    totals = sum(np.asarray(sections[n].tables["table"][:, shared].X.sum(axis=0)).ravel()
                 for n in sections)
    genes = [shared[i] for i in np.argsort(-totals)[:n_genes]]
    targets = {}
    for name, sdata in sections.items():
        rows = pd.Index(tables[name].obs["spot_id"]).get_indexer(
            sdata.tables["he_spot_tiles_table"].obs["spot_id"])
        values = tables[name][rows, genes].X
        values = values.toarray() if hasattr(values, "toarray") else values
        targets[name] = pd.DataFrame(values, columns=genes)
    return genes, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fast = commands.add_parser("speed")
    fast.add_argument("--arch", default="small_cnn")
    fast.add_argument("--method", default="simclr")
    fast.add_argument("--tile-px", type=int, default=64)
    fast.add_argument("--batch-size", type=int, default=64)
    fast.add_argument("--size-um", type=float, default=800)
    fast.add_argument("--epochs", type=int, default=1, help="timed epochs after the first")
    real = commands.add_parser("her2st")
    real.add_argument("--method", default="simclr")
    real.add_argument("--tile-px", type=int, default=48)
    real.add_argument("--mpp", type=float, default=2.0)
    real.add_argument("--epochs", type=int, default=3)
    real.add_argument("--batch-size", type=int, default=64)
    real.add_argument("--n-genes", type=int, default=50)
    args = parser.parse_args()
    speed(args) if args.command == "speed" else her2st(args)


if __name__ == "__main__":
    main()
