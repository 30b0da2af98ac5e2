"""The ``histoexpr`` command line."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

from ._utils import logger

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="histoexpr",
        description="Link what tissue looks like to what it expresses.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the pipeline on the built-in synthetic section and write a report folder",
        description="Build a synthetic section, detect tissue, tile it and draw the results. "
        "Writes PNG maps, metrics.json, summary.md and the section as section.zarr into --out.",
    )
    demo.add_argument("--out", type=Path, default=Path("histoexpr-demo"),
                      help="report folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the report folder if it exists")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            run_demo(args.out, seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, KeyError, ValueError) as error:
        print(f"histoexpr {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def run_demo(out: Path, *, seed: int = 0, overwrite: bool = False) -> dict:
    """The demo pipeline on the synthetic default section; returns the metrics it writes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import histoexpr as hx

    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it or choose --out.")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    hx.settings.verbosity = 2
    timings: dict[str, float] = {}

    def step(name: str, function, *args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 3)
        logger.info("%-14s %.2f s", name, timings[name])
        return result

    sdata = step("synthesise", hx.datasets.synthetic_section, seed=seed)
    step("detect_tissue", hx.pp.detect_tissue, sdata, "he")
    step("tile", hx.pp.tile, sdata, "he", size_um=56.0, mpp=0.5)
    step("tile_spots", hx.pp.tile, sdata, "he", size_um=55.0, mpp=0.5, centers="spots",
         min_tissue=0.0, key_added="he_spot_tiles")

    spot_table = sdata.tables["table"]
    gene = str(spot_table.var_names[int(spot_table.X.sum(axis=0).argmax())])
    figures = {
        "tiles.png": lambda ax: hx.pl.tiles(sdata, "he_tiles", color="tissue_fraction", ax=ax),
        "spots.png": lambda ax: hx.pl.spots(sdata, "spots", color=gene, ax=ax),
        "dapi_spots.png": lambda ax: hx.pl.spots(sdata, "spots", image_key="dapi", ax=ax),
    }
    for name, draw in figures.items():
        fig, ax = plt.subplots(figsize=(7, 6))
        draw(ax)
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)

    with warnings.catch_warnings():  # zarr announces a future default at every array written
        warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
        step("write_zarr", sdata.write, out / "section.zarr")
    metrics = {
        "seed": seed,
        "pixel_size_um": hx.io.get_pixel_size(sdata, "he"),
        "image_shape_yx": list(hx.io.image_levels(sdata, "he")[0].shape_yx),
        "n_cells": int(sdata.tables["cells_table"].n_obs) if "cells_table" in sdata.tables else None,
        "n_spots": int(spot_table.n_obs),
        "n_genes": int(spot_table.n_vars),
        "n_tiles": int(sdata.tables["he_tiles_table"].n_obs),
        "n_spot_tiles": int(sdata.tables["he_spot_tiles_table"].n_obs),
        "gene_shown": gene,
        "seconds": timings,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "summary.md").write_text(_summary(metrics, list(figures)))
    logger.info("Report written to %s", out)
    return metrics


def _summary(metrics: dict, figures: list[str]) -> str:
    lines = [
        "# histoexpr demo",
        "",
        f"Synthetic section (seed {metrics['seed']}): image {metrics['image_shape_yx']} px at "
        f"{metrics['pixel_size_um']} um/px, {metrics['n_spots']} spots x {metrics['n_genes']} genes.",
        f"Tissue detected and cut into {metrics['n_tiles']} grid tiles and "
        f"{metrics['n_spot_tiles']} spot-centred tiles.",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {name} | {seconds} |" for name, seconds in metrics["seconds"].items()),
        "",
        *(f"![{name}]({name})" for name in figures),
        "",
    ]
    return "\n".join(lines)
