"""Calibration of the patch classifier on its validation patches, and the choice of its sizes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._core.image import image_levels
from ..._core.logs import logger

#: exponents of the class-prior correction tried (0: none, 1: the full Bayes correction)
_PRIOR_EXPONENTS = np.round(np.arange(0.0, 1.501, 0.05), 2)
#: temperatures tried
_TEMPERATURES = np.exp(np.linspace(np.log(0.2), np.log(5.0), 41))


def _class_prior(sdata, labels_key: str, classes: dict[str, int], region) -> dict[str, float]:
    """Share of each class among the labelled pixels of the label map inside ``region``."""
    from ..._core.image import read_region

    level = image_levels(sdata, labels_key)[0]
    box = level.bounds if region is None else region
    values = np.asarray(read_region(sdata, labels_key, tuple(float(v) for v in box),
                                    mpp=level.mpp))
    counts = np.array([np.sum(values == v) for v in classes.values()], dtype=float)
    if counts.sum() == 0:
        raise ValueError("The label map has no labelled pixel inside region; check region.")
    return {name: float(c / counts.sum()) for name, c in zip(classes, counts, strict=True)}


def fit_calibration(probabilities: np.ndarray, targets: np.ndarray, classes: dict[str, int],
                    prior: dict[str, float], *, cells: bool = False) -> dict[str, Any]:
    """The class-prior exponent and temperature that best fit weighted validation patches.

    Each patch is weighted by its class's share in ``prior`` over its share among the
    patches, so that the weighted patches have the classes' true shares. The exponent ``g``
    maximises the weighted mean Dice of ``argmax(p * prior ** g)``; the temperature then
    minimises the weighted negative log-likelihood. With ``cells``, the background class is
    left out (its patches dropped, its probability set to 0), as in per-cell maps.
    """
    from ._dense_map import calibrated

    names = list(classes)
    p = np.asarray(probabilities, dtype=np.float64)
    t = np.asarray(targets)
    keep = np.ones(len(t), dtype=bool)
    scored = list(range(len(names)))
    if cells and "background" in names:
        background = names.index("background")
        keep = t != background
        p = p.copy()
        p[:, background] = 0
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
        scored.remove(background)
    p, t = p[keep], t[keep]
    shares = np.array([prior[name] for name in names])
    counts = np.bincount(t, minlength=len(names)).astype(float)
    weights = np.where(counts[t] > 0, shares[t] / np.maximum(counts[t], 1), 0)
    weights = weights / weights.sum()

    def mean_dice(predicted):
        dice = []
        for k in scored:
            tp = weights[(predicted == k) & (t == k)].sum()
            total = weights[predicted == k].sum() + weights[t == k].sum()
            if weights[t == k].sum() > 0:
                dice.append(2 * tp / total if total else 0.0)
        return float(np.mean(dice))

    record = {"prior": dict(prior), "exponent": 0.0, "temperature": 1.0}
    dice = [mean_dice(calibrated(p, dict(record, exponent=float(g)), classes).argmax(axis=1))
            for g in _PRIOR_EXPONENTS]
    best = int(np.argmax(dice))  # the first (smallest) of equals
    record["exponent"] = float(_PRIOR_EXPONENTS[best])
    eps = 1e-12
    nll = [-(weights * np.log(np.clip(calibrated(p, dict(record, temperature=float(temp)),
                                                 classes)[np.arange(len(t)), t], eps, 1))).sum()
           for temp in _TEMPERATURES]
    record["temperature"] = float(_TEMPERATURES[int(np.argmin(nll))])
    record.update(val_mean_dice_before=dice[0], val_mean_dice_after=dice[best],
                  n_val=int(len(t)), classes_scored=[names[k] for k in scored])
    logger.info("Calibration on %d validation %s weighted to the class prior: exponent "
                "%.2f, temperature %.2f; weighted validation mean Dice %.3f -> %.3f.", len(t),
                "samples" if cells else "patches",
                record["exponent"], record["temperature"], dice[0], dice[best])
    return record


def _report(name: str, probabilities: np.ndarray, targets: np.ndarray, classes: dict[str, int],
            *, size_um: float | None, patch_px: int | None, history: dict | None) -> dict:
    """Validation metrics of one classifier (plain values, for the model's metadata)."""
    predicted = probabilities.argmax(axis=1)
    eps = 1e-12
    chosen = np.clip(probabilities[np.arange(len(targets)), targets], eps, 1)
    record: dict[str, Any] = {
        "name": name, "size_um": size_um, "patch_px": patch_px,
        "epochs_run": None if history is None else int(history["epochs_run"]),
        "best_epoch": None if history is None else int(history["best_epoch"]) + 1,
        "seconds": None if history is None else float(history["seconds"]),
        "val_nll": float(-np.log(chosen).mean()),
        "val_accuracy": float((predicted == targets).mean()),
    }
    dice = []
    for i, class_name in enumerate(classes):
        tp = np.sum((predicted == i) & (targets == i))
        denominator = np.sum(predicted == i) + np.sum(targets == i)
        value = float(2 * tp / denominator) if denominator else float("nan")
        record[f"dice_{class_name}"] = value
        dice.append(value)
    record["mean_dice"] = float(np.nanmean(dice))
    return record


def _choose(reports: list[dict], combine: str) -> list[int]:
    """Indices of the sizes to keep."""
    sizes = [r for r in reports if r["name"] != "ensemble"]
    best = int(np.argmax([r["mean_dice"] for r in sizes]))
    if len(sizes) == 1 or combine == "best":
        return [best]
    if combine == "ensemble" or reports[-1]["mean_dice"] >= sizes[best]["mean_dice"]:
        return list(range(len(sizes)))
    return [best]
