"""MERFISH mouse brain, per cell: calibrated patch classifiers, the per-cell morphology model and
their combination, every choice made inside the training half.

The protocol of ``experiment_merfish_patch_classifier.py`` (the crop split into a top and a
bottom half; each cell labelled Slc17a7, Gfap or tissue by the transcripts inside it; train on
one half, score on the other, both directions), with the models of the package only:

- ``cell_morphology``: ``hx.tl.fit(sdata, model="cell_morphology", region=train)``, the per-cell
  baseline (logistic regression on per-cell DAPI intensity, shape and neighbourhood features, C
  by 5-fold cross-validation over the training cells);
- ``CNN``: ``hx.tl.fit(sdata, model="patch_classifier", region=train)``, mapped per cell
  (``hx.tl.predict(..., cells="cells")``), without (``calibrate=False``) and with the
  calibration fitted on its validation stripe inside the training half;
- ``combined``: ``cell_morphology`` with ``patch_classifier=`` that CNN: a second logistic
  regression on the morphology model's out-of-fold log-probabilities and the CNN's calibrated
  per-cell log-probabilities, fitted on the training cells of the CNN's validation stripe (the
  only training cells it never trained on);
- with ``--crossfit``, ``combined, cross-fitted``: two more CNNs, each trained on one half
  (a band across) of the training half, so that every training cell has a CNN that never saw
  it; the combination is fitted on all training cells and applies both CNNs (mean of their
  log-probabilities).

No choice uses the test half: the patch sizes, epochs and smoothing (none) are fixed in
advance, the calibration and the combination are fitted on the training half. Each row is
scored with ``hx.tl.evaluate``: Dice per class on the 2 um grid (background right by
construction for every per-cell map) and, per cell, accuracy, macro-F1 and recall per class.

Usage::

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/experiment_merfish_calibrated.py \\
        [--sizes 16 32 --epochs 8 --max-per-class 1000] [--crossfit] [--seeds 0 1]
        [--directions top->bottom bottom->top]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from experiment_merfish_patch_classifier import GENES, read_section, run_and_save

import histoexpr as hx


def scores(sdata, key: str, region) -> dict:
    """Pixel Dice per class and mean; per-cell accuracy, macro-F1 and recall per class."""
    table = hx.tl.evaluate(sdata, key, "tx_labels", region=region)
    cells = table.attrs["cells"]
    row = {f"dice {name}": table.loc[name, "dice"] for name in table.index}
    row["dice mean (cells)"] = table["dice"].drop(["mean", "background"]).mean()
    row.update({"cell accuracy": cells["accuracy"], "cell macro-F1": cells["macro_f1"]})
    row.update({f"cell recall {name}": table.loc[name, "cell_recall"]
                for name in table.index if name not in ("background", "mean")})
    row.update({"cells scored": cells["scored"], "cells left out": cells["unscored"]})
    return row


class Clock:
    """CPU time (this process) and wall time of each part of a run."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        clock = self

        class _Part:
            def __enter__(self):
                self.cpu, self.wall = time.process_time(), time.perf_counter()

            def __exit__(self, *exc):
                clock.parts[name] = {"cpu_s": round(time.process_time() - self.cpu, 1),
                                     "wall_s": round(time.perf_counter() - self.wall, 1)}

        return _Part()


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    sdata = read_section()
    hx.pp.transcript_labels(sdata, genes=GENES, cells="cells", grid_um=2.0, stride_um=2.0,
                            max_per_class=args.max_per_class, seed=0)
    labels = sdata.labels["tx_labels"].values
    height_um, width_um = labels.shape[0] * 2.0, labels.shape[1] * 2.0
    middle = labels.shape[0] // 2 * 2.0
    halves = {"top": (0.0, 0.0, width_um, middle), "bottom": (0.0, middle, width_um, height_um)}
    options = dict(model="patch_classifier", size_um=args.sizes, mpp=args.mpp,
                   epochs=args.epochs, patience=args.patience, val_fraction=args.val_fraction,
                   width=args.width, combine="ensemble")
    results = {"args": vars(args), "cells": sdata.tables["tx_labels_cells"].obs["class"]
               .value_counts().to_dict(), "runs": {}}
    for seed in args.seeds:
        for direction in args.directions:
            train, test = direction.split("->")
            run_name = f"{train}->{test}, seed {seed}"
            rows, clock, region = {}, Clock(), halves[test]
            with clock("cell_morphology fit+predict"):
                morphology = hx.tl.fit(sdata, model="cell_morphology", region=halves[train],
                                       seed=seed)
                hx.tl.predict(morphology, sdata, region=region, key_added="m", overwrite=True)
            rows["cell_morphology (per-cell baseline)"] = scores(sdata, "m", region)
            with clock("CNN fit"):
                cnn = hx.tl.fit(sdata, region=halves[train], seed=seed, **options)
            with clock("CNN predict x2"):
                for calibrate in (False, True):
                    hx.tl.predict(cnn, sdata, region=region, cells="cells", calibrate=calibrate,
                                  key_added="c", overwrite=True)
                    rows[f"CNN per cell, {'calibrated' if calibrate else 'uncalibrated'}"] = \
                        scores(sdata, "c", region)
            record = {"calibration": cnn.metadata["calibration"],
                      "report": cnn.metadata["report"], "morphology_C": morphology.metadata["C"]}
            if not args.skip_combined:
                with clock("combined fit+predict"):
                    combined = hx.tl.fit(sdata, model="cell_morphology", region=halves[train],
                                         patch_classifier=cnn, seed=seed)
                    hx.tl.predict(combined, sdata, region=region, key_added="k", overwrite=True)
                rows["combined (stacked on the CNN's validation cells)"] = scores(sdata, "k",
                                                                                  region)
                record["stack"] = combined.metadata["stack"]
            if args.crossfit:
                x0, y0, x1, y1 = halves[train]
                bands = [(x0, y0, x1, (y0 + y1) / 2), (x0, (y0 + y1) / 2, x1, y1)]
                with clock("cross-fitted CNNs fit"):
                    folds = [hx.tl.fit(sdata, region=band, seed=seed, **options)
                             for band in bands]
                with clock("cross-fitted combined fit+predict"):
                    crossed = hx.tl.fit(sdata, model="cell_morphology", region=halves[train],
                                        patch_classifier=folds, seed=seed)
                    hx.tl.predict(crossed, sdata, region=region, key_added="x", overwrite=True)
                rows["combined, cross-fitted (2 CNNs on bands of the training half)"] = scores(
                    sdata, "x", region)
                record["stack_crossfit"] = crossed.metadata["stack"]
                record["calibration_folds"] = [f.metadata["calibration"] for f in folds]
            table = pd.DataFrame(rows).T
            print(f"\n### {run_name}\n")
            print(table.drop(columns=["cells left out"]).round(3).to_markdown())
            print("cells left out:", rows["cell_morphology (per-cell baseline)"]["cells left out"])
            print("calibration:", {k: v for k, v in cnn.metadata["calibration"].items()
                                   if k != "prior"}, "stack:", record.get("stack"))
            print("time:", clock.parts, flush=True)
            record.update(rows=table.to_dict("index"), time=clock.parts)
            results["runs"][run_name] = record
            args.out.write_text(json.dumps(results, indent=1, default=str))  # after each run
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[16.0, 32.0])
    parser.add_argument("--mpp", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--max-per-class", type=int, default=1000)
    parser.add_argument("--crossfit", action="store_true")
    parser.add_argument("--skip-combined", action="store_true",
                        help="only the baseline and the CNN (uncalibrated, calibrated)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--directions", nargs="+", choices=["top->bottom", "bottom->top"],
                        default=["top->bottom", "bottom->top"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/merfish_calibrated.json"))
    run_and_save(run, parser.parse_args())


if __name__ == "__main__":
    main()
