"""Contrastive pretraining: its speed, and what it brings on real data.

``speed``: pretraining images/s through hx.tl.pretrain (tiles streamed from a section through
TileDataset, two augmented views per tile) against a bare forward/backward step of the same
network (encoder + projection head, the same contrastive loss) on tensors already in memory.

``her2st``: her2st sections C2, C3, C4, leave-one-section-out ridge probe of spot expression
(the 50 most expressed genes, log-normalised; Pearson per gene; ridge alpha by inner CV) on the
features of spot-centred tiles from: a random-init small CNN, the same CNN pretrained (on all
three sections' unlabelled tiles, and on the two training sections only; with --moco also
MoCo-v2 on all three), squidpy's features and histoexpr's hand-crafted features; every feature
set probed with features standardised over the training sections and within each section.
The CNN is pretrained on small grid tiles (``--tile-px`` at ``--mpp``) and describes a spot by
a larger tile (``--spot-px``, same um/px) through its global pooling; squidpy's and the
hand-crafted features are measured on the same spot tiles and on the same squares at 3 um/px.

    .venv/bin/python benchmarks/bench_pretrain.py speed
    nice .venv/bin/python benchmarks/bench_pretrain.py her2st  # ~35 min on 2 shared cores
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
STANDARDISE = ("training", "group")  # hx.tl.probe's standardise: per training fold, per section
COARSE_MPP = 3.0  # squidpy's and the hand-crafted features also at this um/px


def speed(args) -> None:
    from histoexpr.models import ContrastiveLearner
    from histoexpr.pp._augment import augmentations

    hx.settings.progress_bar = False
    sdata = hx.datasets.synthetic_section(seed=0, size_um=args.size_um, transcripts=False,
                                          spots=False)
    hx.pp.tile(sdata, "he", size_px=args.tile_px, mpp=0.5, min_tissue=0.5)  # the image's um/px
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
    torch.set_num_threads(1)
    start = began = time.perf_counter()
    sections = {name: _read_section(name, args) for name in SECTIONS}
    genes = hx.pp.select_genes([sections[n].tables["table"] for n in SECTIONS], n_top=args.n_genes)
    y = np.concatenate([_targets(sections[name], genes) for name in SECTIONS])
    groups = np.concatenate([[name] * sections[name].tables["he_spot_tiles_table"].n_obs
                             for name in SECTIONS])
    for sdata in sections.values():  # the same squares at both pixel sizes
        assert (sdata.tables["he_spot_tiles_table"].obs["spot_id"].to_numpy()
                == sdata.tables["he_spot_tiles_coarse_table"].obs["spot_id"].to_numpy()).all()
    print(f"read and tiled in {time.perf_counter() - began:.0f} s; spot tiles per section "
          f"{[int((groups == n).sum()) for n in SECTIONS]}; grid tiles "
          f"{[sections[n].tables['he_tiles_table'].n_obs for n in SECTIONS]}")

    def features(encoder, key, tiles="he_spot_tiles"):
        for sdata in sections.values():
            hx.tl.embed(sdata, tiles, encoder=encoder, key_added=key, overwrite=True)
        return np.concatenate([sections[n].tables[f"{tiles}_table"].obsm[key]
                               for n in SECTIONS])

    def scores(x):
        return {standardise: hx.tl.probe(x, y, groups=groups, standardise=standardise)
                .groupby("fold")["pearson"].mean() for standardise in STANDARDISE}

    options = {"method": args.method, "epochs": args.epochs, "batch_size": args.batch_size,
               "lr": args.lr, "temperature": args.temperature, "seed": 0}
    if args.method == "moco":
        options["queue_size"] = args.queue_size
    torch.manual_seed(0)
    random_init = hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=args.width,
                                        pool_levels=args.pool_levels)
    results = {}
    began = time.perf_counter()
    pretrained = hx.tl.pretrain(list(sections.values()), "he_tiles", encoder=random_init,
                                **options)
    print(f"pretrained on all sections: {time.perf_counter() - began:.0f} s, loss "
          f"{np.round(pretrained.metadata['pretraining']['loss'], 3).tolist()}")
    random_init.metadata = {"normalisation": pretrained.metadata["normalisation"]}
    results["small CNN, random init"] = scores(features(random_init, "X_random"))
    results["small CNN, pretrained on all sections' tiles"] = scores(
        features(pretrained, "X_pretrained"))
    held_out = {standardise: {} for standardise in STANDARDISE}
    for name in SECTIONS:
        began = time.perf_counter()
        train = [sections[n] for n in SECTIONS if n != name]
        encoder = hx.tl.pretrain(train, "he_tiles", encoder=random_init, **options)
        for standardise, score in scores(features(encoder, "X_pretrained_held_out")).items():
            held_out[standardise][name] = score[name]
        print(f"pretrained without {name}: {time.perf_counter() - began:.0f} s")
    results["small CNN, pretrained on the training sections' tiles only"] = {
        standardise: pd.Series(values) for standardise, values in held_out.items()}
    if args.moco:
        began = time.perf_counter()
        moco = hx.tl.pretrain(list(sections.values()), "he_tiles", encoder=random_init,
                              **{**options, "method": "moco", "queue_size": args.queue_size})
        print(f"MoCo-v2 on all sections: {time.perf_counter() - began:.0f} s")
        results["small CNN, MoCo-v2 on all sections' tiles"] = scores(features(moco, "X_moco"))
    for label, tiles in ((f"{args.mpp:g} um/px", "he_spot_tiles"),
                         (f"{COARSE_MPP:g} um/px", "he_spot_tiles_coarse")):
        results[f"squidpy features, {label}"] = scores(features("squidpy", "X_squidpy", tiles))
        results[f"hand-crafted features, {label}"] = scores(
            features("handcrafted", "X_handcrafted", tiles))
    print(f"\nmean Pearson over {len(genes)} genes, leave-one-section-out (pretraining tiles "
          f"{args.tile_px} px at {args.mpp} um/px, grid stride {args.stride} of a tile; spot "
          f"tiles {args.spot_px * args.mpp:g} um; {args.method}, "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, temperature "
          f"{args.temperature}, width {args.width}, pool_levels {args.pool_levels}); total "
          f"{time.perf_counter() - start:.0f} s")
    for standardise in STANDARDISE:
        table = pd.DataFrame({label: result[standardise]
                              for label, result in results.items()}).T[list(SECTIONS)]
        table["mean"] = table.mean(axis=1)
        print(f"\nfeatures standardised per {standardise}:\n{table.round(3).to_markdown()}")


def _read_section(name: str, args):
    folder = DATA / "her2st"
    sdata = hx.io.read_st(folder / "counts" / f"{name}.tsv.gz",
                          folder / "spots" / f"{name}_selection.tsv",
                          next((folder / "images").glob(f"{name}_*.jpg")))
    hx.pp.detect_tissue(sdata, "he")
    hx.pp.tile(sdata, "he", size_px=args.tile_px, mpp=args.mpp, min_tissue=0.5,
               stride_px=args.tile_px * args.stride)
    hx.pp.tile(sdata, "he", size_px=args.spot_px, mpp=args.mpp, centres="spots",
               key_added="he_spot_tiles")
    hx.pp.tile(sdata, "he", size_px=round(args.spot_px * args.mpp / COARSE_MPP), mpp=COARSE_MPP,
               centres="spots", key_added="he_spot_tiles_coarse")
    return sdata


def _targets(sdata, genes: list[str]) -> np.ndarray:
    """Log-normalised expression of ``genes`` at each spot tile, in the tiles' order."""
    spots = sdata.tables["table"]
    rows = pd.Index(spots.obs["spot_id"]).get_indexer(
        sdata.tables["he_spot_tiles_table"].obs["spot_id"])
    return hx.pp.expression_targets(spots[rows], genes)


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
    real.add_argument("--tile-px", type=int, default=48, help="pretraining tiles")
    real.add_argument("--mpp", type=float, default=1.0)
    real.add_argument("--stride", type=float, default=2.0, help="grid stride, share of a tile")
    real.add_argument("--spot-px", type=int, default=192, help="spot tiles, at --mpp")
    real.add_argument("--epochs", type=int, default=10)
    real.add_argument("--batch-size", type=int, default=64)
    real.add_argument("--lr", type=float, default=1e-3)
    real.add_argument("--temperature", type=float, default=0.2)
    real.add_argument("--queue-size", type=int, default=4096)
    real.add_argument("--width", type=int, default=32)
    real.add_argument("--pool-levels", action=argparse.BooleanOptionalAction, default=True)
    real.add_argument("--moco", action="store_true", help="add MoCo-v2 on all sections' tiles")
    real.add_argument("--n-genes", type=int, default=50)
    args = parser.parse_args()
    speed(args) if args.command == "speed" else her2st(args)


if __name__ == "__main__":
    main()
