"""The imaging platforms' tables: CosMx exports prepared for spatialdata-io, and controls apart.

- :func:`cosmx_tables` hands spatialdata-io a CosMx export it can read: the tables of AtoMx
  exports (1.3 and later) are gzipped (``*_exprMat_file.csv.gz``...) and their metadata holds
  both ``cell_ID`` (the cell's number in its FOV, which spatialdata-io reads) and ``cell_id``
  (``"c_1_1_1"``), names that spatialdata refuses as case variants of one another. Such tables
  are decompressed (and their header renamed) into a temporary folder that histoexpr removes
  once they are read.
- :func:`merscope_points` reads MERSCOPE's transcripts (``detected_transcripts.csv``, or the
  gzipped ``.csv.gz`` that spatialdata-io does not look for), :func:`merscope_cells_folder`
  hands spatialdata-io a region folder whose transform it can read (it reads only a
  whitespace-separated one), and :func:`log_dropped_polygons` says how many cell polygons
  spatialdata-io left out (it drops invalid ones without a word).
- :func:`drop_control_points` drops the control probes and codewords (and, for Xenium, the
  transcripts below a quality value) from the points, and :func:`controls_apart` moves the
  control probes out of a cell table's ``X``, each with one log line that says how to keep them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .._core.logs import logger

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

#: the beginnings of the names of each platform's control probes and codewords (any case)
CONTROLS = {
    # 10x: negative control probes and codewords, unassigned and deprecated codewords, genomic
    # (intergenic) controls, and the blank codewords of early panels
    "Xenium": ("NegControlProbe_", "NegControlCodeword_", "UnassignedCodeword_",
               "DeprecatedCodeword_", "Intergenic_Region_", "BLANK_"),
    "MERSCOPE": ("Blank-",),  # Vizgen's blank barcodes (spatialdata-io's table rule)
    "CosMx": ("NegPrb", "Negative", "SystemControl", "FalseCode"),
}
#: the tables of a CosMx flat-file export, ``<dataset_id>_<name>.csv`` (or ``.csv.gz``)
COSMX_TABLES = ("exprMat_file", "metadata_file", "fov_positions_file", "tx_file")
#: the columns spatialdata-io reads from a CosMx export: kept where a case variant is renamed
_COSMX_COLUMNS = {"fov", "cell_ID", "CenterX_global_px", "CenterY_global_px", "CenterX_local_px",
                  "CenterY_local_px", "x_local_px", "y_local_px", "target"}


def control_names(names, platform: str, prefixes: tuple[str, ...] | None = None) -> list[str]:
    """The names among ``names`` that are ``platform``'s control probes or codewords.

    ``prefixes`` narrows the rule to some of the platform's beginnings of names.
    """
    prefixes = tuple(p.lower() for p in (prefixes or CONTROLS[platform]))
    return [str(n) for n in names if str(n).lower().startswith(prefixes)]


def drop_control_points(sdata: SpatialData, platform: str, *, keep_controls: bool,
                        min_qv: float | None = None, option: str = "keep_controls=True") -> None:
    """Drop the control probes' transcripts (and those of ``qv < min_qv``) from the points.

    ``sdata.points["transcripts"]`` (column ``gene``) is filtered lazily; the rows dropped are
    counted in one pass (which also finds the genes where their categories are not known yet)
    and logged with ``option``, the reader's option that keeps them.
    """
    import copy

    import dask
    import pandas as pd

    if "transcripts" not in sdata.points:
        return
    points = sdata.points["transcripts"]
    qv = min_qv is not None and "qv" in points.columns
    if keep_controls and not qv:
        return
    attrs = copy.deepcopy(dict(points.attrs))
    genes = points["gene"]
    low = (points["qv"] < min_qv) if qv else None
    names = _known(genes)
    counts = genes.value_counts().compute() if names is None else None  # one pass: the genes
    names = sorted(str(n) for n in counts.index) if names is None else names
    controls = [] if keep_controls else control_names(names, platform)
    is_control = genes.isin(controls)
    if counts is None or low is not None:
        n_controls, n_low, n_total = dask.compute(
            is_control.sum(), 0 if low is None else (low & ~is_control).sum(), genes.size)
    else:
        n_controls, n_low, n_total = counts.reindex(controls).fillna(0).sum(), 0, counts.sum()
    n_controls, n_low, n_total = int(n_controls), int(n_low), int(n_total)
    if not n_controls and not n_low and counts is None:
        return  # nothing to drop (and the categories known already)
    keep = ~genes.isin(controls)
    if low is not None:
        keep = keep & ~low
    points = points[keep]
    dropped = set(controls)
    points["gene"] = points["gene"].astype(pd.CategoricalDtype([n for n in names
                                                                 if n not in dropped]))
    points.attrs.update(attrs)
    del sdata.points["transcripts"]
    sdata.points["transcripts"] = points
    if not n_controls and not n_low:
        return
    found = [p + "*" for p in CONTROLS[platform] if control_names(controls, platform, (p,))]
    parts = [f"{n_controls:,} of control probes and codewords ({len(controls)} names: "
             f"{', '.join(found)})"] if n_controls else []
    if n_low:
        parts.append(f"{n_low:,} of quality below qv {min_qv:g} (10x's counts keep qv >= 20)")
        option = f"{option} and min_qv=None" if n_controls else "min_qv=None"
    logger.info("Dropped %s of %s transcripts of the %s output: %s. Pass %s to keep them.",
                f"{n_controls + n_low:,}", f"{n_total:,}", platform, " and ".join(parts),
                option)


def _known(genes) -> list[str] | None:
    """The categories of a (dask) categorical column where known, else ``None``."""
    dtype = genes.dtype
    if not hasattr(dtype, "categories") or not getattr(genes.cat, "known", True):
        return None
    return [str(c) for c in dtype.categories]


def controls_apart(table: AnnData, platform: str) -> AnnData:
    """``table`` without its control probes in ``X``: their counts in ``obsm["controls"]``."""
    import pandas as pd

    controls = control_names(table.var_names, platform)
    if not controls:
        return table
    is_control = table.var_names.isin(controls)
    values = table[:, is_control].X
    values = values.toarray() if hasattr(values, "toarray") else values
    kept = table[:, ~is_control].copy()
    kept.obsm["controls"] = pd.DataFrame(values, index=kept.obs_names, columns=controls)
    logger.info("Moved %d control probes (%s) of the %s cell table out of X into "
                "obsm['controls']. Pass keep_controls=True to keep them among the genes.",
                len(controls), ", ".join(controls[:5]) + (", ..." if len(controls) > 5 else ""),
                platform)
    return kept


def cosmx_table(folder: Path, dataset_id: str, name: str) -> Path | None:
    """The export's table ``name``: ``<dataset_id>_<name>.csv``, else its ``.csv.gz``."""
    for suffix in (".csv", ".csv.gz"):
        path = folder / f"{dataset_id}_{name}{suffix}"
        if path.is_file():
            return path
    return None


def cosmx_ids(folder: Path) -> list[str]:
    """The data sets of a CosMx export folder: the prefixes of its counts files."""
    ids = {p.name.split("_exprMat_file.csv")[0] for p in folder.glob("*_exprMat_file.csv*")
           if p.name.endswith(("_exprMat_file.csv", "_exprMat_file.csv.gz"))}
    return sorted(ids)


@contextlib.contextmanager
def cosmx_tables(folder: Path, dataset_id: str, names: list[str]) -> Iterator[str]:
    """The ``dataset_id`` to give :func:`spatialdata_io.cosmx`, for the time of the reading.

    Where the tables ``names`` are plain csv with no case-variant columns, ``dataset_id``
    itself. Otherwise each table is decompressed (its case variants renamed ``<name>_atomx``,
    logged), or linked, into a temporary folder, and the absolute prefix of its files is
    given: spatialdata-io joins ``path / f"{dataset_id}_exprMat_file.csv"``, which is that
    file, and still reads the images from ``path``. The folder is removed on leaving.
    """
    import tempfile

    tables = {name: cosmx_table(folder, dataset_id, name) for name in names}
    renames = {name: _case_variants(_header(path)) for name, path in tables.items()}
    if all(p.suffix == ".csv" for p in tables.values()) and not any(renames.values()):
        yield dataset_id
        return
    with tempfile.TemporaryDirectory(prefix="histoexpr-cosmx-") as temporary:
        prefix = Path(temporary) / "export"
        for name, path in tables.items():
            _copy_table(path, Path(f"{prefix}_{name}.csv"), renames[name])
            if renames[name]:
                logger.info("Renamed the column(s) %s of %s: spatialdata refuses column names "
                            "that differ only in case (AtoMx writes both cell_ID and cell_id).",
                            ", ".join(f"{o!r} to {n!r}" for o, n in renames[name].items()),
                            path.name)
        gzipped = [p.name for p in tables.values() if p.suffix == ".gz"]
        if gzipped:
            logger.info("Decompressed %s into a temporary folder (removed after reading).",
                        ", ".join(gzipped))
        yield str(prefix)


def _opener(path: Path):
    import gzip

    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _header(path: Path) -> list[str]:
    """The column names of a csv (gzipped or not), as written."""
    import csv

    with _opener(path) as handle:
        line = handle.readline().decode("utf-8-sig", errors="replace")
    return next(csv.reader([line.rstrip("\r\n")]), [])


def _case_variants(header: list[str]) -> dict[str, str]:
    """``{name: name + "_atomx"}`` for each column that differs from another only in case.

    The one spatialdata-io reads (``cell_ID``, ``fov``...) keeps its name, else the first.
    """
    groups: dict[str, list[str]] = {}
    for name in header:
        groups.setdefault(name.lower(), []).append(name)
    renames = {}
    for names in groups.values():
        if len(names) > 1:
            kept = next((n for n in names if n in _COSMX_COLUMNS), names[0])
            renames.update({n: f"{n}_atomx" for n in names if n != kept})
    return renames


def _copy_table(source: Path, target: Path, renames: dict[str, str]) -> None:
    """``source`` as plain csv at ``target``: linked where it can be.

    Otherwise copied, decompressed (a ``.gz``) and its header's columns renamed (``renames``).
    """
    import csv
    import io
    import shutil

    if source.suffix == ".csv" and not renames:
        with contextlib.suppress(OSError):
            target.symlink_to(source.resolve())
            return
    with _opener(source) as handle, open(target, "wb") as out:
        first = handle.readline()
        if renames:
            names = [renames.get(n, n) for n in _header(source)]
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerow(names)
            first = text.getvalue().encode("utf-8")
        out.write(first)
        shutil.copyfileobj(handle, out, 2**20)


#: MERSCOPE's transcripts: ``detected_transcripts.csv``, or gzipped (as GEO uploads hold it)
MERSCOPE_TRANSCRIPTS = ("detected_transcripts.csv", "detected_transcripts.csv.gz")
#: the files of a region folder that spatialdata-io reads for the cells (whole, at once)
_MERSCOPE_CELL_FILES = ("cell_by_gene.csv", "cell_metadata.csv", "cell_boundaries.parquet")


def merscope_points(path: Path):
    """The transcripts of a MERSCOPE region, lazily: points at ``global_x, global_y`` (um).

    As spatialdata-io reads ``detected_transcripts.csv`` (its ``z`` is ``global_z``), and a
    gzipped ``.csv.gz`` alike (read whole per partition: gzip cannot be split).
    """
    import dask.dataframe as dd
    from spatialdata.models import PointsModel
    from spatialdata.transformations import Identity

    from .._core.elements import COORDINATE_SYSTEM

    frame = dd.read_csv(path, **({"blocksize": None} if path.suffix == ".gz" else {}))
    missing = [c for c in ("global_x", "global_y", "gene") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"The MERSCOPE transcripts {str(path)!r} have no column {', '.join(missing)} (it "
            f"has {list(frame.columns)[:12]}). Copy the file again from the MERSCOPE output, or "
            "pass transcripts=False.")
    coordinates = {"x": "global_x", "y": "global_y"}
    if "global_z" in frame.columns:
        coordinates["z"] = "global_z"
    return PointsModel.parse(frame, coordinates=coordinates, feature_key="gene",
                             transformations={COORDINATE_SYSTEM: Identity()})


@contextlib.contextmanager
def merscope_cells_folder(folder: Path, transform: Path, matrix) -> Iterator[Path]:
    """The region folder to give :func:`spatialdata_io.merscope` for the cells.

    ``folder`` itself where its ``transform`` is separated by whitespace (as Vizgen writes it:
    spatialdata-io reads no other). Otherwise a temporary stand-in of the same name holding
    ``matrix`` written with spaces and the cell files (linked, else copied), which
    spatialdata-io reads whole at once; it is removed on leaving.
    """
    import re
    import shutil
    import tempfile

    import numpy as np

    if not re.search(r"[,;]", transform.read_text(errors="replace")):
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="histoexpr-merscope-") as temporary:
        stand_in = Path(temporary) / folder.name
        (stand_in / "images").mkdir(parents=True)
        np.savetxt(stand_in / "images" / transform.name, matrix, fmt="%.17g")
        for name in _MERSCOPE_CELL_FILES:
            if (folder / name).exists():
                try:
                    (stand_in / name).symlink_to((folder / name).resolve())
                except OSError:
                    shutil.copyfile(folder / name, stand_in / name)
        yield stand_in


def log_dropped_polygons(shapes, boundaries: Path) -> None:
    """Warn of the cells of ``boundaries`` (z plane 0) that have no polygon among ``shapes``.

    spatialdata-io leaves out the invalid polygons (a ring that crosses itself) without a word:
    their cells stay in the table, without a shape. Only two columns of the file are read.
    """
    import pandas as pd

    try:
        frame = pd.read_parquet(boundaries, columns=["EntityID", "ZIndex"])
    except (OSError, ValueError, KeyError) as error:  # another layout: nothing to compare
        logger.debug("Cell polygons of %s not counted (%s).", boundaries.name, error)
        return
    cells = frame.loc[frame["ZIndex"] == 0, "EntityID"].astype(str).unique()
    missing = sorted(set(cells) - set(shapes.index.astype(str)))
    if missing:
        logger.warning(
            "%d of the %d cell polygons of %s were left out by spatialdata-io as invalid (a "
            "ring that crosses itself): cells %s. Their cells stay in the table, without a "
            "polygon; to keep them, repair the file's polygons (shapely.make_valid) and store "
            "them in sdata.shapes.", len(missing), len(cells), boundaries.name,
            ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""))
