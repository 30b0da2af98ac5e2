"""Patch classifier: training throughput against a bare training step, and dense-map cost.

Part 1 trains ``hx.tl.fit(..., model="patch_classifier")`` on a synthetic section (one patch
size, patches read lazily through ``TileDataset``; with and without the patch cache) and times
the same network's bare training step (augmentation, forward, backward, AdamW) on the same
number of patches already stacked in memory. The ratio ``fit patches/s / bare patches/s`` is what
the data pipeline costs.

Part 2 runs ``hx.tl.predict`` (dense sliding window) over square regions of growing area of the
40,000 px synthetic slide written by ``bench_wsi_memory.py``, each in a fresh subprocess, and
reports patches/s and the child's peak RSS: memory should not grow with the area mapped.

Run from the repository root::

    .venv/bin/python benchmarks/bench_patch_classifier.py                 # both parts
    .venv/bin/python benchmarks/bench_patch_classifier.py dense --sides 250 500 1000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import histoexpr as hx

SLIDE = Path(__file__).resolve().parent / "_data" / "synthetic_40000.tif"


def training(args) -> dict:
    from histoexpr.tl._patch._patch_data import _augmentation

    sdata = hx.datasets.synthetic_section(seed=0, size_um=args.section_um, spots=False)
    hx.pp.transcript_labels(sdata, genes=("PTPRC", "COL1A1"), seed=0)
    results = {}
    for cache in (False, True):
        model = hx.tl.fit(sdata, model="patch_classifier", size_um=args.patch_um,
                          mpp=args.mpp, epochs=args.epochs, patience=None, cache=cache,
                          batch_size=args.batch_size, seed=0, device="cpu")
        history = model.metadata["history"][f"{args.patch_um:g}"]
        seen = (model.metadata["n_train"] + model.metadata["n_val"]) * args.epochs
        results[f"fit (cache={cache})"] = seen / history["seconds"]
    member = model.members[0]
    network = type(member)(**member.get_config()).train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3)
    augmentation = _augmentation()
    px = member.patch_px
    images = torch.rand(model.metadata["n_train"], member.in_channels, px, px)
    targets = torch.randint(0, member.n_classes, (len(images),))
    start = time.perf_counter()
    for _ in range(args.epochs):
        for i in range(0, len(images), args.batch_size):
            loss = torch.nn.functional.cross_entropy(
                network(augmentation(images[i : i + args.batch_size])),
                targets[i : i + args.batch_size])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    results["bare step"] = len(images) * args.epochs / (time.perf_counter() - start)
    print(f"\nTraining, {px} px patches ({args.patch_um:g} um at {args.mpp:g} um/px), "
          f"batch {args.batch_size}, {args.epochs} epochs, {torch.get_num_threads()} thread(s):\n")
    print("| route | patches/s | / bare |\n|---|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.0f} | {rate / results['bare step']:.2f} |")
    return results


def dense_child(side_um: float, patch_px: int, mpp: float, stride_um: float) -> None:
    """Map one square region of the large slide; print a JSON line with time and peak RSS."""
    from histoexpr.models import PatchClassifier, PatchEnsemble

    sdata = hx.io.read_wsi(SLIDE)
    image_key = next(iter(sdata.images.keys()))
    torch.manual_seed(0)
    model = PatchEnsemble.of([PatchClassifier(in_channels=3, n_classes=4, patch_px=patch_px)])
    model.metadata = {"model": "patch_classifier", "mpp": mpp, "grid_um": stride_um,
                      "image_key": image_key,
                      "classes": {"a": 1, "b": 2, "c": 3, "d": 4}}
    x0 = y0 = 5000.0
    start = time.perf_counter()
    hx.tl.predict(model, sdata, region=(x0, y0, x0 + side_um, y0 + side_um), device="cpu")
    seconds = time.perf_counter() - start
    n = int(np.prod(sdata.labels["pred_labels"].shape))
    print(json.dumps({"side_um": side_um, "patches": n, "seconds": round(seconds, 1),
                      "patches_per_s": round(n / seconds), "peak_rss_mb":
                      round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def dense(args) -> list[dict]:
    if not SLIDE.is_file():
        raise SystemExit(f"{SLIDE} is missing: run benchmarks/bench_wsi_memory.py first.")
    rows = []
    for side in args.sides:
        code = ("import sys; sys.path.insert(0, 'benchmarks'); import bench_patch_classifier as b;"
                f" b.dense_child({side}, {args.patch_px}, {args.mpp}, {args.stride_um})")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    print(f"\nDense map on the 40,000 px slide, {args.patch_px} px patches at {args.mpp:g} um/px, "
          f"stride {args.stride_um:g} um:\n")
    print("| region (um) | patches | s | patches/s | peak RSS MB |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['side_um']:g} x {row['side_um']:g} | {row['patches']} | {row['seconds']} "
              f"| {row['patches_per_s']} | {row['peak_rss_mb']} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", choices=("all", "training", "dense"), default="all")
    parser.add_argument("--section-um", type=float, default=400.0)
    parser.add_argument("--patch-um", type=float, default=16.0)
    parser.add_argument("--patch-px", type=int, default=32)
    parser.add_argument("--mpp", type=float, default=1.0)
    parser.add_argument("--stride-um", type=float, default=8.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sides", type=float, nargs="+", default=[250.0, 500.0, 1000.0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hx.settings.progress_bar = False
    if args.part in ("all", "training"):
        training(args)
    if args.part in ("all", "dense"):
        dense(args)


if __name__ == "__main__":
    main()
