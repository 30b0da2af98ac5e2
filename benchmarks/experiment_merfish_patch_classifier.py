"""MERFISH mouse brain: transcript-supervised morphology, trained on one half, scored on the other.

The crop (500 x 450 um, DAPI at 0.108627 um/px) is split into a top and a bottom half; both
bands of the chosen genes run from top to bottom, so each half holds every class. For each
direction (train top -> test bottom, train bottom -> test top) the script reports the Dice per
class of

- the CNN patch classifier of each patch size and their ensemble (``hx.tl.fit`` / ``predict``);
- a baseline measured in the same run: logistic regression on per-location DAPI intensity and
  texture features, plus the same features smoothed over a neighbourhood.

Usage::

    nice python benchmarks/experiment_merfish_patch_classifier.py [--sizes 16 32] [--epochs 12]

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
from histoexpr.io._image import read_region

DATA = Path(os.environ.get("HISTOEXPR_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
MPP = 0.108627
ORIGIN = (6400.029, 4699.967)
GENES = ("Slc17a7", "Gfap")


def read_section():
    folder = DATA / "merfish_mouse_brain"
    return hx.io.read_transcripts(
        folder / "vizgen_transcripts.csv.gz", x="global_x", y="global_y", offset=ORIGIN,
        image=folder / "images" / "mini_dataset_dapi_z0.jpg", image_mpp=MPP, outside="drop")


def baseline_features(sdata, grid_um: float, shape) -> np.ndarray:
    """Per-location DAPI features on the label grid (H, W, F), and the same smoothed."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    work = grid_um / 4
    h, w = shape
    image = read_region(sdata, "dapi", (0, 0, w * grid_um, h * grid_um), mpp=work)[0]
    image = image.astype(np.float32) / 255
    foreground = (ndimage.gaussian_filter(image, 1) > threshold_otsu(image)).astype(np.float32)
    maps = [image, foreground]
    for sigma_um in (1.0, 2.0, 4.0):
        sigma = sigma_um / work
        maps.append(ndimage.gaussian_gradient_magnitude(image, sigma))
        maps.append(-ndimage.gaussian_laplace(image, sigma))
    local = []
    for feature in maps:
        mean = ndimage.uniform_filter(feature, size=int(10 / work))
        square = ndimage.uniform_filter(feature**2, size=int(10 / work))
        local += [mean, np.sqrt(np.maximum(square - mean**2, 0))]
    grid = [f[: h * 4, : w * 4].reshape(h, 4, w, 4).mean(axis=(1, 3)) for f in local]
    smooth = [ndimage.gaussian_filter(f, sigma=scale / grid_um) for f in grid
              for scale in (10.0, 25.0)]
    return np.stack(grid + smooth, axis=-1)


def baseline_map(features, labels, train_rows, test_rows) -> np.ndarray:
    """Logistic regression on the labelled cells of the training rows; a map of the test rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x = features[train_rows].reshape(-1, features.shape[-1])
    train_y = labels[train_rows].ravel()
    keep = train_y > 0
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000,
                                                               class_weight="balanced"))
    model.fit(train_x[keep], train_y[keep])
    out = np.zeros_like(labels)
    test = features[test_rows]
    out[test_rows] = model.predict(test.reshape(-1, test.shape[-1])).reshape(test.shape[:2])
    return out


def add_map(sdata, key: str, values: np.ndarray, grid_um: float, classes: dict,
            origin: tuple[float, float] = (0.0, 0.0)) -> None:
    from spatialdata.models import Labels2DModel

    from histoexpr.pp._tissue import _to_global

    element = Labels2DModel.parse(values.astype(np.uint8), dims=("y", "x"), transformations={
        "global": _to_global(grid_um, *origin)})
    element.attrs["classes"] = classes
    sdata.labels[key] = element


def member_model(model, index: int):
    """A one-member model of the ensemble (to map each patch size on its own)."""
    from histoexpr.models import PatchEnsemble

    single = PatchEnsemble.of([model.members[index]])
    single.metadata = dict(model.metadata, patch_size_um=[model.metadata["patch_size_um"][index]])
    return single


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    sdata = read_section()
    pairs = hx.pp.rank_gene_pairs(sdata)
    print("Gene pairs (best first):\n", pairs.head(5).round(3).to_markdown(index=False))
    hx.pp.transcript_labels(sdata, genes=GENES, max_per_class=args.max_per_class, seed=0)
    labels = sdata.labels["tx_labels"].values
    rule = sdata.tables["tx_labels_patches"].uns["transcript_labels"]
    grid_um, classes = rule["grid_um"], rule["classes"]
    height_um, width_um = labels.shape[0] * grid_um, labels.shape[1] * grid_um
    middle = labels.shape[0] // 2
    halves = {"top": (0.0, 0.0, width_um, middle * grid_um),
              "bottom": (0.0, middle * grid_um, width_um, height_um)}
    rows = {"top": np.s_[:middle], "bottom": np.s_[middle:]}
    start = time.perf_counter()
    features = baseline_features(sdata, grid_um, labels.shape)
    baseline_seconds = time.perf_counter() - start
    results = {"genes": list(GENES), "gene_pairs": pairs.head(5).to_dict("records"),
               "args": vars(args), "directions": {}}
    for train, test in (("top", "bottom"), ("bottom", "top")):
        direction = f"{train}->{test}"
        tables = {}
        start = time.perf_counter()
        add_map(sdata, f"baseline_{train}", baseline_map(features, labels, rows[train],
                                                         rows[test]), grid_um, classes)
        tables["baseline (logistic regression)"] = hx.tl.evaluate(
            sdata, f"baseline_{train}", "tx_labels", region=halves[test])
        timing = {"baseline_s": round(baseline_seconds + time.perf_counter() - start, 1)}
        start = time.perf_counter()
        model = hx.tl.fit(sdata, model="patch_classifier", patch_size_um=args.sizes, mpp=args.mpp,
                          region=halves[train], epochs=args.epochs, patience=args.patience,
                          combine="ensemble", seed=0, width=args.width)
        timing["fit_s"] = round(time.perf_counter() - start, 1)
        probabilities = []
        start = time.perf_counter()
        for i, size in enumerate(model.metadata["patch_size_um"]):
            key = f"cnn_{train}_{size:g}"
            hx.tl.predict(member_model(model, i), sdata, region=halves[test], key_added=key)
            probabilities.append(sdata.images[f"{key}_probabilities"].values)
            tables[f"CNN {size:g} um"] = hx.tl.evaluate(sdata, key, "tx_labels",
                                                       region=halves[test])
        timing["predict_s"] = round(time.perf_counter() - start, 1)
        if len(probabilities) > 1:
            ensemble = np.mean(probabilities, axis=0).argmax(axis=0)
            values = np.asarray(list(classes.values()))[ensemble]
            stride = hx.io.get_pixel_size(sdata, key)
            add_map(sdata, f"cnn_{train}_ensemble", values, stride, classes, halves[test][:2])
            tables["CNN ensemble"] = hx.tl.evaluate(sdata, f"cnn_{train}_ensemble", "tx_labels",
                                                    region=halves[test])
        dice = pd.DataFrame({name: table["dice"] for name, table in tables.items()}).T
        print(f"\n### {direction}: Dice on the held-out half\n")
        print(dice.round(3).to_markdown())
        print("validation report:\n", pd.DataFrame(model.metadata["report"]).round(3)
              .to_markdown(index=False))
        print("timing:", timing)
        results["directions"][direction] = {"dice": dice.round(4).to_dict(), "timing": timing,
                                            "report": model.metadata["report"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[16.0, 32.0, 48.0])
    parser.add_argument("--mpp", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--max-per-class", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/merfish_patch_classifier.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hx.settings.progress_bar = False
    start = time.perf_counter()
    results = run(args)
    results["seconds"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nTotal {results['seconds']} s; results in {args.out}")


if __name__ == "__main__":
    main()
