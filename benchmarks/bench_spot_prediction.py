"""Spot-level expression from H&E: accuracy on real sections and prediction speed on a slide.

``accuracy``: leave-one-section-out on her2st (C2, C3, C4) or the MOB sections. For each held-out
section the genes are chosen on the training sections (the 50 most expressed, and 50
Pearson-residual HVGs); every route is trained once on their union and scored on each gene set:
mean Pearson over genes, also after regressing out the log library size. The peer baseline is
squidpy's summary + histogram + texture features, StandardScaler, PCA and ridge with alpha by
inner leave-one-section-out, measured in the same run. Features are cached under
``benchmarks/_data/spot_features`` so reruns cost only the fits.

``speed``: a ridge head (hand-crafted features) predicts a grid of tiles over whole synthetic
slides of growing side (pyramidal TIFFs written by ``bench_wsi_memory.write_slide`` if absent),
each in a fresh process; reports tiles/s and the peak RSS.

Run from the repository root::

    .venv/bin/python benchmarks/bench_spot_prediction.py accuracy --data her2st
    .venv/bin/python benchmarks/bench_spot_prediction.py accuracy --data mob_st --routes peer ridge
    .venv/bin/python benchmarks/bench_spot_prediction.py speed --sides 4000 12000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / "_data" / "spot_features"
DATA = Path(os.environ.get("HISTOEXPR_SHARED_DATA", REPO.parent / "shared" / "data"))
#: spot patches: 224 px at full resolution on her2st (about 155 um), as the peer uses; the MOB
#: images are coarse (about 8 um/px), so there a patch is one spot pitch, 200 um (24 px)
PATCH_UM = {"her2st": lambda mpp: 224 * mpp, "mob_st": lambda mpp: 200.0}

#: route name -> options of hx.tl.fit(model="spot_regressor")
ROUTES = {
    "peer": {"route": "ridge", "encoder": "squidpy", "n_components": 30},
    "ridge": {"route": "ridge", "encoder": ["squidpy", "handcrafted"],
              "context_um": (300.0, 600.0, 1000.0), "standardise_sections": True},
    "mlp": {"route": "mlp", "encoder": ["squidpy", "handcrafted"], "context_um": (300.0, 600.0),
            "standardise_sections": True, "epochs": 60, "lr": 1e-3, "n_members": 5},
    "cnn": {"route": "cnn", "arch": "small_cnn", "mpp": 2.0, "epochs": 25, "lr": 2e-3},
}


def read_sections(name: str) -> dict:
    import histoexpr as hx

    if name == "her2st":
        root = DATA / "her2st"
        images = {p.name.split("_")[0]: p for p in (root / "images").glob("*.jpg")}
        return {s: hx.io.read_st(root / "counts" / f"{s}.tsv.gz",
                                 root / "spots" / f"{s}_selection.tsv", images[s])
                for s in ("C2", "C3", "C4")}
    root = DATA / "mob_st"
    return {f"MOB{i}": hx.io.read_st(root / f"MOB{i}.tsv.gz",
                                     root / f"alignment_table_MOB{i}.tsv", root / f"MOB{i}.jpg")
            for i in range(1, 5)}


def spot_tiles_with_features(sections: dict, data_name: str) -> None:
    """Spot tiles of 224 px at full resolution, with cached squidpy and hand-crafted features.

    ``hx.tl.embed`` with both encoders gives ``X_squidpy+handcrafted``; its first columns are
    the squidpy features the peer uses (``X_squidpy``).
    """
    import histoexpr as hx

    CACHE.mkdir(parents=True, exist_ok=True)
    for name, sdata in sections.items():
        mpp = hx.io.get_pixel_size(sdata, "he")
        hx.pp.tile(sdata, "he", size_um=PATCH_UM[data_name](mpp), centres="spots", min_tissue=0,
                   key_added="spot_tiles")
        table = sdata.tables["spot_tiles_table"]
        path = CACHE / f"{data_name}_{name}.npz"
        if path.exists():
            cached = np.load(path)
            features, n_squidpy = cached["features"], int(cached["n_squidpy"])
        else:
            start = time.perf_counter()
            hx.tl.embed(sdata, "spot_tiles", encoder=["squidpy", "handcrafted"])
            features = table.obsm["X_squidpy+handcrafted"]
            n_squidpy = table.uns["embeddings"]["X_squidpy+handcrafted"]["parts"]["squidpy"]
            print(f"{name}: squidpy + hand-crafted features of {table.n_obs} tiles in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            np.savez(path, features=features, n_squidpy=n_squidpy)
        table.obsm["X_squidpy+handcrafted"] = features
        table.obsm["X_squidpy"] = features[:, :n_squidpy]


def accuracy(data_name: str, routes: list[str], n_genes: int) -> list[dict]:
    import histoexpr as hx
    from histoexpr.pp import select_genes

    hx.settings.progress_bar = False
    sections = read_sections(data_name)
    spot_tiles_with_features(sections, data_name)
    patch_um = {n: s.tables["spot_tiles_table"].uns["tiles"]["size_um"]
                for n, s in sections.items()}
    results = []
    for held_out, test in sections.items():
        train = {n: s for n, s in sections.items() if n != held_out}
        tables = [s.tables["table"] for s in train.values()]
        gene_sets = {"top": select_genes(tables, n_top=n_genes, flavor="top_expressed"),
                     "pr_hvg": select_genes(tables, n_top=n_genes, flavor="pearson_residuals")}
        union = list(dict.fromkeys(gene_sets["top"] + gene_sets["pr_hvg"]))
        for route in routes:
            options = dict(ROUTES[route])
            start = time.perf_counter()
            model = hx.tl.fit(train, model="spot_regressor", genes=union, tiles_key="spot_tiles",
                              size_um=patch_um[held_out], **options)
            seconds = time.perf_counter() - start
            hx.tl.predict(model, test, tiles_key="spot_tiles", key_added="pred", overwrite=True)
            scores = hx.tl.evaluate(test, "pred", "table")
            row = {"data": data_name, "held_out": held_out, "route": route,
                   "fit_s": round(seconds, 1), "alpha": model.metadata.get("alpha")}
            for set_name, genes in gene_sets.items():
                mean = scores.loc[genes].mean()
                row[f"{set_name}_pearson"] = round(float(mean["pearson"]), 3)
                row[f"{set_name}_pearson_libreg"] = round(float(mean["pearson_libreg"]), 3)
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


def speed(slide: Path, n_train: int) -> dict:
    """Train a ridge head on a synthetic section, then predict a grid over ``slide``."""
    code = f"""
import json, resource, time
import histoexpr as hx
hx.settings.progress_bar = False
train = hx.datasets.synthetic_section(seed=0, size_um={n_train})
model = hx.tl.fit(train, model="spot_regressor", genes=20, size_um=112, mpp=0.5)
sdata = hx.io.read_wsi({str(slide)!r})
hx.pp.tile(sdata, "he", size_um=112, mpp=0.5, min_tissue=0, key_added="grid")
start = time.perf_counter()
table = hx.tl.predict(model, sdata, tiles_key="grid")
seconds = time.perf_counter() - start
print(json.dumps({{"tiles": table.n_obs, "seconds": round(seconds, 1),
    "tiles_per_s": round(table.n_obs / seconds, 1),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--data", default="her2st", choices=["her2st", "mob_st"])
    acc.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    acc.add_argument("--genes", type=int, default=50)
    fast = sub.add_parser("speed")
    fast.add_argument("--sides", type=int, nargs="+", default=[4000, 12000],
                      help="slide sides in px (0.5 um/px)")
    fast.add_argument("--train-um", type=int, default=800)
    args = parser.parse_args()
    if args.command == "accuracy":
        rows = accuracy(args.data, args.routes, args.genes)
        import pandas as pd

        frame = pd.DataFrame(rows)
        print(frame.groupby("route", sort=False)[[c for c in frame.columns if "pearson" in c
                                                  or c == "fit_s"]].mean().round(3))
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_wsi_memory import write_slide

        for side in args.sides:
            slide = REPO / "benchmarks" / "_data" / f"synthetic_{side}.tif"
            if not slide.exists():
                write_slide(slide, side)
            print(json.dumps({"side_px": side, **speed(slide, args.train_um)}), flush=True)
    print(f"peak RSS of this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
