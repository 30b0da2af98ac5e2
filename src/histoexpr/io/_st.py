"""Legacy Spatial Transcriptomics (ST, 100 um spots): counts, spot files and the H&E image."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._utils import log_added, logger
from ._elements import check_mpp, existing_file, image_element, read_plain_image, spot_elements

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData

_SPOT_NAME = re.compile(r"^\d+x\d+$")
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
        Pixel size of ``image`` in um/px. When ``None`` it is estimated from the spot pitch: a
        fit of the pixel coordinates on the array coordinates gives the pixels between
        neighbouring spots of an array row, which are ``spot_pitch_um`` apart.
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

    counts_path = existing_file(counts, "counts")
    spots_path = existing_file(spots, "spot")
    image_path = existing_file(image, "image")
    spot_diameter_um = check_mpp(spot_diameter_um, "spot_diameter_um")
    spot_pitch_um = check_mpp(spot_pitch_um, "spot_pitch_um")

    table = _read_counts(counts_path)
    positions = _read_spot_file(spots_path)
    if mpp is None:
        pitch_px = _spot_pitch_px(positions)
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


def _read_counts(path: Path) -> pd.DataFrame:
    """Read the counts as spots x genes, spots named ``"{x}x{y}"``."""
    import pandas as pd

    table = pd.read_csv(path, sep="\t", index_col=0)
    rows = table.index.astype(str).str.match(_SPOT_NAME).mean() if len(table) else 0.0
    cols = table.columns.astype(str).str.match(_SPOT_NAME).mean() if table.shape[1] else 0.0
    if rows < 0.5 <= cols:
        logger.info("The counts in %s have spots as columns; transposing them.", path.name)
        table = table.T
    elif rows < 0.5:
        raise ValueError(
            f"The counts table {path.name!r} has no spots named like '12x7' ('{{x}}x{{y}}' array "
            f"coordinates) in its rows or columns (first rows: {list(table.index[:3])}). Pass the "
            "ST counts table (spots x genes, tab-separated)."
        )
    table.index = table.index.astype(str)
    return table


def _read_spot_file(path: Path) -> pd.DataFrame:
    """Read the spot file, indexed by ``"{x}x{y}"``."""
    import pandas as pd

    positions = pd.read_csv(path, sep="\t")
    missing = [c for c in _SPOT_COLUMNS if c not in positions.columns]
    if missing:
        raise ValueError(
            f"The spot file {path.name!r} lacks the column(s) {missing} (it has "
            f"{list(positions.columns)}). Pass a tab-separated spot file with the columns "
            "x, y, pixel_x, pixel_y (as written by the ST spot detector or STUtility)."
        )
    positions = positions.dropna(subset=list(_SPOT_COLUMNS))
    positions.index = (positions["x"].astype(int).astype(str) + "x"
                       + positions["y"].astype(int).astype(str))
    if not positions.index.is_unique:
        n = int(positions.index.duplicated().sum())
        logger.warning("Dropped %d duplicated spots of %s (same x, y).", n, path.name)
        positions = positions[~positions.index.duplicated()]
    return positions


def _spot_pitch_px(positions: pd.DataFrame) -> float:
    """Pixels between neighbouring spots of an array row, from a fit of pixels on array coords."""
    ax = positions["new_x" if "new_x" in positions else "x"].to_numpy(dtype=float)
    ay = positions["new_y" if "new_y" in positions else "y"].to_numpy(dtype=float)
    design = np.column_stack([ax, ay, np.ones_like(ax)])
    pixels = positions[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    if len(positions) < 3 or np.linalg.matrix_rank(design) < 3:
        raise ValueError("Too few spots, or spots on a single line, to estimate the pixel size "
                         "from the spot pitch. Pass mpp= (um per pixel of the image).")
    coef = np.linalg.lstsq(design, pixels, rcond=None)[0]
    px_per_step = np.linalg.norm(coef[:2], axis=1)  # along array x, along array y
    steps = [_row_step(positions["x"], positions["y"]), _row_step(positions["y"], positions["x"])]
    pitch_x, pitch_y = px_per_step[0] * steps[0], px_per_step[1] * steps[1]
    logger.debug("Spot pitch: %.2f px along array rows, %.2f px along columns", pitch_x, pitch_y)
    return float(pitch_x)


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
