"""MERFISH mouse brain: per-cell transcript-supervised morphology, trained on one half, scored on
the other.

The crop (500 x 450 um, DAPI at 0.108627 um/px, 498 Vizgen cell polygons) is split into a top and
a bottom half; both bands of the chosen genes (Slc17a7 right, Gfap diagonal left) run from top to
bottom, so each half holds every class. Each cell is labelled by the transcripts inside it
(``hx.pp.transcript_labels(..., cells="cells")``: Slc17a7, Gfap or tissue; background is no
cell and no nuclei; the tissue between cells is not scored). For each direction (train top ->
test bottom, train bottom -> test top) the script reports, from one run, the Dice per class on
the held-out half of

- the per-cell baseline: logistic regression on per-cell DAPI intensity and texture
  features plus the same features smoothed over neighbouring cells (Gaussian, 15 and 40 um);
- the CNN patch classifier of each patch size and their ensemble (``hx.tl.fit`` /
  ``hx.tl.predict``): dense (no cells at prediction), per cell (mean probability over each cell,
  ``cells=``), and per cell smoothed over neighbouring cells (``smooth_um=``).

Both per-cell methods are given the cell polygons at prediction, so their background (no cell)
is right by construction: the mean over the three cell classes is reported beside the mean over
all four.

``--labels window`` runs the per-location protocol instead (labels from 10 um windows of
transcripts; baseline: logistic regression on per-location DAPI features and the same smoothed
over 10 and 25 um; CNN rows dense and dense smoothed with a Gaussian of ``--smooth`` um).

More input (``--labels cells`` only; the labels stay those of DAPI z0): ``--channels dapi
polyt`` stacks the poly-T image (cell bodies) as a second channel (``cells``: the cell polygons
drawn as a mask), ``--planes z0 z1`` adds the second focal plane. The CNN then trains on the
patches of every plane (``hx.tl.fit(..., image_key=[...])``) and its maps are averaged over the
planes; a second baseline row runs the baseline on the same input (the features of every
channel side by side; one training row per cell and plane, the probabilities averaged over the
planes), beside the DAPI z0 one.

Usage::

    nice python benchmarks/experiment_merfish_patch_classifier.py [--labels cells|window]
        [--sizes 12 32 64 --mpp 0.25 0.5 1.0] [--channels dapi polyt|cells] [--planes z0 z1]

Results are printed as markdown tables and written to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import histoexpr as hx
from histoexpr._core.cells import cell_centroids, cell_means, cell_raster, smooth_over_cells
from histoexpr._core.image import image_levels, read_region
from histoexpr.io._elements import image_element, read_plain_image
from histoexpr.tl._patch._dense_map import per_cell

DATA = Path(os.environ.get("HISTOEXPR_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
MPP = 0.108627
ORIGIN = (6400.029, 4699.967)
GENES = ("Slc17a7", "Gfap")
FEATURE_MPP = 0.5  # um/px at which the baseline's per-cell DAPI features are measured
CELL_CLASSES = 3  # tissue, gene A, gene B
STAINS = {"dapi": "dapi", "polyt": "polyT", "cells": None}  # --channels -> file's stain


def read_section():
    """The DAPI image, the transcripts and the cell polygons (as ``"cells"``)."""
    folder = DATA / "merfish_mouse_brain"
    sdata = hx.io.read_transcripts(
        folder / "vizgen_transcripts.csv.gz", x="global_x", y="global_y", offset=ORIGIN,
        image=folder / "images" / "mini_dataset_dapi_z0.jpg", image_mpp=MPP, outside="drop")
    sdata.shapes["cells"] = hx.io.read_cell_boundaries(
        folder / "cell_boundaries" / "z0_polygons.gz", offset=ORIGIN, flip_y=True)
    return sdata


def add_inputs(sdata, channels, planes) -> list[str]:
    """Add the image of ``channels`` (stacked) of each focal plane as ``input_{plane}``."""
    keys = []
    for plane in planes:
        pixels = np.concatenate([channel_image(sdata, channel, plane) for channel in channels])
        keys.append(f"input_{plane}")
        sdata.images[keys[-1]] = image_element(pixels, mpp=MPP, channels=[
            f"{channel}_{plane}" for channel in channels])
    return keys


def channel_image(sdata, channel: str, plane: str) -> np.ndarray:
    """One channel (1, y, x): a stain's image file, or ``"cells"``: the cell polygons (255
    inside a cell, 0 outside and on a 1 um outline; the z0 polygons for every plane)."""
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    if STAINS[channel] is not None:
        return read_plain_image(DATA / "merfish_mouse_brain" / "images"
                                / f"mini_dataset_{STAINS[channel]}_{plane}.jpg")
    shape = image_levels(sdata, "dapi")[0].shape_yx
    ids, _ = cell_raster(sdata, "cells", (0.0, 0.0), MPP, shape)
    outline = binary_dilation(find_boundaries(ids), iterations=round(0.5 / MPP))
    return (255 * ((ids > 0) & ~outline))[np.newaxis].astype(np.uint8)


def intensity_maps(sdata, bounds, mpp: float, sigmas_um, image_key: str = "dapi",
              channel: int = 0) -> list[np.ndarray]:
    """Intensity, Otsu foreground, gradient magnitude and Laplacian of Gaussian maps."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    image = read_region(sdata, image_key, bounds, mpp=mpp)[channel].astype(np.float32) / 255
    foreground = (ndimage.gaussian_filter(image, 1) > threshold_otsu(image)).astype(np.float32)
    maps = [image, foreground]
    for sigma_um in sigmas_um:
        maps.append(ndimage.gaussian_gradient_magnitude(image, sigma_um / mpp))
        maps.append(-ndimage.gaussian_laplace(image, sigma_um / mpp))
    return maps


def cell_features(sdata, bounds, image_key: str = "dapi") -> tuple[np.ndarray, np.ndarray]:
    """Per-cell features of the cells in ``bounds``, the same smoothed over neighbours.

    The features of each channel of ``image_key`` side by side. Returns the features (cells x
    F) and the cells' names.
    """
    from scipy import ndimage

    maps = []
    for channel in range(image_levels(sdata, image_key)[0].data.sizes["c"]):
        own = intensity_maps(sdata, bounds, FEATURE_MPP, (0.5, 1.0, 2.0), image_key, channel)
        for size_um in (10.0, 25.0):  # nuclei density and brightness around the cell
            own += [ndimage.uniform_filter(m, size=int(size_um / FEATURE_MPP)) for m in own[:2]]
        maps += own
    maps = np.stack(maps)
    ids, names = cell_raster(sdata, "cells", bounds[:2], FEATURE_MPP, maps.shape[1:])
    mean = cell_means(maps, ids)
    std = np.sqrt(np.maximum(cell_means(maps**2, ids) - mean**2, 0))
    area = np.bincount(ids.ravel(), minlength=ids.max() + 1)[1:, None] * FEATURE_MPP**2
    own = np.column_stack([mean, std, np.log(area)])
    centroids = cell_centroids(ids, bounds[:2], FEATURE_MPP)
    smooth = [smooth_over_cells(own, centroids, sigma) for sigma in (15.0, 40.0)]
    return np.column_stack([own, *smooth]), names


def cell_baseline(sdata, halves: dict, train: str, test: str, grid_um: float,
                  image_keys=("dapi",)) -> np.ndarray:
    """Logistic regression on per-cell features: per-cell probabilities over the test half.

    With several images (focal planes), each cell gives one training row per image, and the
    test probabilities are the mean over the images.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = [cell_features(sdata, halves[train], key) for key in image_keys]
    names = features[0][1]
    truth = sdata.tables["tx_labels_cells"].obs["label"].reindex(names).to_numpy()
    keep = truth > 0  # cells labelled tissue, gene A or gene B (not unassigned)
    x = np.concatenate([own[keep] for own, _ in features])
    y, cell = (np.tile(values, len(image_keys)) for values in (truth[keep], np.flatnonzero(keep)))
    # C by 5-fold CV on training cells; a cell's rows (one per image) stay in one fold
    folds = 5 if len(image_keys) == 1 else list(GroupKFold(5).split(x, y, groups=cell))
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=8, cv=folds, max_iter=3000, class_weight="balanced"))
    model.fit(x, y)
    test_features = [cell_features(sdata, halves[test], key) for key in image_keys]
    scores = pd.DataFrame(np.mean([model.predict_proba(own) for own, _ in test_features], axis=0),
                          index=test_features[0][1])  # columns: values 2, 3, 4
    x0, y0, x1, y1 = halves[test]
    shape = (int((y1 - y0) / grid_um), int((x1 - x0) / grid_um))
    ids, names = cell_raster(sdata, "cells", (x0, y0), grid_um, shape)
    probabilities = np.zeros((4, *shape), dtype=np.float32)
    probabilities[0] = ids == 0
    probabilities[1:, ids > 0] = scores.reindex(names).fillna(1 / 3).to_numpy()[ids[ids > 0] - 1].T
    return probabilities


def window_baseline(sdata, halves: dict, train: str, test: str, grid_um: float) -> np.ndarray:
    """Logistic regression on per-location features: probabilities over the test half."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(bounds):
        shape = (int((bounds[3] - bounds[1]) / grid_um), int((bounds[2] - bounds[0]) / grid_um))
        return location_features(sdata, bounds, grid_um, shape), shape

    train_x, shape = features(halves[train])
    truth = read_region(sdata, "tx_labels", halves[train], mpp=grid_um)[: shape[0], : shape[1]]
    train_x, truth = train_x.reshape(-1, train_x.shape[-1]), truth.ravel()
    rng = np.random.default_rng(0)
    keep = rng.permutation(np.flatnonzero(truth > 0))[:20000]  # a sample: the fit stays quick
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=8, cv=5, max_iter=3000, class_weight="balanced"))
    model.fit(train_x[keep], truth[keep])
    test_x, shape = features(halves[test])
    scores = model.predict_proba(test_x.reshape(-1, test_x.shape[-1]))  # values 1, 2, 3, 4
    return scores.T.reshape(4, *shape).astype(np.float32)


def location_features(sdata, bounds, grid_um: float, shape) -> np.ndarray:
    """Per-location DAPI features on a grid (H, W, F), and the same smoothed (10, 25 um)."""
    from scipy import ndimage

    work = grid_um / 4
    h, w = shape
    maps = intensity_maps(sdata, bounds, work, (1.0, 2.0, 4.0))
    local = []
    for feature in maps:
        mean = ndimage.uniform_filter(feature, size=int(10 / work))
        square = ndimage.uniform_filter(feature**2, size=int(10 / work))
        local += [mean, np.sqrt(np.maximum(square - mean**2, 0))]
    grid = [f[: h * 4, : w * 4].reshape(h, 4, w, 4).mean(axis=(1, 3)) for f in local]
    smooth = [ndimage.gaussian_filter(f, sigma=scale / grid_um) for f in grid
              for scale in (10.0, 25.0)]
    return np.stack(grid + smooth, axis=-1)


def add_map(sdata, key: str, probabilities: np.ndarray, origin, step: float,
            classes: dict) -> None:
    from spatialdata.models import Labels2DModel

    from histoexpr._core.elements import scale_to_global

    values = np.asarray(list(classes.values()), dtype=np.uint8)[probabilities.argmax(axis=0)]
    element = Labels2DModel.parse(values, dims=("y", "x"),
                                  transformations=scale_to_global(step, *origin))
    element.attrs["classes"] = classes
    sdata.labels[key] = element


def member_model(model, index: int):
    """A one-member model of the ensemble (to map each patch size on its own)."""
    from histoexpr.models import PatchEnsemble

    single = PatchEnsemble.of([model.members[index]])
    meta = model.metadata
    single.metadata = dict(meta, patch_size_um=[meta["patch_size_um"][index]],
                           member_mpp=[meta["member_mpp"][index]], mpp=meta["member_mpp"][index])
    return single


def dice_row(sdata, key: str, region) -> pd.Series:
    dice = hx.tl.evaluate(sdata, key, "tx_labels", region=region)["dice"]
    cells = dice.drop(["mean", "background"])
    return pd.concat([dice.drop("mean"), pd.Series({"mean": dice["mean"],
                                                    "mean (cells)": cells.mean()})])


def variants(sdata, probabilities, mode: str, origin, grid_um: float, classes: dict,
             smooth: float) -> dict[str, np.ndarray]:
    """The dense map of class probabilities, and the same smoothed or made per cell."""
    from scipy.ndimage import gaussian_filter

    if mode == "window":
        sigma = (0, smooth / grid_um, smooth / grid_um)
        return {"dense": probabilities, "dense + smoothed": gaussian_filter(
            probabilities, sigma=sigma, mode="nearest")}
    return {"dense": probabilities, **{name: per_cell(sdata, "cells", probabilities, origin,
                                                      grid_um, classes, width)
                                       for name, width in (("per cell", None),
                                                           ("per cell + smoothed", smooth))}}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    sdata = read_section()
    pairs = hx.pp.rank_gene_pairs(sdata)
    print("Gene pairs (best first):\n", pairs.head(5).round(3).to_markdown(index=False))
    cells = "cells" if args.labels == "cells" else None
    hx.pp.transcript_labels(sdata, genes=GENES, cells=cells, grid_um=args.grid,
                            stride_um=args.stride, max_per_class=args.max_per_class,
                            seed=0)
    labels = sdata.labels["tx_labels"].values
    rule = sdata.tables["tx_labels_patches"].uns["transcript_labels"]
    grid_um, classes = rule["grid_um"], rule["classes"]
    height_um, width_um = labels.shape[0] * grid_um, labels.shape[1] * grid_um
    middle = labels.shape[0] // 2 * grid_um
    halves = {"top": (0.0, 0.0, width_um, middle), "bottom": (0.0, middle, width_um, height_um)}
    results = {"genes": list(GENES), "args": vars(args), "directions": {}}
    inputs = ["dapi"]  # the image the labels were made on: DAPI z0
    if (args.channels, args.planes) != (["dapi"], ["z0"]):
        if not cells:
            raise ValueError("--channels and --planes need --labels cells.")
        inputs = add_inputs(sdata, args.channels, args.planes)
    if cells:
        results["cells"] = sdata.tables["tx_labels_cells"].obs["class"].value_counts().to_dict()
    make_baseline, baseline_name = {
        "cells": (cell_baseline, "baseline: per-cell features + neighbours (LR)"),
        "window": (window_baseline, "baseline: per-location features + smoothed (LR)"),
    }[args.labels]
    for train, test in (("top", "bottom"), ("bottom", "top")):
        direction = f"{train}->{test}"
        rows, timing = {}, {}
        start = time.perf_counter()
        origin = halves[test][:2]
        baseline_probabilities = make_baseline(sdata, halves, train, test, grid_um)
        add_map(sdata, f"baseline_{train}", baseline_probabilities, origin, grid_um, classes)
        rows[baseline_name] = dice_row(sdata, f"baseline_{train}", halves[test])
        if inputs != ["dapi"]:  # the baseline on the CNN's input: features of every channel
            baseline_probabilities = cell_baseline(sdata, halves, train, test, grid_um, inputs)
            add_map(sdata, f"baseline_{train}", baseline_probabilities, origin, grid_um, classes)
            rows[f"baseline on {'+'.join(args.channels)} {'+'.join(args.planes)}"] = dice_row(
                sdata, f"baseline_{train}", halves[test])
        timing["baseline_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        mpp = args.mpp[0] if len(args.mpp) == 1 else args.mpp
        model = hx.tl.fit(sdata, model="patch_classifier", size_um=args.sizes, mpp=mpp,
                          region=halves[train], epochs=args.epochs, patience=args.patience,
                          val_fraction=args.val_fraction, image_key=inputs,
                          combine="ensemble", seed=args.seed, width=args.width)
        timing["fit_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        probabilities = {}
        for i, (size, size_mpp) in enumerate(zip(model.metadata["patch_size_um"],
                                                 model.metadata["member_mpp"], strict=True)):
            planes = []  # the mean over the focal planes
            for image_key in inputs:
                key = f"cnn_{train}_{size:g}_{image_key}"
                hx.tl.predict(member_model(model, i), sdata, image_key=image_key,
                              region=halves[test], key_added=key)
                planes.append(sdata.images[f"{key}_probabilities"].values)
            probabilities[f"{size:g} um at {size_mpp:g} um/px"] = np.mean(planes, axis=0)
        probabilities["ensemble"] = np.mean(list(probabilities.values()), axis=0)
        for member, dense in probabilities.items():
            for name, mapped in variants(sdata, dense, args.labels, origin, grid_um, classes,
                                         args.smooth).items():
                add_map(sdata, f"cnn_{train}", mapped, origin, grid_um, classes)
                rows[f"CNN {member}, {name}"] = dice_row(sdata, f"cnn_{train}", halves[test])
        # CNN and baseline together: the mean of their probabilities (last variant: smoothed)
        add_map(sdata, f"cnn_{train}", (mapped + baseline_probabilities) / 2, origin, grid_um,
                classes)
        rows[f"CNN ensemble, {name}, + baseline"] = dice_row(sdata, f"cnn_{train}", halves[test])
        timing["predict_s"] = round(time.perf_counter() - start, 1)
        dice = pd.DataFrame(rows).T
        print(f"\n### {direction}: Dice on the held-out half\n")
        print(dice.round(3).to_markdown())
        print("validation report:\n", pd.DataFrame(model.metadata["report"]).round(3)
              .to_markdown(index=False))
        print("timing:", timing, flush=True)
        results["directions"][direction] = {"dice": dice.round(4).to_dict("index"),
                                            "timing": timing, "report": model.metadata["report"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[16.0, 32.0, 64.0])
    parser.add_argument("--mpp", type=float, nargs="+", default=[1.0])
    parser.add_argument("--labels", choices=["cells", "window"], default="cells")
    parser.add_argument("--channels", nargs="+", choices=list(STAINS), default=["dapi"])
    parser.add_argument("--planes", nargs="+", choices=["z0", "z1"], default=["z0"])
    parser.add_argument("--grid", type=float, default=2.0)
    parser.add_argument("--stride", type=float, default=2.0)
    parser.add_argument("--smooth", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--max-per-class", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the CNN's training")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/merfish_patch_classifier.json"))
    run_and_save(run, parser.parse_args())


def run_and_save(experiment, args) -> None:
    """Run ``experiment(args)``, time it and write its results as JSON to ``args.out``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hx.settings.progress_bar = False
    start = time.perf_counter()
    results = experiment(args)
    results["seconds"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nTotal {results['seconds']} s; results in {args.out}")


if __name__ == "__main__":
    main()
