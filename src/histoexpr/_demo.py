"""``histoexpr demo``: every job of the package on the synthetic default, as a report folder.

Each job trains on one synthetic section (or slides) and is scored on another one it never saw,
so the numbers in ``metrics.json`` say whether the models recover the designed link between
morphology and expression. The report: ``summary.md``, ``metrics.json``, PNG maps, and the
first section with everything added as ``section.zarr``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._core.files import (
    changed_in_folder,
    folder_listing,
    location,
    restore_swap_of,
    written_beside,
)

#: the two genes whose transcripts label the patches (lymphocyte and stroma markers)
LABEL_GENES = ("PTPRC", "COL1A1")
#: genes the bag (MIL) and spot models predict: markers of the four cell types
PANEL = ("EPCAM", "KRT8", "COL1A1", "PTPRC", "CD3E", "CDH1")


#: epochs of the attention MIL: bags are small, an epoch is a fraction of a second
MIL_EPOCHS = 60


@dataclass(frozen=True)
class DemoSize:
    """How big the demo's data and training are."""

    section_um: float
    n_slides: int
    slide_um: float
    epochs: int  # of the patch classifier and of pretraining


SIZES = {
    "default": DemoSize(section_um=800.0, n_slides=10, slide_um=360.0, epochs=12),
    "quick": DemoSize(section_um=400.0, n_slides=6, slide_um=260.0, epochs=3),
}


def run_demo(out: Path, *, seed: int = 0, size: str = "default", overwrite: bool = False
             ) -> dict[str, Any]:
    """Run every job on synthetic data and write the report; returns the metrics written."""
    import matplotlib

    matplotlib.use("Agg")
    import histoexpr as hx

    if size not in SIZES:
        raise ValueError(f"Unknown demo size {size!r}; choose one of {sorted(SIZES)}.")
    out = Path(out)
    prepare_report_folder(out, overwrite=overwrite)
    # the report is written beside OUT and swapped in when complete: a failed or killed run
    # leaves an older report as it was
    with written_beside(out) as folder:
        folder.mkdir()
        _write_marker(folder, [])
        report = _Report(folder)
        scale = SIZES[size]
        saved = hx.settings.verbosity, hx.settings.progress_bar
        hx.settings.verbosity, hx.settings.progress_bar = 1, False  # one line per step instead
        try:
            _run_jobs(report, scale, seed)
        finally:
            hx.settings.verbosity, hx.settings.progress_bar = saved
        report.write(seed=seed, size=size)
        _write_marker(folder, report.written, listing=out)  # every file and folder, as written
        if out.exists() or out.is_symlink():
            _check_own_report(out)  # again: nothing of the user's may have arrived meanwhile
    print(f"histoexpr demo: report written to {out}", file=sys.stderr)
    return report.metrics


#: the file by which a report folder says that ``histoexpr demo`` made it, and what it wrote
REPORT_MARKER = ".histoexpr-demo.json"


def prepare_report_folder(out: Path, *, overwrite: bool) -> None:
    """Create the report folder ``out``, replacing it only if it is a report the demo wrote.

    ``--overwrite`` replaces ``out`` only when it holds :data:`REPORT_MARKER`, the marker names
    ``out`` itself (the path the demo wrote it at: a copy of a report elsewhere, or a report
    moved, is not replaced) and the folder holds nothing but the files and folders that marker
    lists, as the demo wrote them (every file of the folder, in every subfolder, with its size
    and time); a folder or file of the user's, or one added or changed inside the report
    since (an empty folder too), is refused with the reason, before anything is deleted or
    written. Nothing is deleted here: the new report replaces the old one only when it is
    complete (:func:`run_demo`).
    """
    out = Path(out)
    restore_swap_of(out)  # an earlier run killed midway put back first
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it or choose --out.")
        _check_own_report(out)


def _check_own_report(out: Path) -> None:
    """Raise unless ``out`` is a report folder written by the demo and holds nothing else."""
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(
            f"{out} exists and is not a report folder of `histoexpr demo` (it is a file or a "
            "link); --overwrite leaves it alone. Choose another --out.")
    if not any(out.iterdir()):
        return  # an empty folder: nothing to lose
    marker = out / REPORT_MARKER
    try:
        record = json.loads(marker.read_text())
        listing = record["listing"] if record.get("written_by") == "histoexpr demo" else None
        if not isinstance(listing, dict):
            listing = None
    except (OSError, ValueError, KeyError, TypeError):
        listing = None
    if listing is None:
        raise FileExistsError(
            f"{out} exists and was not written by `histoexpr demo` (it has no {REPORT_MARKER} "
            "listing what the demo wrote: another folder, or a report of an earlier version); "
            "--overwrite only replaces a report folder the demo wrote, so nothing was deleted. "
            "Choose another --out, or move or delete the folder yourself.")
    if record.get("path") != location(out):
        raise FileExistsError(
            f"{out} is a demo report, but the demo wrote it at {record.get('path')!r}, not "
            "here (it is a copy of a report, or a report moved here, or one of an earlier "
            "version); --overwrite replaces only the report it wrote at that path, so nothing "
            "was deleted. Choose another --out, or move or delete the folder yourself.")
    foreign = changed_in_folder(out, listing, leave_out=[REPORT_MARKER])
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{out} is a demo report, but also holds {len(foreign)} file(s) or folder(s) the "
            f"demo did not write or that changed since ({shown}); --overwrite would delete "
            "them, so nothing "
            "was deleted. Move them out of the folder, or choose another --out.")


def _write_marker(out: Path, files: list[str], *, listing: Path | None = None) -> None:
    """The report's marker: the files the demo writes, and once done every file, as written.

    ``listing``: the path the report is written for (it is written beside it, in ``out``),
    recorded with the listing of every file and folder.
    """
    from . import __version__

    record: dict[str, Any] = {"written_by": "histoexpr demo", "version": __version__,
                              "files": sorted(set(files))}
    if listing is not None:
        record["path"] = location(listing)
        record["listing"] = folder_listing(out, leave_out=[REPORT_MARKER])
    (out / REPORT_MARKER).write_text(json.dumps(record, indent=1))


def _run_jobs(report: _Report, scale: DemoSize, seed: int) -> None:
    """Make the data, then run the jobs in turn, each adding its metrics and figures."""
    import histoexpr as hx

    train, test = report.step("synthesise", lambda: [
        hx.datasets.synthetic_section(seed=seed + i, size_um=scale.section_um) for i in (0, 1)])
    report.metrics.update(_prepare(train, test, report))
    report.metrics["transcript_morphology"] = _transcript_morphology(train, test, scale, report)
    report.metrics["attention_mil"] = _attention_mil(seed, scale, report)
    report.metrics["contrastive"] = _contrastive(train, test, scale, report)
    report.metrics["spot_expression"] = _spot_expression(train, test, report)
    with warnings.catch_warnings():  # zarr announces a future default at every array written
        warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
        report.step("write_zarr", train.write, report.record("section.zarr"))


class _Report:
    """Timings, metrics and figures of a demo run."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.metrics: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self.figures: list[str] = []
        self.written: list[str] = []

    def record(self, name: str) -> Path:
        """Note in the folder's marker that the demo writes ``name`` (before writing it)."""
        self.written.append(name)
        _write_marker(self.out, self.written)
        return self.out / name

    def step(self, name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = function(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 2)
        print(f"histoexpr demo: {name:<24} {self.seconds[name]:6.1f} s", file=sys.stderr,
              flush=True)
        return result

    def figure(self, name: str, draw: Callable[[], Any]) -> None:
        import matplotlib.pyplot as plt

        result = draw()  # an Axes, a list of Axes or a Figure
        if isinstance(result, list):
            result = result[0]
        figure = getattr(result, "figure", result)
        figure.savefig(self.record(name), dpi=110, bbox_inches="tight")
        plt.close(figure)
        self.figures.append(name)

    def write(self, *, seed: int, size: str) -> None:
        self.metrics.update(seed=seed, size=size, seconds=self.seconds)
        self.record("metrics.json").write_text(json.dumps(self.metrics, indent=2,
                                                           default=float))
        self.record("summary.md").write_text(_summary(self.metrics, self.figures))


def _prepare(train, test, report: _Report) -> dict[str, Any]:
    """Tissue, grid tiles and spot tiles on both sections, with the first maps."""
    import histoexpr as hx

    for name, sdata in (("train", train), ("test", test)):
        report.step(f"tissue_and_tiles_{name}", _tile, sdata)
    table = train.tables["table"]
    gene = str(table.var_names[int(np.asarray(table.X.sum(axis=0)).argmax())])
    report.figure("tiles.png", lambda: hx.pl.tiles(train, "he_tiles", color="tissue_fraction"))
    report.figure("spots.png", lambda: hx.pl.spots(train, "spots", color=gene))
    return {
        "pixel_size_um": hx.io.get_pixel_size(train, "he"),
        "image_shape_yx": list(hx.io.image_levels(train, "he")[0].shape_yx),
        "n_cells": int(train.tables["cells_table"].n_obs),
        "n_spots": int(table.n_obs),
        "n_genes": int(table.n_vars),
        "n_tiles": int(train.tables["he_tiles_table"].n_obs),
        "gene_shown": gene,
    }


def _tile(sdata) -> None:
    import histoexpr as hx

    hx.pp.detect_tissue(sdata, "he")
    hx.pp.tile(sdata, "he", size_um=32.0, mpp=1.0)
    hx.pp.tile(sdata, "he", size_um=55.0, mpp=1.0, centres="spots", min_tissue=0.0,
               key_added="spot_tiles")


def _transcript_morphology(train, test, scale: DemoSize, report: _Report) -> dict[str, Any]:
    """Job 1 (Andersson et al.): transcript-defined classes, a CNN on DAPI, Dice on new tissue."""
    import histoexpr as hx

    for sdata in (train, test):
        hx.pp.transcript_labels(sdata, genes=LABEL_GENES, max_per_class=400)
    model = report.step("fit_patch_classifier", hx.tl.fit, train, model="patch_classifier",
                        size_um=(10.0, 20.0), mpp=0.5, epochs=scale.epochs, width=8)
    report.step("predict_labels", hx.tl.predict, model, test, stride_um=4.0)
    dice = hx.tl.evaluate(test, "pred_labels", "tx_labels")
    report.figure("labels.png", lambda: hx.pl.labels(test, "tx_labels", "pred_labels"))
    report.figure("training.png", lambda: hx.pl.history(model))
    return {"genes": list(LABEL_GENES), "dice": _column(dice, "dice"),
            "mean_dice": float(dice["dice"].drop("mean", errors="ignore").mean())}


def _attention_mil(seed: int, scale: DemoSize, report: _Report) -> dict[str, Any]:
    """Job 2 (Graziani et al.): attention MIL regresses bulk expression of held-out slides."""
    import histoexpr as hx

    cohort = report.step("synthesise_cohort", hx.datasets.synthetic_cohort, scale.n_slides,
                         seed=seed, size_um=scale.slide_um)
    cohort.bulk.obs["patient"] = [f"patient{i // 2}" for i in range(len(cohort))]  # 2 slides each
    for _, slide in cohort.items():
        hx.pp.tile(slide, "he", size_um=32.0, mpp=1.0, min_tissue=0.3)
        hx.tl.embed(slide, "he_tiles", encoder="handcrafted")
    result = report.step("cross_validate_abmil", hx.tl.cross_validate, cohort, model="abmil",
                         genes=list(PANEL), groups="patient", epochs=MIL_EPOCHS,
                         val_fraction=0, key_added="abmil")
    # out-of-fold predictions of every slide, pooled: each slide was predicted by a model that
    # never saw its patient
    scores = hx.tl.gene_correlations(np.asarray(result.X), result.layers["measured"],
                                     genes=list(result.var_names))
    first = str(result.obs["section"].iloc[0])
    report.figure("attention.png", lambda: hx.pl.attention(cohort[first], "he_tiles",
                                                           pred_key="abmil"))
    return {"pearson_per_gene": scores["pearson"].round(3).to_dict(),
            "mean_pearson": float(scores["pearson"].mean()), "slides": len(cohort)}


def _contrastive(train, test, scale: DemoSize, report: _Report) -> dict[str, Any]:
    """Job 3 (HistCode): contrastive pretraining beats random initialisation in a probe."""
    import histoexpr as hx

    encoder = report.step("pretrain_simclr", hx.tl.pretrain, train, "he_tiles",
                          method="simclr", epochs=scale.epochs, batch_size=64)
    random_init = hx.models.TileEncoder(arch=encoder.get_config()["arch"],
                                        in_channels=encoder.in_channels)
    scores = {}
    for name, network in (("pretrained", encoder), ("random_init", random_init)):
        hx.tl.embed(test, "he_tiles", encoder=network, key_added=f"X_{name}")
        regions = _regions_under_tiles(test)
        features = test.tables["he_tiles_table"].obsm[f"X_{name}"][regions > 0]
        groups = _halves(test)[regions > 0]
        frame = hx.tl.probe(features, regions[regions > 0], groups=groups)
        scores[name] = float(frame.iloc[0].get("balanced_accuracy", frame.iloc[0, 0]))
    return {"probe_balanced_accuracy": scores}


def _spot_expression(train, test, report: _Report) -> dict[str, Any]:
    """Beyond the papers: spot expression from H&E, predicted on a section as if H&E-only."""
    import histoexpr as hx

    model = report.step("fit_spot_regressor", hx.tl.fit, train, model="spot_regressor",
                        genes=list(PANEL), route="ridge", tiles_key="spot_tiles",
                        size_um=55.0, mpp=1.0)  # the pixel size the spot tiles were cut at
    hx.tl.predict(model, test, tiles_key="spot_tiles", key_added="predicted_expression")
    scores = hx.tl.evaluate(test, "predicted_expression", "table")
    report.figure("prediction.png", lambda: hx.pl.prediction(test, "predicted_expression",
                                                             genes=list(PANEL[:3])))
    return {"pearson_per_gene": scores["pearson"].round(3).to_dict(),
            "mean_pearson": float(scores["pearson"].mean())}


def _regions_under_tiles(sdata) -> np.ndarray:
    """Ground-truth region type at each tile centre (0 = outside tissue)."""
    import histoexpr as hx

    centres = sdata.tables["he_tiles_table"].obsm["spatial"]
    regions = hx.io.read_region(sdata, "regions", (0, 0, *_extent(sdata)), mpp=2.0, outside="fill")
    rows = np.clip((centres[:, 1] / 2.0).astype(int), 0, regions.shape[0] - 1)
    cols = np.clip((centres[:, 0] / 2.0).astype(int), 0, regions.shape[1] - 1)
    return np.asarray(regions)[rows, cols]


def _halves(sdata) -> np.ndarray:
    """Top and bottom half of the section: spatially disjoint folds for a probe."""
    centres = sdata.tables["he_tiles_table"].obsm["spatial"]
    return (centres[:, 1] > np.median(centres[:, 1])).astype(int)


def _extent(sdata) -> tuple[float, float]:
    import histoexpr as hx

    level = hx.io.image_levels(sdata, "he")[0]
    height, width = level.shape_yx
    return width * level.mpp, height * level.mpp


def _column(frame, column: str) -> dict[str, float]:
    return {str(k): round(float(v), 3) for k, v in frame[column].items()}


def _summary(metrics: dict[str, Any], figures: list[str]) -> str:
    morphology = metrics["transcript_morphology"]
    mil = metrics["attention_mil"]
    contrastive = metrics["contrastive"]["probe_balanced_accuracy"]
    spots = metrics["spot_expression"]
    lines = [
        "# histoexpr demo",
        "",
        f"Two synthetic sections (seed {metrics['seed']}, size {metrics['size']}): image "
        f"{metrics['image_shape_yx']} px at {metrics['pixel_size_um']} um/px, "
        f"{metrics['n_cells']} cells, {metrics['n_spots']} spots x {metrics['n_genes']} genes, "
        f"{metrics['n_tiles']} tiles. Every model is trained on the first section (or slides) and "
        "scored on data it never saw.",
        "",
        "| job | held-out result |",
        "|---|---|",
        f"| transcript-supervised morphology ({' / '.join(morphology['genes'])}) | mean Dice "
        f"{morphology['mean_dice']:.2f} |",
        f"| attention MIL on {mil['slides']} slides, patient folds | mean Pearson "
        f"{mil['mean_pearson']:.2f} |",
        f"| contrastive pretraining, region probe | balanced accuracy "
        f"{contrastive['pretrained']:.2f} (random init {contrastive['random_init']:.2f}) |",
        f"| spot expression from H&E | mean Pearson {spots['mean_pearson']:.2f} |",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {name} | {seconds} |" for name, seconds in metrics["seconds"].items()),
        "",
        *(f"![{name}]({name})" for name in figures),
        "",
    ]
    return "\n".join(lines)
