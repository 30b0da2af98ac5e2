"""Scoring a predicted label map against a true one: Dice, IoU, precision, recall, confusion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._utils import logger, require_element
from ..io._image import image_levels, read_region

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
) -> pd.DataFrame:
    """Dice, IoU, precision and recall of each class of a predicted label map, and their mean.

    Both maps are read over ``region`` (default: where they overlap) on the grid of the coarser
    one, by nearest neighbour. Pixels where either map is ``ignore`` (unassigned truth, places
    not predicted) are left out, and their number logged. For a class ``c`` with true positives
    TP, false positives FP and false negatives FN: Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP +
    FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN); a class absent from both maps
    has no score (NaN) and is left out of the mean.

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

    Returns
    -------
    A DataFrame indexed by class name plus ``"mean"`` with columns ``dice``, ``iou``,
    ``precision``, ``recall`` and ``support`` (true pixels of the class); its
    ``attrs["confusion"]`` holds the confusion matrix (rows: truth, columns: prediction, in
    pixels) as a DataFrame.

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
    return table


def _read_pair(sdata, pred_key: str, truth_key: str, region) -> tuple[np.ndarray, np.ndarray]:
    """Both maps on the grid of the coarser one, over ``region`` or their overlap."""
    bounds = [_bounds(image_levels(sdata, key)[0]) for key in (pred_key, truth_key)]
    overlap = (max(bounds[0][0], bounds[1][0]), max(bounds[0][1], bounds[1][1]),
               min(bounds[0][2], bounds[1][2]), min(bounds[0][3], bounds[1][3]))
    box = overlap if region is None else tuple(float(v) for v in region)
    if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"The maps do not overlap, or region is not (x_min, y_min, x_max, "
                         f"y_max) with max > min: {box}.")
    mpp = max(image_levels(sdata, key)[0].mpp for key in (pred_key, truth_key))
    return (read_region(sdata, pred_key, box, mpp=mpp, outside="fill"),
            read_region(sdata, truth_key, box, mpp=mpp, outside="fill"))


def _bounds(level) -> tuple[float, float, float, float]:
    (x0, y0), (h, w) = level.offset, level.shape_yx
    return x0, y0, x0 + w * level.mpp, y0 + h * level.mpp


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
