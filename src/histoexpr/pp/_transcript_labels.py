"""Patch labels from transcripts: where two genes are expressed, where tissue is, where nothing is.

After Andersson, Partel, Solorzano and Wählby (ISBI 2020): decoded transcripts of two genes on a
nuclei (or H&E) image define four classes of morphology, learned later by
:func:`histoexpr.tl.fit` with ``model="patch_classifier"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._core.elements import scale_to_global
from .._core.image import check_pixel_size_stated, image_levels, read_region
from .._core.image_facts import image_channels, is_brightfield
from .._core.logs import log_added, logger
from .._core.memory import check_memory
from .._core.ownership import check_key_writable, replace_elements, require_element
from .._core.seeds import seed_everything
from .._core.validate import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_positive,
    renamed_parameters,
)

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData

#: how the elements this step writes record their writer (see ``_core.ownership.store_element``)
STEP = "hx.pp.transcript_labels"

#: label value of grid cells that no rule assigns (ignored by training and evaluation)
UNASSIGNED = 0
#: label values of the classes; gene A and gene B take the names of the genes
CLASS_VALUES = {"background": 1, "tissue": 2, "gene_a": 3, "gene_b": 4}
# the image is thresholded at this fraction of the grid step, then averaged onto the grid
_FOREGROUND_SUBSTEPS = 2
# cells are rasterised at this fraction of the grid step to find the cell of each transcript
_CELL_SUBSTEPS = 4

#: the tissue tests of :func:`transcript_labels`
TissueTest = Literal["image", "transcripts"]


@renamed_parameters(min_tissue_fraction="min_tissue", patch_stride_um="stride_um")
def transcript_labels(
    sdata: SpatialData,
    points_key: str = "transcripts",
    image_key: str = "dapi",
    *,
    genes: Sequence[str],
    grid_um: float = 2.0,
    window_um: float = 10.0,
    min_counts: int = 3,
    enrichment: float = 2.0,
    tissue: TissueTest = "image",
    min_tissue: float = 0.15,
    min_total: int = 5,
    cells: str | None = None,
    stride_um: float = 4.0,
    max_per_class: int | None = None,
    min_per_class: int = 20,
    seed: int | None = None,
    key_added: str = "tx_labels",
    overwrite: bool = False,
) -> None:
    """Label every place of a section by the transcripts around it, and pick training patches.

    The section is divided into square cells of ``grid_um``. Around each cell, a square window of
    ``window_um`` counts the transcripts of gene A (``n_a``), of gene B (``n_b``) and of all genes
    (``n_all``). The rule, in this order:

    1. **gene A** (label 3) where ``n_a >= min_counts`` and ``n_a >= enrichment * n_b``;
    2. **gene B** (label 4) where ``n_b >= min_counts`` and ``n_b >= enrichment * n_a``;
    3. unassigned (label 0) where either gene reaches ``min_counts`` without being enriched
       (mixed places teach nothing clean);
    4. **tissue** (label 2) where the tissue test holds and both genes are below ``min_counts``;
    5. **background** (label 1) everywhere else.

    The tissue test (``tissue``): ``"image"`` thresholds the image (Otsu's threshold on the
    smoothed intensity of a fluorescence image, where nuclei are bright: one channel, or the mean
    of named stains such as ``DAPI, CD3, CD8``; on the optical density of an RGB H&E image, channels
    ``r, g, b`` or 3 unnamed ones, where tissue is stained; nuclei of a label map) at half
    the grid step, and requires that at least ``min_tissue`` of the window be
    foreground; ``"transcripts"`` requires ``n_all >= min_total``. On a DAPI image, "tissue" is
    therefore "nuclei without either gene" and background "no nuclei", as in the paper.

    With ``cells`` (cell polygons or a cell label image), each **cell** is labelled instead, by
    the transcripts inside it: ``n_a``, ``n_b`` and ``n_all`` count the transcripts of the cell,
    the same rule 1-3 applies, and a cell with neither gene is **tissue**. Places outside every
    cell are **background** where the tissue test fails and unassigned (0) where it holds (the
    space between cells of a tissue is neither a cell nor empty). The label map takes each
    cell's label on the cells' pixels; the cells and their counts are also written as a table.

    Patch centres are then taken every ``stride_um`` on the grid, where the label is not 0;
    ``max_per_class`` caps each class by a random subsample (balancing; the numbers dropped are
    logged).

    Parameters
    ----------
    sdata
        The section, with transcripts and an image aligned in micrometres.
    points_key
        Key of the transcripts in ``sdata.points`` (column ``gene``). Every transcript is held
        in memory; that memory is estimated first (about 136 B each): a MemoryError names the
        number of transcripts and asks to crop the points.
    image_key
        Key of the image in ``sdata.images``: one-channel fluorescence (DAPI) or RGB H&E; or of a
        nuclei label map in ``sdata.labels`` (foreground: label > 0) where there is no image. It
        sets the extent of the label map and, with ``tissue="image"``, the tissue test.
    genes
        The two genes ``(A, B)``; :func:`histoexpr.pp.rank_gene_pairs` suggests pairs.
    grid_um
        Pixel size of the label map in um.
    window_um
        Side of the square window in which transcripts (and foreground) are counted, in um.
    min_counts
        Transcripts of a gene in the window that make a place positive for it.
    enrichment
        How many times more transcripts of one gene than of the other a positive place needs.
    tissue
        The tissue test: ``"image"`` or ``"transcripts"`` (see above).
    min_tissue
        With ``tissue="image"``: the foreground fraction, in ``[0, 1]``, of the window that
        makes it tissue. (Was ``min_tissue_fraction``, still accepted with a ``FutureWarning``.)
    min_total
        With ``tissue="transcripts"``: the transcripts of all genes that make a window tissue.
    cells
        Key of cell polygons in ``sdata.shapes`` (:func:`histoexpr.io.read_cell_boundaries`) or
        of a cell (or nucleus) label image in ``sdata.labels``: label each cell by the
        transcripts inside it (see above). ``None`` labels places by windows. The cells are
        rasterised on a grid 4 times finer than ``grid_um``; its memory is estimated with the
        grid's first: a MemoryError names the grid and asks for a larger grid_um.
    stride_um
        Distance between neighbouring patch centres, in um (a multiple of ``grid_um`` is exact).
        (Was ``patch_stride_um``, still accepted with a ``FutureWarning``.)
    max_per_class
        Keep at most this many patch centres per class (a random subsample), at least
        ``min_per_class`` (and 1); ``None`` keeps all.
    min_per_class
        Fewest patch centres a class may have; fewer raise an error that names the class.
    seed
        Random seed of the subsampling; ``None`` uses ``hx.settings.seed``.
    key_added
        Key of the label map in ``sdata.labels``; the patch centres go to
        ``sdata.tables[f"{key_added}_patches"]``.
    overwrite
        Replace existing elements of those names that an earlier ``transcript_labels`` wrote
        (never an element of another origin).

    Returns
    -------
    Nothing; adds ``sdata.labels[key_added]`` (uint8, 0 unassigned, 1 background, 2 tissue,
    3 gene A, 4 gene B; pixel size ``grid_um``, aligned with the image) and
    ``sdata.tables[f"{key_added}_patches"]``: one row per patch centre, ``obs["label"]`` (the
    value), ``obs["class"]`` (its name: ``"background"``, ``"tissue"``, A, B), ``obs["n_a"]``,
    ``obs["n_b"]``, ``obs["n_all"]``, ``obsm["spatial"]`` (centres in um) and
    ``uns["transcript_labels"]``: the classes ``{name: value}``, the genes, the image, the label
    map's key and every parameter of the rule. With ``cells``, also
    ``sdata.tables[f"{key_added}_cells"]``: one row per cell (index: the cell's id), ``obs``
    ``label``, ``class``, ``n_a``, ``n_b``, ``n_all``, ``area_um2``, ``obsm["spatial"]`` (its
    centroid in um).

    Examples
    --------
    >>> hx.pp.transcript_labels(sdata, "transcripts", "dapi", genes=("Slc17a7", "Gfap"))
    >>> sdata.tables["tx_labels_patches"].obs["class"].value_counts()

    """
    check_bool("overwrite", overwrite)
    from spatialdata.models import Labels2DModel

    require_element(sdata, points_key, "points")
    if image_key not in sdata.labels:
        require_element(sdata, image_key, "images")
    table_key = f"{key_added}_patches"
    for key in (key_added, table_key):
        check_key_writable(sdata, key, overwrite=overwrite, step=STEP)
    gene_a, gene_b = _check_genes(genes)
    _check_rule(grid_um, window_um, min_counts, enrichment, tissue, stride_um)
    min_tissue = check_fraction("min_tissue", min_tissue, closed="both")
    min_per_class = check_int("min_per_class", min_per_class, minimum=0)
    if max_per_class is not None:  # a cap below the floor would leave too few of every class
        max_per_class = check_int("max_per_class", max_per_class,
                                  minimum=max(1, min_per_class))

    # transcripts are placed on the image by their coordinates in um: its pixel size must be known
    check_pixel_size_stated(sdata, image_key)
    level0 = image_levels(sdata, image_key)[0]
    grid = _Grid.over(level0, grid_um)
    per_cell = _BYTES_PER_CELL
    if cells is not None:  # the cells rasterised on a grid _CELL_SUBSTEPS times finer
        from .._core.cells import raster_bytes_per_px

        per_cell += _CELL_SUBSTEPS**2 * raster_bytes_per_px(sdata, cells)
    check_memory(float(grid.shape[0]) * grid.shape[1] * per_cell,
                 f"transcript_labels on a grid of {grid.shape[1]:,} x {grid.shape[0]:,} cells of "
                 f"{grid_um:g} um" + ("" if cells is None else
                                      f", with the cells of {cells!r} on a grid "
                                      f"{_CELL_SUBSTEPS} times finer"),
                 "Pass a larger grid_um.")
    points = _points_frame(sdata, points_key)
    _check_points(points, grid, gene_a, gene_b, points_key)
    window = _odd_cells(window_um, grid_um)
    _check_work(grid, window, window_um)
    all_counts = grid.counts(points)
    if tissue == "image":
        fraction = _window_mean(_foreground_fraction(sdata, image_key, grid), window)
        is_tissue = fraction >= min_tissue
    else:
        is_tissue = _window_sum(all_counts, window) >= min_total
    classes = {"background": 1, "tissue": 2, gene_a: 3, gene_b: 4}
    if cells is None:
        n_a = _window_sum(grid.counts(points[points["gene"] == gene_a]), window)
        n_b = _window_sum(grid.counts(points[points["gene"] == gene_b]), window)
        n_all = _window_sum(all_counts, window)
        labels = _rule(n_a, n_b, is_tissue, min_counts, enrichment)
    else:
        cell_table, cell_grid = _cell_labels(sdata, cells, grid, points, (gene_a, gene_b),
                                             min_counts, enrichment, classes)
        per_cell = {k: np.append(0, cell_table.obs[k].to_numpy()) for k in ("n_a", "n_b", "n_all")}
        n_a, n_b, n_all = (per_cell[k][cell_grid] for k in ("n_a", "n_b", "n_all"))
        labels = np.where(is_tissue, UNASSIGNED, CLASS_VALUES["background"]).astype(np.uint8)
        in_cell = cell_grid > 0
        labels[in_cell] = np.append(0, cell_table.obs["label"].to_numpy())[cell_grid[in_cell]]
    rows, cols = _patch_cells(labels, grid_um, stride_um)
    rows, cols = _balance(labels, rows, cols, classes, max_per_class, min_per_class, seed)
    rule = {"classes": classes, "genes": [gene_a, gene_b], "image_key": image_key,
            "labels_key": key_added, "points_key": points_key, "grid_um": float(grid_um),
            "window_um": window * float(grid_um), "min_counts": int(min_counts),
            "enrichment": float(enrichment), "tissue": tissue,
            "min_tissue": float(min_tissue), "min_total": int(min_total),
            "cells": cells, "stride_um": float(stride_um)}
    table = _patch_table(grid, labels, rows, cols, {"n_a": n_a, "n_b": n_b, "n_all": n_all},
                         classes, rule)
    element = Labels2DModel.parse(labels, dims=("y", "x"),
                                  transformations=scale_to_global(grid.step, *grid.origin))
    element.attrs["classes"] = classes
    if cells is not None:
        check_key_writable(sdata, f"{key_added}_cells", overwrite=overwrite, step=STEP)
    elements = [("labels", key_added, element), ("tables", table_key, table)]
    if cells is not None:
        elements.append(("tables", f"{key_added}_cells", cell_table))
    replace_elements(sdata, elements, overwrite=overwrite, step=STEP)  # all checked, then stored
    if cells is not None:
        log_added("tables", f"{key_added}_cells", ", ".join(
            f"{name} {int((cell_table.obs['label'] == value).sum())}"
            for name, value in {**classes, "unassigned": UNASSIGNED}.items() if value != 1))
    shares = ", ".join(f"{name} {np.mean(labels == value):.1%}" for name, value in classes.items())
    log_added("labels", key_added, f"{grid.shape[1]}x{grid.shape[0]} at {grid_um:g} um/px: "
              f"{shares}, unassigned {np.mean(labels == UNASSIGNED):.1%}")
    log_added("tables", table_key, ", ".join(
        f"{name} {int((table.obs['label'] == value).sum())}" for name, value in classes.items()))


def _rule(n_a, n_b, is_tissue, min_counts: int, enrichment: float) -> np.ndarray:
    """Rules 1-5 on arrays of counts: the label values."""
    labels = np.where(is_tissue, CLASS_VALUES["tissue"], CLASS_VALUES["background"])
    positive_a, positive_b = n_a >= min_counts, n_b >= min_counts
    labels[positive_a | positive_b] = UNASSIGNED
    labels[positive_a & (n_a >= enrichment * n_b)] = CLASS_VALUES["gene_a"]
    labels[positive_b & (n_b >= enrichment * n_a)] = CLASS_VALUES["gene_b"]
    return labels.astype(np.uint8)


class _Grid:
    """The label map's grid: ``shape`` cells of ``step`` um from the corner ``origin`` (x, y)."""

    def __init__(self, origin: tuple[float, float], step: float, shape: tuple[int, int]) -> None:
        self.origin, self.step, self.shape = origin, float(step), shape

    @classmethod
    def over(cls, level, step: float) -> _Grid:
        """The grid that covers an image level (its last row and column may overhang)."""
        height_um, width_um = (n * level.mpp for n in level.shape_yx)
        shape = (max(1, math.ceil(height_um / step - 1e-6)),
                 max(1, math.ceil(width_um / step - 1e-6)))
        return cls(level.offset, step, shape)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        x0, y0 = self.origin
        return x0, y0, x0 + self.shape[1] * self.step, y0 + self.shape[0] * self.step

    def counts(self, points: pd.DataFrame) -> np.ndarray:
        """Number of points in each cell."""
        cols = np.floor((points["x"].to_numpy() - self.origin[0]) / self.step).astype(int)
        rows = np.floor((points["y"].to_numpy() - self.origin[1]) / self.step).astype(int)
        inside = (rows >= 0) & (cols >= 0) & (rows < self.shape[0]) & (cols < self.shape[1])
        flat = np.bincount(rows[inside] * self.shape[1] + cols[inside],
                           minlength=self.shape[0] * self.shape[1])
        return flat.reshape(self.shape).astype(np.float32)

    def centres(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Centres (x, y) in um of cells."""
        return np.column_stack([self.origin[0] + (cols + 0.5) * self.step,
                                self.origin[1] + (rows + 0.5) * self.step])


def _check_genes(genes: Sequence[str]) -> tuple[str, str]:
    if isinstance(genes, str) or len(genes) != 2 or genes[0] == genes[1]:
        raise ValueError(f"genes must be two different gene names (A, B), got {genes!r}; "
                         "hx.pp.rank_gene_pairs suggests pairs.")
    return str(genes[0]), str(genes[1])


def _check_rule(grid_um, window_um, min_counts, enrichment, tissue, stride_um) -> None:
    for name, value in (("grid_um", grid_um), ("window_um", window_um),
                        ("stride_um", stride_um)):
        check_positive(name, value, unit="um")
    if min_counts < 1:
        raise ValueError(f"min_counts must be at least 1, got {min_counts!r}.")
    if enrichment < 1:
        raise ValueError(f"enrichment must be at least 1 (a ratio of counts), got {enrichment!r}.")
    check_choice("tissue", tissue, TissueTest)


#: memory of one transcript held in pandas: measured 131 B at the peak of the frame's making
#: (x, y and the gene's reference, the index, and the transformation's float64 columns in and
#: out); the frame kept (78 B) and the callers' per-transcript arrays (grid rows and columns,
#: masks: ~50 B) stay below it
_BYTES_PER_TRANSCRIPT = 136


def _points_frame(sdata: SpatialData, points_key: str) -> pd.DataFrame:
    """The transcripts' x, y (um, ``"global"``) and gene as a pandas frame.

    Its memory (:data:`_BYTES_PER_TRANSCRIPT` per transcript) is estimated first, from the
    number of points alone: dask knows it from the parquet files' metadata or the in-memory
    frame, else counts it in one pass that holds one partition at a time. Only then is every
    transcript computed.
    """
    from spatialdata.transformations import get_transformation

    points = sdata.points[points_key]
    if "gene" not in points.columns:
        raise KeyError(f"sdata.points[{points_key!r}] has no 'gene' column; read the transcripts "
                       "with hx.io.read_transcripts.")
    n_points = len(points)
    check_memory(float(n_points) * _BYTES_PER_TRANSCRIPT,
                 f"The {n_points:,} transcripts of sdata.points[{points_key!r}] held in memory "
                 f"(x, y and gene, ~{_BYTES_PER_TRANSCRIPT} B each)",
                 "Crop the points first (e.g. with spatialdata's bounding_box_query) or keep "
                 "fewer genes (points[points['gene'].isin(genes)]).")
    frame = points[["x", "y", "gene"]].compute()
    matrix = get_transformation(points, "global").to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y"))
    xy = np.column_stack([frame["x"], frame["y"], np.ones(len(frame))]) @ matrix.T
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    frame["gene"] = frame["gene"].astype(str)
    return frame


def _check_points(points: pd.DataFrame, grid: _Grid, gene_a: str, gene_b: str,
                  points_key: str) -> None:
    present = set(points["gene"].unique())
    missing = [g for g in (gene_a, gene_b) if g not in present]
    if missing:
        raise KeyError(f"Genes {missing} have no transcripts in sdata.points[{points_key!r}] "
                       f"({len(present)} genes); check the spelling or use "
                       "hx.pp.rank_gene_pairs to choose genes.")
    x0, y0, x1, y1 = grid.bounds
    outside = ~points["x"].between(x0, x1) | ~points["y"].between(y0, y1)
    if outside.all():
        raise ValueError(
            f"No transcript of sdata.points[{points_key!r}] lies on the image (x {x0:.1f}.."
            f"{x1:.1f}, y {y0:.1f}..{y1:.1f} um; transcripts span x {points['x'].min():.1f}.."
            f"{points['x'].max():.1f}, y {points['y'].min():.1f}..{points['y'].max():.1f} um). "
            "Read them with the right pixel_size and offset (hx.io.read_transcripts)."
        )
    if outside.any():
        logger.info("Ignored %d of %d transcripts outside the image.", int(outside.sum()),
                    len(points))


#: memory of one grid cell: counts of each gene, of all genes, windows and labels (int64)
_BYTES_PER_CELL = 96


def _check_work(grid: _Grid, window: int, window_um: float) -> None:
    """Refuse a window wider than twice the section: every place would count the same."""
    widest = 2 * max(grid.shape)
    if window > widest:
        raise ValueError(
            f"window_um={window_um:g} is wider than twice the section ({widest * grid.step:g} "
            "um): every place would count the same transcripts (and the filter would run over "
            f"{window:,} cells). Pass a window_um of a few cells (the default is 10 um).")


def _odd_cells(length_um: float, step: float) -> int:
    """A window of ``length_um`` in grid cells, odd so that it is centred on its cell."""
    cells = max(1, round(length_um / step))
    return cells if cells % 2 else cells + 1


def _window_mean(values: np.ndarray, window: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(values.astype(np.float64), size=window, mode="constant")


def _window_sum(counts: np.ndarray, window: int) -> np.ndarray:
    return np.rint(_window_mean(counts, window) * window**2).astype(np.int64)


def _foreground_fraction(sdata: SpatialData, image_key: str, grid: _Grid) -> np.ndarray:
    """Share of each grid cell that is foreground: bright nuclei, or stain on an RGB image.

    An image is RGB by its channel names (:func:`histoexpr._core.image_facts.is_brightfield`):
    three fluorescence stains (``DAPI, CD3, CD8``) are thresholded as fluorescence.
    """
    from scipy import ndimage

    from ._tissue import _otsu, _stained

    sub = _FOREGROUND_SUBSTEPS
    pixels = read_region(sdata, image_key, grid.bounds, mpp=grid.step / sub, outside="fill")
    valid = np.ones(pixels.shape[-2:], dtype=bool)
    if pixels.ndim == 2:  # a nuclei label map
        mask = pixels > 0
    elif is_brightfield(image_channels(sdata, image_key)):
        mask = _stained(pixels, valid, grid.step / sub)
    else:
        intensity = ndimage.gaussian_filter(pixels.astype(np.float32).mean(axis=0), sigma=1.0)
        mask = intensity > _otsu(intensity)
    h, w = grid.shape
    return mask[: h * sub, : w * sub].reshape(h, sub, w, sub).mean(axis=(1, 3))


def _patch_cells(labels: np.ndarray, grid_um: float, stride_um: float):
    """Rows and columns of the grid cells every ``stride_um`` whose label is assigned."""
    step = max(1, round(stride_um / grid_um))
    rows, cols = np.mgrid[step // 2 : labels.shape[0] : step, step // 2 : labels.shape[1] : step]
    rows, cols = rows.ravel(), cols.ravel()
    keep = labels[rows, cols] != UNASSIGNED
    return rows[keep], cols[keep]


def _balance(labels, rows, cols, classes: dict[str, int], max_per_class: int | None,
             min_per_class: int, seed: int | None):
    """Check every class has enough patch centres; subsample each to ``max_per_class``."""
    rng = seed_everything(seed)
    values = labels[rows, cols]
    kept = []
    for name, value in classes.items():
        where = np.flatnonzero(values == value)
        if where.size < min_per_class:
            raise ValueError(
                f"Class {name!r} has {where.size} patch centres, fewer than min_per_class="
                f"{min_per_class}: too few transcripts (or places) for it. Lower min_counts or "
                "enrichment, widen window_um, choose more abundant genes, or lower min_per_class."
            )
        if max_per_class is not None and where.size > max_per_class:
            logger.info("Kept %d of %d patch centres of class %r (max_per_class).",
                        max_per_class, where.size, name)
            where = np.sort(rng.choice(where, size=max_per_class, replace=False))
        kept.append(where)
    order = np.sort(np.concatenate(kept))
    return rows[order], cols[order]


def _patch_table(grid: _Grid, labels, rows, cols, counts: dict[str, np.ndarray],
                 classes: dict[str, int], rule: dict):
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    names = {value: name for name, value in classes.items()}
    values = labels[rows, cols]
    obs = pd.DataFrame({
        "label": values.astype(np.int64),
        "class": pd.Categorical([names[v] for v in values], categories=list(classes)),
        **{key: array[rows, cols] for key, array in counts.items()},
    }, index=pd.Index(np.arange(len(rows)).astype(str)))
    table = ad.AnnData(obs=obs, obsm={"spatial": grid.centres(rows, cols)},
                       uns={"transcript_labels": rule})
    return TableModel.parse(table)


def _cell_labels(sdata: SpatialData, cells: str, grid: _Grid, points: pd.DataFrame,
                 genes: tuple[str, str], min_counts: int, enrichment: float,
                 classes: dict[str, int]):
    """Each cell labelled by its transcripts: a table of cells and the cell of each grid pixel."""
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    from .._core.cells import cell_centroids, cell_raster

    sub = _CELL_SUBSTEPS
    fine_step = grid.step / sub
    ids, names = cell_raster(sdata, cells, grid.origin, fine_step,
                             (grid.shape[0] * sub, grid.shape[1] * sub))
    cols = np.floor((points["x"].to_numpy() - grid.origin[0]) / fine_step).astype(int)
    rows = np.floor((points["y"].to_numpy() - grid.origin[1]) / fine_step).astype(int)
    inside = (rows >= 0) & (cols >= 0) & (rows < ids.shape[0]) & (cols < ids.shape[1])
    cell_of = np.zeros(len(points), dtype=np.int64)
    cell_of[inside] = ids[rows[inside], cols[inside]]
    n = len(names)

    def count(mask):
        return np.bincount(cell_of[mask & (cell_of > 0)], minlength=n + 1)[1:]

    gene = points["gene"].to_numpy()
    n_a, n_b = count(gene == genes[0]), count(gene == genes[1])
    n_all = count(np.ones(len(points), dtype=bool))
    labels = _rule(n_a, n_b, np.ones(n, dtype=bool), min_counts, enrichment)
    value_names = {0: "unassigned"} | {value: name for name, value in classes.items()}
    obs = pd.DataFrame({
        "label": labels.astype(np.int64),
        "class": pd.Categorical([value_names[v] for v in labels],
                                categories=["unassigned", *classes]),
        "n_a": n_a, "n_b": n_b, "n_all": n_all,
        "area_um2": np.bincount(ids.ravel(), minlength=n + 1)[1:] * fine_step**2,
    }, index=pd.Index(names.astype(str), name="cell_id"))
    table = TableModel.parse(ad.AnnData(obs=obs, obsm={
        "spatial": cell_centroids(ids, grid.origin, fine_step)}))
    logger.info("%d of %d transcripts lie in the %d cells of %r.", int((cell_of > 0).sum()),
                len(points), n, cells)
    return table, ids[sub // 2 :: sub, sub // 2 :: sub]
