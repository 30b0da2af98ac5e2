"""Bag-level classification scores: ROC AUC and balanced accuracy per target."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData


def class_scores(predicted: AnnData, metadata: dict) -> pd.DataFrame:
    """AUC and balanced accuracy of each target whose true labels are in ``predicted.obs``.

    Parameters
    ----------
    predicted
        Bags x class probabilities (columns ``"<target>:<class>"``) from ``hx.tl.predict``, with
        the predicted class in ``obs["<target>_pred"]`` and the truth in ``obs["<target>"]``.
    metadata
        The model's metadata (``targets`` and ``classes``).

    Returns
    -------
    One row per scored target: ``target``, ``auc`` (of the second class for two classes, else
    one-vs-rest macro), ``balanced_accuracy``, ``n_bags``; targets with a single class among
    the bags, or without truth, are left out.
    """
    import pandas as pd
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rows = []
    for target in metadata["targets"]:
        if target not in predicted.obs.columns:
            continue
        truth = predicted.obs[target].astype(str).to_numpy()
        known = truth != "nan"
        classes = metadata["classes"][target]
        if len(set(truth[known])) < 2:
            continue
        columns = [f"{target}:{c}" for c in classes]
        probabilities = np.asarray(predicted[known, columns].X, dtype=float)
        if len(classes) == 2:
            auc = roc_auc_score(truth[known] == classes[1], probabilities[:, 1])
        else:
            auc = roc_auc_score(truth[known], probabilities, multi_class="ovr",
                                labels=classes)
        balanced = balanced_accuracy_score(
            truth[known], predicted.obs[f"{target}_pred"].astype(str).to_numpy()[known])
        rows.append({"target": target, "auc": float(auc), "balanced_accuracy": float(balanced),
                     "n_bags": int(known.sum())})
    return pd.DataFrame(rows, columns=["target", "auc", "balanced_accuracy", "n_bags"])
