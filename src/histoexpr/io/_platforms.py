"""Imaging-based platforms (Xenium, CosMx, MERSCOPE) read through spatialdata-io, in micrometres.

spatialdata-io's readers build each platform's elements; histoexpr then brings them to its own
conventions (see ``docs/design.md``):

- the ``"global"`` coordinate system is in micrometres: every element's transformation to
  ``"global"`` is composed with the platform's pixel size (spatialdata-io's ``"global"`` is in
  pixels of the morphology image), so that :func:`histoexpr.io.get_pixel_size` gives the image's
  um/px and transcripts, cells and images sit on one another;
- the transcripts are the points ``"transcripts"`` with a ``gene`` column, in um (what
  :func:`histoexpr.pp.transcript_labels` reads by default);
- the nuclear stain alone is ``sdata.images[image_key]`` (``"dapi"`` by default), the other
  stains ``sdata.images[stains_key]`` (``"stains"``), so that the steps that expect one nuclear
  channel see one (they would average the stains otherwise);
- Xenium's post-Xenium H&E image, aligned onto the transcripts by its alignment CSV, is
  ``sdata.images["he"]`` with its own pixel size.

The folder is checked before spatialdata-io is called, so a folder that is not the platform's
output, or misses a file the reader needs, gives an error that names the file and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._core.elements import COORDINATE_SYSTEM
from .._core.logs import log_added, logger
from .._core.validate import (
    check_bool,
    check_element_name,
    check_int,
    check_positive,
    check_store_name,
)
from ._elements import check_mpp
from ._platform_images import (
    focus_files_apart,
    he_files,
    mosaic_layer,
    read_focus_files,
    read_he,
    read_mosaics,
    split_stains,
)
from ._platform_tables import (
    COSMX_TABLES,
    MERSCOPE_TRANSCRIPTS,
    controls_apart,
    cosmx_ids,
    cosmx_table,
    cosmx_tables,
    drop_control_points,
    log_dropped_polygons,
    merscope_cells_folder,
    merscope_points,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: CosMx SMI camera pixel size (um/px) given in NanoString's documentation (0.12028 um/px).
COSMX_MPP = 0.12028

_MARKERS = {
    "Xenium": ("experiment.xenium", "hx.io.read_xenium"),
    "MERSCOPE": ("images/micron_to_mosaic_pixel_transform.csv", "hx.io.read_merscope"),
    "CosMx": ("*_exprMat_file.csv*", "hx.io.read_cosmx"),
}


def _folder(path: str | Path, platform: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"The {platform} output folder {str(folder)!r} does not exist. "
                                "Check the path.")
    if not folder.is_dir():
        raise NotADirectoryError(
            f"{str(folder)!r} is a file, not a {platform} output folder. Pass the folder that "
            "holds the instrument's output files.")
    return folder


def _check_keys(**keys: str | None) -> None:
    """Check each key names an element (``None``: not kept), and that no two are the same.

    Two equal keys would store one image over the other without a word (the H&E over the
    nuclear stain, the other stains over it).
    """
    for name, key in keys.items():
        if key is not None:
            check_element_name(name, key)
    given = [(name, key) for name, key in keys.items() if key is not None]
    for i, (name, key) in enumerate(given):
        for other, other_key in given[i + 1:]:
            if key == other_key:
                raise ValueError(f"{name} and {other} are both {key!r}: one image would be "
                                 f"stored over the other. Give them different keys (e.g. "
                                 f"{other}={key + '_2'!r}). Nothing was read.")


def _looks_like(folder: Path) -> str:
    """`` (it looks like a <platform> output: use <reader>)`` or an empty string."""
    for name, (pattern, reader) in _MARKERS.items():
        if any(folder.glob(pattern)):
            return f" It looks like a {name} output: read it with {reader}."
    return ""


def _require(folder: Path, names: list[str], platform: str, reader: str) -> None:
    """Raise one error naming every missing file (and the platform the folder looks like)."""
    missing = [n for n in names if not (folder / n).exists()]
    if not missing:
        return
    other = _looks_like(folder)
    if other and reader in other:
        other = ""
    raise FileNotFoundError(
        f"{str(folder)!r} is not a complete {platform} output folder: it has no "
        f"{', '.join(repr(n) for n in missing)}.{other} Pass the {platform} output folder "
        f"itself (the one holding {', '.join(repr(n) for n in names[:3])}), or turn off the "
        "parts you do not have (see the reader's options).")


def _affine_xy(transformation) -> np.ndarray:
    return np.asarray(transformation.to_affine_matrix(input_axes=("x", "y"),
                                                      output_axes=("x", "y")), dtype=np.float64)


def _simple(matrix: np.ndarray):
    """The transformation of a 3x3 (x, y) matrix: Identity, scale then translation, or Affine."""
    from spatialdata.transformations import Affine, Identity, Scale, Sequence, Translation

    if np.allclose(matrix, np.eye(3), rtol=0, atol=1e-9):
        return Identity()
    if abs(matrix[0, 1]) < 1e-12 and abs(matrix[1, 0]) < 1e-12:
        steps = [Scale([matrix[0, 0], matrix[1, 1]], axes=("x", "y"))]
        if matrix[0, 2] or matrix[1, 2]:
            steps.append(Translation([matrix[0, 2], matrix[1, 2]], axes=("x", "y")))
        return steps[0] if len(steps) == 1 else Sequence(steps)
    return Affine(matrix, input_axes=("x", "y"), output_axes=("x", "y"))


def _to_micrometres(sdata: SpatialData, pixels_to_um: np.ndarray) -> None:
    """Compose every element's ``"global"`` transformation with ``pixels_to_um``, in place.

    Points end in um with an identity to ``"global"`` (their coordinates are rewritten when the
    composition is not already the identity), so that the readers downstream read um directly.
    """
    import spatialdata as sd
    from spatialdata.transformations import Identity, get_transformation, set_transformation

    # spatialdata-io may hand one transformation dict to several elements (MERSCOPE does):
    # read every old transformation first, then give each element a dict of its own.
    olds = {(kind, key): get_transformation(element, get_all=True)
            for kind in ("images", "labels", "shapes", "points")
            for key, element in getattr(sdata, kind).items()}
    for (kind, key), old in olds.items():
        elements = getattr(sdata, kind)
        element = elements[key]
        transformation = _simple(pixels_to_um @ _affine_xy(old[COORDINATE_SYSTEM]))
        if kind == "points" and not isinstance(transformation, Identity):
            set_transformation(element, {**old, COORDINATE_SYSTEM: transformation}, set_all=True)
            element = sd.transform(element, to_coordinate_system=COORDINATE_SYSTEM)
            old = get_transformation(element, get_all=True)
            transformation = Identity()
        set_transformation(element, {**old, COORDINATE_SYSTEM: transformation}, set_all=True)
        elements[key] = element


def _rename_points(sdata: SpatialData, old: str, gene_column: str) -> None:
    """Store the points ``old`` as ``"transcripts"`` with a categorical ``gene`` column."""
    import copy

    import pandas as pd
    from spatialdata.models import PointsModel

    if old not in sdata.points:
        return
    points = sdata.points[old]
    attrs = copy.deepcopy(dict(points.attrs))
    if gene_column != "gene":
        points = points.drop(columns=["gene"], errors="ignore").rename(
            columns={gene_column: "gene"})
    if not isinstance(points["gene"].dtype, pd.CategoricalDtype):
        points["gene"] = points["gene"].astype(str).astype("category")
    points["gene"] = points["gene"].cat.as_known()
    points.attrs.update(attrs)
    points.attrs.setdefault(PointsModel.ATTRS_KEY, {})[PointsModel.FEATURE_KEY] = "gene"
    if old != "transcripts":
        del sdata.points[old]
    else:
        del sdata.points["transcripts"]
    sdata.points["transcripts"] = points


def _log_result(sdata: SpatialData, platform: str, image_key: str | None) -> None:
    from .._core.image import get_pixel_size

    if image_key is not None and image_key in sdata.images:
        log_added("images", image_key, f"{get_pixel_size(sdata, image_key):.4g} um/px")
    if "transcripts" in sdata.points:
        log_added("points", "transcripts", "x, y in um, column 'gene'")
    for key, table in sdata.tables.items():
        log_added("tables", key, f"{table.n_obs} cells x {table.n_vars} genes")
    logger.info("Read a %s output; 'global' is in micrometres.", platform)


def read_xenium(
    path: str | Path,
    *,
    cells: bool = True,
    transcripts: bool = True,
    image: bool = True,
    image_key: str = "dapi",
    stains_key: str | None = "stains",
    nuclear_stain: str = "DAPI",
    he_image: str | Path | Literal["auto"] | None = "auto",
    he_alignment: str | Path | Literal["auto"] | None = "auto",
    he_key: str = "he",
    keep_controls: bool = False,
    min_qv: float | None = 20.0,
) -> SpatialData:
    """Read a 10x Genomics Xenium output folder (``outs/``) through spatialdata-io.

    :func:`spatialdata_io.xenium` reads the files; histoexpr then puts ``"global"`` in
    micrometres (the pixel size is ``pixel_size`` of ``experiment.xenium``), stores the
    transcripts as ``sdata.points["transcripts"]`` (column ``gene``, from ``feature_name``), the
    DAPI channel of the morphology focus image alone as ``sdata.images[image_key]`` and its other
    stains (XOA 2 and later: boundary, interior RNA and protein) as ``sdata.images[stains_key]``.
    The cell table (``"table"``), the cell and nucleus polygons and label images keep
    spatialdata-io's names.

    The post-Xenium H&E image (``*he_image.ome.tif``, found in the folder by default) is read by
    :func:`spatialdata_io.xenium_aligned_image` with its alignment CSV (``*he_imagealignment.csv``,
    exported from Xenium Explorer: a 3x3 matrix from H&E pixels to morphology pixels) and stored
    as ``sdata.images[he_key]`` with its own pixel size (``Scale(mpp)`` and a translation, in um),
    so that transcripts and cells drawn on it land on their pixels. An alignment that rotates the
    image is resampled lazily onto an axis-aligned grid at the H&E's own pixel size. An H&E
    image without an alignment file is refused (an unaligned H&E would sit silently off the
    transcripts) unless ``he_alignment=None`` says that it is already registered pixel for pixel
    onto the morphology image.

    Parameters
    ----------
    path
        The Xenium output folder: it holds ``experiment.xenium``, ``cells.zarr.zip``,
        ``transcripts.parquet``, ``cell_feature_matrix.h5``, ``cells.parquet``,
        ``cell_boundaries.parquet``, ``nucleus_boundaries.parquet`` and the morphology image
        (``morphology_focus.ome.tif``, or the folder ``morphology_focus/`` from XOA 2.0).
    cells
        Read the cell table, the cell and nucleus boundaries and their label images.
    transcripts
        Read the transcripts.
    image
        Read the morphology focus image.
    image_key
        Key of the nuclear stain (one channel) in ``sdata.images``.
    stains_key
        Key of the other stains of the morphology image in ``sdata.images`` (only written when
        there are other stains); ``None`` does not keep them.
    nuclear_stain
        Name of the nuclear stain's channel (case-insensitive); a one-channel image (XOA 1) is
        the nuclear stain whatever its name.
    he_image
        The H&E image: ``"auto"`` reads the folder's ``*he_image.ome.tif`` if it has one, a path
        reads that OME-TIFF, ``None`` reads none. A relative path is read from ``path`` (the
        Xenium folder), never from the working folder: give an absolute path for a file
        elsewhere.
    he_alignment
        The H&E's alignment CSV: ``"auto"`` takes ``<image name>alignment.csv`` next to the
        image (10x's name, e.g. ``he_imagealignment.csv``), a path reads that CSV (a relative
        path from ``path``, as for ``he_image``), ``None`` means that the image is already
        registered pixel for pixel onto the morphology image.
    he_key
        Key of the H&E image in ``sdata.images``.
    keep_controls
        Keep the transcripts of the control probes and codewords (``NegControlProbe_*``,
        ``NegControlCodeword_*``, ``UnassignedCodeword_*``, ``DeprecatedCodeword_*``,
        ``Intergenic_Region_*``, ``BLANK_*``) among the points; by default they are dropped (a
        log line says how many), as 10x's cell counts leave them out. The cell table holds the
        gene expression features only either way (spatialdata-io's ``gex_only``).
    min_qv
        Drop the transcripts whose quality value ``qv`` is below this (20 by default: 10x
        counts only transcripts of ``qv >= 20``); ``None`` keeps them all.

    Returns
    -------
    A SpatialData in histoexpr's conventions: ``"global"`` in um, the images with a
    ``Scale(mpp)`` transformation, ``points["transcripts"]`` in um.

    Examples
    --------
    >>> sdata = hx.io.read_xenium("Xenium_run/outs")
    >>> hx.io.get_pixel_size(sdata, "dapi")
    0.2125
    >>> sdata = hx.io.read_xenium("outs", he_image="he.ome.tif", he_alignment="he_alignment.csv")
    >>> hx.io.read_region(sdata, "he", (100.0, 100.0, 200.0, 200.0), mpp=0.5).shape
    (3, 200, 200)

    """
    from spatialdata_io import xenium

    from .._core.image import get_pixel_size

    cells, transcripts = check_bool("cells", cells), check_bool("transcripts", transcripts)
    image, keep_controls = check_bool("image", image), check_bool("keep_controls", keep_controls)
    if min_qv is not None:
        min_qv = check_positive("min_qv", min_qv, allow_zero=True)
    _check_keys(image_key=image_key, stains_key=stains_key, he_key=he_key)
    folder = _folder(path, "Xenium")
    if transcripts and not (folder / "transcripts.parquet").exists():
        _no_xenium_parquet(folder)
    needed = ["experiment.xenium", "cells.zarr.zip"]
    if transcripts:
        needed.append("transcripts.parquet")
    if cells:
        needed += ["cell_feature_matrix.h5", "cells.parquet", "cell_boundaries.parquet",
                   "nucleus_boundaries.parquet"]
    _require(folder, needed, "Xenium", "hx.io.read_xenium")
    if image and not ((folder / "morphology_focus.ome.tif").exists()
                      or (folder / "morphology_focus").is_dir()):
        raise FileNotFoundError(
            f"The Xenium folder {str(folder)!r} has no morphology image (neither "
            "'morphology_focus.ome.tif' nor the folder 'morphology_focus/'). Copy it from the "
            "run's output, or pass image=False to read the rest.")
    mpp = _xenium_pixel_size(folder / "experiment.xenium")
    he = he_files(folder, he_image, he_alignment)
    he_element = read_he(*he, mpp) if he is not None else None
    # one file per channel, each describing only its own: read here (spatialdata-io reads the
    # multi-file OME-TIFF XOA writes through its first file)
    focus_files = focus_files_apart(folder) if image else None
    focus = read_focus_files(focus_files) if focus_files else None
    sdata = xenium(
        folder, cells_boundaries=cells, nucleus_boundaries=cells, cells_labels=cells,
        nucleus_labels=cells, cells_table=cells, transcripts=transcripts, morphology_mip=False,
        morphology_focus=image and focus is None, aligned_images=False,
    )
    if focus is not None:
        sdata.images["morphology_focus"] = focus
    _to_micrometres(sdata, np.diag([mpp, mpp, 1.0]))
    _rename_points(sdata, "transcripts", "feature_name")
    drop_control_points(sdata, "Xenium", keep_controls=keep_controls, min_qv=min_qv)
    split_stains(sdata, "morphology_focus", image_key, stains_key, nuclear_stain, "Xenium")
    if he_element is not None:
        sdata.images[he_key] = he_element
        log_added("images", he_key, f"H&E {he[0].name}, {get_pixel_size(sdata, he_key):.4g} um/px"
                  + ("" if he[1] is None else f", aligned by {he[1].name}"))
    _log_result(sdata, "Xenium", image_key)
    return sdata


def _no_xenium_parquet(folder: Path) -> None:
    """Refuse a Xenium folder whose transcripts are only a csv (GEO), naming the reader to use."""
    text = next((p.name for p in (folder / "transcripts.csv.gz", folder / "transcripts.csv")
                 if p.exists()), None)
    if text is not None:
        raise FileNotFoundError(
            f"The Xenium folder {str(folder)!r} holds {text} but no 'transcripts.parquet' (as "
            "GEO bundles do), which spatialdata-io reads. Read the transcripts with "
            f"hx.io.read_transcripts({text!r}, x='x_location', y='y_location', "
            "gene='feature_name') and the rest with hx.io.read_xenium(..., transcripts=False).")


def _xenium_pixel_size(specs_path: Path) -> float:
    try:
        specs = json.loads(specs_path.read_text())
        return check_mpp(specs["pixel_size"], "pixel_size")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(specs_path)!r} is not a readable JSON file ({error}). Copy it "
                         "again from the run's output.") from error
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{str(specs_path)!r} gives no valid 'pixel_size' (um/px) ({error}). "
                         "Copy it again from the run's output folder.") from error


def read_merscope(
    path: str | Path,
    *,
    z_layer: int | None = None,
    vpt_outputs: str | Path | None = None,
    cells: bool = True,
    transcripts: bool = True,
    image: bool = True,
    image_key: str = "dapi",
    stains_key: str | None = "stains",
    nuclear_stain: str = "DAPI",
    keep_controls: bool = False,
) -> SpatialData:
    """Read a Vizgen MERSCOPE region folder (the cells through spatialdata-io).

    :func:`spatialdata_io.merscope` reads the cell table and polygons; histoexpr reads the
    mosaics (tile by tile) and the transcripts itself, puts ``"global"`` in micrometres using
    ``images/micron_to_mosaic_pixel_transform.csv`` (its inverse maps mosaic pixels to um, so
    the mosaic gets ``Scale(mpp)`` and a translation to the mosaic's corner, and the transcripts
    and cell polygons keep their ``global_x``/``global_y`` in um), stores the transcripts as
    ``sdata.points["transcripts"]``, the DAPI mosaic of ``z_layer`` (``mosaic_DAPI_z<z>.tif``)
    alone as ``sdata.images[image_key]`` and the other stains' mosaics
    (``mosaic_<stain>_z<z>.tif``, one channel each) as ``sdata.images[stains_key]``. The cell
    table (``"table"``) and polygons keep spatialdata-io's names; the polygons spatialdata-io
    leaves out as invalid (a ring that crosses itself) are counted in a warning.

    The transform may be separated by spaces (as Vizgen writes it), tabs or commas (as a
    spreadsheet saves it); the transcripts may be gzipped (``detected_transcripts.csv.gz``).

    Parameters
    ----------
    path
        The region folder: it holds ``detected_transcripts.csv`` (or ``.csv.gz``),
        ``cell_by_gene.csv``, ``cell_metadata.csv``, ``cell_boundaries.parquet`` and
        ``images/`` (with ``micron_to_mosaic_pixel_transform.csv`` and the ``mosaic_*_z*.tif``
        images).
    z_layer
        The z plane of the mosaic images to read. ``None`` reads the middle one of the planes
        the folder has (z3 of a full output's z0 to z6, as before this default; z0 of an output
        that kept only z0), logged; a plane the folder does not have is refused, naming those
        it has.
    vpt_outputs
        A folder of the Vizgen post-processing tool's outputs (re-segmented cells) to read the
        cells from instead of ``path``.
    cells
        Read the cell table and the cell polygons.
    transcripts
        Read the transcripts.
    image
        Read the mosaic images of ``z_layer``.
    image_key
        Key of the nuclear stain's mosaic (one channel) in ``sdata.images``.
    stains_key
        Key of the other stains' mosaics in ``sdata.images`` (only written when there are other
        stains); ``None`` does not keep them.
    nuclear_stain
        The nuclear stain (case-insensitive), as named in ``mosaic_<stain>_z<z>.tif``.
    keep_controls
        Keep the transcripts of the blank barcodes (``Blank-*``) among the points; by default
        they are dropped (a log line says how many). The cell table holds the genes only
        either way, the blanks' counts in ``obsm["blank"]`` (spatialdata-io's rule).

    Returns
    -------
    A SpatialData in histoexpr's conventions: ``"global"`` in um, the image with a
    ``Scale(mpp)`` transformation and its corner's offset, ``points["transcripts"]`` in um.

    Examples
    --------
    >>> sdata = hx.io.read_merscope("region_0", z_layer=3)
    >>> hx.pp.transcript_labels(sdata, genes=("Slc17a7", "Gfap"))

    """
    from spatialdata import SpatialData

    cells, transcripts = check_bool("cells", cells), check_bool("transcripts", transcripts)
    image, keep_controls = check_bool("image", image), check_bool("keep_controls", keep_controls)
    if z_layer is not None:
        z_layer = check_int("z_layer", z_layer, minimum=0)
    _check_keys(image_key=image_key, stains_key=stains_key)
    folder = _folder(path, "MERSCOPE")
    transform = "images/micron_to_mosaic_pixel_transform.csv"
    needed = [transform]
    points_file = next((n for n in MERSCOPE_TRANSCRIPTS if (folder / n).is_file()),
                       MERSCOPE_TRANSCRIPTS[0])
    if transcripts:
        needed.append(points_file)
    if cells and vpt_outputs is None:
        needed += ["cell_by_gene.csv", "cell_metadata.csv", "cell_boundaries.parquet"]
    _require(folder, needed, "MERSCOPE", "hx.io.read_merscope")
    if vpt_outputs is not None:
        vpt = _folder(vpt_outputs, "Vizgen post-processing tool")
        _require(vpt, ["cell_by_gene.csv", "cell_metadata.csv"], "VPT", "hx.io.read_merscope")
        boundaries = ("cellpose_micron_space.parquet", "watershed_micron_space.parquet")
        if cells and not any((vpt / name).exists() for name in boundaries):
            raise FileNotFoundError(
                f"The VPT folder {str(vpt)!r} has no cell boundaries ({' or '.join(boundaries)}). "
                "Pass the folder the post-processing tool wrote, or cells=False.")
    if image:
        z_layer, stains = mosaic_layer(folder / "images", z_layer)
    matrix = _merscope_transform(folder / transform)
    sdata = SpatialData()
    if cells:
        from spatialdata_io import merscope

        with merscope_cells_folder(folder, folder / transform, matrix) as readable:
            sdata = merscope(
                readable, vpt_outputs=vpt_outputs, z_layers=None, transcripts=False,
                cells_boundaries=True, cells_table=True, mosaic_images=False,
                slide_name=folder.parent.name, region_name=folder.name)
        if len(sdata.shapes) == 1:
            log_dropped_polygons(next(iter(sdata.shapes.values())),
                                 _merscope_boundaries(folder, vpt_outputs))
    mosaic = f"{folder.parent.name}_{folder.name}_z{z_layer}"
    if image:  # before the transformation to um: in mosaic pixels, as spatialdata-io's
        sdata.images[mosaic] = read_mosaics(folder / "images", stains, z_layer)
    _to_micrometres(sdata, np.linalg.inv(matrix))
    if transcripts:  # in um already (global_x, global_y)
        sdata.points["transcripts"] = merscope_points(folder / points_file)
        drop_control_points(sdata, "MERSCOPE", keep_controls=keep_controls)
        _rename_points(sdata, "transcripts", "gene")
    if image:
        split_stains(sdata, mosaic, image_key, stains_key, nuclear_stain, "MERSCOPE", sort=True)
    _log_result(sdata, "MERSCOPE", image_key)
    return sdata


def _merscope_boundaries(folder: Path, vpt_outputs: str | Path | None) -> Path:
    """The cell boundaries spatialdata-io reads: the VPT folder's, else the region's."""
    if vpt_outputs is None:
        return folder / "cell_boundaries.parquet"
    vpt = Path(vpt_outputs)
    return next((vpt / n for n in ("cellpose_micron_space.parquet",
                                   "watershed_micron_space.parquet") if (vpt / n).exists()),
                vpt / "cellpose_micron_space.parquet")


def _merscope_transform(path: Path) -> np.ndarray:
    """The 3x3 micron-to-mosaic-pixel matrix, checked to scale both axes alike.

    Its numbers may be separated by spaces or tabs (Vizgen's file), commas or semicolons.
    """
    import re

    try:
        rows = [re.split(r"[\s,;]+", line.strip()) for line in
                path.read_text(errors="replace").splitlines() if line.strip()]
        matrix = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{str(path)!r} is not a 3x3 table of numbers ({error}). Copy it again "
                         "from the MERSCOPE output.") from error
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all():
        raise ValueError(f"{str(path)!r} holds a {matrix.shape} matrix; expected the 3x3 "
                         "micron-to-mosaic-pixel transform. Copy it again from the MERSCOPE "
                         "output.")
    sx, sy = matrix[0, 0], matrix[1, 1]
    if sx <= 0 or sy <= 0 or abs(matrix[0, 1]) > 1e-9 or abs(matrix[1, 0]) > 1e-9 \
            or abs(sx - sy) > 1e-3 * max(sx, sy):
        raise ValueError(f"{str(path)!r} does not map micrometres to square, axis-aligned "
                         f"mosaic pixels (matrix {matrix.tolist()}). Check the file; histoexpr "
                         "reads only axis-aligned mosaics.")
    return matrix


def read_cosmx(
    path: str | Path,
    *,
    mpp: float = COSMX_MPP,
    dataset_id: str | None = None,
    transcripts: bool = True,
    keep_controls: bool = False,
) -> SpatialData:
    """Read a NanoString CosMx SMI flat-file export through spatialdata-io.

    :func:`spatialdata_io.cosmx` reads the files (one image, label image and set of transcripts
    per field of view, FOV); histoexpr then puts ``"global"`` in micrometres by composing the
    reader's FOV-to-slide pixel transformations with ``Scale(mpp)``, and gathers the transcripts
    of all FOVs into ``sdata.points["transcripts"]`` (x, y in um, column ``gene`` from
    ``target``, and the columns ``fov`` and ``cell_ID``). The images (``"<fov>_image"``),
    label images (``"<fov>_labels"``) and the cell table (``"table"``, ``obsm["spatial"]`` in
    um) keep spatialdata-io's names; its other coordinate systems (one per FOV, in pixels) are
    kept as they are.

    AtoMx exports (1.3 and later) are read as they come: their gzipped tables are decompressed
    into a temporary folder (in :func:`tempfile.gettempdir`, so it needs their decompressed
    size on disk) that is removed once they are read, and a metadata column that differs from
    another only in case (AtoMx's ``cell_id``, ``"c_1_1_1"``, beside ``cell_ID``) is renamed
    ``<name>_atomx`` (logged), since spatialdata refuses such names.

    Parameters
    ----------
    path
        The export folder: ``<id>_exprMat_file.csv``, ``<id>_metadata_file.csv``,
        ``<id>_fov_positions_file.csv``, ``<id>_tx_file.csv`` (each may be gzipped,
        ``.csv.gz``) and the folders ``CellComposite/`` and ``CellLabels/`` (images
        ``*_F<fov>.<tif|jpg|png>``).
    mpp
        Pixel size of the CosMx camera in um/px (the files do not state it; 0.12028 for the
        CosMx SMI).
    dataset_id
        The ``<id>`` prefix of the files; found from the counts file when there is one.
    transcripts
        Read the transcripts.
    keep_controls
        Keep the control probes (``NegPrb*``, ``Negative*``, ``SystemControl*``,
        ``FalseCode*``) among the genes of the table's ``X`` and the points. By default their
        counts move to the table's ``obsm["controls"]`` (a DataFrame, cells x probes) and their
        transcripts are dropped, each with a log line.

    Returns
    -------
    A SpatialData in histoexpr's conventions: ``"global"`` in um, ``points["transcripts"]``.

    Examples
    --------
    >>> sdata = hx.io.read_cosmx("Lung5_Rep1", mpp=0.12028)
    >>> sorted(sdata.images)[:2]
    ['1_image', '2_image']

    """
    from spatialdata_io import cosmx

    mpp = check_positive("mpp", mpp, unit="um/px")
    transcripts = check_bool("transcripts", transcripts)
    keep_controls = check_bool("keep_controls", keep_controls)
    folder = _folder(path, "CosMx")
    if dataset_id is None:
        ids = cosmx_ids(folder)
        if len(ids) != 1:
            other = _looks_like(folder) if not ids else ""
            raise FileNotFoundError(
                f"{str(folder)!r} holds {len(ids)} CosMx counts files (*_exprMat_file.csv or "
                f".csv.gz).{other} " + ("Pass the CosMx export folder." if not ids else
                                        f"Pass dataset_id= to choose one of {ids}."))
        dataset_id = ids[0]
    else:  # the prefix of the files read: never a path out of the folder
        check_store_name("dataset_id", dataset_id, what="CosMx data set (the prefix of its files)")
    names = [n for n in COSMX_TABLES if transcripts or n != "tx_file"]
    tables = [getattr(cosmx_table(folder, dataset_id, n), "name", f"{dataset_id}_{n}.csv")
              for n in names]  # the .csv (or .csv.gz) there, else the .csv named as missing
    _require(folder, [*tables, "CellComposite", "CellLabels"], "CosMx", "hx.io.read_cosmx")
    with cosmx_tables(folder, dataset_id, names) as readable_id:
        sdata = cosmx(folder, dataset_id=readable_id, transcripts=transcripts)
    _to_micrometres(sdata, np.diag([mpp, mpp, 1.0]))
    fov_points = [k for k in sdata.points.keys() if k.endswith("_points")]
    if fov_points:
        import pandas as pd
        from spatialdata.models import PointsModel
        from spatialdata.transformations import Identity

        frames = [sdata.points[k][["x", "y", "target", "fov", "cell_ID"]].compute()
                  for k in fov_points]
        for frame in frames:  # categories differ between FOVs
            frame["cell_ID"] = frame["cell_ID"].astype(np.int64)
        merged = pd.concat(frames).reset_index(drop=True)
        for key in fov_points:
            del sdata.points[key]
        merged = merged.rename(columns={"target": "gene"})
        merged["gene"] = merged["gene"].astype(str).astype("category")
        sdata.points["transcripts"] = PointsModel.parse(
            merged, coordinates={"x": "x", "y": "y"}, feature_key="gene",
            transformations={COORDINATE_SYSTEM: Identity()})
    if not keep_controls:
        drop_control_points(sdata, "CosMx", keep_controls=False)
    if "table" in sdata.tables and "global" in sdata.tables["table"].obsm:
        table = sdata.tables["table"]
        table.obsm["spatial"] = np.asarray(table.obsm["global"], dtype=np.float64) * mpp
        if not keep_controls:
            sdata.tables["table"] = controls_apart(table, "CosMx")
    _log_result(sdata, "CosMx", None)
    return sdata
