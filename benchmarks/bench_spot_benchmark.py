"""The README's spot-expression rows from one ``hx.tl.benchmark`` call per data set.

Leave one section out on her2st (C2, C3, C4) or the four MOB sections; genes, ridge penalty and
everything else chosen inside the training folds; the peer (squidpy + PCA + ridge) in the same
call. The named encoders' features (hand-crafted, squidpy) are computed once by ``hx.tl.embed``
on the spot tiles and cached on disk with ``bench_spot_nested.py``'s cache (their CPU seconds
printed here); the call reuses them and computes the random CNN's itself.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_spot_benchmark.py --data her2st
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_spot_benchmark.py --data mob_st
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_spot_nested import (  # noqa: E402 (the nested benchmark's sections, tiles and cache)
    CACHE,
    GEOMETRY,
    TILES,
    load_cached_features,
    read_sections,
    save_new_features,
)

ENCODERS = ["handcrafted", "squidpy", "random_cnn"]
HEADS = {"ridge": {"route": "ridge"},
         "ridge, per-section scaling + context": {"route": "ridge", "standardise_sections": True,
                                                  "context_um": (300.0, 600.0)},
         "mlp": {"route": "mlp"}}
#: the run of benchmarks/README.md (a 2-core machine shared by many jobs): no MLP head
DEFAULT_HEADS = ["ridge", "ridge, per-section scaling + context"]


def main() -> None:
    import torch

    import histoexpr as hx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="her2st", choices=["her2st", "mob_st"])
    parser.add_argument("--flavors", nargs="+", default=["top_expressed"])
    parser.add_argument("--encoders", nargs="+", default=ENCODERS)
    parser.add_argument("--heads", nargs="+", default=DEFAULT_HEADS, choices=list(HEADS))
    args = parser.parse_args()
    hx.settings.progress_bar = False
    torch.set_num_threads(1)
    sections = read_sections(args.data)
    load_cached_features(sections, args.data)
    for encoder in ("handcrafted", "squidpy"):  # computed once, shared by both calls
        for name, sdata in sections.items():
            if f"X_{encoder}" in sdata.tables[f"{TILES}_table"].obsm:
                continue
            cpu = time.process_time()
            hx.tl.embed(sdata, TILES, encoder=encoder, key_added=f"X_{encoder}")
            print(json.dumps({"features": encoder, "section": name,
                              "cpu_s": round(time.process_time() - cpu, 1)}), flush=True)
        save_new_features(sections, args.data)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    for flavor in args.flavors:
        cpu, began = time.process_time(), time.perf_counter()
        heads = {label: HEADS[label] for label in args.heads}
        result = hx.tl.benchmark(sections, encoders=args.encoders, heads=heads, n_genes=50,
                                 gene_flavor=flavor, size_um=GEOMETRY[args.data]["size_um"],
                                 mpp=GEOMETRY[args.data]["mpp"], tiles_key=TILES, seed=0)
        label = "" if args.heads == DEFAULT_HEADS else "_" + re.sub(
            r"[^A-Za-z0-9]+", "-", "_".join(args.heads))
        out = CACHE / f"benchmark_{args.data}_{flavor}{label}"
        out.mkdir(parents=True, exist_ok=True)
        for part in ("table", "sections", "genes", "timing"):
            getattr(result, part).to_csv(out / f"{part}.csv", index=False)
        (out / "run.json").write_text(json.dumps({
            "commit": commit, "cpu_s": time.process_time() - cpu,
            "wall_s": time.perf_counter() - began, "settings": result.settings}, default=str))
        print(f"## {args.data}, {flavor}: {time.process_time() - cpu:.0f} CPU s", flush=True)
        print(result.table.round(3).to_markdown(index=False), flush=True)
        print(result.sections.pivot_table(index=["encoder", "head"], columns="section",
                                          values="pearson").round(3).to_markdown(), flush=True)
        print(result.timing.round(1).to_markdown(index=False), flush=True)


if __name__ == "__main__":
    main()
