"""A synthetic cohort on disk: pyramidal TIFF slides, a manifest and bulk expression."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from .._core.files import (
    Found,
    check_replaceable,
    content_digest,
    file_digest,
    seal_of,
    written_beside,
)
from .._core.logs import logger
from .._core.seeds import resolve_seed
from .._core.validate import check_bool, check_choice, check_int
from ._cohort import _check_cohort, _draw_cohort, slide_ids

if TYPE_CHECKING:
    from spatialdata import SpatialData

_TILE = 256  # TIFF tile side (px)
_MIN_LEVEL_SIDE = 256  # reduced levels are halved down to this side
Compression = Literal["zlib", "jpeg", "none"]
_COMPRESSIONS = get_args(Compression)
MANIFEST = "manifest.csv"
BULK = "bulk.h5ad"
#: what a call wrote in its folder, each file with its seal (digest and path), written last
RECORD = ".synthetic_cohort.json"
#: what the slides, the bulk table and the manifest carry to say this function wrote them
_WRITTEN_BY = "hx.datasets.synthetic_slide_cohort"
_SOFTWARE = "histoexpr"


def synthetic_slide_cohort(
    path: str | Path,
    n_slides: int = 12,
    *,
    seed: int | None = None,
    size_um: float | tuple[float, float] = 400.0,
    mpp: float = 0.5,
    slides_per_patient: int = 2,
    max_tumour: float = 0.6,
    tumour_threshold: float = 0.25,
    mixing: float = 0.15,
    compression: Compression = "zlib",
    overwrite: bool = False,
) -> Path:
    """Write a synthetic cohort of whole-slide files, its manifest and its bulk expression.

    The slides are those of :func:`~histoexpr.datasets.synthetic_cohort` (same seed, same
    slides, same rule), each written as a tiled, pyramidal TIFF (RGB H&E, 256 px tiles, levels
    halved down to about 256 px, the pixel size in the resolution tags) that
    :func:`histoexpr.io.read_wsi` reads like a scanner's file. Read the result with
    :func:`histoexpr.io.read_cohort`.

    Parameters
    ----------
    path
        Folder to write into (created if needed).
    n_slides
        Number of slides.
    seed
        Random seed; ``None`` uses ``histoexpr.settings.seed``.
    size_um
        Side of each (square) slide in micrometres, or its ``(width, height)``.
    mpp
        Pixel size of the full-resolution level in um/px.
    slides_per_patient
        Consecutive slides share a patient, this many per patient (the last may have fewer).
    max_tumour
        Largest share of tissue area given to tumour regions.
    tumour_threshold
        Tumour-cell fraction from which a slide is diagnosed ``"tumour"``.
    mixing
        Share of the cells of a region that are not of the region's dominant type.
    compression
        Compression of the TIFF tiles: ``"zlib"`` (lossless), ``"jpeg"`` (as scanners write)
        or ``"none"``.
    overwrite
        Replace the manifest, bulk table and slide files a previous call wrote in ``path``.
        Only files this function wrote there, as it wrote them, are replaced: the slides and
        the bulk table carry its mark (``Software=histoexpr``, the bulk table's record) and
        every file is listed, with the digest of its bytes and of its path, in ``path``'s
        ``.synthetic_cohort.json``. Any other file of those names, or one changed, copied or
        moved there since (a bulk table the user annotated and saved), is refused with an
        error, before anything is written. The new files are all written beside the old ones
        and renamed into place together at the end: an interrupted call leaves the old cohort
        whole (and a later call removes what it left).

    Returns
    -------
    The manifest's path, ``<path>/manifest.csv``, with columns ``path`` (``slide_XX.tif``),
    ``slide_id``, ``patient`` and ``diagnosis``; beside it ``bulk.h5ad``, the slides x genes
    bulk expression of :func:`~histoexpr.datasets.synthetic_cohort` (``obs``: ``diagnosis``,
    ``n_cells``, ``fraction_<type>``).

    Notes
    -----
    The rule is that of :func:`~histoexpr.datasets.synthetic_cohort`: a slide's bulk expression
    is exactly the sum of its cells' counts, and its diagnosis is ``"tumour"`` when its
    tumour-cell fraction is at least ``tumour_threshold``. Slide ``i`` belongs to patient
    ``i // slides_per_patient``.

    Examples
    --------
    >>> import histoexpr as hx
    >>> manifest = hx.datasets.synthetic_slide_cohort("cohort", 4, seed=0)  # doctest: +SKIP
    >>> cohort = hx.io.read_cohort(manifest, bulk=manifest.parent / "bulk.h5ad")  # doctest: +SKIP

    """
    check_bool("overwrite", overwrite)
    import time

    import pandas as pd

    start = time.perf_counter()
    width_um, height_um = _check_cohort(n_slides, size_um, mpp, max_tumour, tumour_threshold,
                                        mixing)
    check_int("slides_per_patient", slides_per_patient, minimum=1)
    check_choice("compression", compression, _COMPRESSIONS)
    value = resolve_seed(seed)
    folder = Path(path).expanduser()
    manifest = folder / MANIFEST
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder; give path= a folder (new "
                                 "or existing) to write the cohort into.")
    # every file this call will write is checked first: only files this function wrote before
    # are replaced, and only with overwrite=True (nothing is written before all are checked)
    listed = _written_record(folder / RECORD) if folder.is_dir() else {}

    def as_written(mark):  # carries the mark, and is as the last call left it, at this path
        return lambda p: Found(listed.get(p.name), file_digest(p)) if mark(p) else None

    for slide_id in slide_ids(n_slides):
        check_replaceable(folder / f"{slide_id}.tif", overwrite=overwrite,
                          written_by=_WRITTEN_BY, ours=as_written(_our_slide))
    check_replaceable(folder / BULK, overwrite=overwrite, written_by=_WRITTEN_BY,
                      ours=as_written(_our_bulk))
    check_replaceable(manifest, overwrite=overwrite, written_by=_WRITTEN_BY,
                      ours=as_written(lambda p: p.name in listed))  # a CSV carries no mark
    check_replaceable(folder / RECORD, overwrite=overwrite, written_by=_WRITTEN_BY,
                      ours=_record_found)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    with contextlib.ExitStack() as new:  # every file beside its place; all swapped at the end
        partials: dict[str, Path] = {}

        def beside(name: str) -> Path:
            partials[name] = new.enter_context(written_beside(folder / name))
            return partials[name]

        def write(slide_id: str, sdata: SpatialData) -> None:
            name = f"{slide_id}.tif"
            image = np.asarray(sdata.images["he"]["scale0"]["image"].values
                               if hasattr(sdata.images["he"], "children")
                               else sdata.images["he"].values)
            write_pyramidal_tiff(beside(name), image, mpp=float(mpp), compression=compression)
            files[slide_id] = name

        _, bulk = _draw_cohort(n_slides, value, width_um=width_um, height_um=height_um,
                               mpp=mpp, max_tumour=max_tumour,
                               tumour_threshold=tumour_threshold, mixing=mixing,
                               transcripts=False, spots=False, sink=write)
        ids = list(bulk.obs_names)
        patients = [f"patient_{i // slides_per_patient:0{max(2, len(str(n_slides)))}d}"
                    for i in range(n_slides)]
        frame = pd.DataFrame({"path": [files[i] for i in ids], "slide_id": ids,
                              "patient": patients,
                              "diagnosis": bulk.obs["diagnosis"].astype(str).to_numpy()})
        text = frame.to_csv(index=False)
        bulk.uns["synthetic"].update({"slides_per_patient": slides_per_patient,
                                      "mpp": float(mpp), "size_um": [width_um, height_um],
                                      "written_by": _WRITTEN_BY,
                                      "manifest_sha256": _digest(text)})
        bulk.write_h5ad(beside(BULK))
        beside(MANIFEST).write_text(text)
        written = {name: seal_of(file_digest(partial), folder / name)
                   for name, partial in partials.items()}
        # while the files are swapped in, the record holds each as it was and as it will be:
        # a run killed among the renames leaves files that a later call still replaces
        _write_record(folder, {**listed, **{name: [seal, *listed.get(name, [])]
                                            for name, seal in written.items()}})
    kept = {name: seals for name, seals in listed.items()
            if name not in written and (folder / name).is_file()}
    _write_record(folder, {**kept, **{name: [seal] for name, seal in written.items()}})
    logger.info("Wrote a synthetic cohort of %d slides (%d patients) to %s in %.1f s",
                n_slides, len(set(patients)), folder, time.perf_counter() - start)
    return manifest


def _written_record(path: Path) -> dict[str, list[str]]:
    """The files the last call wrote in a folder: each name with its seals (empty: none).

    A record of an earlier version (sizes and times, no digests) lists each file with none.
    """
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("written_by") != _WRITTEN_BY \
            or not isinstance(record.get("files"), dict):
        return {}
    return {str(k): [s for s in (v if isinstance(v, list) else [v]) if isinstance(s, str)]
            for k, v in record["files"].items()}


def _record_found(path: Path) -> Found | None:
    """What the folder's record says of itself: its seal, the digest of the rest."""
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or record.get("written_by") != _WRITTEN_BY:
        return None
    seal = record.pop("seal", None)
    return Found(seal if isinstance(seal, str) else None, content_digest(record))


def _write_record(folder: Path, files: dict[str, list[str]]) -> None:
    """Write the folder's record (sealed) of the files the call wrote and their seals."""
    record = {"written_by": _WRITTEN_BY, "files": files}
    record["seal"] = seal_of(content_digest(record), folder / RECORD)
    with written_beside(folder / RECORD) as partial:
        partial.write_text(json.dumps(record, indent=1))


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _our_slide(path: Path) -> bool:
    """Whether ``path`` is a slide TIFF written by :func:`write_pyramidal_tiff`."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.pages[0].software == _SOFTWARE


def _our_bulk(path: Path) -> bool:
    """Whether ``path`` is the bulk table written by :func:`synthetic_slide_cohort`."""
    return _bulk_record(path).get("written_by") == _WRITTEN_BY


def _bulk_record(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as handle:
        group = handle.get("uns/synthetic")
        if group is None:
            return {}
        return {key: (value[()].decode() if isinstance(value[()], bytes) else value[()])
                for key, value in group.items() if key in ("written_by", "manifest_sha256")}


def write_pyramidal_tiff(path: Path, image: np.ndarray, *, mpp: float,
                         compression: Compression = "zlib") -> None:
    """Write a ``(c, y, x)`` uint8 image as a tiled pyramidal TIFF with its pixel size.

    The reduced levels (2x2 means, halved until a side is below 2 x 256 px) are SubIFDs of the
    full-resolution page, as in OME-TIFF pyramids.
    """
    import tifffile

    levels = [np.moveaxis(np.asarray(image, dtype=np.uint8), 0, -1)]
    while min(levels[-1].shape[:2]) // 2 >= _MIN_LEVEL_SIDE:
        previous = levels[-1]
        h, w = (previous.shape[0] // 2) * 2, (previous.shape[1] // 2) * 2
        reduced = previous[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))
        levels.append(np.rint(reduced).astype(np.uint8))
    options = {"tile": (_TILE, _TILE), "photometric": "rgb",
               "compression": None if compression == "none" else compression}
    if compression == "jpeg":
        options["compressionargs"] = {"level": 90}
    resolution = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, resolution=resolution,
                  resolutionunit="CENTIMETER", software=_SOFTWARE, **options)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **options)
