"""Targets of the bag models: genes or labels per bag, their median rule, standardised features."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._core.logs import logger
from ._bag_data import (
    Bags,
    StandardisedFeatures,
    collect_bags,
    encoder_of,
    feature_statistics,
    features_made,
)
from ._options import LABELS, TARGET_TRANSFORMS, TASKS


def training_data(data: Any, *, genes: Any, target: Any, task: str, tiles_key: str,
                  features_key: str | None, bags_key: str, target_transform: str,
                  labels: str = "obs") -> tuple[Bags, np.ndarray, dict]:
    """Bags with their targets (standardised for regression, codes for classes) and metadata."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}.")
    if labels == "median" and (task != "classification" or target is not None):
        raise ValueError("labels='median' makes classification labels from genes=; use it "
                         "with task='classification' and without target=.")
    bags = collect_bags(data, tiles_key=tiles_key, features_key=features_key, bags_key=bags_key)
    metadata: dict[str, Any] = {"task": task, "tiles_key": tiles_key, "bags_key": bags_key,
                                "features_key": bags.features_key, "encoder": encoder_of(bags),
                                "features_made": features_made(bags)}
    if task == "regression":
        if target is not None:
            raise ValueError("target= names label columns for classification; for regression "
                             "give genes=.")
        y, names = regression_targets(bags, genes, target_transform)
        bags, y = drop_missing(bags, y, ~np.isfinite(y).all(axis=1), "expression")
        mean, std = y.mean(axis=0), y.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)
        y = (y - mean) / std
        metadata.update(genes=names, columns=names, branches=names,
                        target_transform=target_transform, target_mean=mean.tolist(),
                        target_std=std.tolist())
    elif labels == "median":
        rule = median_rule(bags, genes, target_transform)
        bags, y, classes = _apply_rule(bags, rule, target_transform)
        targets = list(rule)
        metadata.update(targets=targets, classes=classes, branches=targets, label_rule=rule,
                        target_transform=target_transform,
                        columns=[f"{t}:{c}" for t in targets for c in classes[t]])
    else:
        if target is None:
            if genes is None:
                raise ValueError("Classification needs target= (label columns of the bulk "
                                 "obs) or genes= (to learn their deg_<gene> labels).")
            from ..._core.panels import resolve_genes

            target = [f"deg_{g}" for g in resolve_genes(genes, bags.bulk.var_names)]
        targets = [target] if isinstance(target, str) else list(target)
        y, classes = class_targets(bags, targets)
        bags, y = drop_missing(bags, y, (y < 0).any(axis=1), "label")
        if min(len(c) for c in classes.values()) < 2:
            raise ValueError(f"Every target needs at least two classes; got {classes}.")
        metadata.update(targets=targets, classes=classes, branches=targets,
                        columns=[f"{t}:{c}" for t in targets for c in classes[t]])
    mean, std, n_tiles = feature_statistics(bags)  # bag by bag: never every bag at once
    metadata.update(n_features=len(mean), feature_mean=mean.astype(np.float32).tolist(),
                    feature_std=np.where(std > 1e-6, std, 1.0).astype(np.float32).tolist())
    logger.info("Training on %d bags (%d tiles, %d features) for %d outputs.", bags.bulk.n_obs,
                n_tiles, len(mean), len(metadata["columns"]))
    return bags, y, metadata


def median_rule(bags: Bags, genes: Any, transform: str) -> dict[str, dict]:
    """Label rules split at the median of ``bags``: one per gene, or per named marker set."""
    from collections.abc import Mapping

    if genes is None:
        raise ValueError("labels='median' needs genes=: genes to label, or a mapping from a "
                         "label name to marker genes.")
    sets = ({str(k): list(v) for k, v in genes.items()} if isinstance(genes, Mapping) else None)
    if sets is None:
        _, names = regression_targets(bags, genes, transform)
        sets = {f"deg_{g}": [g] for g in names}
    rule = {}
    for name, members in sets.items():
        values, members = regression_targets(bags, members, transform)
        mean, std = values.mean(axis=0), values.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)
        score = ((values - mean) / std).mean(axis=1)
        rule[name] = {"genes": members, "mean": mean.tolist(), "std": std.tolist(),
                      "threshold": float(np.median(score))}
    return rule


def rule_labels(bags: Bags, rule: dict[str, dict], transform: str) -> dict[str, np.ndarray]:
    """``"down"`` / ``"up"`` of every bag under the stored rules (thresholds from training)."""
    out = {}
    for name, r in rule.items():
        values, _ = regression_targets(bags, r["genes"], transform)
        score = ((values - np.asarray(r["mean"])) / np.asarray(r["std"])).mean(axis=1)
        out[name] = np.where(score > r["threshold"], "up", "down").astype(object)
    return out


def _apply_rule(bags: Bags, rule: dict[str, dict], transform: str):
    codes = rule_labels(bags, rule, transform)
    y = np.column_stack([(codes[name] == "up").astype(np.int64) for name in rule])
    classes = {name: ["down", "up"] for name in rule}
    for name, column in zip(rule, y.T, strict=True):
        if column.min() == column.max():
            raise ValueError(f"Every training bag has the same {name!r} label; give more "
                             "bags or other genes.")
    return bags, y, classes


def standardised_features(bags: Bags, metadata: dict) -> list[np.ndarray]:
    """Every bag's tile features, standardised as in training."""
    mean = np.asarray(metadata["feature_mean"], dtype=np.float32)
    std = np.asarray(metadata["feature_std"], dtype=np.float32)
    if bags.stores is not None:  # a cohort on disk: read each bag from its store when used
        return StandardisedFeatures(bags, mean, std)
    return [(bags.features(i) - mean) / std for i in range(bags.bulk.n_obs)]


def regression_targets(bags: Bags, genes: Any, transform: str) -> tuple[np.ndarray, list[str]]:
    """Targets (bags x genes) from the bulk table, and the gene names."""
    from ..._core.expression import expression_targets
    from ..._core.panels import resolve_genes

    if transform not in TARGET_TRANSFORMS:
        raise ValueError(f"target_transform must be one of {TARGET_TRANSFORMS}, got "
                         f"{transform!r}.")
    genes = resolve_genes(genes, bags.bulk.var_names, what="the bulk expression")
    if transform == "log1p_normalised":
        return expression_targets(bags.bulk, genes).astype(np.float32), genes
    values = bags.bulk[:, genes].X
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values, dtype=float)
    values = np.log1p(values) if transform == "log1p" else values
    return values.astype(np.float32), genes


def class_targets(bags: Bags, targets: list[str]) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Class codes (bags x targets, -1 where missing) of obs columns, and their classes."""
    import pandas as pd

    missing = [t for t in targets if t not in bags.bulk.obs.columns]
    if missing:
        raise KeyError(f"{missing} are not columns of the bulk table's obs (available: "
                       f"{list(bags.bulk.obs.columns)}); label them first, e.g. with "
                       "hx.pp.deg_labels.")
    codes, classes = [], {}
    for target in targets:
        column = bags.bulk.obs[target]
        column = column if isinstance(column.dtype, pd.CategoricalDtype) else \
            column.astype("category")
        classes[target] = [str(c) for c in column.cat.categories]
        codes.append(column.cat.codes.to_numpy())
    return np.column_stack(codes).astype(np.int64), classes


def drop_missing(bags: Bags, values: np.ndarray, missing: np.ndarray, what: str):
    """Leave out bags whose target is missing (logged), or refuse if none is left."""
    if missing.any():
        logger.warning("Left out %d of %d bags with a missing (NaN) %s: %s", int(missing.sum()),
                       len(missing), what, list(bags.bulk.obs_names[missing][:5]))
    if missing.all():
        raise ValueError(f"Every bag has a missing {what}.")
    return bags.subset(~missing), values[~missing]
