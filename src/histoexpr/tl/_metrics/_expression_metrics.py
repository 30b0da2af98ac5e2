"""Scoring predicted expression: correlations per gene, and the HEST protocol in one call.

HEST-Benchmark (Jaume et al. 2024) scores each gene by the Pearson correlation between predicted
and measured log1p-normalised expression over the spots of held-out sections, and reports the
mean over genes; its genes are the most variable of the training sections and its folds hold out
whole patients. Library depth leaks into normalised targets, so every score is also given after
regressing the log library size out of both the prediction and the measurement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core.logs import logger
from ..._core.stats import column_pearson, column_spearman

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from spatialdata import SpatialData

METRICS = ("pearson", "spearman")


#: bytes per row and gene of a scoring: both sides, their ranks and centred copies (float64;
#: the peak measured with tracemalloc was 70, and 89 with library_size)
_SCORING_BYTES = 12 * 8


def gene_correlations(
    pred: AnnData | np.ndarray,
    truth: AnnData | np.ndarray,
    *,
    genes: str | Sequence[str] | None = None,
    library_size: np.ndarray | None = None,
) -> pd.DataFrame:
    """Pearson and Spearman correlation of predicted and measured expression, gene by gene.

    Works on plain arrays (spots or slides x genes, same order) or on AnnData, whose ``X`` values
    are compared as they are (give both on the same scale, e.g. log1p-normalised): rows are
    matched by ``obs_names`` and genes by ``var_names`` (their intersection, logged). The
    scoring's memory (about 100 bytes per row and gene) is estimated before either side is
    copied; a :class:`MemoryError` asks for fewer genes or rows when it exceeds
    ``hx.settings.max_memory`` (by default the memory available now).

    Parameters
    ----------
    pred
        Predicted expression.
    truth
        Measured expression.
    genes
        Gene names of the columns of arrays, or the genes of AnnData to score (a single name is
        one gene); defaults to all (``gene_0``, ``gene_1``... for arrays).
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

    if isinstance(genes, str):
        genes = [genes]  # one gene, not its letters
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
    genes: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Score a table of predicted expression per tile against the measured spots.

    Predictions and spots are paired by identity, never by position. The prediction must come
    from this section: the image it was predicted on (recorded by :func:`histoexpr.tl.predict`)
    must be this section's, and its tiles, where ``sdata`` holds them, must be these. Tiles
    centred on spots are paired with the spot of the same ``obs["spot_id"]`` in the spots the
    truth annotates, and each pair must lie at the same place (within 1 % of the tile width);
    other tiles pair each spot with the tile whose centre is nearest to its own, within half a
    tile width. Spots without a tile are left out (logged); predictions of another section,
    or tiles centred on other spots, are refused. Measured counts are log1p-normalised as the
    regressor's targets were (:func:`histoexpr.pp.expression_targets`), and the log library size
    of each spot is regressed out for the ``*_libreg`` columns.

    Parameters
    ----------
    sdata
        The section holding both tables.
    pred_key
        Key of the predictions (from :func:`histoexpr.tl.predict` of a spot regressor).
    truth_key
        Key of the spot table with raw counts.
    genes
        Genes to score (a single name is one gene); defaults to every predicted gene that was
        measured.

    Returns
    -------
    The per-gene frame of :func:`gene_correlations` (``frame.mean()`` averages over genes).

    """
    predicted, measured, library, names = expression_pairs(sdata, pred_key, truth_key,
                                                           genes=genes)
    return gene_correlations(predicted, measured, genes=names, library_size=library)


def expression_pairs(
    sdata: SpatialData,
    pred_key: str,
    truth_key: str = "table",
    *,
    genes: str | Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The predicted and measured expression of a section's spots, paired for scoring.

    Pairs and checks as :func:`evaluate_expression` does. Returns the predictions (spots x
    genes), the log1p-normalised measurements, the spots' library sizes and the gene names;
    spots without counts are left out.
    """
    from ..._core.expression import expression_targets, library_sizes

    for key, what in ((pred_key, "pred_key"), (truth_key, "truth_key")):
        if key not in sdata.tables:
            available = ", ".join(repr(k) for k in sdata.tables.keys()) or "none"
            raise KeyError(f"{what}={key!r} is not a table of the SpatialData; its tables are "
                           f"{available}.")
    genes = _gene_list(genes)
    pred, truth = sdata.tables[pred_key], sdata.tables[truth_key]
    _check_same_section(sdata, pred, pred_key)
    names = [g for g in (pred.var_names if genes is None else genes) if g in truth.var_names]
    absent = len(pred.var_names if genes is None else genes) - len(names)
    if absent:
        logger.info("%d predicted genes are not measured in %r; scoring %d.", absent, truth_key,
                    len(names))
    if not names:
        raise ValueError(f"No predicted gene is measured in sdata.tables[{truth_key!r}].")
    spot_rows, tile_rows = _match_spots(pred, truth, _spot_centres(sdata, truth, truth_key))
    library = np.asarray(library_sizes(truth[spot_rows]), dtype=np.float64).ravel()
    counted = library > 0
    if not counted.all():  # no counts: no normalised expression to score (fit drops them too)
        logger.info("%d of %d spots have no counts in %r and are left out.",
                    int((~counted).sum()), len(counted), truth_key)
        spot_rows, tile_rows = spot_rows[counted], tile_rows[counted]
        if len(spot_rows) < 3:
            raise ValueError(f"Only {len(spot_rows)} spots with counts have a predicted tile (a "
                             "correlation needs at least 3). Evaluate on a section with more "
                             "spots.")
    measured = truth[spot_rows]
    predicted = _dense(pred[tile_rows][:, names].X)
    return (predicted, expression_targets(measured, names),
            np.asarray(library_sizes(measured), dtype=np.float64).ravel(), list(names))


def _gene_list(genes: Any) -> list[str] | None:
    """``genes`` as a list of names: ``None`` (all), one name, or a non-empty list of names."""
    how = "pass a gene name, a list of gene names (e.g. genes=['EPCAM']), or None for all"
    if genes is None:
        return None
    if isinstance(genes, str):
        return [genes]  # one gene, not its letters
    if isinstance(genes, Mapping) or not isinstance(genes, Iterable):
        raise TypeError(f"genes must be gene names, got {genes!r} ({type(genes).__name__}); "
                        f"{how}.")
    listed = list(genes)
    odd = [g for g in listed if not isinstance(g, str)]
    if odd:
        raise TypeError(f"genes must be gene names (strings), but holds {odd[0]!r} "
                        f"({type(odd[0]).__name__}); {how}.")
    if not listed:
        raise ValueError(f"genes is empty; {how}.")
    return listed


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
        _check_scoring_memory(len(rows), len(names))
        pred, truth = _dense(pred[rows, names].X), _dense(truth[rows, names].X)
    else:
        shape = getattr(getattr(pred, "X", pred), "shape", None)
        if shape is not None and len(shape) in (1, 2):
            _check_scoring_memory(shape[0], shape[1] if len(shape) == 2 else 1)
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


def _check_scoring_memory(n_rows: int, n_genes: int) -> None:
    """Refuse, before densifying, a scoring whose float64 copies exceed the memory limit."""
    from ..._core.memory import check_memory

    check_memory(float(n_rows) * n_genes * _SCORING_BYTES,
                 f"Scoring {n_rows:,} rows x {n_genes:,} genes (both sides as float64, their "
                 "ranks and centred copies)",
                 "Score fewer genes at once (genes=[...]) or fewer rows.")


def _dense(values) -> np.ndarray:
    values = values.toarray() if hasattr(values, "toarray") else values
    return np.asarray(values, dtype=np.float64)


def _regress_out(values: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones_like(covariate), covariate])
    coef = np.linalg.lstsq(design, values, rcond=None)[0]
    return values - design @ coef


def _check_same_section(sdata, pred, pred_key: str) -> None:
    """Refuse a prediction made on another section than ``sdata`` (its image or its tiles)."""
    from ..._core.image_facts import image_fingerprint

    image = pred.uns.get("prediction", {}).get("image")
    if image is not None and image.get("key") in sdata.images:
        here = image_fingerprint(sdata, image["key"])
        if here != image.get("fingerprint"):
            raise ValueError(
                f"sdata.tables[{pred_key!r}] was predicted on another image than this "
                f"section's {image['key']!r} (fingerprints {image.get('fingerprint')!r} and "
                f"{here!r}): it belongs to another section. Evaluate it in the SpatialData it "
                "was predicted on, or predict on this section.")
    region = pred.uns.get("spatialdata_attrs", {}).get("region")
    tiles = sdata.tables.get(f"{region}_table") if isinstance(region, str) else None
    if tiles is None or "tile_id" not in pred.obs or "tile_id" not in tiles.obs \
            or "spatial" not in tiles.obsm:
        return
    row_of_tile = {t: i for i, t in enumerate(tiles.obs["tile_id"].to_numpy())}
    rows = np.array([row_of_tile.get(t, -1) for t in pred.obs["tile_id"].to_numpy()])
    size = float(pred.uns.get("tiles", {}).get("size_um", 0) or 0)
    moved = (rows < 0) | (np.linalg.norm(
        np.asarray(tiles.obsm["spatial"])[np.maximum(rows, 0)] - np.asarray(pred.obsm["spatial"]),
        axis=1) > max(0.01 * size, 1e-6))
    if moved.any():
        raise ValueError(
            f"{int(moved.sum())} of {moved.size} tiles of sdata.tables[{pred_key!r}] are not the "
            f"tiles {region!r} of this section (missing or elsewhere): the prediction was made on "
            "other tiles or another section. Predict again on this section's tiles.")


def _spot_centres(sdata, truth, truth_key: str) -> tuple[np.ndarray, str | None]:
    """Centres (um) of the truth's spots, from the shapes it annotates where ``sdata`` has them."""
    from spatialdata.transformations import get_transformation

    attrs = truth.uns.get("spatialdata_attrs", {})
    region, instance_key = attrs.get("region"), attrs.get("instance_key")
    if isinstance(region, str) and region in sdata.shapes and instance_key in truth.obs:
        shapes = sdata.shapes[region]
        transformations = get_transformation(shapes, get_all=True)
        if "global" in transformations:
            matrix = transformations["global"].to_affine_matrix(input_axes=("x", "y"),
                                                                output_axes=("x", "y"))
            centroids = shapes.geometry.centroid
            xy = np.column_stack([centroids.x.to_numpy(), centroids.y.to_numpy(),
                                  np.ones(len(shapes))]) @ matrix.T
            position = shapes.index.get_indexer(_pd_index(truth.obs[instance_key]))
            if (position < 0).any():  # ids stored as text on one side, numbers on the other
                position = shapes.index.astype(str).get_indexer(
                    _pd_index(truth.obs[instance_key]).astype(str))
            if (position < 0).any():
                raise ValueError(
                    f"{int((position < 0).sum())} spots of sdata.tables[{truth_key!r}] are not in "
                    f"sdata.shapes[{region!r}], the spots it annotates; fix the table's "
                    f"{instance_key!r} column.")
            return xy[position, :2], region
    if "spatial" not in truth.obsm:
        raise KeyError(f"sdata.tables[{truth_key!r}] has no spot centres: it annotates no spots "
                       "of this SpatialData and has no obsm['spatial'].")
    return np.asarray(truth.obsm["spatial"], dtype=float), region if isinstance(region, str) \
        else None


def _pd_index(values):
    import pandas as pd

    return pd.Index(values.to_numpy())


def _match_spots(pred, truth, centres: tuple[np.ndarray, str | None]) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Rows of the spot table and of the prediction that belong together (by identity)."""
    from scipy.spatial import cKDTree

    spot_xy, region = centres
    tiles = pred.uns.get("tiles", {})
    size = tiles.get("size_um")
    if "spot_id" in pred.obs and "spot_id" in truth.obs:
        centred_on = tiles.get("centres")
        if centred_on is not None and region is not None and str(centred_on) != region:
            raise ValueError(
                f"The predicted tiles are centred on the spots {centred_on!r} but the truth "
                f"annotates {region!r}; score predictions against the spots they were made on.")
        tile_of_spot = {s: i for i, s in enumerate(pred.obs["spot_id"].to_numpy())}
        spot_rows = [i for i, s in enumerate(truth.obs["spot_id"].to_numpy())
                     if s in tile_of_spot]
        tile_rows = [tile_of_spot[s] for s in truth.obs["spot_id"].to_numpy()[spot_rows]]
        if spot_rows and size is not None:
            apart = np.linalg.norm(np.asarray(pred.obsm["spatial"])[tile_rows]
                                   - spot_xy[spot_rows], axis=1)
            far = apart > 0.01 * float(size)
            if far.any():
                raise ValueError(
                    f"{int(far.sum())} of {len(spot_rows)} spots paired by spot_id lie elsewhere "
                    f"than their predicted tile (up to {apart.max():.1f} um apart): the "
                    "prediction and the truth are of different sections or coordinates. "
                    "Predict on this section's spots.")
    else:
        tree = cKDTree(np.asarray(pred.obsm["spatial"]))
        distance, nearest = tree.query(spot_xy)
        limit = np.inf if size is None else float(size) / 2
        spot_rows = np.flatnonzero(distance <= limit).tolist()
        tile_rows = nearest[spot_rows].tolist()
    if len(spot_rows) < truth.n_obs:
        logger.info("%d of %d spots have no predicted tile and are left out.",
                    truth.n_obs - len(spot_rows), truth.n_obs)
    if truth.n_obs < 3:
        raise ValueError(f"The truth table holds {truth.n_obs} spot(s); a correlation needs at "
                         "least 3. Evaluate on a section (or several) with more spots.")
    if len(spot_rows) < 3:
        raise ValueError(f"Only {len(spot_rows)} of the {truth.n_obs} spots have a predicted "
                         "tile (a correlation needs at least 3): predict on tiles that cover the "
                         "spots (e.g. tiles centred on them).")
    return np.asarray(spot_rows), np.asarray(tile_rows)
