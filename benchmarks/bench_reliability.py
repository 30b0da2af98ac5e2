"""Reliability: how histoexpr answers the bad inputs of the catalogue (``tests/_catalogue.py``).

Run from the repository root: ``.venv/bin/python benchmarks/bench_reliability.py``. It runs the
tests that check the catalogue's rows with pytest and reports, over the whole catalogue:

- **tried**: rows of the catalogue (bad inputs);
- **clear**: rows whose test passes: a clear error naming the problem and the fix (its message
  checked against the row's ``says`` where that quotes an error or a warning), or a documented
  warning or log line;
- **silent**: *silently wrong* rows whose test fails an assertion (target 0);
- **lost**: *data lost* rows whose test fails an assertion (target 0);
- **obscure**: *obscure error* rows whose test fails an assertion (errors still unclear);
- **crash**: rows whose test did not finish with an answer: an exception nobody expected
  escaped, a fixture failed, or the run hung past ``--timeout`` (target 0);
- **skipped**: rows whose test was skipped here (a missing optional dependency, no display).

``says checked`` counts the rows whose ``says`` quotes an error or a warning, checked against
the message actually raised. A row of a parametrised test counts as passed only when every
parameter passes.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
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

#: a failure whose message starts so is an exception that escaped the test (a crash), unless
#: it is an AssertionError; ``assert ...`` and pytest's ``Failed: DID NOT RAISE`` are wrong answers
ESCAPED = re.compile(r"^([A-Za-z_.]*(?:Error|Exception|Interrupt|Exit))\b")


def run_tests(node_ids: list[str], timeout: float) -> tuple[dict[str, str], float, bool]:
    """Each test function's outcome (passed, failed, crashed, skipped), the CPU seconds, and
    whether the run hung past ``timeout``."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.xml"
        start = time.process_time()
        hung = False
        try:
            subprocess.run([sys.executable, "-m", "pytest", "-q", f"--junitxml={report}",
                            *node_ids], cwd=REPO, check=False, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        except subprocess.TimeoutExpired:
            hung = True
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = children.ru_utime + children.ru_stime + time.process_time() - start
        outcomes: dict[str, str] = {}
        if not report.exists():
            return outcomes, cpu, hung
        order = {"passed": 0, "skipped": 1, "failed": 2, "crashed": 3}
        for case in ET.parse(report).getroot().iter("testcase"):
            module = case.get("classname", "").split(".")[-1]
            key = f"{module}.py::{case.get('name', '').split('[')[0]}"
            outcome = "passed"
            for child in case:
                if child.tag == "skipped":
                    outcome = "skipped"
                elif child.tag == "error":
                    outcome = "crashed"
                elif child.tag == "failure":
                    escaped = ESCAPED.match(child.get("message") or "")
                    crashed = escaped is not None and escaped.group(1) != "AssertionError"
                    outcome = "crashed" if crashed else "failed"
            previous = outcomes.get(key, "passed")
            outcomes[key] = max(previous, outcome, key=order.__getitem__)
    return outcomes, cpu, hung


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds before the run counts as hung (default: %(default)s)")
    args = parser.parse_args()
    rows = collect()
    tests = sorted({row.test for row in rows})
    wall = time.perf_counter()
    outcomes, cpu, hung = run_tests([f"tests/{test}" for test in tests], args.timeout)
    wall = time.perf_counter() - wall
    state = {row.test: outcomes.get(row.test, "crashed") for row in rows}  # absent: never ran
    counts = Counter()
    for row in rows:
        outcome = state[row.test]
        if outcome == "passed":
            counts["clear"] += 1
        elif outcome == "skipped":
            counts["skipped"] += 1
        elif outcome == "crashed":
            counts["crash"] += 1
        else:
            counts[{"silently wrong": "silent", "data lost": "lost",
                    "obscure error": "obscure"}[row.kind]] += 1
    by_kind = Counter(row.kind for row in rows)
    kinds = ", ".join(f"{kind}: {by_kind[kind]}" for kind in KINDS)
    checked = sum(row.checked for row in rows)
    stopped = " (HUNG: stopped at the timeout)" if hung else ""
    print(f"\n{len(rows)} bad inputs in the catalogue ({kinds}), checked by {len(tests)} tests "
          f"in {wall:.0f} s wall, {cpu:.0f} s CPU{stopped}; says checked against the raised "
          f"message: {checked} rows.")
    print("| tried | clear | silent (target 0) | lost (target 0) | crash (target 0) "
          "| obscure left | skipped |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {len(rows)} | {counts['clear']} | {counts['silent']} | {counts['lost']} "
          f"| {counts['crash']} | {counts['obscure']} | {counts['skipped']} |")
    for row in rows:
        if state[row.test] != "passed":
            print(f"not answered clearly ({state[row.test]}): [{row.kind}] {row.given} "
                  f"({row.test})")


if __name__ == "__main__":
    main()
