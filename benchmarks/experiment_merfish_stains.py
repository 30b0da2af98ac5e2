"""MERFISH mouse brain, per cell: the cell-morphology model with and without the poly-T stain,
the route chosen per direction by blocked cross-validation inside the training half (locked).

The per-cell protocol of ``experiment_merfish_calibrated.py`` (the crop split into a top and a
bottom half; each cell labelled Slc17a7, Gfap or tissue by the transcripts inside it; train on
one half, score on the other, both directions) with two candidate routes of the package:

- ``dapi``: ``hx.tl.fit(sdata, model="cell_morphology", region=train)``, per-cell DAPI
  intensity, shape and neighbourhood features (the per-cell baseline);
- ``dapi+polyT``: the same with ``stains_key="stains", stains=["PolyT"], ring_um=2.0``: the
  poly-T image (z0, total mRNA: cell bodies) measured inside each cell and in a 2 um ring around
  it, plus their neighbourhood means. This is input the DAPI baseline does not see.

Every choice is fixed here before the run or made inside the training half:

- the candidates, their options (package defaults; ``ring_um=2.0``; ``C`` by 5-fold
  cross-validation over the training cells, shuffled with ``seed``), and the scoring;
- the route of each direction and seed: inner blocked cross-validation over the training half,
  cut into an upper and a lower band of equal height (each band holds every class, as each half
  does): each candidate is fitted on one band and scored on the other, both ways; the route with
  the higher mean (over the two bands) of the pixel Dice mean over the four classes is chosen,
  ``dapi`` on a tie. The chosen route is then fitted on the whole training half and scored on
  the held-out half: that is the headline number; every candidate's held-out score is reported
  beside it for information.

Seeds 0, 1, 2 (the seed moves the cross-validation folds of ``C``, inner and outer). Scores from
``hx.tl.evaluate``: pixel Dice per class and mean on the 2 um grid, per-cell accuracy, macro-F1
and recall per class. CPU seconds (this process) of every step.

Usage::

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/experiment_merfish_stains.py \\
        [--seeds 0 1 2] [--out /tmp/merfish_stains.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from experiment_merfish_calibrated import Clock, scores
from experiment_merfish_patch_classifier import DATA, GENES, MPP, read_section, run_and_save

import histoexpr as hx
from histoexpr.io._elements import image_element, read_plain_image

#: the candidates, fixed before the run: name -> options of hx.tl.fit(model="cell_morphology")
ROUTES = {
    "dapi": {},
    "dapi+polyT": {"stains_key": "stains", "stains": ["PolyT"], "ring_um": 2.0},
}
SELECT_BY = "dice mean"  # pixel Dice mean over the four classes (hx.tl.evaluate's "mean")


def add_polyt(sdata) -> None:
    """The poly-T image of plane z0 as ``sdata.images["stains"]`` (one channel, "PolyT")."""
    pixels = read_plain_image(DATA / "merfish_mouse_brain" / "images"
                              / "mini_dataset_polyT_z0.jpg")
    sdata.images["stains"] = image_element(pixels[:1], mpp=MPP, channels=["PolyT"])


def fit_and_score(sdata, route: str, train, test, seed: int, key: str) -> dict:
    model = hx.tl.fit(sdata, model="cell_morphology", region=train, seed=seed, **ROUTES[route])
    hx.tl.predict(model, sdata, region=test, key_added=key, overwrite=True)
    row = scores(sdata, key, test)
    row["C"] = model.metadata["C"]
    return row


def bands(box) -> list[tuple[float, float, float, float]]:
    x0, y0, x1, y1 = box
    middle = (y0 + y1) / 2
    return [(x0, y0, x1, middle), (x0, middle, x1, y1)]


def run(args) -> dict:
    sdata = read_section()
    add_polyt(sdata)
    hx.pp.transcript_labels(sdata, genes=GENES, cells="cells", grid_um=2.0, stride_um=2.0,
                            max_per_class=1000, seed=0)
    labels = sdata.labels["tx_labels"].values
    height_um, width_um = labels.shape[0] * 2.0, labels.shape[1] * 2.0
    middle = labels.shape[0] // 2 * 2.0
    halves = {"top": (0.0, 0.0, width_um, middle), "bottom": (0.0, middle, width_um, height_um)}
    results = {"args": vars(args), "routes": ROUTES, "select_by": SELECT_BY, "runs": {}}
    for seed in args.seeds:
        for direction in args.directions:
            train, test = direction.split("->")
            run_name = f"{train}->{test}, seed {seed}"
            clock, inner = Clock(), {}
            upper, lower = bands(halves[train])
            for route in ROUTES:
                with clock(f"inner CV {route} (2 fits + 2 maps)"):
                    folds = [fit_and_score(sdata, route, a, b, seed, "inner")
                             for a, b in ((upper, lower), (lower, upper))]
                inner[route] = {"folds": folds,
                                SELECT_BY: float(np.mean([f[SELECT_BY] for f in folds]))}
            chosen = max(ROUTES, key=lambda r: (inner[r][SELECT_BY], r == "dapi"))
            rows = {}
            for route in ROUTES:
                with clock(f"outer {route} fit + map"):
                    rows[route] = fit_and_score(sdata, route, halves[train], halves[test], seed,
                                                "outer")
            rows["chosen by inner CV"] = dict(rows[chosen])
            table = pd.DataFrame(rows).T
            print(f"\n### {run_name}: inner CV {SELECT_BY} "
                  f"{ {r: round(v[SELECT_BY], 3) for r, v in inner.items()} } -> {chosen}\n")
            print(table.drop(columns=["cells left out"]).round(3).to_markdown())
            print("time:", clock.parts, flush=True)
            results["runs"][run_name] = {"inner": inner, "chosen": chosen,
                                         "rows": table.to_dict("index"), "time": clock.parts}
            args.out.write_text(json.dumps(results, indent=1, default=str))  # after each run
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--directions", nargs="+", choices=["top->bottom", "bottom->top"],
                        default=["top->bottom", "bottom->top"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/merfish_stains.json"))
    run_and_save(run, parser.parse_args())


if __name__ == "__main__":
    main()
