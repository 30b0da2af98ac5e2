"""Fingerprint of every model's results on small synthetic data with fixed seeds.

Run it on two commits and compare the JSON files: a refactoring that changes no result gives
identical fingerprints (sums, spreads and first values of each prediction). It uses the option
spellings of before the 0.1.0.dev6 renames (``patch_size_um=``, ``patch_um=``, ``size=``), which
still work with a FutureWarning, so the same script runs on old and new commits::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/fingerprint_results.py before.json
    python benchmarks/fingerprint_results.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np


def record(out: dict, name: str, values) -> None:
    """Sum, spread and first five values of an array."""
    array = np.asarray(values, dtype=float)
    out[name] = [float(np.nansum(array)), float(np.nanstd(array)), list(array.ravel()[:5])]


def fingerprint() -> dict:
    """Train and apply every kind of model on tiny synthetic data, seeded."""
    import torch

    import histoexpr as hx

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    hx.settings.progress_bar = False
    out: dict = {}
    start = time.time()
    genes = ("PTPRC", "COL1A1")

    def labelled(seed):
        sdata = hx.datasets.synthetic_section(seed=seed, size_um=300, spots=False)
        hx.pp.transcript_labels(sdata, genes=genes, max_per_class=200, seed=seed)
        return sdata

    train, test = labelled(0), labelled(1)
    model = hx.tl.fit(train, model="patch_classifier", patch_size_um=(10, 20), mpp=0.5, epochs=2,
                      width=8, lr=3e-3, seed=0, device="cpu")
    hx.tl.predict(model, test, key_added="pc")
    record(out, "patch_classifier.map", test.labels["pc"].values)
    scores = hx.tl.evaluate(test, "pc", "tx_labels").select_dtypes("number").values
    record(out, "patch_classifier.dice", scores)

    spot_genes = ["EPCAM", "PTPRC", "COL1A1"]
    first, second = (hx.datasets.synthetic_section(seed=s, size_um=400, transcripts=True,
                                                   spots=True) for s in (0, 1))
    model = hx.tl.fit(first, model="spot_regressor", genes=spot_genes, patch_um=40.0, mpp=1.0)
    hx.tl.predict(model, second)
    for key in second.tables.keys():
        if "pred" in key or "expression" in key:
            values = second.tables[key].X
            record(out, f"spot.{key}", values.toarray() if hasattr(values, "toarray") else values)

    cohort = hx.datasets.synthetic_cohort(8, seed=0, size_um=300)
    for i, sdata in enumerate(cohort.values()):
        hx.pp.tile(sdata, "he", size=32, mpp=2.0, min_tissue=0.5)
        hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
        record(out, f"embed.{i}", sdata.tables["he_tiles_table"].obsm["X_handcrafted"])
    cohort.bulk.obs["patient"] = [f"p{i // 2}" for i in range(8)]
    for name, options in (("abmil", {"epochs": 5, "val_fraction": 0, "seed": 0,
                                     "attention_entropy": 0.0,
                                     "batch_size": 2}), ("meanpool_ridge", {})):
        result = hx.tl.cross_validate(cohort, model=name, genes=["EPCAM", "KRT8"],
                                      groups="patient", n_folds=2, key_added=f"cv_{name}",
                                      **options)
        record(out, f"cv.{name}", result.X)
    out["seconds"] = time.time() - start
    return out


def compare(before: dict, after: dict) -> int:
    """Print the values that differ; the number of them."""
    differ = [k for k in before if k != "seconds" and before[k] != after.get(k)]
    for key in differ:
        print(f"DIFFERS {key}: {before[key]} -> {after.get(key)}")
    print(f"{len(before) - 1} values compared, {len(differ)} differ")
    return len(differ)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    if args.compare:
        first, second = (json.load(open(f)) for f in args.files)
        sys.exit(1 if compare(first, second) else 0)
    json.dump(fingerprint(), open(args.files[0], "w"), indent=1)
