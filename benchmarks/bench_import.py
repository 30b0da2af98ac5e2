"""How long `import histoexpr` takes, against the libraries it would otherwise import at once.

Run: ``.venv/bin/python benchmarks/bench_import.py``. Each import runs in a fresh interpreter,
several times; the median wall time is reported.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

STATEMENTS = {
    "python (nothing)": "pass",
    "import histoexpr": "import histoexpr",
    "hx.io.read_region (first use)": "import histoexpr as hx; hx.io.read_region",
    "import torch": "import torch",
    "import spatialdata": "import spatialdata",
}


def median_seconds(statement: str, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    results = {name: median_seconds(statement) for name, statement in STATEMENTS.items()}
    baseline = results["python (nothing)"]
    print("| import | median wall time (s) | above bare python (s) |")
    print("|---|---|---|")
    for name, seconds in results.items():
        print(f"| `{name}` | {seconds:.3f} | {seconds - baseline:.3f} |")


if __name__ == "__main__":
    main()
