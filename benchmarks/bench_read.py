"""How long ``hx.io.read_st`` takes per her2st section (CPU and wall), and what it read.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_read.py [DATA_DIR]`` (default
``../shared/data``, or ``$HISTOEXPR_DATA_DIR``). The three sections are read one after the other
in one fresh process, spatialdata, anndata and pandas imported beforehand: the first read also
pays for the imports that reading needs (dask, geopandas, imagecodecs...). A checksum of every
image level and of the counts shows that two commits read the same data.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

SECTIONS = {
    "C2": "C2_5714_HE_BT_C2.jpg",
    "C3": "C3_5714_HE_BT_D1.jpg",
    "C4": "C4_5714_HE_BT_D2.jpg",
}


def main() -> None:
    import anndata  # noqa: F401
    import numpy as np
    import pandas  # noqa: F401
    import spatialdata  # noqa: F401

    import histoexpr as hx

    default = os.environ.get(
        "HISTOEXPR_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    root = Path(sys.argv[1] if len(sys.argv) > 1 else default) / "her2st"
    hx.settings.verbosity = 1
    print("| section | CPU s | wall s | checksum (levels + counts) |")
    print("|---|---|---|---|")
    for name, image in SECTIONS.items():
        cpu, wall = time.process_time(), time.perf_counter()
        sdata = hx.io.read_st(
            root / "counts" / f"{name}.tsv.gz",
            root / "spots" / f"{name}_selection.tsv",
            root / "images" / image,
        )
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        digest = hashlib.sha256()
        for node in sdata.images["he"].values():
            digest.update(np.asarray(node["image"].data).tobytes())
        digest.update(np.ascontiguousarray(sdata.tables["table"].X.toarray()).tobytes())
        print(f"| {name} | {cpu:.2f} | {wall:.2f} | {digest.hexdigest()[:12]} |", flush=True)


if __name__ == "__main__":
    main()
