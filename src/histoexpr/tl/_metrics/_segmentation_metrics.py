"""Scoring a predicted label map against a true one: Dice, IoU, precision, recall, confusion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..._core.image import image_levels, read_region
from ..._core.logs import logger
from ..._core.ownership import require_element

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData


def label_metrics(
    sdata: SpatialData,
    pred_key: str,
    truth_key: str,
    *,
    classes: Mapping[str, int] | None = None,
    region: Sequence[float] | None = None,
    ignore: int = 0,
    cells: str | None = None,
) -> pd.DataFrame:
    """Dice, IoU, precision and recall of each class of a predicted label map, and their mean.

    Both maps are read over ``region`` (default: where they overlap) on the grid of the coarser
    one, by nearest neighbour. Pixels where either map is ``ignore`` (unassigned truth, places
    not predicted) are left out, and their number logged. For a class ``c`` with true positives
    TP, false positives FP and false negatives FN: Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP +
    FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN); a class absent from both maps
    has no score (NaN) and is left out of the mean.

    **Per-cell maps are also scored per cell.** Per pixel, the background (every place outside
    the cells) dominates; per cell, each cell counts once. Cells are scored when the prediction
    has a per-cell table (``sdata.tables[f"{pred_key}_cells"]``, written by ``hx.tl.predict``
    with cells) and the truth has one (``f"{truth_key}_cells"``, written by
    ``hx.pp.transcript_labels(..., cells=...)``), or when ``cells`` names the cells: a map
    without a table then gives each cell the most common value over the pixels of a grid of
    half the map's pixel size that lie in the cell. A cell is left out, for a reason that is
    counted and logged, when its centroid lies outside ``region``, when its truth is
    unassigned (``ignore``: e.g. both genes, neither enriched), or when it has no prediction
    (outside the predicted map, or covering no pixel of it).

    Parameters
    ----------
    sdata
        The section holding both label maps.
    pred_key
        Key of the predicted label map in ``sdata.labels``.
    truth_key
        Key of the true label map in ``sdata.labels``.
    classes
        ``{name: label value}`` of the classes to score; defaults to the ``classes`` recorded by
        :func:`histoexpr.pp.transcript_labels` or the prediction, else every value present.
    region
        ``(x_min, y_min, x_max, y_max)`` in um to score (e.g. the held-out part of a section).
    ignore
        Label value that is not a class.
    cells
        Key of cell polygons or a cell label image: score per cell (see above) even where the
        maps have no per-cell tables; ``None`` scores per cell only where both tables exist.

    Returns
    -------
    A DataFrame indexed by class name plus ``"mean"`` with columns ``dice``, ``iou``,
    ``precision``, ``recall`` and ``support`` (true pixels of the class); its
    ``attrs["confusion"]`` holds the confusion matrix (rows: truth, columns: prediction, in
    pixels) as a DataFrame. Scored per cell, it also has the columns ``cell_precision``,
    ``cell_recall``, ``cell_f1`` and ``cell_support`` (cells of the class; in the ``"mean"``
    row, the mean over the classes that some cell holds, so that ``cell_f1`` is the macro-F1
    and ``cell_recall`` the balanced accuracy) and ``attrs["cells"]``: ``accuracy``,
    ``macro_f1``, ``scored``, ``total``, ``unscored`` (``{reason: number of cells}``),
    ``confusion`` (rows: truth, columns: prediction, in cells) and ``unscored_cells`` (a
    Series: cell id -> reason).

    Examples
    --------
    >>> scores = hx.tl.evaluate(sdata, "pred_cells", "tx_labels", region=bottom)
    >>> scores[["dice", "cell_recall", "cell_f1"]]
    >>> scores.attrs["cells"]["accuracy"], scores.attrs["cells"]["unscored"]

    """
    import pandas as pd

    require_element(sdata, pred_key, "labels")
    require_element(sdata, truth_key, "labels")
    pred, truth = _read_pair(sdata, pred_key, truth_key, region)
    scored = (pred != ignore) & (truth != ignore)
    if not scored.any():
        raise ValueError(f"No pixel of the region is labelled in both {pred_key!r} and "
                         f"{truth_key!r}; check the region and that the maps overlap.")
    if (~scored).any():
        logger.info("Scored %d pixels; left out %d where a map is unlabelled (%d).",
                    int(scored.sum()), int((~scored).sum()), ignore)
    classes = _classes(sdata, pred_key, truth_key, classes, truth[scored], ignore)
    names, values = list(classes), np.asarray(list(classes.values()))
    lookup = np.full(max(int(values.max()), int(pred.max()), int(truth.max())) + 1, len(values))
    lookup[values] = np.arange(len(values))
    t, p = lookup[truth[scored]], lookup[pred[scored]]
    size = len(values) + 1  # the last row/column collects values outside ``classes``
    confusion = np.bincount(t * size + p, minlength=size * size).reshape(size, size)
    tp = np.diag(confusion)[:-1].astype(float)
    fp = confusion[:, :-1].sum(axis=0) - tp
    fn = confusion[:-1, :].sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        table = pd.DataFrame({
            "dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
            "precision": tp / (tp + fp), "recall": tp / (tp + fn),
            "support": (tp + fn).astype(int)}, index=pd.Index(names, name="class"))
    mean = table.drop(columns="support").mean(axis=0, skipna=True)
    table.loc["mean"] = [*mean, int(table["support"].sum())]
    table["support"] = table["support"].astype(int)
    table.attrs["confusion"] = pd.DataFrame(
        confusion[:-1, :-1], index=pd.Index(names, name="truth"),
        columns=pd.Index(names, name="prediction"))
    per_cell = _cell_labels(sdata, pred_key, truth_key, region, cells, ignore)
    if per_cell is not None:
        _add_cell_scores(table, classes, *per_cell)
    return table


def _cell_labels(sdata, pred_key: str, truth_key: str, region, cells: str | None, ignore: int):
    """Truth and prediction of each cell, and each cell's reason for being left out.

    Returns a frame indexed by cell id and a Series of reasons (``""``: scored), or ``None``
    where the maps are not scored per cell.
    """
    import pandas as pd

    tables = [sdata.tables.get(f"{key}_cells") for key in (pred_key, truth_key)]
    if cells is None and any(t is None or "label" not in t.obs for t in tables):
        return None
    frames = []
    for key, table in zip((pred_key, truth_key), tables, strict=True):
        if table is not None and "label" in table.obs:
            xy = np.asarray(table.obsm["spatial"], dtype=float)
            frames.append(pd.DataFrame({"label": table.obs["label"].to_numpy().astype(int),
                                        "x": xy[:, 0], "y": xy[:, 1]},
                                       index=table.obs_names.astype(str)))
        else:
            frames.append(_majority_per_cell(sdata, key, cells, region, ignore))
    pred, truth = frames
    index = truth.index.union(pred.index)
    centres = truth[["x", "y"]].reindex(index).fillna(pred[["x", "y"]].reindex(index))
    frame = pd.DataFrame({"truth": truth["label"].reindex(index).fillna(ignore).astype(int),
                          "pred": pred["label"].reindex(index).fillna(ignore).astype(int)},
                         index=index)
    reason = pd.Series("", index=index, dtype=object)
    if region is not None:
        x0, y0, x1, y1 = (float(v) for v in region)
        outside = ~(centres["x"].between(x0, x1) & centres["y"].between(y0, y1))
        reason[outside.to_numpy()] = "centroid outside the region"
    reason[(reason == "") & (frame["truth"] == ignore)] = (
        "unassigned in the truth (e.g. both genes, neither enriched)")
    reason[(reason == "") & (frame["pred"] == ignore)] = (
        "no prediction (outside the predicted map or covers no pixel of it)")
    return frame, reason


#: bytes per pixel of the per-cell vote besides the cells' raster: the map's values and
#: the votes' index (int64), the mask
_VOTE_BYTES_PER_PX = 8 + 8 + 1


def _majority_per_cell(sdata, key: str, cells: str, region, ignore: int):
    """Each cell's most common value of a map, on a grid of half the map's pixel size."""
    import pandas as pd

    from ..._core.cells import cell_centroids, cell_raster, raster_bytes_per_px
    from ..._core.memory import check_memory

    level = image_levels(sdata, key)[0]
    step = level.mpp / 2
    box = level.bounds if region is None else tuple(float(v) for v in region)
    height, width = (max(1, round((box[3] - box[1]) / step)),
                     max(1, round((box[2] - box[0]) / step)))
    check_memory(  # the map's values and the cells' ids on the finer grid, their votes' index
        float(height) * width * (_VOTE_BYTES_PER_PX + raster_bytes_per_px(sdata, cells)),
        f"Scoring the cells of {cells!r} on sdata.labels[{key!r}] at {step:g} um/px (half the "
        f"map's pixel size: {width:,} x {height:,} px)",
        "Pass region=(x_min, y_min, x_max, y_max) to score part of the section at a time.")
    values = np.asarray(read_region(sdata, key, box, mpp=step)).astype(np.int64)
    ids, names = cell_raster(sdata, cells, box[:2], step, values.shape)
    labelled = (ids > 0) & (values != ignore)
    n_values = int(values.max()) + 1
    votes = np.bincount(ids[labelled] * n_values + values[labelled],
                        minlength=(len(names) + 1) * n_values).reshape(-1, n_values)[1:]
    label = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), ignore)
    centroids = cell_centroids(ids, box[:2], step)
    return pd.DataFrame({"label": label, "x": centroids[:, 0], "y": centroids[:, 1]},
                        index=pd.Index(np.asarray(names).astype(str)))


def _add_cell_scores(table, classes: dict[str, int], frame, reason) -> None:
    """Per-cell precision, recall, F1 and support beside the pixel scores; attrs["cells"]."""
    import pandas as pd

    names, values = list(classes), np.asarray(list(classes.values()))
    scored = (reason == "").to_numpy()
    t, p = frame["truth"].to_numpy()[scored], frame["pred"].to_numpy()[scored]
    confusion = np.array([[np.sum((t == a) & (p == b)) for b in values] for a in values])
    tp = np.diag(confusion).astype(float)
    predicted = np.array([np.sum(p == v) for v in values], dtype=float)
    support = np.array([np.sum(t == v) for v in values])
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.where(support > 0, 0.0, np.nan))
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
    present = support > 0
    f1[~present] = np.nan  # classes no cell holds (background) do not enter the macro mean
    precision[~present] = np.nan
    table["cell_precision"] = [*precision, np.nanmean(precision) if present.any() else np.nan]
    table["cell_recall"] = [*recall, np.nanmean(recall) if present.any() else np.nan]
    table["cell_f1"] = [*f1, np.nanmean(f1) if present.any() else np.nan]
    table["cell_support"] = [*support.astype(int), int(support.sum())]
    counts = reason[~scored].value_counts().to_dict()
    accuracy = float(tp.sum() / max(len(t), 1)) if len(t) else float("nan")
    table.attrs["cells"] = {
        "accuracy": accuracy, "macro_f1": float(table.loc["mean", "cell_f1"]),
        "scored": int(scored.sum()), "total": int(len(reason)),
        "unscored": {str(k): int(v) for k, v in counts.items()},
        "confusion": pd.DataFrame(confusion, index=pd.Index(names, name="truth"),
                                  columns=pd.Index(names, name="prediction")),
        "unscored_cells": reason[~scored],
    }
    logger.info("Scored %d of %d cells (accuracy %.3f, macro-F1 %.3f)%s.", int(scored.sum()),
                len(reason), accuracy, table.attrs["cells"]["macro_f1"],
                "" if not counts else "; left out: " + ", ".join(
                    f"{v} {k}" for k, v in counts.items()))


def _read_pair(sdata, pred_key: str, truth_key: str, region) -> tuple[np.ndarray, np.ndarray]:
    """Both maps on the grid of the coarser one, over ``region`` or their overlap."""
    bounds = [image_levels(sdata, key)[0].bounds for key in (pred_key, truth_key)]
    overlap = (max(bounds[0][0], bounds[1][0]), max(bounds[0][1], bounds[1][1]),
               min(bounds[0][2], bounds[1][2]), min(bounds[0][3], bounds[1][3]))
    box = overlap if region is None else tuple(float(v) for v in region)
    if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"The maps do not overlap, or region is not (x_min, y_min, x_max, "
                         f"y_max) with max > min: {box}.")
    mpp = max(image_levels(sdata, key)[0].mpp for key in (pred_key, truth_key))
    return (read_region(sdata, pred_key, box, mpp=mpp, outside="fill"),
            read_region(sdata, truth_key, box, mpp=mpp, outside="fill"))


def _classes(sdata, pred_key: str, truth_key: str, classes, truth: np.ndarray,
             ignore: int) -> dict[str, int]:
    """The classes to score: given, recorded with a map, or every value of the truth."""
    if classes is not None:
        return {str(name): int(value) for name, value in classes.items()}
    for key in (truth_key, pred_key):
        recorded = sdata.labels[key].attrs.get("classes")
        if recorded:
            return {str(name): int(value) for name, value in recorded.items()}
    for table in sdata.tables.values():
        rule = table.uns.get("transcript_labels", {})
        if rule.get("labels_key") in (truth_key, pred_key):
            return {str(name): int(value) for name, value in rule["classes"].items()}
    return {f"class {v}": int(v) for v in np.unique(truth) if v != ignore}
