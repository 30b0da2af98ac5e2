"""Peak memory and time of read_wsi + read_region on a large and a small pyramidal TIFF.

Writes two synthetic slides (tiled, JPEG-compressed RGB with the reduced levels as SubIFDs,
written tile by tile from generators so writing stays low-memory) under ``benchmarks/_data/``
(git-ignored), then, in a fresh subprocess for each, opens it with ``hx.io.read_wsi``, reads
the coarsest level completely through ``hx.io.read_region`` and 1,000 random 224 px tiles at
full resolution, and reports the child's peak RSS and the times.

Run from the repository root::

    .venv/bin/python benchmarks/bench_wsi_memory.py            # 40k and 4k px slides
    .venv/bin/python benchmarks/bench_wsi_memory.py --large 20000 --tiles 200
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "_data"
TILE = 256
MPP = 0.5
MIN_LEVEL_SIDE = 1024


def _templates(n: int = 32, seed: int = 0) -> np.ndarray:
    """A few smooth, tissue-like RGB tiles; the slide is a mosaic of them (cheap to generate)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:TILE, :TILE] / TILE
    tiles = np.empty((n, TILE, TILE, 3), np.uint8)
    for i in range(n):
        base = rng.uniform(120, 240, 3)
        wave = np.sin(2 * np.pi * (rng.uniform(1, 4) * xx + rng.uniform(1, 4) * yy))
        noise = rng.normal(0, 6, (TILE, TILE, 1))
        tiles[i] = np.clip(base + 25 * wave[..., None] + noise, 0, 255)
    return tiles


def _tiles(height: int, width: int, level: int, templates: np.ndarray):
    """Tiles of one level in row-major order (tifffile's order), each a template."""
    for r in range(-(-height // TILE)):
        for c in range(-(-width // TILE)):
            yield templates[(r * 7919 + c * 104729 + level * 31) % len(templates)]


def write_slide(path: Path, size: int) -> None:
    """A size x size RGB pyramidal TIFF: 256 px JPEG tiles, levels halved down to ~1k px."""
    import tifffile

    templates = _templates()
    shapes = [(size, size)]
    while max(shapes[-1]) // 2 >= MIN_LEVEL_SIDE:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg",
               "dtype": np.uint8}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(_tiles(*shapes[0], 0, templates), shape=(*shapes[0], 3),
                  subifds=len(shapes) - 1, resolution=(1e4 / MPP, 1e4 / MPP),
                  resolutionunit="CENTIMETER", **options)
        for level, shape in enumerate(shapes[1:], start=1):
            tif.write(_tiles(*shape, level, templates), shape=(*shape, 3), subfiletype=1,
                      **options)


def child(path: str, n_tiles: int, seed: int = 0) -> dict:
    """Runs in a fresh process: open, read the coarse level, read random tiles; time and RSS."""
    import histoexpr as hx

    t0 = time.perf_counter()
    sdata = hx.io.read_wsi(path)
    t_open = time.perf_counter() - t0
    rss_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    levels = hx.io.image_levels(sdata, "he")
    coarse = levels[-1]
    height, width = levels[0].shape_yx
    mpp = levels[0].mpp

    t0 = time.perf_counter()
    thumb = hx.io.read_region(sdata, "he", (0, 0, width * mpp, height * mpp), mpp=coarse.mpp)
    t_coarse = time.perf_counter() - t0

    rng = np.random.default_rng(seed)
    size = 224
    t0 = time.perf_counter()
    total = 0
    for _ in range(n_tiles):
        x, y = rng.integers(0, width - size), rng.integers(0, height - size)
        tile = hx.io.read_region(sdata, "he", (x * mpp, y * mpp, (x + size) * mpp,
                                               (y + size) * mpp))
        total += int(tile[0, 0, 0])
    t_tiles = time.perf_counter() - t0
    return {
        "size_px": width, "levels": len(levels), "coarse_px": list(thumb.shape[1:]),
        "open_s": t_open, "coarse_s": t_coarse, "tiles_s": t_tiles,
        "ms_per_tile": 1e3 * t_tiles / n_tiles,
        "rss_open_mb": rss_open / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=40_000)
    parser.add_argument("--small", type=int, default=4_000)
    parser.add_argument("--tiles", type=int, default=1_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tiles)))
        return

    results = {}
    for name, size in (("small", args.small), ("large", args.large)):
        path = DATA / f"synthetic_{size}.tif"
        if not path.exists():
            t0 = time.perf_counter()
            write_slide(path, size)
            print(f"wrote {path.name} ({path.stat().st_size / 2**20:.0f} MiB) in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        out = subprocess.run([sys.executable, __file__, "--child", str(path), "--tiles",
                              str(args.tiles)], check=True, capture_output=True, text=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        results[name]["file_mib"] = path.stat().st_size / 2**20

    header = ("slide", "px", "file MiB", "levels", "open s", "coarse level s", "coarse px",
              f"{args.tiles} tiles s", "ms/tile", "RSS after open MB", "peak RSS MB")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, r in results.items():
        row = (name, f"{r['size_px']}", f"{r['file_mib']:.0f}", f"{r['levels']}",
               f"{r['open_s']:.2f}", f"{r['coarse_s']:.2f}", "x".join(map(str, r["coarse_px"])),
               f"{r['tiles_s']:.1f}", f"{r['ms_per_tile']:.1f}", f"{r['rss_open_mb']:.0f}",
               f"{r['peak_rss_mb']:.0f}")
        print("| " + " | ".join(row) + " |")
    ratio = results["large"]["peak_rss_mb"] / results["small"]["peak_rss_mb"]
    pixels = (args.large / args.small) ** 2
    print(f"\npeak RSS large/small: {ratio:.2f} (for {pixels:.0f}x the pixels)")


if __name__ == "__main__":
    main()
