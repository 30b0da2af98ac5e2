"""Expression below the spot, measured with truth: coarsen real spots, predict the real ones.

Neighbouring spots of her2st (C2, C3, C4) and of the four MOB sections are merged into
pseudo-spots: the plane is cut into squares of ``k x k`` spot pitches (200 um pitch; k = 2 and
3, i.e. 400 and 600 um squares, aligned so that her2st's spots sit at the centres of the
``k x k`` cells), and a pseudo-spot sums the counts of the spots whose centres lie in its square;
its image region is the square. Models learn from the pseudo-spots of the training sections and
are scored on the real spots of the held-out section (nested leave one section out: the 50 most
expressed genes of the training sections and every ridge penalty are chosen inside the
training folds; nothing is chosen on the held-out section). Score: per-gene Pearson between
predicted and measured log1p-normalised expression over the held-out section's spots, mean over
the 50 genes.

Configurations, all with hand-crafted features (``encoder="handcrafted"``, standardised within
each section) and a ridge head whose alpha is chosen by inner leave-one-section-out:

- ``copied`` (a): the pseudo-spot regressor (tiles of the pseudo-spot's square) predicts the
  held-out section's pseudo-spots; each real spot takes its pseudo-spot's prediction;
- ``slid`` (b): the same regressor on a tile of the pseudo-spot's size centred on each real spot;
- ``subspot``: ``subspot_um=200``: the additive head (a pseudo-spot = the mean of its ``k x k``
  sub-tiles of 200 um) trained on the pseudo-spots, applied to a 200 um tile on each real spot;
- ``subspot_context``: the same with ``context_um`` = the pseudo-spot width (each sub-tile also
  sees the mean features of the sub-tiles within that distance; fixed beforehand, not tuned);
- ``ceiling`` (c): the spot regressor trained on the real spots (200 um tiles), as a ceiling.

CPU seconds are ``time.process_time()`` of each configuration's fits and predictions (features
included; features of tiles already embedded in an earlier configuration are reused).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_superres.py --data her2st
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_superres.py --data mob_st
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HISTOEXPR_SHARED_DATA", REPO.parent / "shared" / "data"))
if not DATA.exists():
    DATA = Path("/work/shared/data")
PITCH = 200.0
#: pixel size of the tiles: 2 um/px on her2st (a 600 um square is 300 px), MOB's own 4.6 um/px
MPP = {"her2st": 2.0, "mob_st": None}
GENES = 50


def read_sections(name: str) -> dict:
    import histoexpr as hx

    if name == "her2st":
        root = DATA / "her2st"
        images = {p.name.split("_")[0]: p for p in (root / "images").glob("*.jpg")}
        return {s: hx.io.read_st(root / "counts" / f"{s}.tsv.gz",
                                 root / "spots" / f"{s}_selection.tsv", images[s])
                for s in ("C2", "C3", "C4")}
    root = DATA / "mob_st"
    return {f"MOB{i}": hx.io.read_st(root / f"MOB{i}.tsv.gz", root / f"alignment_table_MOB{i}.tsv",
                                     root / f"MOB{i}.jpg") for i in range(1, 5)}


def spot_centres(sdata) -> np.ndarray:
    shapes = sdata.shapes["spots"]
    return np.column_stack([shapes.geometry.x, shapes.geometry.y])


def coarsen(sdata, k: int):
    """Pseudo-spots of ``k x k`` pitches: summed counts, square regions; and each spot's one."""
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    from scipy import sparse
    from shapely import points as shapely_points
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel

    table = sdata.tables["table"]
    xy = spot_centres(sdata)[table.obs["spot_id"].to_numpy()]
    origin = xy.min(axis=0) - PITCH / 2
    cell = np.floor((xy - origin) / (k * PITCH)).astype(int)
    keys, block = np.unique(cell, axis=0, return_inverse=True)
    block = block.ravel()
    counts = table.layers["counts"] if "counts" in table.layers else table.X
    merge = sparse.csr_matrix((np.ones(len(block)), (block, np.arange(len(block)))),
                              shape=(len(keys), len(block)))
    summed = sparse.csr_matrix(merge @ sparse.csr_matrix(counts))
    centres = origin + (keys + 0.5) * k * PITCH
    ids = np.arange(len(keys))
    shapes = ShapesModel.parse(gpd.GeoDataFrame(
        {"radius": np.full(len(ids), k * PITCH / 2)}, geometry=shapely_points(centres),
        index=pd.Index(ids)))
    obs = pd.DataFrame({"spot_id": ids, "region": pd.Categorical(["spots"] * len(ids)),
                        "n_spots": np.bincount(block)}, index=pd.Index(ids.astype(str)))
    pseudo = ad.AnnData(X=summed.astype(np.float32), obs=obs, var=table.var[[]].copy())
    pseudo.layers["counts"] = pseudo.X.copy()
    pseudo.obsm["spatial"] = centres
    pseudo = TableModel.parse(pseudo, region="spots", region_key="region",
                              instance_key="spot_id")
    labels = {"he_tissue": sdata.labels["he_tissue"]} if "he_tissue" in sdata.labels else {}
    return SpatialData(images={"he": sdata.images["he"]}, labels=labels,
                       shapes={"spots": shapes}, tables={"table": pseudo}), block


def scores(prediction: np.ndarray, truth: np.ndarray) -> float:
    from histoexpr.tl._metrics._expression_metrics import column_pearson

    return float(np.nanmean(column_pearson(prediction, truth)))


def ensure_tiles(sdata, key: str, size_um: float, mpp: float | None, centres: str = "spots"):
    import histoexpr as hx

    if key not in sdata.shapes:
        hx.pp.tile(sdata, "he", size_um=size_um, mpp=mpp, centres=centres, min_tissue=0,
                   key_added=key)


def run(args) -> list[dict]:
    import histoexpr as hx
    from histoexpr._core.expression import expression_targets

    hx.settings.progress_bar = False
    sections = read_sections(args.data)
    mpp = MPP[args.data]
    common = {"model": "spot_regressor", "route": "ridge", "encoder": "handcrafted",
              "standardise_sections": True, "mpp": mpp}
    for sdata in sections.values():
        ensure_tiles(sdata, "real_tiles", PITCH, mpp)
    coarse = {k: {n: coarsen(s, k) for n, s in sections.items()} for k in args.merge}
    rows = []
    for held in sections:
        train = [n for n in sections if n != held]
        genes = hx.pp.select_genes([sections[n].tables["table"] for n in train], n_top=GENES)
        target = sections[held]
        truth_table = target.tables["table"]
        truth = expression_targets(truth_table, genes)
        tile_spot = target.tables["real_tiles_table"].obs["spot_id"].to_numpy()
        order = {s: i for i, s in enumerate(tile_spot)}
        rows_of_truth = np.array([order[s] for s in truth_table.obs["spot_id"]])

        def at_spots(table, rows_of_truth=rows_of_truth) -> np.ndarray:
            return np.asarray(table.X)[rows_of_truth]

        began = time.process_time()
        model = hx.tl.fit({n: sections[n] for n in train}, genes=genes, size_um=PITCH,
                          tiles_key="real_tiles", **common)
        ceiling = at_spots(hx.tl.predict(model, target, tiles_key="real_tiles",
                                         key_added="pred_ceiling", overwrite=True))
        rows.append({"data": args.data, "held_out": held, "k": 1, "config": "ceiling",
                     "pearson": scores(ceiling, truth), "cpu_s": time.process_time() - began})
        print(json.dumps(rows[-1]), flush=True)
        for k in args.merge:
            pseudo = {n: coarse[k][n][0] for n in sections}
            size = k * PITCH
            block = coarse[k][held][1]
            began = time.process_time()
            model = hx.tl.fit({n: pseudo[n] for n in train}, genes=genes, size_um=size,
                              tiles_key="pseudo_tiles", **common)
            fit_s = time.process_time() - began
            ensure_tiles(pseudo[held], "pseudo_tiles", size, mpp)
            predicted = hx.tl.predict(model, pseudo[held], tiles_key="pseudo_tiles",
                                      key_added="pred", overwrite=True)
            by_block = dict(zip(predicted.obs["spot_id"].to_numpy(), np.asarray(predicted.X),
                                strict=True))
            copied = np.vstack([by_block[b] for b in block])
            rows.append({"data": args.data, "held_out": held, "k": k, "config": "copied",
                         "pearson": scores(copied, truth), "cpu_s": time.process_time() - began,
                         "n_pseudo_train": int(sum(pseudo[n].tables["table"].n_obs
                                                   for n in train))})
            print(json.dumps(rows[-1]), flush=True)
            began = time.process_time()
            ensure_tiles(target, f"slid_{k}", size, mpp)
            slid = hx.tl.predict(model, target, tiles_key=f"slid_{k}", key_added="pred_slid",
                                 overwrite=True)
            slid = np.asarray(slid.X)[rows_of_truth]
            rows.append({"data": args.data, "held_out": held, "k": k, "config": "slid",
                         "pearson": scores(slid, truth),
                         "cpu_s": fit_s + time.process_time() - began})
            print(json.dumps(rows[-1]), flush=True)
            began = time.process_time()
            model = hx.tl.fit({n: pseudo[n] for n in train}, genes=genes, size_um=size,
                              subspot_um=PITCH, tiles_key="pseudo_tiles", **common)
            fine = at_spots(hx.tl.predict(model, target, tiles_key="real_tiles",
                                          key_added="pred_subspot", overwrite=True))
            rows.append({"data": args.data, "held_out": held, "k": k, "config": "subspot",
                         "pearson": scores(fine, truth), "cpu_s": time.process_time() - began,
                         "alpha": model.metadata["alpha"]})
            print(json.dumps(rows[-1]), flush=True)
            began = time.process_time()
            model = hx.tl.fit({n: pseudo[n] for n in train}, genes=genes, size_um=size,
                              subspot_um=PITCH, context_um=size, tiles_key="pseudo_tiles",
                              **common)
            fine = at_spots(hx.tl.predict(model, target, tiles_key="real_tiles",
                                          key_added="pred_subspot", overwrite=True))
            rows.append({"data": args.data, "held_out": held, "k": k,
                         "config": "subspot_context", "pearson": scores(fine, truth),
                         "cpu_s": time.process_time() - began, "alpha": model.metadata["alpha"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    table = frame.pivot_table(index=["k", "config"], columns="held_out", values="pearson")
    table["mean"] = table.mean(axis=1)
    cpu = frame.groupby(["k", "config"])["cpu_s"].sum()
    table["cpu_s (all folds)"] = cpu
    print(table.round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("her2st", "mob_st"), default="her2st")
    parser.add_argument("--merge", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "_data" / "superres")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    print(json.dumps({"machine": f"{os.cpu_count()}-core {platform.machine()} CPU",
                      "commit": commit}), flush=True)
    began = time.process_time()
    rows = run(args)
    summary(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.data}.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps({"total_cpu_s": round(time.process_time() - began)}))


if __name__ == "__main__":
    main()
