"""Legacy Spatial Transcriptomics (ST, 100 um spots): counts, spot files and the H&E image."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._core.logs import log_added, logger
from .._core.validate import check_bool, check_element_name, check_positive
from ._elements import (
    check_mpp,
    existing_file,
    image_element,
    numeric_table,
    read_plain_image,
    read_text_table,
    spot_elements,
    unique_names,
)
from ._transcripts import text_format

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData

#: a spot's name: ``"12x7"``; ``"X12x7"`` as R writes it as a column name; ``"5.003x2.987"``
#: (aligned array coordinates, as in the Stahl et al. 2016 tables)
_SPOT_NAME = re.compile(r"^X?\d+(\.\d+)?x\d+(\.\d+)?$")
_SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")


def read_st(
    counts: str | Path,
    spots: str | Path,
    image: str | Path,
    *,
    mpp: float | None = None,
    spot_diameter_um: float = 100.0,
    spot_pitch_um: float = 200.0,
    selected_only: bool = True,
    image_key: str = "he",
) -> SpatialData:
    """Read a legacy Spatial Transcriptomics section: counts, spot positions and the H&E image.

    The layout is that of the ST pipeline and its alignment tools (her2st, STUtility): a
    tab-separated counts table whose spots are named ``"{x}x{y}"`` after their array
    coordinates, a spot file (``*_selection.tsv`` or ``alignment_table_*.tsv``) with the columns
    ``x y pixel_x pixel_y`` (and optionally ``new_x new_y selected``) that places each array
    spot on the image, and the image itself. Spots are joined with the counts on
    ``f"{x}x{y}"``.

    Parameters
    ----------
    counts
        Counts table (``.tsv`` or ``.tsv.gz``): spots as rows named ``"{x}x{y}"``, genes as
        columns, raw counts (a table with genes as rows is transposed).
    spots
        Spot file with the columns ``x``, ``y`` (array coordinates) and ``pixel_x``,
        ``pixel_y`` (pixels of ``image``).
    image
        The H&E image the spot file refers to (JPEG, PNG or TIFF).
    mpp
        Pixel size of ``image`` in um/px. When ``None`` it is estimated from the spot pitch,
        robustly: the median pixel step between neighbouring spots of the array starts a fit of
        the pixel coordinates on the array coordinates, spots more than a quarter of the pitch
        off the grid the others define are left out of it (and named in a warning), and the
        estimate is refused (pass ``mpp=``) when more than a fifth of the spots lie off the grid
        or the fit and the median steps disagree by more than 5 %.
    spot_diameter_um
        Diameter of a spot in um (100 um on the ST arrays).
    spot_pitch_um
        Centre-to-centre distance in um of neighbouring spots in the same array row (along
        ``x``): 200 um on the ST 1k and 2k arrays (on the 2k arrays, whose spots sit on
        alternating positions, neighbours in a row are two array steps apart).
    selected_only
        Keep only the spots marked ``selected == 1`` (under the tissue) in the spot file, when it
        has that column.
    image_key
        Key of the image in ``sdata.images``.

    Returns
    -------
    A SpatialData with the image ``image_key`` (multiscale, down to about 2k px), the circles
    ``"spots"`` (radius ``spot_diameter_um / 2`` um) and the table ``"table"`` (spots x genes,
    raw counts in ``X`` and ``layers["counts"]``, ``obs`` with ``array_x``, ``array_y`` and
    ``spot_id``, centres in um in ``obsm["spatial"]``).

    """
    from spatialdata import SpatialData

    if mpp is not None:
        mpp = check_positive("mpp", mpp, unit="um/px")
    spot_diameter_um = check_positive("spot_diameter_um", spot_diameter_um, unit="um")
    spot_pitch_um = check_positive("spot_pitch_um", spot_pitch_um, unit="um")
    selected_only = check_bool("selected_only", selected_only)
    check_element_name("image_key", image_key)
    counts_path = existing_file(counts, "counts")
    spots_path = existing_file(spots, "spot")
    image_path = existing_file(image, "image")

    table = _read_counts(counts_path)
    positions = _read_spot_file(spots_path)
    if mpp is None:
        pitch_px = _spot_pitch_px(positions, spots_path.name)
        mpp = spot_pitch_um / pitch_px
        logger.info("Estimated %.4g um/px for %s from the spot pitch (%.1f px between "
                    "neighbouring spots of an array row = %g um; pass mpp= to set it).",
                    mpp, image_path.name, pitch_px, spot_pitch_um)
    mpp = check_mpp(mpp)

    if selected_only and "selected" in positions.columns:
        keep = positions["selected"].to_numpy() == 1
        if (~keep).any():
            logger.info("Dropped %d of %d spots of %s not under the tissue (selected != 1); pass "
                        "selected_only=False to keep them.", int((~keep).sum()), len(keep),
                        spots_path.name)
        positions = positions[keep]
    positions = _join(positions, table, counts_path.name, spots_path.name)

    pixels = read_plain_image(image_path, "image")
    _check_inside(positions, pixels.shape[1:], image_path.name)
    centres_um = positions[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64) * mpp
    import pandas as pd

    obs = pd.DataFrame({"array_x": positions["x"].to_numpy(), "array_y": positions["y"].to_numpy()},
                       index=positions.index)
    var = pd.DataFrame(index=table.columns.astype(str))
    shapes, adata = spot_elements(centres_um, table.loc[positions.index].to_numpy(), obs=obs,
                                  var=var, radius_um=spot_diameter_um / 2)
    element = image_element(pixels, mpp=mpp)
    log_added("images", image_key, f"{pixels.shape[2]}x{pixels.shape[1]} px, {mpp:.4g} um/px")
    log_added("shapes", "spots", f"{len(shapes)} spots")
    log_added("tables", "table", f"{adata.n_obs} spots x {adata.n_vars} genes")
    return SpatialData(images={image_key: element}, shapes={"spots": shapes},
                       tables={"table": adata})


def _header(path: Path, sep: str) -> list[str]:
    """The names in the first line of a table, as written (quotes as pandas reads them)."""
    import csv
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", errors="replace", newline="") as handle:
        return next(csv.reader([handle.readline().rstrip("\r\n")], delimiter=sep), [])


def _read_counts(path: Path) -> pd.DataFrame:
    """Read the counts as spots x genes, spots named ``"{x}x{y}"``."""
    options = text_format(path, default="\t")
    table = read_text_table(path, "counts", index_col=0, low_memory=False, **options)
    # pandas renames repeated column names ('IGKC', 'IGKC.1') without a word: take them as written
    header = _header(path, options["sep"])
    if len(header) == table.shape[1] + 1:
        table.columns = header[1:]
    table = _without_empty_columns(table, path.name)
    rows = table.index.astype(str).str.match(_SPOT_NAME).mean() if len(table) else 0.0
    cols = table.columns.astype(str).str.match(_SPOT_NAME).mean() if table.shape[1] else 0.0
    if rows < 0.5 <= cols:
        logger.info("The counts in %s have spots as columns; transposing them.", path.name)
        table = table.T
    if rows >= 0.5 or cols >= 0.5:
        table.index = _spot_names(table.index, path.name)
    elif rows < 0.5:
        if {"pixel_x", "pixel_y"} <= {str(c) for c in table.columns} | {table.index.name}:
            raise ValueError(f"{path.name!r} is a spot file (it has pixel_x and pixel_y), not "
                             "counts: pass it as spots= and the counts table as counts=.")
        raise ValueError(
            f"The counts table {path.name!r} has no spots named like '12x7' ('{{x}}x{{y}}' array "
            f"coordinates) in its rows or columns (first rows: "
            f"{[str(i)[:40] for i in table.index[:3]]}). Pass the ST counts table (spots x genes, "
            "tab- or comma-separated)."
        )
    table.index = table.index.astype(str)
    if not table.columns.is_unique:
        table.columns = unique_names(table.columns, f"gene names of {path.name!r}")
    if not table.index.is_unique:
        repeated = sorted(set(table.index[table.index.duplicated()]))
        raise ValueError(
            f"The counts table {path.name!r} holds {len(repeated)} spot(s) more than once "
            f"({repeated[:5]}{', ...' if len(repeated) > 5 else ''}); each spot must be one row. "
            "Sum or drop the repeated rows (e.g. table.groupby(level=0).sum()) and read again."
        )
    return numeric_table(table, f"counts of {path.name!r}")


def _without_empty_columns(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """``table`` without its unnamed columns that hold no value (a separator ending each line)."""
    unnamed = table.columns.astype(str).str.fullmatch(r"(Unnamed: \d+)?")
    empty = unnamed & table.isna().all(axis=0).to_numpy()
    if empty.any():
        logger.info("Dropped %d empty, unnamed column(s) of %s (a separator at the end of each "
                    "line).", int(empty.sum()), name)
        table = table.loc[:, ~empty]
    return table


def _spot_names(names: pd.Index, name: str) -> pd.Index:
    """The spots' names as ``"{x}x{y}"`` array coordinates: R's ``X`` dropped, decimals rounded.

    Decimal names (``"5.003x2.987"``: array coordinates after alignment) are rounded to the
    nearest array spot, which the spot file's ``x``, ``y`` name; a log line says so.
    """
    import pandas as pd

    text = names.astype(str)
    parts = text.str.extract(r"^X?(\d+(?:\.\d+)?)x(\d+(?:\.\d+)?)$")
    spot = parts[0].notna().to_numpy()
    x = pd.to_numeric(parts[0]).to_numpy()
    y = pd.to_numeric(parts[1]).to_numpy()
    decimal = spot & ((x % 1 != 0) | (y % 1 != 0))
    out = text.to_numpy(dtype=object).copy()
    out[spot] = [f"{a:.0f}x{b:.0f}" for a, b in zip(np.rint(x[spot]), np.rint(y[spot]),
                                                     strict=True)]
    if decimal.any():
        rounded = pd.Index(out[spot])
        if not rounded.is_unique:
            raise ValueError(
                f"The spots of {name} are named by decimal array coordinates, and rounding them "
                f"to the array gives one spot twice (e.g. {rounded[rounded.duplicated()][0]!r})"
                ": they cannot be matched to the spot file. Name the spots by their array "
                "coordinates ('12x7') in the counts table.")
        first = int(np.flatnonzero(decimal)[0])
        logger.info("The spots of %s are named by decimal array coordinates (e.g. %r); matched "
                    "to the spot file's x, y by rounding them (%r).", name, text[first],
                    out[first])
    return pd.Index(out, dtype=str)


def _read_spot_file(path: Path) -> pd.DataFrame:
    """Read the spot file, indexed by ``"{x}x{y}"``."""
    positions = read_text_table(path, "spot", **text_format(path, default="\t"))
    missing = [c for c in _SPOT_COLUMNS if c not in positions.columns]
    if missing:
        raise ValueError(
            f"The spot file {path.name!r} lacks the column(s) {missing} (it has "
            f"{[str(c)[:40] for c in positions.columns[:12]]}). Pass a tab- or comma-separated "
            "spot file with the columns x, y, pixel_x, pixel_y (as written by the ST spot "
            "detector or STUtility)."
        )
    numeric_table(positions[list(_SPOT_COLUMNS)],
                  f"columns x, y, pixel_x, pixel_y of {path.name!r}")
    values = positions[list(_SPOT_COLUMNS)].to_numpy(dtype=float)
    complete = np.isfinite(values).all(axis=1)
    if not complete.all():
        logger.warning("Dropped %d of %d spots of %s without finite x, y, pixel_x or pixel_y.",
                       int((~complete).sum()), len(complete), path.name)
        positions = positions[complete]
    if not len(positions):
        raise ValueError(f"The spot file {path.name!r} has no spot with finite x, y, pixel_x and "
                         "pixel_y. Pass the spot file of the section.")
    positions.index = (positions["x"].astype(int).astype(str) + "x"
                       + positions["y"].astype(int).astype(str))
    if not positions.index.is_unique:
        n = int(positions.index.duplicated().sum())
        logger.warning("Dropped %d duplicated spots of %s (same x, y).", n, path.name)
        positions = positions[~positions.index.duplicated()]
    return positions


def _spot_pitch_px(positions: pd.DataFrame, name: str = "the spot file") -> float:
    """Pixels between neighbouring spots of an array row, estimated robustly.

    The median pixel step between neighbouring spots (along array rows and along columns)
    gives a first grid; spots more than a quarter of the pitch off it are outliers, named in a
    warning; a least-squares fit of pixels on array coordinates over the other spots gives the
    pitch. Too many outliers, or a fit that disagrees with the median steps, raise.
    """
    ax = positions["new_x" if "new_x" in positions else "x"].to_numpy(dtype=float)
    ay = positions["new_y" if "new_y" in positions else "y"].to_numpy(dtype=float)
    design = np.column_stack([ax, ay, np.ones_like(ax)])
    pixels = positions[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    fix = "Pass mpp= (um per pixel of the image)."
    if len(positions) < 3 or np.linalg.matrix_rank(design) < 3:
        raise ValueError("Too few spots, or spots on a single line, to estimate the pixel size "
                         f"from the spot pitch. {fix}")
    grid_x = positions["x"].to_numpy(dtype=int)
    grid_y = positions["y"].to_numpy(dtype=int)
    along_x = _neighbour_steps(grid_x, grid_y, ax, pixels)  # px per array unit, along rows
    along_y = _neighbour_steps(grid_y, grid_x, ay, pixels)
    if len(along_x) < 2 or len(along_y) < 2:
        raise ValueError(f"{name} has too few neighbouring spots (in the same array row or "
                         f"column) to estimate the pixel size from the spot pitch. {fix}")
    step_x = _row_step(positions["x"], positions["y"])
    linear = np.stack([np.median(along_x, axis=0), np.median(along_y, axis=0)])  # (2, 2)
    start = np.median(pixels - design[:, :2] @ linear, axis=0)
    coef = np.vstack([linear, start])
    median_pitch = float(np.linalg.norm(linear[0])) * step_x
    tolerance = 0.25 * median_pitch
    inlier = np.linalg.norm(design @ coef - pixels, axis=1) < tolerance
    for _ in range(5):
        if inlier.sum() < 3 or np.linalg.matrix_rank(design[inlier]) < 3:
            break
        coef = np.linalg.lstsq(design[inlier], pixels[inlier], rcond=None)[0]
        again = np.linalg.norm(design @ coef - pixels, axis=1) < tolerance
        if (again == inlier).all():
            break
        inlier = again
    outliers = positions.index[~inlier]
    pitch_fit = float(np.linalg.norm(coef[0])) * step_x
    logger.debug("Spot pitch: %.2f px (fit), %.2f px (median of neighbour steps)", pitch_fit,
                 median_pitch)
    if len(outliers):
        shown = ", ".join(map(str, outliers[:20])) + (", ..." if len(outliers) > 20 else "")
        logger.warning(
            "%d of %d spots of %s lie more than a quarter of the spot pitch (%.0f px) off the "
            "array grid that the other spots define: %s. They were left out of the pixel size "
            "estimate; check their pixel_x/pixel_y (or pass mpp=).", len(outliers),
            len(positions), name, median_pitch, shown)
    if inlier.mean() < 0.8 or abs(pitch_fit / median_pitch - 1) > 0.05:
        raise ValueError(
            f"The pixel size cannot be estimated reliably from {name}: {len(outliers)} of "
            f"{len(positions)} spots lie off the array grid, and the spot pitch is {pitch_fit:.1f} "
            f"px by a fit but {median_pitch:.1f} px by the median step between neighbours. Check "
            f"the spot file's pixel_x/pixel_y, or {fix[0].lower()}{fix[1:]}"
        )
    return pitch_fit


def _neighbour_steps(along: np.ndarray, group: np.ndarray, coordinate: np.ndarray,
                     pixels: np.ndarray) -> np.ndarray:
    """Pixel displacement per array unit between consecutive spots of each row (or column)."""
    order = np.lexsort((along, group))
    same = group[order][1:] == group[order][:-1]
    delta = np.diff(coordinate[order])
    ok = same & (np.abs(delta) > 1e-9)
    moved = np.diff(pixels[order], axis=0)[ok]
    return moved / delta[ok, None]


def _row_step(along, group) -> int:
    """Return the step of ``along`` between neighbours with the same ``group`` value."""
    import pandas as pd

    frame = pd.DataFrame({"a": np.asarray(along, dtype=int), "g": np.asarray(group, dtype=int)})
    steps = frame.sort_values(["g", "a"]).groupby("g")["a"].diff().dropna()
    steps = steps[steps > 0]
    return int(steps.min()) if len(steps) else 1


def _join(positions: pd.DataFrame, table: pd.DataFrame, counts_name: str,
          spots_name: str) -> pd.DataFrame:
    """Keep the spots that have counts; log spots without counts and counts without spots."""
    has_counts = positions.index.isin(table.index)
    n_counts_only = int((~table.index.isin(positions.index)).sum())
    if not has_counts.any():
        raise ValueError(
            f"No spot of {spots_name!r} (e.g. {list(positions.index[:3])}) has counts in "
            f"{counts_name!r} (e.g. {list(table.index[:3])}). Pass the counts and the spot file "
            "of the same section."
        )
    if (~has_counts).any():
        logger.info("Dropped %d of %d spots of %s that have no counts in %s.",
                    int((~has_counts).sum()), len(positions), spots_name, counts_name)
    if n_counts_only:
        logger.info("Dropped %d of %d spots of %s that are not in the (selected) spots of %s.",
                    n_counts_only, len(table), counts_name, spots_name)
    return positions[has_counts]


def _check_inside(positions: pd.DataFrame, shape_yx: tuple[int, int], image_name: str) -> None:
    """Refuse spot files that do not fall on the image (a mismatched image, or another scale)."""
    x = positions["pixel_x"].to_numpy()
    y = positions["pixel_y"].to_numpy()
    inside = (x >= 0) & (y >= 0) & (x < shape_yx[1]) & (y < shape_yx[0])
    if inside.mean() < 0.5:
        raise ValueError(
            f"{int((~inside).sum())} of {len(inside)} spots lie outside {image_name!r} "
            f"({shape_yx[1]} x {shape_yx[0]} px): the spot file's pixel_x/pixel_y refer to another "
            "image (or another resolution of it). Pass the image the spot file was aligned to."
        )
    if not inside.all():
        logger.warning("%d of %d spots lie outside %s.", int((~inside).sum()), len(inside),
                       image_name)
