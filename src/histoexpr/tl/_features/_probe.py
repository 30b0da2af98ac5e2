"""Linear probes: how much of a target any features carry, on held-out groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..._core.logs import logger
from ..._core.seeds import resolve_seed
from ..._core.validate import check_int, renamed_parameters

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

KINDS = ("auto", "classification", "regression")
STANDARDISE = ("training", "group")
DEFAULT_ALPHAS = tuple(np.logspace(-1, 5, 13))
_MAX_CLASSES = 50  # an integer target with more distinct values is treated as continuous
#: memory of one feature value while probing: its float64 value and the copies a fold makes
#: (standardised features, training rows, the models' own); 4 to 5 copies measured by
#: tracemalloc, so 6 float64 values
_BYTES_PER_VALUE = 48


@renamed_parameters(n_splits="n_folds")
def probe(
    data: np.ndarray | pd.DataFrame | AnnData | SpatialData,
    target: Any,
    *,
    groups: Any = None,
    features_key: str | None = None,
    table_key: str | None = None,
    kind: str = "auto",
    standardise: str = "training",
    n_folds: int = 5,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int | None = None,
) -> pd.DataFrame:
    """Score features against a target with a linear probe on held-out folds.

    Features are standardised on each training fold, or within each group. Classes are
    predicted by logistic regression (its regularisation chosen by inner cross-validation) and
    scored by accuracy and balanced accuracy; continuous targets (one or many, e.g. genes) by
    ridge regression with a penalty per target chosen by inner (efficient leave-one-out)
    cross-validation, scored by the Pearson correlation of prediction and truth per target.
    With ``groups`` (e.g. the section of each tile), no group is split between training and
    testing: each group is held out in turn (at most ``n_folds`` folds of whole groups).

    Parameters
    ----------
    data
        The features: an array or DataFrame (observations x features), an AnnData (its
        ``obsm[features_key]``, or ``X``), or a SpatialData (the table ``table_key``'s
        ``obsm[features_key]``).
    target
        What to predict, one row per observation: an array, Series or DataFrame (several
        continuous targets, e.g. genes, as columns), or with an AnnData / SpatialData the name(s)
        of ``obs`` column(s).
    groups
        Group of each observation (an array, or the name of an ``obs`` column); ``None`` makes
        shuffled folds of single observations.
    features_key
        Key in ``obsm`` of the features (AnnData, SpatialData).
    table_key
        Key of the table in ``sdata.tables`` (SpatialData).
    kind
        ``"classification"``, ``"regression"``, or ``"auto"``: classes for text, categorical,
        boolean or integer targets with few values, regression otherwise.
    standardise
        ``"training"``: centre and scale the features by their mean and spread over the training
        fold; ``"group"``: by those of each group, the held-out one included (it removes
        differences of stain and scanner between sections; it uses the held-out features but not
        their target).
    n_folds
        Number of folds. (Was ``n_splits``, still accepted with a ``FutureWarning``.)
    alphas
        Ridge penalties searched by the inner cross-validation (regression).
    seed
        Random seed of the folds; ``None`` uses ``hx.settings.seed``.

    Returns
    -------
    One row per held-out fold (and per target, for regression): columns ``fold`` (the held-out
    group(s)), ``target``, ``n_train``, ``n_test`` and the scores, ``accuracy`` and
    ``balanced_accuracy`` or ``pearson`` (with the chosen ``alpha``).

    """
    n_folds = check_int("n_folds", n_folds, minimum=2)
    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}; choose one of {KINDS}.")
    if standardise not in STANDARDISE:
        raise ValueError(f"Unknown standardise {standardise!r}; choose one of {STANDARDISE}.")
    if standardise == "group" and groups is None:
        raise ValueError("standardise='group' standardises within each group: pass groups= "
                         "(e.g. the section of each observation).")
    table = _table(data, table_key)
    features = _features(data if table is None else table, features_key)  # sparse stays sparse
    n_rows = features.shape[0]
    targets = _targets(target, table, n_rows)
    group_labels = _column(groups, table, "groups") if groups is not None else None
    if group_labels is not None and len(group_labels) != n_rows:
        raise ValueError(f"groups has {len(group_labels)} entries for {n_rows} "
                         "observations.")
    keep = _finite_rows(features) & targets.notna().all(axis=1).to_numpy()
    if not keep.all():
        logger.info("probe: left out %d of %d observations with missing features or target.",
                    int((~keep).sum()), len(keep))
    _check_enough_rows(int(keep.sum()), len(keep), n_folds, grouped=group_labels is not None)
    features, targets = _dense_rows(features, keep), targets[keep]
    group_labels = None if group_labels is None else np.asarray(group_labels)[keep]
    if kind == "auto":
        kind = "classification" if _looks_categorical(targets) else "regression"
    if standardise == "group":
        features = _standardise_within(features, group_labels)
    folds = _folds(len(features), group_labels, n_folds, resolve_seed(seed))
    score = _score_classes if kind == "classification" else _score_continuous
    rows = []
    for name, (train, test) in folds:
        x = _standardise(features, train)
        rows += [{"fold": name, "n_train": len(train), "n_test": len(test), **row}
                 for row in score(x, targets, train, test, alphas)]
    return pd.DataFrame(rows)


def _check_enough_rows(n_kept: int, n: int, n_folds: int, *, grouped: bool) -> None:
    """Refuse too few observations with finite features and a target for the folds."""
    needed = 2 if grouped else n_folds
    if n_kept >= needed:
        return
    why = (f"{n - n_kept} of {n} observations have missing (NaN) or infinite features or a "
           "missing target and are left out" if n_kept < n else f"there are {n} observations")
    fix = ("give more observations" if grouped or n_kept < 2 else
           f"give more observations or fewer folds (n_folds={n_kept})")
    raise ValueError(f"probe: {why}, leaving {n_kept}, too few to hold out "
                     f"{'two groups' if grouped else f'{n_folds} folds'}. Fill or drop the "
                     f"missing values, or {fix}.")


def _table(data: Any, table_key: str | None):
    from spatialdata import SpatialData

    if not isinstance(data, SpatialData):
        return data if _is_anndata(data) else None
    if table_key is None or table_key not in data.tables:
        raise KeyError(f"Pass table_key=, the table that holds the features; the section has "
                       f"{list(data.tables)}.")
    return data.tables[table_key]


def _is_anndata(data: Any) -> bool:
    from anndata import AnnData

    return isinstance(data, AnnData)


def _features(data: Any, features_key: str | None) -> Any:
    """The features as float64: a numpy array, or a sparse matrix left sparse (CSR).

    The memory of probing them densely is estimated here, before a sparse matrix is densified
    (:func:`_dense_rows`) or any fold is made.
    """
    from scipy import sparse

    if _is_anndata(data):
        if features_key is None:
            data = data.X
        elif features_key in data.obsm:
            data = data.obsm[features_key]
        else:
            raise KeyError(f"obsm has no {features_key!r}; available: {list(data.obsm)}.")
    shape = data.shape if sparse.issparse(data) else np.shape(data)
    if len(shape) != 2:
        raise ValueError(f"features must be 2-d (observations x features), got shape "
                         f"{shape}.")
    _check_probe_memory(*shape)  # before any copy is made
    if sparse.issparse(data):
        return sparse.csr_matrix(data, dtype=np.float64)
    return np.asarray(data, dtype=np.float64)


def _check_probe_memory(n_rows: int, n_features: int) -> None:
    """Refuse features whose dense probe would exceed the memory limit, before any is made."""
    from ..._core.memory import check_memory

    check_memory(
        float(n_rows) * n_features * _BYTES_PER_VALUE,
        f"Probing {n_rows:,} observations x {n_features:,} features (dense float64 features "
        "and their standardised copies per fold)",
        "Probe fewer features (e.g. a PCA of them, or a subset of columns) or a sample of the "
        "observations.")


def _finite_rows(features: Any) -> np.ndarray:
    """Whether each row's features are all finite (a sparse matrix's stored values only)."""
    from scipy import sparse

    if not sparse.issparse(features):
        return np.isfinite(features).all(axis=1)
    coo = features.tocoo()
    keep = np.ones(features.shape[0], dtype=bool)
    keep[coo.row[~np.isfinite(coo.data)]] = False
    return keep


def _dense_rows(features: Any, keep: np.ndarray) -> np.ndarray:
    """The rows ``keep`` as one dense float64 array.

    A sparse matrix is densified once, after its rows are dropped: standardising centres the
    features, so from here on they are dense.
    """
    from scipy import sparse

    if not sparse.issparse(features):
        return features[keep]
    return (features if keep.all() else features[keep]).toarray()


def _column(values: Any, table: Any, what: str) -> np.ndarray:
    if isinstance(values, str):
        if table is None or values not in table.obs:
            raise KeyError(f"{what}={values!r} names an obs column, which needs an AnnData or "
                           "SpatialData with that column; or pass the values themselves.")
        return table.obs[values].to_numpy()
    return np.asarray(values)


def _targets(target: Any, table: Any, n: int) -> pd.DataFrame:
    if isinstance(target, str) or (isinstance(target, list) and target
                                   and all(isinstance(t, str) for t in target)):
        names = [target] if isinstance(target, str) else target
        frame = pd.DataFrame({name: _column(name, table, "target") for name in names})
    elif isinstance(target, pd.DataFrame):
        frame = target.reset_index(drop=True)
    elif isinstance(target, pd.Series):
        frame = target.reset_index(drop=True).to_frame(name=target.name or "target")
    else:
        values = np.asarray(target)
        frame = pd.DataFrame(values if values.ndim == 2 else {"target": values})
    if len(frame) != n:
        raise ValueError(f"target has {len(frame)} rows for {n} observations; give one row per "
                         "observation, in the same order.")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _looks_categorical(targets: pd.DataFrame) -> bool:
    if targets.shape[1] != 1:
        return False
    column = targets.iloc[:, 0]
    if column.dtype.kind in "OUSb" or isinstance(column.dtype, pd.CategoricalDtype):
        return True
    return column.dtype.kind in "iu" and column.nunique() <= _MAX_CLASSES


def _folds(n: int, groups: np.ndarray | None, n_splits: int, seed: int):
    from sklearn.model_selection import GroupKFold, KFold

    if groups is None:
        splitter = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(f"fold {i}", split) for i, split in enumerate(splitter.split(np.zeros(n)))]
    unique = pd.unique(groups)
    if len(unique) < 2:
        raise ValueError("groups has a single group: nothing can be held out. Pass at least two "
                         "groups (e.g. sections), or groups=None.")
    if len(unique) <= n_splits:
        return [(str(g), (np.flatnonzero(groups != g), np.flatnonzero(groups == g)))
                for g in unique]
    splits = GroupKFold(n_splits=n_splits).split(np.zeros(n), groups=groups)
    return [(",".join(map(str, pd.unique(groups[test]))), (train, test)) for train, test in splits]


def _standardise(features: np.ndarray, train: np.ndarray) -> np.ndarray:
    mean, std = features[train].mean(0), features[train].std(0)
    return (features - mean) / np.where(std > 0, std, 1)


def _standardise_within(features: np.ndarray, groups: np.ndarray) -> np.ndarray:
    standardised = np.empty_like(features)
    for group in pd.unique(groups):
        rows = np.flatnonzero(groups == group)
        standardised[rows] = _standardise(features[rows], np.arange(len(rows)))
    return standardised


def _score_classes(x, targets, train, test, alphas) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import GridSearchCV

    y = targets.iloc[:, 0].astype(str).to_numpy()
    inner = min(3, int(np.bincount(np.unique(y[train], return_inverse=True)[1]).min()))
    if inner < 2:
        model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    else:
        model = GridSearchCV(LogisticRegression(max_iter=2000), {"C": [0.01, 0.1, 1.0, 10.0]},
                             cv=inner).fit(x[train], y[train])
    predicted = model.predict(x[test])
    return [{"target": targets.columns[0], "accuracy": accuracy_score(y[test], predicted),
             "balanced_accuracy": balanced_accuracy_score(y[test], predicted)}]


def _score_continuous(x, targets, train, test, alphas) -> list[dict[str, Any]]:
    from sklearn.linear_model import RidgeCV

    from .._metrics._expression_metrics import column_pearson

    y = targets.to_numpy(dtype=np.float64)
    model = RidgeCV(alphas=list(alphas), alpha_per_target=True).fit(x[train], y[train])
    predicted = model.predict(x[test]).reshape(len(test), -1)
    chosen = np.broadcast_to(np.atleast_1d(model.alpha_), (y.shape[1],))
    pearson = column_pearson(predicted, y[test])
    return [{"target": name, "pearson": float(pearson[j]), "alpha": float(chosen[j])}
            for j, name in enumerate(targets.columns)]
