"""Cross-validation of slide-level models with folds that never split a patient."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core.logs import each_item, logger, progress
from ..._core.records import made_within

#: what the per-tile results cross-validation writes record as the step they were made within
WITHIN = "hx.tl.cross_validate"

if TYPE_CHECKING:
    from types import ModuleType

    from anndata import AnnData

    from .._options import ModelOptions

def cross_validate_bags(
    data: Any,
    *,
    model: ModelOptions,
    module: ModuleType,
    groups: str | Mapping[str, str] | None = None,
    n_folds: int | None = None,
    key_added: str = "cv",
    check_attention: bool | None = None,
    **fit_kwargs: Any,
) -> AnnData:
    """Train and test a slide-level model fold by fold, holding out whole patients.

    Folds are made of sections (slides), never of bags: a section's bags, and all sections of a
    patient, are always on the same side. Each fold's model is fitted on the other folds with
    ``module.fit`` (as ``hx.tl.fit(train, model=model, **fit_kwargs)``) and applied to the
    held-out sections with ``hx.tl.predict``, which also writes the out-of-fold per-tile
    predictions and attention into their tile tables (under ``key_added``).

    Those per-tile results are recorded as written by ``hx.tl.predict`` within
    ``hx.tl.cross_validate`` (``uns["bag_outputs"][key_added]`` of each tile table). Before the
    first fold, every section's tile table is checked: an entry under ``key_added`` that an
    earlier cross-validation recorded is replaced (a rerun under the same key), anything else
    there (the user's own columns, features of :func:`histoexpr.tl.embed`, the outputs of a
    plain :func:`histoexpr.tl.predict`) is never replaced: the call stops with a ``KeyError``
    naming it, before any training and with nothing written. On a cohort on disk the results go
    into each slide's store (its ``results``, replacing an earlier cross-validation's set under
    ``key_added``), never over the store's tile features; results there under ``key_added`` of
    anything but an earlier cross-validation are refused before the first fold the same way.

    Parameters
    ----------
    data
        A Cohort (one bag per slide) or a mapping of pseudo-bulked sections by name.
    model
        The options of a slide-level model (e.g. :class:`~histoexpr.tl.ABMILOptions`); the
        ``fit_kwargs`` replace its fields.
    module
        The model's module: its ``fit(data, options)`` trains each fold's model and its
        ``predict`` applies it (``hx.tl.cross_validate`` passes the one of the model table).
    groups
        The patient of each section: a column of ``cohort.bulk.obs`` (Cohort), a mapping from
        section (slide) name to patient, or ``None`` for one group per section.
    n_folds
        Number of folds (groups are spread over them, scikit-learn's ``GroupKFold``); ``None``
        holds out one group at a time.
    key_added
        Key of the per-tile results written into the held-out tile tables; refused where the
        tile tables hold entries under it that cross-validation did not write (see above).
    check_attention
        Run :func:`histoexpr.tl.attention_check` on every held-out section (regression):
        ``None`` does so wherever the sections have spot-centred tiles and their spot table
        (the truth under every tile), ``False`` never.
    **fit_kwargs
        Options of the model's ``fit`` (``genes``, ``task``, ``epochs``, ``seed``...).

    Returns
    -------
    Out-of-fold predictions, bags x outputs, as :func:`histoexpr.tl.predict` returns them, with
    ``obs["fold"]`` and ``obs["group"]``; for regression ``uns["scores"]`` holds one row per
    fold and gene with the bag-level ``pearson`` and ``spearman`` correlations (folds with fewer
    than 3 bags are not scored), and where spot truth exists ``uns["attention_check"]`` the
    held-out tiles' rank correlations (:func:`histoexpr.tl.attention_check`, with ``fold``);
    for classification with known labels, ``uns["scores"]`` holds one row per fold and target
    with ``auc`` and ``balanced_accuracy``.

    """
    import anndata as ad
    import pandas as pd

    from ...io import Cohort
    from .._options import options_for
    from .._sections import as_sections, check_no_copies
    from ._bag_outputs import results_run

    options = options_for(model, **fit_kwargs)  # checked once, before the first fold
    if not isinstance(data, Cohort):
        data = as_sections(data)
    names, group_of = _section_groups(data, groups)
    check_no_copies(data, group_of)
    folds = _folds(names, group_of, n_folds)
    _check_outputs_free(data, names, getattr(options, "tiles_key", None), key_added,
                        model=options.model)
    results, scores, checks = [], [], []
    bar = progress(folds, desc="folds", total=len(folds))
    run = f"{WITHIN}:{uuid.uuid4().hex}"  # every fold's per-tile results: one set, one run
    for fold, held_out in enumerate(bar):
        bar.set_description(f"fold {fold + 1}/{len(folds)}")
        train = _subset(data, [n for n in names if n not in held_out])
        test = _subset(data, held_out)
        with each_item():  # what fit and predict log of each fold is debug
            network = module.fit(train, options)
            with made_within(WITHIN), results_run(run):  # replaces only what it wrote before
                predicted = module.predict(network, test, key_added=key_added, overwrite=True)
        predicted.obs["fold"] = fold
        predicted.obs["group"] = [group_of[s] for s in predicted.obs["section"]]
        results.append(predicted)
        if network.metadata.get("task") == "classification":
            from .._metrics._class_metrics import class_scores

            frame = class_scores(predicted, network.metadata)
            if len(frame):
                scores.append(frame.assign(fold=fold))
        elif check_attention is not False:
            check = _check(test, network, key_added, strict=check_attention is True)
            if check is not None:
                checks.append(check.assign(fold=fold))
        if "measured" in predicted.layers and predicted.n_obs >= 3:
            from .._metrics._expression_metrics import gene_correlations

            frame = gene_correlations(np.asarray(predicted.X), predicted.layers["measured"],
                                      genes=list(predicted.var_names))
            scores.append(frame.reset_index().assign(fold=fold))
            logger.info("Fold %d/%d (held out %s): mean bag-level Pearson %.3f over %d genes.",
                        fold + 1, len(folds), sorted({group_of[s] for s in held_out}),
                        frame["pearson"].mean(), len(frame))
    result = ad.concat(results, merge="same", uns_merge="first")
    result.obs["fold"] = result.obs["fold"].astype(int)
    if scores:
        result.uns["scores"] = pd.concat(scores, ignore_index=True)
    if checks:
        check = pd.concat(checks, ignore_index=True)
        result.uns["attention_check"] = check
        logger.info("Attention check over the held-out tiles (mean Spearman with the expression "
                    "under them): per-tile predictions %.3f, attention %.3f, contributions %.3f.",
                    *check[["tile_spearman", "attention_spearman",
                            "contribution_spearman"]].mean())
    result.uns["cv"] = {"model": options.model, "n_folds": len(folds)}
    return result


def _check_outputs_free(data: Any, names: list[str], tiles_key: str | None,
                        key_added: str, *, model: str | None = None) -> None:
    """Refuse, before any fold, entries under ``key_added`` that cross-validation did not write.

    A cohort on disk keeps its results in the slides' stores: their results under
    ``key_added`` are checked the same way.
    """
    from ...io import Cohort
    from ._bag_outputs import check_outputs_writable, check_results_writable

    if tiles_key is None:
        return
    if isinstance(data, Cohort) and data.on_disk:
        stores = {name: data.store(name) for name in names}
        with made_within(WITHIN):
            check_results_writable(stores, names, tiles_key, key_added, overwrite=True)
        return
    tables = {}
    for name in names:
        table = data[name].tables.get(f"{tiles_key}_table")
        if table is not None:  # a section without one is refused by fit, naming it
            tables[name] = table
    with made_within(WITHIN):
        check_outputs_writable(tables, key_added, overwrite=True, step=WITHIN, model=model)


def _check(test: Any, network, key: str, *, strict: bool):
    """The attention check of the held-out sections, where their tiles sit on measured spots."""
    from ...io import Cohort
    from ._attention_check import attention_check, has_spot_truth

    tiles_key = network.metadata["tiles_key"]
    sections = {} if isinstance(test, Cohort) else {
        n: s for n, s in test.items() if has_spot_truth(s, tiles_key=tiles_key)}
    if not sections:
        if strict:
            raise ValueError("check_attention=True needs held-out sections with spot-centred "
                             "tiles and their spot table; pass check_attention=None.")
        return None
    try:
        return attention_check(sections, pred_key=key, tiles_key=tiles_key)
    except (KeyError, ValueError) as error:  # e.g. genes the spot table does not measure
        if strict:
            raise
        logger.warning("No attention check of the held-out sections: %s", error)
        return None


def _section_groups(data: Any, groups) -> tuple[list[str], dict[str, str]]:
    from ...io import Cohort

    names = list(data.ids) if isinstance(data, Cohort) else list(data)
    if isinstance(groups, str):
        if not isinstance(data, Cohort) or groups not in data.bulk.obs.columns:
            raise KeyError(f"groups={groups!r} must be a column of cohort.bulk.obs; for a "
                           "mapping of sections, give {section: patient}.")
        values = data.bulk.obs[groups]
        if values.isna().any():
            raise ValueError(f"{int(values.isna().sum())} slides have no {groups!r}; give every "
                             "slide its patient.")
        group_of = {n: str(values[n]) for n in names}
    elif groups is None:
        group_of = {n: n for n in names}
    else:
        missing = [n for n in names if n not in groups]
        if missing:
            raise KeyError(f"groups gives no patient for {missing[:5]}.")
        group_of = {n: str(groups[n]) for n in names}
    if len(set(group_of.values())) < 2:
        raise ValueError("Cross-validation needs at least two groups (patients).")
    return names, group_of


def _folds(names: list[str], group_of: dict[str, str], n_folds: int | None) -> list[list[str]]:
    """Held-out section names of each fold; a group is never split."""
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut

    labels = np.array([group_of[n] for n in names])
    if n_folds is None:
        splitter = LeaveOneGroupOut()
    else:
        if not 2 <= n_folds <= len(set(labels)):
            raise ValueError(f"n_folds must lie between 2 and the number of groups "
                             f"({len(set(labels))}), got {n_folds}.")
        splitter = GroupKFold(n_splits=n_folds)
    return [[names[i] for i in test] for _, test in splitter.split(names, groups=labels)]


def _subset(data: Any, names: list[str]) -> Any:
    from ...io import Cohort

    return data.subset(names) if isinstance(data, Cohort) else {n: data[n] for n in names}

