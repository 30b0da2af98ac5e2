"""MERFISH mouse brain: per-cell features from a CNN pretrained by SimCLR on the DAPI image.

The protocol of ``experiment_merfish_patch_classifier.py`` (``--labels cells``): the crop is
split into a top and a bottom half, each cell is labelled by its transcripts (Slc17a7, Gfap or
tissue), a logistic regression is fitted on the cells of one half and scored (Dice per class) on
the other, in both directions. The baseline of that script (per-cell DAPI intensity and texture
features and the same smoothed over neighbouring cells, 15 and 40 um) is run here unchanged. The
other rows swap its features for:

- ``pretrained``: the features (``hx.tl.embed``) of a small CNN (``TileEncoder(arch="small_cnn",
  pool_levels=True)``: the global average of every block) pretrained with SimCLR
  (``hx.tl.pretrain``) on unlabelled DAPI tiles from a dense grid, of a tile centred on every
  cell's centroid, and the same smoothed over neighbouring cells (15 and 40 um);
- ``random init``: the same CNN without pretraining (a control: what pretraining adds);
- ``baseline + pretrained``: both feature sets side by side.

The logistic regression, the cells, their labels and the scoring are those of the baseline
(its ``cell_baseline`` is run with the feature function swapped). By default the encoder is
pretrained on the tiles of the training half only (one encoder per direction, so nothing of the
test half is seen); ``--pretrain-on all`` pretrains once on the whole crop (transductive: the
test half's unlabelled image is used).

Usage::

    nice .venv/bin/python benchmarks/experiment_merfish_pretrained.py [--pretrain-on train|all]
        [--tile-px 32 --tile-mpp 0.75 --stride-um 6 --epochs 12]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from unittest import mock

import experiment_merfish_patch_classifier as base
import numpy as np
import pandas as pd
import torch

import histoexpr as hx
from histoexpr._core.cells import cell_centroids, cell_raster, smooth_over_cells
from histoexpr._core.elements import scale_to_global
from histoexpr.models import TileEncoder

SMOOTH_UM = (15.0, 40.0)  # as the baseline's neighbourhood features
MASK_STEP = 2.0  # um/px of the mask that restricts the pretraining grid to one half


def section_and_halves(args):
    """The section with cell labels, the two halves (bounds in um) and the label grid (um)."""
    sdata = base.read_section()
    hx.pp.transcript_labels(sdata, genes=base.GENES, cells="cells", grid_um=2.0,
                            stride_um=2.0, max_per_class=2000, seed=0)
    labels = sdata.labels["tx_labels"].values
    grid_um = sdata.tables["tx_labels_patches"].uns["transcript_labels"]["grid_um"]
    height_um, width_um = labels.shape[0] * grid_um, labels.shape[1] * grid_um
    middle = labels.shape[0] // 2 * grid_um
    halves = {"top": (0.0, 0.0, width_um, middle), "bottom": (0.0, middle, width_um, height_um)}
    return sdata, halves, grid_um


def pretraining_tiles(sdata, bounds, args, key: str) -> None:
    """Grid tiles of the DAPI image lying wholly inside ``bounds`` (um)."""
    from spatialdata.models import Labels2DModel

    x0, y0, x1, y1 = bounds
    shape = (int(np.ceil((y1 - y0) / MASK_STEP)), int(np.ceil((x1 - x0) / MASK_STEP)))
    sdata.labels[f"{key}_mask"] = Labels2DModel.parse(
        np.ones(shape, dtype=np.uint8), dims=("y", "x"),
        transformations=scale_to_global(MASK_STEP, x0, y0))
    hx.pp.tile(sdata, "dapi", size_px=args.tile_px, mpp=args.tile_mpp,
               stride_um=args.stride_um, tissue_key=f"{key}_mask",
               min_tissue=0.999, key_added=key, overwrite=True)


def pretrain_encoder(sdata, bounds, args, key: str):
    """A small CNN pretrained by SimCLR on the grid tiles inside ``bounds``."""
    pretraining_tiles(sdata, bounds, args, key)
    start = time.perf_counter()
    encoder = hx.tl.pretrain(
        sdata, key, method="simclr",
        encoder=TileEncoder(arch="small_cnn", in_channels=1, width=args.width, pool_levels=True),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        temperature=args.temperature, seed=0)
    info = encoder.metadata["pretraining"]
    print(f"pretrained on {info['n_tiles']} tiles of {key!r} in "
          f"{time.perf_counter() - start:.0f} s; loss per epoch "
          f"{np.round(info['loss'], 3).tolist()}", flush=True)
    return encoder


def cell_embeddings(sdata, bounds, encoder, args, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Embedding of a tile centred on every cell in ``bounds``, and the same smoothed.

    The cells, their order and centroids are those of the baseline's ``cell_features``.
    """
    import geopandas as gpd
    from shapely.geometry import Point
    from spatialdata.models import ShapesModel

    maps_shape = base.intensity_maps(sdata, bounds, base.FEATURE_MPP, ())[0].shape
    ids, names = cell_raster(sdata, "cells", bounds[:2], base.FEATURE_MPP, maps_shape)
    centroids = cell_centroids(ids, bounds[:2], base.FEATURE_MPP)
    points = gpd.GeoDataFrame({"radius": np.full(len(names), 1.0)},
                              geometry=[Point(x, y) for x, y in centroids],
                              index=pd.Index(names))
    sdata.shapes[f"{key}_centres"] = ShapesModel.parse(points)
    hx.pp.tile(sdata, "dapi", size_px=args.tile_px, mpp=args.tile_mpp, centres=f"{key}_centres",
               min_tissue=0.0, key_added=key, overwrite=True)
    table = sdata.tables[f"{key}_table"]
    assert table.n_obs == len(names), "every cell must keep its tile"
    hx.tl.embed(sdata, key, encoder=encoder, key_added="X_cnn", overwrite=True)
    own = np.asarray(table.obsm["X_cnn"])
    smooth = [smooth_over_cells(own, centroids, sigma) for sigma in SMOOTH_UM]
    return np.column_stack([own, *smooth]), names


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    sdata, halves, grid_um = section_and_halves(args)
    classes = sdata.tables["tx_labels_patches"].uns["transcript_labels"]["classes"]
    results = {"args": vars(args), "directions": {}, "pretraining": {},
               "cells": sdata.tables["tx_labels_cells"].obs["class"].value_counts().to_dict()}
    encoders = {}
    if args.pretrain_on == "all":
        x1, y1 = halves["bottom"][2:]
        encoders["all"] = pretrain_encoder(sdata, (0.0, 0.0, x1, y1), args, "pre_all")
    torch.manual_seed(0)  # the control: the same CNN, randomly initialised
    random_init = TileEncoder(arch="small_cnn", in_channels=1, width=args.width,
                              pool_levels=True).eval()
    for train, test in (("top", "bottom"), ("bottom", "top")):
        direction = f"{train}->{test}"
        rows, timing = {}, {}
        start = time.perf_counter()
        probabilities = base.cell_baseline(sdata, halves, train, test, grid_um)
        base.add_map(sdata, "scored", probabilities, halves[test][:2], grid_um, classes)
        rows["baseline: per-cell features + neighbours (LR)"] = base.dice_row(
            sdata, "scored", halves[test])
        timing["baseline_s"] = round(time.perf_counter() - start, 1)

        start = time.perf_counter()
        if args.pretrain_on == "all":
            encoder = encoders["all"]
        else:
            encoder = pretrain_encoder(sdata, halves[train], args, f"pre_{train}")
        results["pretraining"][direction] = encoder.metadata["pretraining"]
        timing["pretrain_s"] = round(time.perf_counter() - start, 1)

        start = time.perf_counter()
        features = {}
        for name, network in (("pretrained", encoder), ("random init", random_init)):
            features[name] = {half: cell_embeddings(sdata, halves[half], network, args,
                                                    f"cells_{half}")
                              for half in (train, test)}
        features["baseline + pretrained"] = {}
        for half in (train, test):
            own, names = base.cell_features(sdata, halves[half])
            learned, learned_names = features["pretrained"][half]
            assert np.array_equal(names, learned_names)
            features["baseline + pretrained"][half] = (np.column_stack([own, learned]), names)
        for name in ("pretrained", "random init", "baseline + pretrained"):
            lookup = {tuple(halves[half]): value for half, value in features[name].items()}
            with mock.patch.object(base, "cell_features", lambda _sdata, bounds, _key,
                                   lookup=lookup: lookup[tuple(bounds)]):
                probabilities = base.cell_baseline(sdata, halves, train, test, grid_um)
            base.add_map(sdata, "scored", probabilities, halves[test][:2], grid_um, classes)
            rows[f"{name}: CNN features + neighbours (LR)"] = base.dice_row(
                sdata, "scored", halves[test])
        timing["embed_and_fit_s"] = round(time.perf_counter() - start, 1)
        dice = pd.DataFrame(rows).T
        print(f"\n### {direction}: Dice on the held-out half\n")
        print(dice.round(3).to_markdown())
        print("timing:", timing, flush=True)
        results["directions"][direction] = {"dice": dice.round(4).to_dict("index"),
                                            "timing": timing}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-on", choices=["train", "all"], default="train")
    parser.add_argument("--tile-px", type=int, default=32)
    parser.add_argument("--tile-mpp", type=float, default=0.75)
    parser.add_argument("--stride-um", type=float, default=6.0)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/merfish_pretrained.json"))
    base.run_and_save(run, parser.parse_args())


if __name__ == "__main__":
    main()
