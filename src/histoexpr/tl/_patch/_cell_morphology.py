"""The per-cell morphology classifier: intensity, shape and neighbourhood features of each cell.

``hx.tl.fit(sdata, model="cell_morphology")`` describes every cell of the training region by its
image features (:func:`histoexpr._core.cells.cell_features`) and fits a regularised multinomial
logistic regression on the cells' transcript-defined classes (``transcript_labels(...,
cells=...)``). Given trained patch classifiers, it also stacks their per-cell probabilities,
fitted only on training cells those classifiers never trained on. ``hx.tl.predict`` writes the
same per-cell map as the patch classifier's ``predict(cells=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core.logs import logger
from ..._core.ownership import require_element
from ..._core.seeds import resolve_seed
from ..._core.spatial_uns import add_spatial_uns
from ._cell_evidence import _patch_log_probabilities, _unseen_patch_log_probabilities
from ._options import CellMorphologyOptions
from ._stain_features import stain_channels, stain_features

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from ...models import CellClassifier

MODEL_NAME = "cell_morphology"


def fit(sdata: SpatialData, options: CellMorphologyOptions) -> CellClassifier:
    """Train a logistic regression on per-cell image features (and, optionally, CNN outputs).

    Every cell of ``region`` is described by the mean and spread over its pixels of the
    image's intensity, Otsu foreground, gradient magnitude and Laplacian of Gaussian (at 0.5, 1
    and 2 um), the nuclei density and brightness around it (10 and 25 um), the log of its area,
    and all of these averaged over neighbouring cells (Gaussians of ``smooth_um``). A
    multinomial logistic regression (features standardised, classes balanced) is fitted on the
    cells labelled tissue, gene A or gene B, its inverse regularisation ``C`` chosen among
    ``Cs`` values by stratified ``n_folds``-fold cross-validation over the training cells.

    **Other stains.** With ``stains_key`` (e.g. the poly-T image of a MERSCOPE section,
    ``sdata.images["stains"]`` of :func:`histoexpr.io.read_merscope`), each chosen channel
    (``stains``; all by default) adds the mean and spread of its intensity inside each cell and
    in a ring of ``ring_um`` around it (pixels of no cell, each given to the nearest cell), the
    ratio of the two, the ring's relative area, and these averaged over neighbouring cells. The
    default (``stains_key=None``) uses the nuclear image alone.

    **Memory.** The feature maps of ``region`` (the whole image by default) at ``feature_mpp``
    take about 180 B per pixel of a one-channel image (100 more per further channel): their
    memory is estimated first, and a MemoryError names the pixels and asks for a smaller
    ``region`` or a coarser ``feature_mpp`` before anything is read.

    **Stacking with patch classifiers.** A CNN's probabilities on the cells it trained on are
    over-confident, so they must not teach the combination. With ``patch_classifier``, each
    training cell is used for the combination only where some patch classifier never trained
    on it: cells in a classifier's validation region (``metadata["val_regions"]``) or outside
    its training ``region`` (e.g. classifiers trained on two halves of the training region
    cross-fit every cell). For those cells, a second logistic regression (``C`` by
    cross-validation) is fitted on the first one's out-of-fold log-probabilities beside the mean
    of the unseen classifiers' calibrated per-cell log-probabilities. At prediction, every
    classifier's probabilities are averaged (in log space).

    Parameters
    ----------
    sdata
        The section, with the image, the cells and the labels of
        ``hx.pp.transcript_labels(..., cells=...)``.
    options
        The model's options, each documented in :class:`~histoexpr.tl.CellMorphologyOptions`.
        ``hx.tl.fit(data, model=..., **options)`` builds them from keywords and
        records them in ``metadata["options"]``.

    Returns
    -------
    A :class:`~histoexpr.models.CellClassifier` whose ``metadata`` holds ``model``, ``classes``
    (``{name: label value}``, background included), ``cell_classes``, ``genes``, ``cells``,
    ``image_key``, ``labels_key``, ``grid_um``, the feature options (``stains``: the stain
    channels used, ``None`` without ``stains_key``), ``C``, ``n_train_cells``,
    ``region`` and, when stacked, ``patch_models`` (each classifier's metadata) and ``stack``
    (``C``, cells used).

    Examples
    --------
    >>> top, bottom = (0, 0, 500, 225), (0, 225, 500, 450)
    >>> model = hx.tl.fit(sdata, model="cell_morphology", region=top)
    >>> hx.tl.predict(model, sdata, region=bottom, key_added="pred_morphology")
    >>> hx.tl.evaluate(sdata, "pred_morphology", "tx_labels", region=bottom)
    >>> with_polyt = hx.tl.fit(sdata, model="cell_morphology", region=top,
    ...                        stains_key="stains", stains=["PolyT"])

    """
    import torch
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from ...models import CellClassifier

    rule = _labelling_rule(sdata, options.labels_key)
    cells = _cells_key(sdata, rule, options.cells)
    image_key = str(rule["image_key"] if options.image_key is None else options.image_key)
    require_element(sdata, image_key, "images")
    patch_models = _patch_models(options.patch_classifier)
    channels = (None if options.stains_key is None
                else stain_channels(sdata, options.stains_key, options.stains))
    seed = resolve_seed(options.seed)
    classes = {str(k): int(v) for k, v in rule["classes"].items()}
    cell_classes = [name for name in classes if name != "background"]
    bounds = _bounds(sdata, image_key, options.region)
    _check_feature_memory(  # before any pixel is read
        sdata, image_key, bounds, float(options.feature_mpp), options.stains_key, channels,
        fix="Pass region=(x_min, y_min, x_max, y_max) to train on part of the section, or a "
            f"coarser feature_mpp (now {float(options.feature_mpp):g} um/px).")
    features, names, centroids = _features(sdata, cells, image_key, bounds, options.feature_mpp,
                                           options.smooth_um, options.stains_key, channels,
                                           options.ring_um)
    truth = sdata.tables[f"{options.labels_key}_cells"].obs["label"].reindex(names.astype(str))
    truth = truth.fillna(0).to_numpy().astype(int)
    values = np.array([classes[name] for name in cell_classes])
    keep = np.isin(truth, values)
    counts = {name: int((truth[keep] == classes[name]).sum()) for name in cell_classes}
    if min(counts.values()) < options.n_folds:
        raise ValueError(f"Too few training cells of some class for {options.n_folds}-fold "
                         f"cross-validation ({counts}); widen region or lower n_folds.")
    x = features[keep]
    y = np.array([list(values).index(v) for v in truth[keep]], dtype=int)
    splitter = StratifiedKFold(options.n_folds, shuffle=True, random_state=seed)
    first, scaler = _logistic(x, y, options.Cs, splitter)
    network = CellClassifier(n_features=x.shape[1], n_classes=len(cell_classes),
                             patch_models=[m.get_config()["members"] for m in patch_models])
    with torch.no_grad():
        network.mean.copy_(torch.as_tensor(scaler.mean_, dtype=torch.float32))
        network.scale.copy_(torch.as_tensor(scaler.scale_, dtype=torch.float32))
        network.weight.copy_(torch.as_tensor(first.coef_.T, dtype=torch.float32))
        network.bias.copy_(torch.as_tensor(first.intercept_, dtype=torch.float32))
    metadata: dict[str, Any] = {
        "model": MODEL_NAME, "classes": classes, "cell_classes": cell_classes,
        "genes": list(rule["genes"]), "cells": cells, "image_key": image_key,
        "labels_key": options.labels_key, "grid_um": float(rule["grid_um"]),
        "feature_mpp": float(options.feature_mpp),
        "smooth_um": [float(s) for s in options.smooth_um],
        "stains_key": options.stains_key, "stains": channels, "ring_um": float(options.ring_um),
        "C": float(first.C_[0]), "n_train_cells": int(keep.sum()), "train_counts": counts,
        "region": None if options.region is None else [float(v) for v in options.region],
        "seed": seed,
    }
    if patch_models:
        out_of_fold = cross_val_predict(
            _pipeline(float(first.C_[0])), x, y, cv=splitter, method="predict_proba")
        cnn, used = _unseen_patch_log_probabilities(sdata, patch_models, cells, names[keep],
                                                    centroids[keep], bounds, classes,
                                                    batch_size=options.batch_size,
                                                    device=options.device)
        stack_counts = np.bincount(y[used], minlength=len(cell_classes))
        if stack_counts.min() < 2:
            raise ValueError(
                f"Only {dict(zip(cell_classes, stack_counts.tolist(), strict=True))} training "
                "cells per class lie where no patch classifier trained (their validation "
                "regions, or outside their training region): too few to fit the combination. "
                "Train patch classifiers on parts of the training region (cross-fitting) or "
                "with a larger val_fraction.")
        stacked_x = np.column_stack([np.log(np.clip(out_of_fold[used], 1e-6, 1)), cnn[used]])
        inner = StratifiedKFold(int(min(options.n_folds, stack_counts.min())), shuffle=True,
                                random_state=seed)
        second, _ = _logistic(stacked_x, y[used], options.Cs, inner, scale=False)
        with torch.no_grad():
            network.stack_weight.copy_(torch.as_tensor(second.coef_.T, dtype=torch.float32))
            network.stack_bias.copy_(torch.as_tensor(second.intercept_, dtype=torch.float32))
        metadata.update(patch_models=[dict(m.metadata) for m in patch_models], stack={
            "C": float(second.C_[0]), "n_cells": int(used.sum()),
            "counts": dict(zip(cell_classes, stack_counts.tolist(), strict=True))})
    network.metadata = metadata
    logger.info("Cell morphology model: %d training cells %s, C %.3g%s.", int(keep.sum()),
                counts, metadata["C"], "" if not patch_models else
                f"; stacked with {len(patch_models)} patch classifier(s) on "
                f"{metadata['stack']['n_cells']} unseen cells (C {metadata['stack']['C']:.3g})")
    return network.eval()


def predict(
    model: CellClassifier,
    sdata: SpatialData,
    *,
    region: Sequence[float] | None = None,
    cells: str | None = None,
    image_key: str | None = None,
    stride_um: float | None = None,
    calibrate: bool = True,
    batch_size: int = 256,
    device: str | None = None,
    key_added: str = "pred_labels",
    overwrite: bool = False,
) -> AnnData:
    """Classify every cell of a section (or a region of it): a per-cell class map.

    Parameters
    ----------
    model
        A model from ``hx.tl.fit(..., model="cell_morphology")`` or a file of one.
    sdata
        The section, with the image and the cells.
    region
        ``(x_min, y_min, x_max, y_max)`` in um to map; defaults to the whole image. Its memory
        is estimated first (about 180 B per pixel at the model's ``feature_mpp``, one channel):
        a MemoryError names the pixels and asks for a smaller region.
    cells
        Key of the cell polygons or label image; defaults to the one the model trained on.
    image_key
        Image to describe the cells on; defaults to the one the model trained on.
    stride_um
        Pixel size of the map in um; defaults to the training labels' grid. The map's memory
        is estimated first: a MemoryError names its grid cells and asks for a larger stride_um.
    calibrate
        Apply the stacked patch classifiers' calibration (see
        ``hx.tl.fit(..., model="patch_classifier")``), as in training.
    batch_size
        Patches per forward pass of the stacked patch classifiers.
    device
        Torch device of the patch classifiers; ``None`` uses ``hx.settings.device``.
    key_added
        Key of the map in ``sdata.labels``; probabilities go to
        ``sdata.images[f"{key_added}_probabilities"]`` and the cells to
        ``sdata.tables[f"{key_added}_cells"]``.
    overwrite
        Replace existing elements of those names, only those an earlier ``hx.tl.predict`` of a
        cell-morphology model wrote under this ``key_added`` (never an element of the user's, of
        another step or of another kind of model); the new map is made before anything is
        replaced, so a refused call leaves the old one.

    Returns
    -------
    The cells' table it wrote (``sdata.tables[f"{key_added}_cells"]``); it adds the label map
    (each cell's most probable class, background outside the cells), its probabilities and
    the cells' table (``X``: probabilities, ``obs["label"]``, ``obs["class"]``), as
    ``hx.tl.predict`` of a patch classifier with ``cells=`` does.

    Examples
    --------
    >>> hx.tl.predict(model, sdata, region=(0, 225, 500, 450), key_added="pred_morphology")

    """
    import torch

    from ..._core.cells import require_cells
    from ...models import CellClassifier
    from ._dense_map import (
        cell_table,
        cells_on_grid,
        cells_to_map,
        check_map_keys,
        check_map_memory,
        write_map,
    )

    if not isinstance(model, CellClassifier) or model.metadata.get("model") != MODEL_NAME:
        raise TypeError("predict needs a model from hx.tl.fit(..., model='cell_morphology') or "
                        f"a file of one, got {type(model).__name__}.")
    meta = model.metadata
    cells = meta["cells"] if cells is None else cells
    image_key = meta["image_key"] if image_key is None else image_key
    require_cells(sdata, cells)
    require_element(sdata, image_key, "images")
    stains_key = meta.get("stains_key")
    if stains_key is not None:
        stain_channels(sdata, stains_key, meta["stains"])
    # every key, whatever overwrite is: nothing is replaced before the map is made
    check_map_keys(sdata, key_added, overwrite=overwrite, model=MODEL_NAME)
    stride = float(meta["grid_um"] if stride_um is None else stride_um)
    if not stride > 0:
        raise ValueError(f"stride_um must be a positive length in um, got {stride_um!r}.")
    bounds = _bounds(sdata, image_key, region)
    classes = {str(k): int(v) for k, v in meta["classes"].items()}
    # memory, before any pixel is read: the features, then the map (they are not held at once)
    _check_feature_memory(
        sdata, image_key, bounds, float(meta["feature_mpp"]), stains_key, meta.get("stains"),
        fix="Pass region=(x_min, y_min, x_max, y_max) to map part of the section at a time (the "
            f"model measures its features at {float(meta['feature_mpp']):g} um/px, its "
            "feature_mpp).")
    origin = (bounds[0], bounds[1])
    shape = (max(1, int((bounds[3] - bounds[1]) / stride + 1e-6)),
             max(1, int((bounds[2] - bounds[0]) / stride + 1e-6)))
    check_map_memory(sdata, shape, bounds, stride, n_classes=len(classes), cells=cells,
                     grid_um=float(meta["grid_um"]))  # the map and the cells on a finer grid
    features, names, centroids = _features(sdata, cells, image_key, bounds,
                                           meta["feature_mpp"], meta["smooth_um"], stains_key,
                                           meta.get("stains"), meta.get("ring_um", 2.0))
    x = torch.as_tensor(features, dtype=torch.float32)
    patch_log = None
    if len(model.patch_models):
        logs = [_patch_log_probabilities(sdata, patch, meta["patch_models"][i], cells, names,
                                         bounds, classes, calibrate=calibrate,
                                         batch_size=batch_size, device=device)
                for i, patch in enumerate(model.patch_models)]
        patch_log = np.nanmean(logs, axis=0)
        missing = np.isnan(patch_log).any(axis=1)
        patch_log[missing] = np.log(1 / len(meta["cell_classes"]))
        patch_log = torch.as_tensor(patch_log, dtype=torch.float32)
    with torch.no_grad():
        cell_probabilities = model.cpu()(x, patch_log).numpy()
    full = np.zeros((len(names), len(classes)), dtype=np.float32)
    for j, name in enumerate(meta["cell_classes"]):
        full[:, list(classes).index(name)] = cell_probabilities[:, j]
    ids, _, grid_names = cells_on_grid(sdata, cells, origin, stride, shape)
    lookup = {str(name): i for i, name in enumerate(names)}
    uniform = np.array([0.0 if n == "background" else 1 / len(meta["cell_classes"])
                        for n in classes], dtype=np.float32)
    on_grid = np.array([full[lookup[str(n)]] if str(n) in lookup else uniform
                        for n in grid_names], dtype=np.float32).reshape(-1, len(classes))
    table = cell_table(full, names, centroids, classes)
    add_spatial_uns(table, sdata, image_key)
    write_map(sdata, cells_to_map(on_grid, ids, classes), classes, origin, stride,
              key_added=key_added, overwrite=overwrite, table=table, model=MODEL_NAME)
    return sdata.tables[f"{key_added}_cells"]


# ---------------------------------------------------------------------------------------------


def _labelling_rule(sdata, labels_key: str) -> dict:
    table_key = f"{labels_key}_cells"
    patches = f"{labels_key}_patches"
    if patches not in sdata.tables or "transcript_labels" not in sdata.tables[patches].uns \
            or table_key not in sdata.tables:
        raise KeyError(f"No per-cell labels {table_key!r}; label the cells with "
                       "hx.pp.transcript_labels(..., cells=..., key_added=labels_key).")
    return sdata.tables[patches].uns["transcript_labels"]


def _cells_key(sdata, rule: dict, cells: str | None) -> str:
    from ..._core.cells import require_cells

    cells = rule.get("cells") if cells is None else cells
    if cells is None:
        raise ValueError("The labels were not made per cell; pass cells= or label the cells with "
                         "hx.pp.transcript_labels(..., cells=...).")
    require_cells(sdata, str(cells))
    return str(cells)


def _patch_models(patch_classifier) -> list:
    from ...models import PatchEnsemble

    if patch_classifier is None:
        return []
    models = [patch_classifier] if isinstance(patch_classifier, PatchEnsemble) else list(
        patch_classifier)
    for m in models:
        if not isinstance(m, PatchEnsemble) or m.metadata.get("model") != "patch_classifier":
            raise TypeError("patch_classifier takes models from hx.tl.fit(..., "
                            f"model='patch_classifier'), got {type(m).__name__}.")
        if "val_regions" not in m.metadata:
            raise ValueError("A patch classifier has no metadata['val_regions'] (it was trained "
                             "by an older histoexpr); train it again to stack it.")
    return models


def _bounds(sdata, image_key: str, region) -> tuple[float, float, float, float]:
    from ..._core.image import image_levels

    if region is not None:
        box = tuple(float(v) for v in region)
        if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"region must be (x_min, y_min, x_max, y_max) with max > min, got "
                             f"{region!r}.")
        return box
    return image_levels(sdata, image_key)[0].bounds


def _features(sdata, cells, image_key, bounds, mpp, smooth_um, stains_key=None, stains=None,
              ring_um=2.0):
    """Each cell's features over ``bounds`` (their memory checked by _check_feature_memory)."""
    from ..._core.cells import cell_features

    smooth = tuple(float(s) for s in smooth_um)
    features, names, centroids = cell_features(sdata, cells, image_key, bounds, mpp=float(mpp),
                                               smooth_um=smooth)
    if stains_key is not None:
        extra = stain_features(sdata, cells, stains_key, stains, bounds, mpp=float(mpp),
                               ring_um=float(ring_um), smooth_um=smooth, names=names)
        features = np.column_stack([features, extra])
    return features, names, centroids


def _check_feature_memory(sdata, image_key: str, bounds, mpp: float, stains_key, stains,
                          fix: str) -> None:
    """Refuse, before any pixel is read, features whose maps would exceed the memory limit.

    The pixels are those :func:`~histoexpr._core.image.read_region` makes of ``bounds`` at
    ``mpp``; each holds :func:`~histoexpr._core.cells.cell_features_bytes_per_px` bytes (180
    for one channel) or, while the stain features are computed (after the nuclear ones are
    freed), :func:`stain_features_bytes_per_px`: the larger of the two. Images that do not
    state their pixel size are refused first (features are measured in um, cells placed in um).
    """
    from ..._core.cells import cell_features_bytes_per_px
    from ..._core.image import check_pixel_size_stated, image_levels
    from ..._core.memory import check_memory
    from ._stain_features import stain_features_bytes_per_px

    for key in (image_key,) if stains_key is None else (image_key, stains_key):
        check_pixel_size_stated(sdata, key)  # features at a pixel size in um, cells in um
    x0, y0, x1, y1 = (float(b) for b in bounds)
    height, width = max(1, round((y1 - y0) / mpp)), max(1, round((x1 - x0) / mpp))
    level = image_levels(sdata, image_key)[0].data
    n_channels = int(np.prod(level.shape[:-2]))
    per_px = cell_features_bytes_per_px(n_channels)
    stains_part = ""
    if stains_key is not None:
        per_px = max(per_px, stain_features_bytes_per_px(sdata, stains_key, stains))
        stains_part = f" and {len(stains)} of {stains_key!r}"
    check_memory(
        float(height) * width * per_px,
        f"Cell features over {width:,} x {height:,} px ({x1 - x0:g} x {y1 - y0:g} um at "
        f"{mpp:g} um/px; {n_channels} channel(s) of {image_key!r}{stains_part}, ~{per_px} B/px)",
        fix)


def _pipeline(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(
        C=C, max_iter=3000, class_weight="balanced"))


def _logistic(x, y, Cs: int, splitter, *, scale: bool = True):
    """Standardisation and a logistic regression with C by cross-validation."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler(with_mean=scale, with_std=scale).fit(x)
    folds = list(splitter.split(x, y))
    model = LogisticRegressionCV(Cs=Cs, cv=folds, max_iter=3000, class_weight="balanced")
    model.fit(scaler.transform(x), y)
    return model, scaler
