"""A cohort of large slides through ``hx.tl.embed_cohort``: serial vs 2 dask workers, and memory.

Writes synthetic whole slides under ``benchmarks/_data/`` (git-ignored): pyramidal, JPEG-tiled
TIFFs whose tissue tiles are 256 px pieces (flipped / rotated) of one rendered
``synthetic_section`` laid out as a blob of tissue on a white glass. Slides are written tile by
tile from generators, every pyramid level assembled from downsampled pieces, so writing a
20,000 px slide needs little memory and seconds of CPU.

Then, each run in a fresh process (or a fresh LocalCluster) and a fresh store folder:

- ``serial``: ``embed_cohort(cohort)`` in one process;
- ``dask``: ``embed_cohort(cohort, client=...)`` on ``LocalCluster(n_workers=2,
  threads_per_worker=1)``;

on a cohort of small slides and on a cohort of large ones (and of fewer large ones), reporting
the wall time of ``embed_cohort`` (cluster start excluded, reported apart), the peak RSS of the
process or of each worker (``ru_maxrss``), and the time per slide. Every process runs numpy and
torch on one thread (``OMP_NUM_THREADS=1``).

on four cohorts (``--n-few`` = 2 and ``--n-small`` / ``--n-large`` = 24 slides, of 4,000 and
of 20,000 px), so that the peak RSS per worker can be compared in the number and in the size of
the slides. Run from the repository root::

    nice -n 10 .venv/bin/python benchmarks/bench_cohort.py                  # 24 x 20k px
    .venv/bin/python benchmarks/bench_cohort.py --n-large 4 --n-small 4 --large 8000  # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "_data" / "cohort"
TILE = 256
MPP = 0.5
MIN_LEVEL_SIDE = 1024
#: how the slides are processed (the same in every run)
OPTIONS = {"encoder": "handcrafted", "size": 224, "mpp": 2.0, "min_tissue": 0.5,
           "tissue_mpp": 8.0, "batch_size": 64}


def _pieces(seed: int = 0) -> np.ndarray:
    """256 px RGB pieces of tissue cut from one synthetic section, with their flips/rotations."""
    import histoexpr as hx

    sdata = hx.datasets.synthetic_section(seed=seed, size_um=512, mpp=MPP, transcripts=False,
                                          spots=False, multiscale=False)
    image = np.moveaxis(np.asarray(sdata.images["he"].values), 0, -1)
    pieces = []
    for r in range(0, image.shape[0] - TILE + 1, TILE):
        for c in range(0, image.shape[1] - TILE + 1, TILE):
            piece = image[r:r + TILE, c:c + TILE]
            rgb = piece.astype(np.float32)
            saturation = (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1)
            if (saturation > 0.15).mean() > 0.6:
                for k in range(4):
                    pieces += [np.rot90(piece, k), np.rot90(piece[::-1], k)]
    return np.ascontiguousarray(np.stack(pieces))


def _layout(n_rows: int, n_cols: int, n_pieces: int, seed: int) -> np.ndarray:
    """Index of the piece at each grid cell, -1 on the glass: a smooth blob of tissue."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n_rows, :n_cols]
    radial = 1 - (((yy - n_rows / 2) / (n_rows / 2)) ** 2 + ((xx - n_cols / 2) / (n_cols / 2))
                  ** 2)
    field = gaussian_filter(rng.standard_normal((n_rows, n_cols)), max(1, n_rows / 12))
    field = field / (field.std() + 1e-9) * 0.3 + radial
    tissue = field > np.quantile(field, 0.4)
    return np.where(tissue, rng.integers(0, n_pieces, (n_rows, n_cols)), -1)


def _level_tiles(layout: np.ndarray, pieces: list[np.ndarray], glass: np.ndarray, level: int):
    """Tiles of pyramid level ``level`` in row-major order, assembled from downsampled pieces."""
    factor = 2 ** level
    side = TILE // factor  # a piece's side at this level
    per_tile = factor  # pieces per tile side
    n_rows, n_cols = layout.shape
    rows, cols = -(-n_rows // per_tile), -(-n_cols // per_tile)
    for r in range(rows):
        for c in range(cols):
            tile = np.empty((TILE, TILE, 3), np.uint8)
            tile[:] = 255
            for i in range(per_tile):
                for j in range(per_tile):
                    rr, cc = r * per_tile + i, c * per_tile + j
                    if rr < n_rows and cc < n_cols:
                        index = layout[rr, cc]
                        tile[i * side:(i + 1) * side, j * side:(j + 1) * side] = \
                            glass[level] if index < 0 else pieces[level][index]
            yield tile


def write_slide(path: Path, size: int, pieces: np.ndarray, seed: int) -> None:
    """A size x size px pyramidal JPEG TIFF (levels halved down to ~1k px) at 0.5 um/px."""
    import tifffile

    n = -(-size // TILE)
    layout = _layout(n, n, len(pieces), seed)
    n_levels = 1
    while size // 2 ** n_levels >= MIN_LEVEL_SIDE and TILE // 2 ** n_levels >= 1:
        n_levels += 1
    rng = np.random.default_rng(seed)
    glass0 = np.clip(242 + rng.normal(0, 2, (TILE, TILE, 3)), 0, 255).astype(np.uint8)
    down = [pieces]
    glass = [glass0]
    for level in range(1, n_levels):
        f = 2 ** level
        down.append(pieces.reshape(len(pieces), TILE // f, f, TILE // f, f, 3).mean((2, 4))
                    .astype(np.uint8))
        glass.append(glass0.reshape(TILE // f, f, TILE // f, f, 3).mean((1, 3)).astype(np.uint8))
    options = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg",
               "compressionargs": {"level": 85}, "dtype": np.uint8}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(n_levels):
            side = n * TILE // 2 ** level
            extra = ({"subifds": n_levels - 1, "resolution": (1e4 / MPP, 1e4 / MPP),
                      "resolutionunit": "CENTIMETER"} if level == 0 else {"subfiletype": 1})
            tif.write(_level_tiles(layout, down, glass, level), shape=(side, side, 3),
                      **extra, **options)


def make_cohort(folder: Path, n_slides: int, size: int, n_files: int | None = None) -> Path:
    """Slides, a manifest (two slides per patient) and nothing else; the manifest's path.

    With ``n_files < n_slides``, only ``n_files`` distinct files are written and the manifest
    lists them in turn under ``n_slides`` slide ids (each row is processed as its own slide).
    """
    import json

    import pandas as pd

    manifest = folder / "manifest.csv"
    n_files = n_slides if n_files is None else min(n_files, n_slides)
    made = {"n_slides": n_slides, "size": size, "n_files": n_files}
    record = folder / "cohort.json"  # how the slides were made: reused only when the same
    if manifest.exists() and record.exists() and json.loads(record.read_text()) == made:
        return manifest
    if manifest.exists():
        raise SystemExit(f"{folder} holds a cohort made otherwise (or by an older script): "
                         f"remove it to make one of {made}.")
    pieces = _pieces()
    for i in range(n_files):
        path = folder / f"file_{i:02d}.tif"
        t0 = time.perf_counter()
        write_slide(path, size, pieces, seed=i)
        print(f"  wrote {path.name} ({size} px, {path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    rows = [{"path": f"file_{i % n_files:02d}.tif", "slide_id": f"slide_{i:02d}",
             "patient": f"p{i // 2}"} for i in range(n_slides)]
    pd.DataFrame(rows).to_csv(manifest, index=False)
    record.write_text(json.dumps(made))
    return manifest


def _first_rows(manifest: Path, n: int) -> Path:
    """A manifest of the first ``n`` slides of ``manifest`` (beside it)."""
    import pandas as pd

    frame = pd.read_csv(manifest)
    if n > len(frame):
        raise ValueError(f"{manifest} lists {len(frame)} slides, fewer than {n}; remove its "
                         "folder to write more.")
    out = manifest.parent / f"manifest_first{n}.csv"
    frame.head(n).to_csv(out, index=False)
    return out


def child(manifest: str, mode: str, store_dir: str) -> dict:
    """One run in a fresh process: serial, or on a fresh 2-worker LocalCluster."""
    import histoexpr as hx

    hx.settings.progress_bar = False
    hx.settings.verbosity = 1
    cohort = hx.io.read_cohort(manifest, store_dir=store_dir)
    client = cluster = None
    start_s = 0.0
    if mode == "dask":
        from dask.distributed import Client, LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               memory_limit="6GiB", dashboard_address=None)
        client = Client(cluster)
        client.run(lambda: __import__("histoexpr.tl._features._embed_cohort"))  # import first
        start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame = hx.tl.embed_cohort(cohort, client=client, **OPTIONS)
    wall = time.perf_counter() - t0
    if client is not None:
        peaks = list(client.run(
            lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024).values())
        client.close(timeout=120)
        with contextlib.suppress(TimeoutError):  # workers slow to stop on a loaded machine
            cluster.close(timeout=120)
    else:
        peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]
    return {"wall_s": wall, "cluster_start_s": start_s, "peak_rss_mb": peaks,
            "n_slides": len(frame), "n_tiles": int(frame["n_tiles"].sum()),
            "s_per_slide": float(frame["seconds"].mean()),
            "computed": int((frame["status"] == "computed").sum())}


def run(manifest: Path, mode: str) -> dict:
    store_dir = manifest.parent / f"stores_{manifest.stem}_{mode}"
    shutil.rmtree(store_dir, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", str(manifest), "--mode", mode,
                          "--store-dir", str(store_dir)], check=True, capture_output=True,
                         text=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(store_dir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-large", type=int, default=24)
    parser.add_argument("--n-files", type=int, default=None,
                        help="distinct large slide files (default: one per slide)")
    parser.add_argument("--large", type=int, default=20_000)
    parser.add_argument("--n-small", type=int, default=24,
                        help="slides of the small cohort (default: as many as --n-large)")
    parser.add_argument("--n-small-files", type=int, default=None,
                        help="distinct small slide files (default: one per slide)")
    parser.add_argument("--small", type=int, default=4_000)
    parser.add_argument("--n-few", type=int, default=2,
                        help="slides of the 'few' cohorts (the first rows of each manifest)")
    parser.add_argument("--no-serial", action="store_true",
                        help="skip the serial run of the large cohort")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--store-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(child(args.child, args.mode, args.store_dir)))
        return

    sizes = {"small": args.small, "large": args.large}
    counts = {"small": args.n_small, "large": args.n_large}
    files = {"small": args.n_small_files, "large": args.n_files}
    manifests, cohorts = {}, {}
    for name in ("small", "large"):
        folder = DATA / f"{sizes[name]}px"
        t0 = time.perf_counter()
        full = make_cohort(folder, counts[name], sizes[name], files[name])
        # a cohort of fewer slides: the first rows of a manifest written earlier
        manifests[name] = _first_rows(full, counts[name])
        manifests[f"{name}_few"] = _first_rows(full, args.n_few)
        cohorts[name] = (counts[name], sizes[name])
        cohorts[f"{name}_few"] = (args.n_few, sizes[name])
        print(f"cohort {name}: {counts[name]} slides of {sizes[name]} px ready in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    runs = [("small_few", "dask"), ("small", "dask"), ("large_few", "dask"), ("large", "dask")]
    if not args.no_serial:
        runs.append(("large", "serial"))
    results = {}
    for name, mode in runs:
        t0 = time.perf_counter()
        results[(name, mode)] = run(manifests[name], mode)
        print(f"{name} {mode}: {json.dumps(results[(name, mode)])} "
              f"({time.perf_counter() - t0:.0f} s with start-up; load {os.getloadavg()})",
              flush=True)

    header = ("cohort", "slides x px", "mode", "tiles", "wall s", "s/slide (task)",
              "cluster start s", "peak RSS MB per process")
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (name, mode), r in results.items():
        n, size = cohorts[name]
        row = (name, f"{n} x {size}", mode, str(r["n_tiles"]), f"{r['wall_s']:.0f}",
               f"{r['s_per_slide']:.1f}", f"{r['cluster_start_s']:.0f}",
               ", ".join(f"{p:.0f}" for p in r["peak_rss_mb"]))
        print("| " + " | ".join(row) + " |")
    if ("large", "serial") in results:
        serial, dask = results[("large", "serial")], results[("large", "dask")]
        print(f"\nwall serial / 2 dask workers (large cohort): "
              f"{serial['wall_s'] / dask['wall_s']:.2f}")

    def peak(name: str) -> float:
        return max(results[(name, "dask")]["peak_rss_mb"])

    print(f"peak worker RSS, many / few slides: small {peak('small') / peak('small_few'):.2f}, "
          f"large {peak('large') / peak('large_few'):.2f}")
    print(f"peak worker RSS, large / small slides: few {peak('large_few') / peak('small_few'):.2f}"
          f", many {peak('large') / peak('small'):.2f}")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
