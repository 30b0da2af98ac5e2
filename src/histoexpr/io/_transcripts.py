"""Transcript tables (ISS, MERFISH, CosMx) as points in micrometres, with an optional image."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._core.labels import integer_labels
from .._core.logs import log_added, logger
from .._core.validate import check_choice
from ._elements import (
    channel_names,
    check_mpp,
    existing_file,
    image_element,
    numeric_table,
    read_plain_image,
    read_text_table,
    to_cyx,
)

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd
    from spatialdata import SpatialData


def read_transcripts(
    table: pd.DataFrame | str | Path,
    *,
    x: str = "x",
    y: str = "y",
    gene: str = "gene",
    pixel_size: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    flip_y: bool = False,
    image: np.ndarray | str | Path | None = None,
    image_mpp: float | None = None,
    image_key: str = "dapi",
    labels: np.ndarray | str | Path | None = None,
    labels_key: str = "nuclei",
    outside: Literal["error", "drop", "keep"] = "error",
) -> SpatialData:
    """Read decoded transcripts into points in micrometres, aligned with their image.

    The coordinates of the table are mapped to the ``"global"`` system (um) by::

        x_um = (table[x] - offset[0]) * pixel_size
        y_um = (s * table[y] - offset[1]) * pixel_size

    with ``s = -1`` when ``flip_y`` (tables whose y axis points up, or that store y negated,
    such as the Vizgen cell boundaries of the MERFISH example data) and ``s = 1`` otherwise.
    So ``pixel_size`` is the number of um per table unit (``1.0`` for tables in um such as
    MERFISH ``global_x``; the camera's um/px for tables in pixels such as ISS), and ``offset``
    holds the table coordinates of the top-left corner of the image's pixel ``(0, 0)`` (MERFISH:
    the mosaic's origin in um; ``(0, 0)`` for tables in the image's pixels). The image and the
    labels get a ``Scale(image_mpp)`` transformation, so a transcript at ``(x_um, y_um)`` lies on
    the image pixel ``(col, row) = (x_um, y_um) / image_mpp``.

    Parameters
    ----------
    table
        The transcripts, one row per decoded transcript: a DataFrame, a parquet file (e.g.
        Xenium's ``transcripts.parquet``: ``x="x_location", y="y_location",
        gene="feature_name"``) or a text table (``.csv``, ``.tsv``, ``.txt``, gzipped or not),
        whose separator (tab, comma or semicolon, with decimal commas) is read from its header
        line, whatever its name. A file is read whole: its memory (up to 6 times the table as
        pandas holds it, measured) is estimated first (from a text file's size and its first
        MiB; from a parquet file's row count and first rows), and a table larger than the memory
        limit is refused with a ``MemoryError`` that says how to read part of it. Gene names
        stored as bytes are decoded. The rows are kept as they are: control probes and
        low-quality decodings stay (the platform readers, e.g. :func:`histoexpr.io.read_xenium`,
        drop them).
    x
        Column of the x coordinate (image columns).
    y
        Column of the y coordinate (image rows).
    gene
        Column of the gene names.
    pixel_size
        Micrometres per table unit.
    offset
        ``(x, y)`` table coordinates (after the sign flip) of the image's top-left corner.
    flip_y
        Negate the y column first (y stored upwards or negated), as
        :func:`read_cell_boundaries` does; the image's rows still run downwards.
    image
        An optional image (path to a JPEG/PNG/TIFF, or an array ``(y, x)``, ``(y, x, c)`` or
        ``(c, y, x)``) of the same area, e.g. DAPI. A file is read whole: its memory is
        estimated from its header first (as :func:`histoexpr.io.read_wsi` does for JPEG/PNG).
    image_mpp
        Pixel size of ``image`` and ``labels`` in um/px; defaults to ``pixel_size`` (a table in
        the image's pixels).
    image_key
        Key of the image in ``sdata.images``.
    labels
        An optional label image (e.g. segmented nuclei) on the same pixel grid as ``image``: an
        integer array ``(y, x)``, a scipy sparse ``.npz`` file, or an image file. A float
        label image is accepted when it holds integers (converted, with a log line); one with
        non-integer values is refused. A file is made dense: its memory (about twice ``height x
        width x`` the bytes of its values) is estimated from its shape first.
    labels_key
        Key of the label image in ``sdata.labels``.
    outside
        What to do with transcripts outside the image (or the labels when there is no image):
        ``"error"`` raises, ``"drop"`` drops them and logs how many, ``"keep"`` keeps them.

    Returns
    -------
    A SpatialData with the points ``"transcripts"`` (``x``, ``y`` in um, ``feature_key="gene"``
    and the other columns of the table), and the image and labels when given.

    """
    from spatialdata import SpatialData
    from spatialdata.models import Labels2DModel, PointsModel
    from spatialdata.transformations import Identity

    check_choice("outside", outside, ("error", "drop", "keep"))
    pixel_size = check_mpp(pixel_size, "pixel_size")
    image_mpp = pixel_size if image_mpp is None else check_mpp(image_mpp, "image_mpp")
    frame = _read_table(table, "transcript table", (x, y, gene), "one field of view")
    missing = [c for c in (x, y, gene) if c not in frame.columns]
    if missing:
        raise KeyError(
            f"The transcript table has no column(s) {missing} (it has {list(frame.columns)}). "
            "Name the columns with x=, y= and gene= (e.g. x='global_x', y='global_y')."
        )
    n_rows = len(frame)
    if not n_rows:
        raise ValueError("The transcript table has no rows. Pass the complete table.")
    numeric_table(frame[[x, y]], f"coordinate columns {x!r}, {y!r} of the transcript table")
    coordinates = frame[[x, y]].to_numpy(dtype=np.float64)
    invalid = ~np.isfinite(coordinates).all(axis=1) | frame[gene].isna().to_numpy()
    if invalid.any():
        logger.warning("Dropped %d of %d transcripts without finite coordinates or a gene.",
                       int(invalid.sum()), n_rows)
        frame = frame[~invalid]
    if not len(frame):
        raise ValueError("No transcript of the table has finite coordinates and a gene. Check "
                         "the columns named by x=, y= and gene=.")
    xs = (frame[x].to_numpy(dtype=np.float64) - float(offset[0])) * pixel_size
    sign = -1.0 if flip_y else 1.0
    ys = (sign * frame[y].to_numpy(dtype=np.float64) - float(offset[1])) * pixel_size

    images, label_elements = {}, {}
    extent_px = None
    if image is not None:
        pixels = _image_array(image)
        extent_px = pixels.shape[1:]
        images[image_key] = image_element(
            pixels, mpp=image_mpp, channels=channel_names(pixels.shape[0], image_key))
        log_added("images", image_key,
                  f"{pixels.shape[2]}x{pixels.shape[1]} px, {image_mpp:.4g} um/px")
    if labels is not None:
        label_array = _labels_array(labels)
        if extent_px is not None and label_array.shape != tuple(extent_px):
            raise ValueError(f"The labels ({label_array.shape}) and the image ({extent_px}) "
                             "differ in shape; pass labels on the image's pixel grid.")
        extent_px = extent_px or label_array.shape
        from .._core.elements import scale_to_global

        label_elements[labels_key] = Labels2DModel.parse(
            label_array, dims=("y", "x"), transformations=scale_to_global(image_mpp),
            chunks=(1024, 1024))
        n_labels = int(np.count_nonzero(np.unique(label_array)))
        log_added("labels", labels_key,
                  f"{n_labels} labels (largest id {int(label_array.max())})"
                  if n_labels != int(label_array.max()) else f"{n_labels} labels")

    keep = np.ones(len(xs), dtype=bool)
    if extent_px is not None and outside != "keep":
        height_um, width_um = extent_px[0] * image_mpp, extent_px[1] * image_mpp
        keep = (xs >= 0) & (ys >= 0) & (xs < width_um) & (ys < height_um)
        n_out = int((~keep).sum())
        if n_out and outside == "error":
            raise ValueError(
                f"{n_out} of {len(keep)} transcripts fall outside the image ({width_um:.1f} x "
                f"{height_um:.1f} um; transcripts span x {xs.min():.1f}..{xs.max():.1f}, y "
                f"{ys.min():.1f}..{ys.max():.1f} um). Check pixel_size, offset and image_mpp, "
                "or pass outside='drop' to drop them."
            )
        if n_out:
            logger.info("Dropped %d of %d transcripts outside the image (outside='drop').",
                        n_out, len(keep))

    points = frame[keep].drop(columns=[x, y]).copy()
    if gene != "gene":
        points = points.drop(columns=["gene"], errors="ignore").rename(columns={gene: "gene"})
    points.insert(0, "x", xs[keep])
    points.insert(1, "y", ys[keep])
    points["gene"] = _as_text(points["gene"]).astype("category")
    points = points.reset_index(drop=True)
    element = PointsModel.parse(points, coordinates={"x": "x", "y": "y"}, feature_key="gene",
                                transformations={"global": Identity()})
    log_added("points", "transcripts",
              f"{len(points)} transcripts of {points['gene'].nunique()} genes")
    return SpatialData(images=images, labels=label_elements, points={"transcripts": element})


#: text read from the head of a table file to estimate the memory of the whole table
_SAMPLE_BYTES = 2**20
#: the table's memory (as pandas holds it) times this is the peak of the reader: the parser's
#: buffers, the table, its copy without the rows left out, the coordinates, the cell ids as text
#: and the points or polygons made of them (measured by tracemalloc on tables of 1-2 million
#: rows, plain and gzip: 4.3-5.6 for read_transcripts, 3.3-5.9 for read_cell_boundaries)
_PEAK_PER_TABLE_BYTE = 6.0


def _read_table(table, what: str, columns: tuple[str, ...], rows: str) -> pd.DataFrame:
    """The table: a DataFrame as given, or a file (parquet, or text of any separator) read whole.

    Its memory is estimated first (:func:`_check_table_memory`, :func:`_check_parquet_memory`);
    ``columns`` and ``rows`` name, in the error, what to read instead.
    """
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        return table
    if not isinstance(table, str | Path):
        raise TypeError(f"table must be a pandas DataFrame or the path of a csv, tsv or parquet "
                        f"file, got {type(table).__name__}.")
    path = existing_file(table, what)
    parquet = is_parquet(path)
    reader = "read_parquet(path, columns=" if parquet else "read_csv(path, usecols="
    fix = (f"Read the columns and rows you need yourself and pass the DataFrame (e.g. "
           f"pandas.{reader}{list(columns)!r}), or {rows}).")
    if parquet:
        _check_parquet_memory(path, what, fix)
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"The {what} file {str(path)!r} is not a readable parquet file "
                             f"({error}). Copy it again from the instrument's output.") from error
    options = text_format(path)
    _check_table_memory(path, options, what, fix)
    return read_text_table(path, what, **options)


def is_parquet(path: Path) -> bool:
    """Whether ``path`` is a parquet file (by its first bytes, whatever its name)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PAR1"
    except OSError:
        return False


def text_format(path: Path, default: str = ",") -> dict[str, str]:
    """``sep`` (and ``decimal``) of a text table, from its first two lines, not its name.

    The header's tab, else the more frequent of ``;`` and ``,``, else ``default``; ``;`` with
    numbers written ``1,5`` on the next line gives ``decimal=","`` (a European spreadsheet).
    """
    import gzip
    import re

    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", errors="replace") as handle:
            header, line = handle.readline(), handle.readline()
    except (OSError, EOFError, UnicodeDecodeError):
        return {"sep": default}  # read_text_table names the problem
    if "\t" in header:
        return {"sep": "\t"}
    if header.count(";") > header.count(","):
        if re.search(r"(^|;)\s*-?\d+,\d+\s*(;|$)", line):
            return {"sep": ";", "decimal": ","}
        return {"sep": ";"}
    return {"sep": "," if "," in header else default}


def _frame_bytes(sample: pd.DataFrame) -> float:
    """Bytes of ``sample`` as pandas holds it: numbers as 8 bytes, each distinct text once."""
    import sys

    import pandas as pd

    n_bytes = float(sample.memory_usage(index=True, deep=False).sum())
    for name, dtype in sample.dtypes.items():
        if dtype == np.dtype(object):  # text: each distinct value once (pandas shares them)
            n_bytes += sum(sys.getsizeof(v) for v in pd.unique(sample[name]))
    return n_bytes


def _check_table_memory(path: Path, options: dict, what: str, fix: str) -> None:
    """Refuse, from the file's size and its first MiB, a table too large for the memory limit.

    The head of the text (decompressed, for a ``.gz``) is parsed as the whole will be; its
    memory per byte of text (:func:`_frame_bytes`), times the bytes of text in the file (for a
    ``.gz``, its size times the head's expansion), times ``_PEAK_PER_TABLE_BYTE``, is the
    estimate. A file that cannot be read or parsed is left to :func:`read_text_table`, which
    names the problem.
    """
    import io
    import zlib

    import pandas as pd

    from .._core.memory import check_memory, format_bytes

    size = path.stat().st_size
    if path.suffix in (".bz2", ".xz", ".zip", ".zst", ".tar"):
        return  # compressions other than gzip: not estimated
    try:
        head, text_bytes = _table_head(path, size)
        if len(head) < text_bytes:  # the head's last line is cut: leave it out
            head = head[: head.rfind(b"\n") + 1]
        sample = pd.read_csv(io.BytesIO(head), **options) if head else None
    except (OSError, EOFError, zlib.error, ValueError, UnicodeDecodeError,
            pd.errors.ParserError, pd.errors.EmptyDataError):
        return
    if sample is None or not len(sample):
        return
    estimate = _frame_bytes(sample) / len(head) * text_bytes * _PEAK_PER_TABLE_BYTE
    check_memory(estimate, f"Reading the {what} {path.name} ({format_bytes(text_bytes)} of "
                 f"text, about {len(sample) / len(head) * text_bytes:,.0f} rows)", fix)


def _check_parquet_memory(path: Path, what: str, fix: str) -> None:
    """Refuse a parquet table too large for the memory limit, from its rows and first rows.

    The first (at most) 10,000 rows are read as pandas will hold them; their memory per row
    times the file's rows (its footer says how many), times ``_PEAK_PER_TABLE_BYTE``, is the
    estimate. A file that cannot be read is left to pandas, whose error is passed on.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .._core.memory import check_memory

    try:
        with pq.ParquetFile(path) as parquet:
            n_rows = parquet.metadata.num_rows
            batch = next(parquet.iter_batches(batch_size=10_000), None)
            sample = None if batch is None else batch.to_pandas()
    except (OSError, ValueError, pa.ArrowException):
        return
    if sample is None or not len(sample):
        return
    estimate = _frame_bytes(sample) / len(sample) * n_rows * _PEAK_PER_TABLE_BYTE
    check_memory(estimate, f"Reading the {what} {path.name} ({n_rows:,} rows)", fix)


def _as_text(values: pd.Series) -> pd.Series:
    """``values`` as text; bytes (older Xenium parquet files) decoded as UTF-8."""
    first = values.dropna().iloc[:1]
    if len(first) and isinstance(first.iloc[0], bytes):
        values = values.str.decode("utf-8")
    return values.astype(str)


def _table_head(path: Path, size: int) -> tuple[bytes, float]:
    """The first ``_SAMPLE_BYTES`` of a table's text, and the bytes of text of the whole file.

    A ``.gz`` is decompressed only as far as the head: the whole's text is its size times the
    head's expansion (or the exact size, when the head is the whole file).
    """
    import zlib

    with path.open("rb") as handle:
        if path.suffix != ".gz":
            return handle.read(_SAMPLE_BYTES), float(size)
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip header
        head, read = b"", 0
        while len(head) < _SAMPLE_BYTES and not inflate.eof:
            block = handle.read(64 * 2**10)
            if not block:
                break
            read += len(block)
            head += inflate.decompress(block, _SAMPLE_BYTES - len(head))
            read -= len(inflate.unconsumed_tail) + len(inflate.unused_data)
            if inflate.unconsumed_tail:
                break  # the head is full
    if inflate.eof and read >= size:
        return head, float(len(head))
    return head, len(head) * size / max(read, 1)


def _image_array(image) -> np.ndarray:
    if isinstance(image, str | Path):
        return read_plain_image(image, "image")
    return to_cyx(np.asarray(image))


def _labels_array(labels) -> np.ndarray:
    if isinstance(labels, str | Path):
        path = existing_file(labels, "labels")
        if path.suffix == ".npz":
            from scipy import sparse

            _check_dense_labels(path)
            array = sparse.load_npz(path).toarray()
        else:
            array = read_plain_image(path, "labels", colours=False)[0]
    else:
        array = np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"labels must be a 2-D label image (y, x), got shape {array.shape}. "
                         "Pass one plane of the segmentation.")
    return integer_labels(array, "label image passed as labels=")


def _check_dense_labels(path: Path) -> None:
    """Refuse, from the npz's shape and dtype (no value read), labels too large to densify.

    The dense array, the sorted copy that counts the labels, and for float ids their integer
    copy and masks. A file that is no sparse npz is left to scipy, which says so.
    """
    import zipfile

    from numpy.lib import format as npy

    from .._core.memory import check_memory

    try:
        with np.load(path, allow_pickle=False) as npz:
            shape = tuple(int(n) for n in npz["shape"])
        with zipfile.ZipFile(path) as archive, archive.open("data.npy") as member:
            version = npy.read_magic(member)
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            dtype = np.dtype(read(member)[2])
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return
    if len(shape) != 2:
        return  # refused with its shape after reading
    per_value = 2 * dtype.itemsize + (dtype.itemsize + 2 if dtype.kind == "f" else 0)
    check_memory(
        float(shape[0]) * shape[1] * per_value,
        f"The labels {path.name} as a dense {shape[1]:,} x {shape[0]:,} px array of "
        f"{dtype.name} (and the sorted copy that counts them)",
        "Crop the labels (and the image with them) to the region you need, or leave labels= "
        "out.")


def read_cell_boundaries(
    table: pd.DataFrame | str | Path,
    *,
    x: str = "x",
    y: str = "y",
    cell: str = "poly_ID",
    pixel_size: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    flip_y: bool = False,
) -> gpd.GeoDataFrame:
    """Read cell boundary polygons (one vertex per row) into a shapes element in micrometres.

    Vertices are mapped to the ``"global"`` system like the transcripts of
    :func:`read_transcripts`: ``x_um = (table[x] - offset[0]) * pixel_size`` and
    ``y_um = (s * table[y] - offset[1]) * pixel_size``, with ``s = -1`` when ``flip_y`` (tables
    that store y negated, such as the Vizgen cell boundaries of the MERFISH example data) and
    ``s = 1`` otherwise. Polygons with fewer than 3 vertices are dropped, and their number logged.

    A cell whose vertex list returns to its first vertex before its end holds several rings
    (the nuclei of a multinucleate cell in Xenium's ``nucleus_boundaries``, one ring per z plane
    in other exports): each ring is a polygon of the cell's MultiPolygon, never one polygon
    joining them. Polygons that are still invalid (a ring that crosses itself, as some Vizgen
    cells do, or rings of one cell that overlap) are repaired with :func:`shapely.make_valid`
    (``method="structure"``: the area they enclose is kept, the crossing rings become a
    MultiPolygon), and a warning says how many; cells whose repair leaves no area are dropped.

    Parameters
    ----------
    table
        The vertices, one row per vertex in the polygon's order: a DataFrame, a parquet file
        (e.g. Xenium's ``cell_boundaries.parquet``: ``x="vertex_x", y="vertex_y",
        cell="cell_id"``) or a text table (``.csv``, ``.gz``...; the separator read from its
        header), read as :func:`read_transcripts` reads its table.
    x
        Column of the x coordinate.
    y
        Column of the y coordinate.
    cell
        Column of the cell (polygon) identifier.
    pixel_size
        Micrometres per table unit.
    offset
        ``(x, y)`` table coordinates (after the sign flip) of the image's top-left corner.
    flip_y
        Negate the y column first.

    Returns
    -------
    A shapes element (GeoDataFrame of polygons, index: the cell identifiers as strings) for
    ``sdata.shapes``, e.g. ``sdata.shapes["cells"] = hx.io.read_cell_boundaries(...)``; it
    labels cells in :func:`histoexpr.pp.transcript_labels` (``cells=``).

    Examples
    --------
    >>> sdata.shapes["cells"] = hx.io.read_cell_boundaries(
    ...     "z0_polygons.gz", offset=(6400.029, 4699.967), flip_y=True)

    """
    import geopandas as gpd
    import pandas as pd
    from shapely import Polygon
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    pixel_size = check_mpp(pixel_size, "pixel_size")
    frame = _read_table(table, "boundary table", (x, y, cell), "the cells of one field of view")
    missing = [c for c in (x, y, cell) if c not in frame.columns]
    if missing:
        raise KeyError(f"The boundary table has no column(s) {missing} (it has "
                       f"{list(frame.columns)}); name them with x=, y= and cell=.")
    sign = -1.0 if flip_y else 1.0
    xs = (frame[x].to_numpy(dtype=np.float64) - float(offset[0])) * pixel_size
    ys = (sign * frame[y].to_numpy(dtype=np.float64) - float(offset[1])) * pixel_size
    ids = _as_text(frame[cell]).to_numpy()
    order = np.argsort(ids, kind="stable")
    names, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
    keep = counts >= 3
    if not keep.all():
        logger.info("Dropped %d of %d cells with fewer than 3 boundary vertices.",
                    int((~keep).sum()), len(keep))
    vertices = np.column_stack([xs[order], ys[order]])
    several = _several_rings(vertices, starts, counts)
    polygons = [_rings_polygon(vertices[s : s + n]) if many else Polygon(vertices[s : s + n])
                for s, n, many in zip(starts[keep], counts[keep], several[keep], strict=True)]
    shapes = gpd.GeoDataFrame(geometry=polygons, index=pd.Index(names[keep], name="cell_id"))
    shapes = _repaired(shapes)
    logger.info("Read %d cell polygons%s.", len(shapes),
                f" ({int(several[keep].sum())} of several rings)" if several[keep].any() else "")
    return ShapesModel.parse(shapes, transformations={"global": Identity()})


def _several_rings(vertices: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Whether each cell's vertex list returns to its first vertex before its last vertex."""
    first = np.repeat(starts, counts)
    position = np.arange(len(vertices)) - first
    back = (position >= 3) & (vertices == vertices[first]).all(axis=1)
    early = back & (position < np.repeat(counts, counts) - 1)
    cell = np.repeat(np.arange(len(counts)), counts)
    return np.bincount(cell[early], minlength=len(counts)) > 0


def _rings_polygon(vertices: np.ndarray):
    """The MultiPolygon of the rings of one cell: a ring ends where it returns to its start."""
    from shapely import MultiPolygon, Polygon

    rings, start = [], 0
    for end in range(len(vertices)):
        if end - start >= 3 and (vertices[end] == vertices[start]).all():
            rings.append(vertices[start : end + 1])
            start = end + 1
    if len(vertices) - start >= 3:  # an open ring at the end
        rings.append(vertices[start:])
    return MultiPolygon([Polygon(ring) for ring in rings])


def _repaired(shapes: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``shapes`` with its invalid polygons made valid (their area kept), and a warning."""
    import shapely

    invalid = ~shapes.geometry.is_valid.to_numpy()
    if not invalid.any():
        return shapes
    fixed = shapely.make_valid(shapes.geometry.to_numpy()[invalid], method="structure",
                               keep_collapsed=False)
    shapes = shapes.copy()
    shapes.loc[invalid, "geometry"] = fixed
    empty = shapes.geometry.is_empty.to_numpy()
    logger.warning(
        "%d of %d cell polygons were invalid (a ring crossing itself, or overlapping rings of "
        "one cell); repaired with shapely.make_valid(method='structure'), which keeps the area "
        "they enclose%s.", int(invalid.sum()), len(shapes),
        f", and {int(empty.sum())} left without area were dropped" if empty.any() else "")
    return shapes[~empty]
