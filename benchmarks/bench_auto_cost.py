"""The cost of ``route="auto"``: the README's call on her2st C2, C3, C4 with the default grid.

``hx.tl.fit(sections, model="spot_regressor", route="auto")`` with every option at its default
(50 most expressed genes, 112 um tiles at the images' full resolution, the default candidate
grid, SimCLR pretraining of the "ssl" candidate inside ``fit``). Records the CPU seconds of this
process and its children (``time.process_time`` plus ``RUSAGE_CHILDREN``), the wall time, what
the search chose, every candidate's inner scores and the model's predictions on the three
sections' spot tiles, in ``benchmarks/_data/auto_cost/<label>.npz`` and ``.json``. ``compare``
checks that two runs chose the same and predict the same (within rounding).

    nice -n 10 .venv/bin/python benchmarks/bench_auto_cost.py run --label before
    nice -n 10 .venv/bin/python benchmarks/bench_auto_cost.py run --label after
    .venv/bin/python benchmarks/bench_auto_cost.py compare before after

``--sections C2 C3 --encoders squidpy+handcrafted random_cnn`` runs a smaller search (the rest
of the grid as by default); ``--pretrain-epochs 2`` passes ``pretrain_epochs=2`` (the "ssl"
candidate's SimCLR epochs inside ``fit``; default 6).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "_data" / "auto_cost"
DATA = Path(os.environ.get("HISTOEXPR_SHARED_DATA", REPO.parent / "shared" / "data"))
if not DATA.exists():
    DATA = Path("/work/shared/data")


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def read_sections(names=("C2", "C3", "C4")) -> dict:
    import histoexpr as hx

    root = DATA / "her2st"
    images = {p.name.split("_")[0]: p for p in (root / "images").glob("*.jpg")}
    return {
        s: hx.io.read_st(
            root / "counts" / f"{s}.tsv.gz", root / "spots" / f"{s}_selection.tsv", images[s]
        )
        for s in names
    }


def run(
    label: str, sections: list[str], encoders: list[str] | None, pretrain_epochs: int | None
) -> None:
    import histoexpr as hx

    sections = read_sections(sections)
    candidates = None if encoders is None else {"encoder": encoders}
    cpu, wall = cpu_seconds(), time.perf_counter()
    model = hx.tl.fit(
        sections,
        model="spot_regressor",
        route="auto",
        candidates=candidates,
        pretrain_epochs=pretrain_epochs,
    )
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    predictions = {}
    for name, sdata in sections.items():
        table = hx.tl.predict(model, sdata, tiles_key="spot_tiles", key_added="auto_cost")
        predictions[name] = np.asarray(table.X, dtype=np.float32)
    auto = model.metadata["auto"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    record = {
        "label": label,
        "commit": commit,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "pretrain_epochs": pretrain_epochs,
        "cpu_seconds": round(cpu, 1),
        "wall_seconds": round(wall, 1),
        "chosen": auto["chosen"],
        "route": model.metadata["route"],
        "head": model.metadata["head"],
        "target": model.metadata["target"],
        "search": [
            {"candidate": e["candidate"], "mean": e["mean"], "folds": e["folds"]}
            for e in auto["search"]
        ],
        "feature_seconds": auto["feature_seconds"],
        "genes": model.metadata["genes"],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{label}.json").write_text(json.dumps(record, indent=1, default=str))
    np.savez(OUT / f"{label}.npz", **predictions)
    print(
        json.dumps(
            {k: record[k] for k in ("label", "commit", "cpu_seconds", "wall_seconds", "chosen")},
            default=str,
        )
    )


def compare(first: str, second: str) -> None:
    a, b = (json.loads((OUT / f"{n}.json").read_text()) for n in (first, second))
    for key in ("chosen", "route", "head", "target", "genes"):
        assert a[key] == b[key], (key, a[key], b[key])
    scores_a = {json.dumps(e["candidate"], sort_keys=True): e["mean"] for e in a["search"]}
    scores_b = {json.dumps(e["candidate"], sort_keys=True): e["mean"] for e in b["search"]}
    for candidate in set(scores_a) & set(scores_b):
        print(f"{candidate}: {scores_a[candidate]:.4f} / {scores_b[candidate]:.4f}")
    pa, pb = np.load(OUT / f"{first}.npz"), np.load(OUT / f"{second}.npz")
    for name in pa.files:
        np.testing.assert_allclose(pa[name], pb[name], rtol=1e-3, atol=1e-3)
        print(f"{name}: max |difference| of predictions {np.abs(pa[name] - pb[name]).max():.2e}")
    print(
        f"same choice {a['chosen']}; CPU s {a['cpu_seconds']} -> {b['cpu_seconds']}, wall s "
        f"{a['wall_seconds']} -> {b['wall_seconds']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run")
    one.add_argument("--label", required=True)
    one.add_argument("--sections", nargs="+", default=["C2", "C3", "C4"])
    one.add_argument(
        "--encoders",
        nargs="+",
        default=None,
        help="encoder candidates (default: the default grid's)",
    )
    one.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        help="SimCLR epochs of the ssl candidate inside fit (default: fit's, 6)",
    )
    two = commands.add_parser("compare")
    two.add_argument("first")
    two.add_argument("second")
    args = parser.parse_args()
    if args.command == "run":
        run(args.label, args.sections, args.encoders, args.pretrain_epochs)
    else:
        compare(args.first, args.second)


if __name__ == "__main__":
    main()
