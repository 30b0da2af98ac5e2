"""Per-cell log-probabilities of trained patch classifiers, stacked by the cell-morphology model.

When it is fitted, only the classifiers that never trained on a cell (the cell lies in their
validation regions or outside their training region) speak for that cell.
"""

from __future__ import annotations

import numpy as np

from ..._core.logs import logger


def _in_boxes(points: np.ndarray, boxes) -> np.ndarray:
    inside = np.zeros(len(points), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside |= ((points[:, 0] >= x0) & (points[:, 0] <= x1)
                   & (points[:, 1] >= y0) & (points[:, 1] <= y1))
    return inside


def _unseen(meta: dict, centroids: np.ndarray) -> np.ndarray:
    """Whether a patch classifier never trained on each cell (by its centroid)."""
    unseen = _in_boxes(centroids, meta.get("val_regions") or [])
    if meta.get("region") is not None:
        unseen |= ~_in_boxes(centroids, [meta["region"]])
    return unseen


def _unseen_patch_log_probabilities(sdata, models, cells, names, centroids, bounds, classes, *,
                                    batch_size, device):
    """Mean per-cell log-probability of the classifiers that never trained on each cell."""
    total = np.zeros((len(names), len(classes) - 1))
    n = np.zeros(len(names))
    for model in models:
        unseen = _unseen(model.metadata, centroids)
        if not unseen.any():
            continue
        margin = 20.0  # um around the cells' centroids: their whole polygons
        box = (max(bounds[0], centroids[unseen, 0].min() - margin),
               max(bounds[1], centroids[unseen, 1].min() - margin),
               min(bounds[2], centroids[unseen, 0].max() + margin),
               min(bounds[3], centroids[unseen, 1].max() + margin))
        logs = _patch_log_probabilities(sdata, model, model.metadata, cells, names, box, classes,
                                        calibrate=True, batch_size=batch_size, device=device)
        use = unseen & ~np.isnan(logs).any(axis=1)
        total[use] += logs[use]
        n[use] += 1
    used = n > 0
    total[used] /= n[used, None]
    logger.info("%d of %d training cells lie where a patch classifier never trained.",
                int(used.sum()), len(names))
    return total, used


def _patch_log_probabilities(sdata, model, meta, cells, names, box, classes, *, calibrate,
                             batch_size, device) -> np.ndarray:
    """A patch classifier's per-cell log-probabilities of the cell classes (NaN: no value)."""
    from ._dense_map import calibrated, cell_probabilities, dense_probabilities

    model.metadata = dict(meta)
    probabilities, origin, stride = dense_probabilities(
        model, sdata, image_key=None, region=box, stride_um=None, batch_size=batch_size,
        device=device, cells=cells)
    means, found, _, _ = cell_probabilities(sdata, cells, probabilities, origin, stride, classes,
                                            None)
    means = calibrated(means, meta.get("calibration") if calibrate else None, classes)
    cell_columns = [i for i, name in enumerate(classes) if name != "background"]
    lookup = {str(name): i for i, name in enumerate(found)}
    out = np.full((len(names), len(cell_columns)), np.nan)
    for j, name in enumerate(np.asarray(names).astype(str)):
        if name in lookup:
            out[j] = np.log(np.clip(means[lookup[name], cell_columns], 1e-6, 1))
    return out
