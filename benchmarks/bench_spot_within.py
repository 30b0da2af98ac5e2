"""Record only: conformal intervals on within-slide expression, against the model's absolute ones.

The same outer folds as ``bench_spot_guard.py`` (leave one section out; a ridge spot regressor
on hand-crafted features of the 50 most expressed genes, calibrated by inner
leave-one-section-out on the training sections). Besides the model's absolute intervals, an
interval on *within-slide* expression: each gene's measured value minus the slide's mean,
around the prediction minus the slide's mean prediction, half-width the pooled conformal
quantile of the inner folds' centred residuals. First the inner criterion of ``--select``
(each inner held-out training section covered by the other training sections' residuals), then
the outer sections' coverage and width at 90 %. Not a method ``hx.tl.predict`` uses.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_spot_within.py
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from bench_spot_guard import CAPTURED, GEOMETRY, OPTIONS, TILES, capture_inner_pairs, read_sections


def centred(pairs: list) -> list:
    return [(p - p.mean(axis=0), m - m.mean(axis=0)) for p, m in pairs]


def within_slide(calibration: list, predicted: np.ndarray, measured: np.ndarray,
                 level: float = 0.9) -> tuple[float, float]:
    """Coverage and mean width of the within-slide interval calibrated on ``calibration``."""
    from histoexpr.tl._spot._conformal import conformal_quantile

    residuals = np.vstack([np.abs(m - p) for p, m in centred(calibration)])
    half = conformal_quantile(residuals, level)
    inside = np.abs((measured - measured.mean(axis=0)) - (predicted - predicted.mean(axis=0)))
    return float((inside <= half).mean()), float(2 * half.mean())


def run(data_names: list[str]) -> None:
    import histoexpr as hx
    from histoexpr._core.expression import expression_targets
    from histoexpr.tl._spot import _conformal

    hx.settings.progress_bar = False
    for data_name in data_names:
        sections, geometry = read_sections(data_name), GEOMETRY[data_name]
        for sdata in sections.values():
            hx.pp.tile(sdata, "he", size_um=geometry["size_um"], mpp=geometry["mpp"],
                       centres="spots", min_tissue=0, key_added=TILES)
        for held_out, sdata in sections.items():
            train = {n: s for n, s in sections.items() if n != held_out}
            model = hx.tl.fit(train, model="spot_regressor", size_um=geometry["size_um"],
                              mpp=geometry["mpp"], **OPTIONS)
            pairs = list(CAPTURED)
            inner = [within_slide([x for j, x in enumerate(pairs) if j != k], *pairs[k])[0]
                     for k in range(len(pairs))]
            table = hx.tl.predict(model, sdata, tiles_key=TILES, key_added="within",
                                  overwrite=True, level=0.9)
            counts = sdata.tables["table"]
            index = {s: i for i, s in enumerate(counts.obs["spot_id"])}
            table = table[[s in index for s in table.obs["spot_id"]]]
            truth = expression_targets(counts[[index[s] for s in table.obs["spot_id"]]],
                                       list(table.var_names))
            predicted = np.asarray(table.X, dtype=np.float64)
            coverage, width = within_slide(pairs, predicted, truth)
            inside = (truth >= table.layers["lower"]) & (truth <= table.layers["upper"])
            print(json.dumps({
                "data": data_name, "held_out": held_out,
                "inner_within": [round(c, 3) for c in inner],
                "inner_absolute": [round(c, 3) for c in _conformal.section_coverage(pairs,
                                                                                   "pooled")],
                "within_coverage_0.9": round(coverage, 3), "within_width_0.9": round(width, 3),
                "absolute_coverage_0.9": round(float(inside.mean()), 3),
                "absolute_width_0.9": round(float((table.layers["upper"]
                                                   - table.layers["lower"]).mean()), 3),
            }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["her2st", "mob_st"],
                        choices=["her2st", "mob_st"])
    args = parser.parse_args()
    capture_inner_pairs()
    began = time.process_time()
    run(args.data)
    print(f"total CPU s: {time.process_time() - began:.0f}")


if __name__ == "__main__":
    main()
