"""Scoring predicted expression: correlations per gene, and the HEST protocol in one call.

HEST-Benchmark (Jaume et al. 2024) scores each gene by the Pearson correlation between predicted
and measured log1p-normalised expression over the spots of held-out sections, and reports the
mean over genes; its genes are the most variable of the training sections and its folds hold out
whole patients. Library depth leaks into normalised targets, so every score is also given after
regressing the log library size out of both the prediction and the measurement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._utils import logger

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from spatialdata import SpatialData

METRICS = ("pearson", "spearman")


def column_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b`` (NaN if flat)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    norm = np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=0) / norm
    # a column constant up to rounding has no correlation
    flat = (np.ptp(a, axis=0) <= 1e-12) | (np.ptp(b, axis=0) <= 1e-12)
    return np.where(flat, np.nan, np.clip(r, -1, 1))


def column_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column pair (Pearson of average ranks)."""
    from scipy.stats import rankdata

    return column_pearson(rankdata(a, axis=0), rankdata(b, axis=0))


def gene_correlations(
    pred: AnnData | np.ndarray,
    truth: AnnData | np.ndarray,
    *,
    genes: Sequence[str] | None = None,
    library_size: np.ndarray | None = None,
) -> pd.DataFrame:
    """Pearson and Spearman correlation of predicted and measured expression, gene by gene.

    Works on plain arrays (spots or slides x genes, same order) or on AnnData, whose ``X`` values
    are compared as they are (give both on the same scale, e.g. log1p-normalised): rows are
    matched by ``obs_names`` and genes by ``var_names`` (their intersection, logged).

    Parameters
    ----------
    pred
        Predicted expression.
    truth
        Measured expression.
    genes
        Gene names of the columns of arrays, or the genes of AnnData to score; defaults to all
        (``gene_0``, ``gene_1``... for arrays).
    library_size
        Total counts of each row: adds ``pearson_libreg`` and ``spearman_libreg``, the
        correlations after regressing ``log(library_size)`` out of both sides.

    Returns
    -------
    One row per gene (index ``gene``) with columns ``pearson``, ``spearman`` (and the
    ``*_libreg`` columns); the mean over genes is ``frame.mean()``. Genes constant on either
    side score NaN.

    """
    import pandas as pd

    pred_values, truth_values, names = _aligned(pred, truth, genes)
    columns = {"pearson": column_pearson(pred_values, truth_values),
               "spearman": column_spearman(pred_values, truth_values)}
    if library_size is not None:
        library = np.asarray(library_size, dtype=np.float64).ravel()
        if len(library) != len(pred_values):
            raise ValueError(f"library_size has {len(library)} values for {len(pred_values)} "
                             "rows; give one total count per row.")
        if (library <= 0).any():
            raise ValueError("library_size must be positive (total counts of each row).")
        pred_res, truth_res = (_regress_out(v, np.log(library)) for v in (pred_values,
                                                                         truth_values))
        columns["pearson_libreg"] = column_pearson(pred_res, truth_res)
        columns["spearman_libreg"] = column_spearman(pred_res, truth_res)
    frame = pd.DataFrame(columns, index=pd.Index(names, name="gene"))
    n_nan = int(frame["pearson"].isna().sum())
    if n_nan:
        logger.info("%d of %d genes are constant in the prediction or the truth: their "
                    "correlation is NaN (left out of means).", n_nan, len(frame))
    return frame


def evaluate_expression(
    sdata: SpatialData,
    pred_key: str,
    truth_key: str = "table",
    *,
    genes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Score a table of predicted expression per tile against the measured spots.

    Tiles are matched to spots by ``obs["spot_id"]`` (spot-centred tiles), otherwise each spot
    takes the tile whose centre is nearest to its own, within half a tile width (spots without
    one are left out, logged). Measured counts are log1p-normalised as the regressor's targets
    were (:func:`histoexpr.pp.expression_targets`), and the log library size of each spot is
    regressed out for the ``*_libreg`` columns.

    Parameters
    ----------
    sdata
        The section holding both tables.
    pred_key
        Key of the predictions (from :func:`histoexpr.tl.predict` of a spot regressor).
    truth_key
        Key of the spot table with raw counts.
    genes
        Genes to score; defaults to every predicted gene that was measured.

    Returns
    -------
    The per-gene frame of :func:`gene_correlations` (``frame.mean()`` averages over genes).

    """
    from ..pp._genes import expression_targets, library_sizes

    pred, truth = sdata.tables[pred_key], sdata.tables[truth_key]
    names = [g for g in (pred.var_names if genes is None else genes) if g in truth.var_names]
    absent = len(pred.var_names if genes is None else genes) - len(names)
    if absent:
        logger.info("%d predicted genes are not measured in %r; scoring %d.", absent, truth_key,
                    len(names))
    if not names:
        raise ValueError(f"No predicted gene is measured in sdata.tables[{truth_key!r}].")
    spot_rows, tile_rows = _match_spots(pred, truth)
    measured = truth[spot_rows]
    predicted = pred[tile_rows][:, names].X
    return gene_correlations(np.asarray(predicted), expression_targets(measured, names),
                             genes=names, library_size=library_sizes(measured))


def cross_validate_spots(
    sections: Mapping[str, SpatialData],
    *,
    model: str = "spot_regressor",
    groups: Mapping[str, str] | None = None,
    n_genes: int = 50,
    gene_flavor: str = "pearson_residuals",
    table_key: str = "table",
    **fit_kwargs: Any,
) -> pd.DataFrame:
    """Run the HEST protocol in one call: train on all groups but one, score the held-out one.

    For each fold the genes are chosen on the training sections only (``n_genes`` by
    ``gene_flavor``; HEST uses highly variable genes), a spot regressor is trained with
    ``fit_kwargs`` and applied to the spot-centred tiles of each held-out section, and every gene
    is scored by :func:`evaluate_expression`.

    Parameters
    ----------
    sections
        Sections by name, each with an image, spots and a spot table of raw counts.
    model
        ``"spot_regressor"``, the only model this protocol trains.
    groups
        The group (patient) of each section: folds hold out a whole group. ``None`` holds out one
        section at a time.
    n_genes
        Genes per fold.
    gene_flavor
        Ranking of the genes, as :func:`histoexpr.pp.select_genes` takes it.
    table_key
        Key of the spot tables.
    **fit_kwargs
        Options of ``hx.tl.fit(..., model="spot_regressor")`` (route, encoder, patch_um...).

    Returns
    -------
    One row per held-out section and gene: columns ``fold``, ``section``, ``gene``, ``pearson``,
    ``spearman``, ``pearson_libreg``, ``spearman_libreg``. The HEST score of a fold is
    ``frame.groupby("fold")["pearson"].mean()``.

    """
    import pandas as pd

    from ._spot_regressor import fit, predict

    if model != "spot_regressor":
        raise ValueError(f"The HEST protocol trains spot regressors, not {model!r}.")
    groups = {name: name for name in sections} if groups is None else dict(groups)
    missing = [name for name in sections if name not in groups]
    if missing:
        raise KeyError(f"groups names no group for the sections {missing}.")
    if len(set(groups.values())) < 2:
        raise ValueError("Cross-validation needs at least two groups (patients or sections).")
    tiles_key = fit_kwargs.get("tiles_key", "spot_tiles")
    frames = []
    for fold in dict.fromkeys(groups[name] for name in sections):
        train = {n: s for n, s in sections.items() if groups[n] != fold}
        model = fit(train, genes=n_genes, gene_flavor=gene_flavor, table_key=table_key,
                    **fit_kwargs)
        for name in (n for n in sections if groups[n] == fold):
            section = sections[name]
            _spot_tiles(section, model, tiles_key, fit_kwargs.get("spots_key", "spots"))
            predict(model, section, tiles_key=tiles_key, key_added="cv_expression",
                    overwrite=True)
            scores = evaluate_expression(section, "cv_expression", table_key)
            del section.tables["cv_expression"]
            frames.append(scores.reset_index().assign(fold=fold, section=name))
            logger.info("Held-out %r: mean Pearson %.3f over %d genes.", name,
                        scores["pearson"].mean(), len(scores))
    frame = pd.concat(frames, ignore_index=True)
    return frame[["fold", "section", "gene", *[c for c in frame.columns
                                               if c not in ("fold", "section", "gene")]]]


def _spot_tiles(sdata, model, tiles_key: str, spots_key: str) -> None:
    from ..pp import tile

    if tiles_key not in sdata.shapes:
        meta = model.metadata
        tile(sdata, meta["image_key"], size_um=meta["patch_um"], mpp=meta["mpp"],
             centers=spots_key, min_tissue=0, key_added=tiles_key)


def _aligned(pred, truth, genes):
    """Both sides as float arrays with the same rows and genes, and the gene names."""
    if hasattr(pred, "var_names") and hasattr(truth, "var_names"):
        rows = pred.obs_names.intersection(truth.obs_names, sort=False)
        names = [g for g in (pred.var_names if genes is None else genes)
                 if g in truth.var_names and g in pred.var_names]
        dropped = max(pred.n_obs, truth.n_obs) - len(rows)
        if dropped:
            logger.info("Scoring the %d rows present in both (%d rows of one side only).",
                        len(rows), dropped)
        n_genes = pred.n_vars if genes is None else len(genes)
        if len(names) < n_genes:
            logger.info("Scoring the %d genes present in both (%d left out).", len(names),
                        n_genes - len(names))
        if not len(rows) or not names:
            raise ValueError("The prediction and the truth share no rows (obs_names) or no "
                             "genes (var_names).")
        pred, truth = _dense(pred[rows, names].X), _dense(truth[rows, names].X)
    else:
        pred, truth = _dense(getattr(pred, "X", pred)), _dense(getattr(truth, "X", truth))
        if pred.ndim == 1:
            pred, truth = pred[:, None], truth.reshape(len(truth), -1)
        if pred.shape != truth.shape:
            raise ValueError(f"Prediction {pred.shape} and truth {truth.shape} differ in shape; "
                             "give the same rows and genes in the same order.")
        names = [f"gene_{i}" for i in range(pred.shape[1])] if genes is None else list(genes)
        if len(names) != pred.shape[1]:
            raise ValueError(f"{len(names)} gene names for {pred.shape[1]} columns.")
    if len(pred) < 3:
        raise ValueError(f"Correlations need at least 3 rows, got {len(pred)}.")
    return pred, truth, list(names)


def _dense(values) -> np.ndarray:
    values = values.toarray() if hasattr(values, "toarray") else values
    return np.asarray(values, dtype=np.float64)


def _regress_out(values: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones_like(covariate), covariate])
    coef = np.linalg.lstsq(design, values, rcond=None)[0]
    return values - design @ coef


def _match_spots(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the spot table and of the prediction that belong together."""
    from scipy.spatial import cKDTree

    if "spot_id" in pred.obs and "spot_id" in truth.obs:
        tile_of_spot = {s: i for i, s in enumerate(pred.obs["spot_id"].to_numpy())}
        spot_rows = [i for i, s in enumerate(truth.obs["spot_id"].to_numpy())
                     if s in tile_of_spot]
        tile_rows = [tile_of_spot[s] for s in truth.obs["spot_id"].to_numpy()[spot_rows]]
    else:
        half = pred.uns.get("tiles", {}).get("size_um")
        tree = cKDTree(np.asarray(pred.obsm["spatial"]))
        distance, nearest = tree.query(np.asarray(truth.obsm["spatial"]))
        limit = np.inf if half is None else half / 2
        spot_rows = np.flatnonzero(distance <= limit).tolist()
        tile_rows = nearest[spot_rows].tolist()
    if len(spot_rows) < truth.n_obs:
        logger.info("%d of %d spots have no predicted tile and are left out.",
                    truth.n_obs - len(spot_rows), truth.n_obs)
    if len(spot_rows) < 3:
        raise ValueError("Fewer than 3 spots have a predicted tile: predict on tiles that cover "
                         "the spots (e.g. tiles centred on them).")
    return np.asarray(spot_rows), np.asarray(tile_rows)
