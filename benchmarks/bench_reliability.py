"""Reliability: how histoexpr answers the bad inputs of the catalogue (``tests/_catalogue.py``).

Run from the repository root: ``.venv/bin/python benchmarks/bench_reliability.py``. It counts the
catalogue's rows by kind, runs the tests that check them with pytest, and reports:

- bad inputs tried: rows of the catalogue;
- clear answers: rows whose test passes (a clear error, or a documented warning or log line);
- silent results: *silently wrong* rows whose test fails (target 0);
- data lost: *data lost* rows whose test fails (target 0);
- obscure errors left: *obscure error* rows whose test fails.

A row of a parametrised test counts as passed only when every parameter passes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _catalogue import KINDS, collect  # noqa: E402


def run_tests(node_ids: list[str]) -> tuple[dict[str, bool], float]:
    """Whether each test function passed, and the CPU seconds the pytest run took."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.xml"
        start = time.process_time()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings",
                        f"--junitxml={report}", *node_ids], cwd=REPO, check=False)
        import resource

        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = children.ru_utime + children.ru_stime + time.process_time() - start
        passed: dict[str, bool] = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            module = case.get("classname", "").split(".")[-1]
            name = case.get("name", "").split("[")[0]
            key = f"{module}.py::{name}"
            failed = any(child.tag in ("failure", "error", "skipped") for child in case)
            passed[key] = passed.get(key, True) and not failed
    return passed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    rows = collect()
    tests = sorted({row.test for row in rows})
    wall = time.perf_counter()
    passed, cpu = run_tests([f"tests/{test}" for test in tests])
    wall = time.perf_counter() - wall
    ok = [row for row in rows if passed.get(row.test, False)]
    failing = Counter(row.kind for row in rows if not passed.get(row.test, False))
    by_kind = Counter(row.kind for row in rows)
    kinds = ", ".join(f"{kind}: {by_kind[kind]}" for kind in KINDS)
    print(f"\n{len(rows)} bad inputs in the catalogue ({kinds}), checked by {len(tests)} tests "
          f"in {wall:.0f} s wall, {cpu:.0f} s CPU.")
    print("| bad inputs tried | clear answers | silent results (target 0) | data lost (target 0) "
          "| obscure errors left |")
    print("|---|---|---|---|---|")
    print(f"| {len(rows)} | {len(ok)} | {failing['silently wrong']} | {failing['data lost']} "
          f"| {failing['obscure error']} |")
    for row in rows:
        if not passed.get(row.test, False):
            print(f"not answered clearly: [{row.kind}] {row.given} ({row.test})")


if __name__ == "__main__":
    main()
