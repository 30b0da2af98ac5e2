"""The patch classifier: CNNs learn transcript-defined classes from the image alone.

``hx.tl.fit(sdata, model="patch_classifier", ...)`` trains one
:class:`~histoexpr.models.PatchClassifier` per patch size on the patches chosen by
:func:`histoexpr.pp.transcript_labels`, validates them on a spatially disjoint part of the
section, and returns them as a :class:`~histoexpr.models.PatchEnsemble` (all sizes, or the best
one). ``hx.tl.predict(model, sdata)`` slides it over a section (see ``_dense_map.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..._core.devices import resolve_workers
from ..._core.image import check_pixel_size_stated, image_levels
from ..._core.logs import logger
from ..._core.seeds import resolve_device, resolve_seed
from ._calibration import _choose, _class_prior, _report, fit_calibration
from ._dense_map import predict_map
from ._options import PatchClassifierOptions
from ._patch_data import (
    _block_split,
    _cell_means,
    _check_split,
    _class_indices,
    _image_keys,
    _inside,
    _labelling_rule,
    _patch_dataset,
    _patch_scales,
    _probabilities,
    _stripe_split,
    _train_one,
    _val_boxes,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData
    from xarray import DataArray

    from ...models import PatchEnsemble

MODEL_NAME = "patch_classifier"


def fit(sdata: SpatialData, options: PatchClassifierOptions) -> PatchEnsemble:
    """Train CNN patch classifiers of one or several patch sizes on transcript-defined classes.

    The patches are the centres that :func:`histoexpr.pp.transcript_labels` wrote to
    ``sdata.tables[f"{labels_key}_patches"]``, read lazily from the image through
    :class:`histoexpr.pp.TileDataset` at ``mpp``. Validation uses a spatially disjoint part of
    the section: a stripe along its longer side (or random square blocks of ``val_block_um``)
    holding ``val_fraction`` of the patches, and training patches whose largest window reaches
    into it are dropped (neighbouring patches overlap, so a random split would leak).
    Classes are balanced by weighting the cross-entropy by inverse class frequency; training
    patches are augmented on the fly with kornia (flips, 90-degree rotations, brightness,
    contrast and gamma jitter). Each size is trained by histoexpr's one training loop (AdamW,
    early stopping on the validation loss, best weights restored).

    **Calibration.** Trained on class-balanced patches, the network behaves as if every class
    were equally common, so a rare class is over-called and a common one swallowed. With
    ``calibrate=True`` two numbers are fitted on the validation patches, weighted so that their
    classes take the shares the classes have in the label map of the training region (the
    class prior ``pi``): the exponent ``g`` of the prior correction ``p_k * pi_k ** g`` (a
    grid of 0 to 1.5, the one with the best weighted mean Dice; 0 is no correction, 1 the full
    Bayes correction) and then a temperature ``T`` (the one with the lowest weighted negative
    log-likelihood of ``(p_k * pi_k ** g) ** (1 / T)``, renormalised). For per-cell labels
    (``transcript_labels(..., cells=...)``) both are fitted on the cell classes' patches with
    the background class left out, as in per-cell maps. Both are stored in
    ``metadata["calibration"]`` and applied by :func:`predict` unless ``calibrate=False``
    there. For per-cell labels, the validation patches are first averaged over each cell (as
    ``predict(..., cells=...)`` does), so that the correction is fitted on cells, where it is
    applied. No test data is used: the validation region lies inside the training ``region``.

    Parameters
    ----------
    sdata
        The section with the image, the label map and its patch table.
    options
        The model's options, each documented in :class:`~histoexpr.tl.PatchClassifierOptions`.
        ``hx.tl.fit(data, model=..., **options)`` builds them from keywords and
        records them in ``metadata["options"]``.

    Returns
    -------
    A :class:`~histoexpr.models.PatchEnsemble` whose ``metadata`` holds ``model``, ``classes``
    (``{name: label value}``), ``genes``, ``mpp``, ``size_um`` (the patch side of each
    member), ``image_key`` (the first image, the default of :func:`predict`),
    ``image_keys``, ``grid_um`` (the label map's pixel size, the default stride of
    :func:`predict`), ``history`` (per patch size), ``report`` (one record per size and one for
    the ensemble: patches, epochs, validation loss, accuracy and Dice per class), the split
    (``val_regions``: boxes ``[x0, y0, x1, y1]`` in um holding the validation patches, never
    trained on) and ``calibration`` (``prior``, ``exponent``, ``temperature`` and the weighted
    validation mean Dice before and after; ``None`` with ``calibrate=False``).

    Examples
    --------
    >>> model = hx.tl.fit(sdata, model="patch_classifier", size_um=(16, 32), mpp=1.0,
    ...                   region=(0, 0, 500, 225))
    >>> model.metadata["calibration"]["exponent"]

    """
    from torch.utils.data import ConcatDataset

    from ...models import PatchEnsemble
    from ...pp import CachedDataset

    rule = _labelling_rule(sdata, options.labels_key)
    image_keys = _image_keys(sdata, rule["image_key"] if options.image_key is None
                             else options.image_key)
    for key in image_keys:  # patches of a size in um: the image must state its pixel size
        check_pixel_size_stated(sdata, key)
    level0 = image_levels(sdata, image_keys[0])[0]
    scales = _patch_scales(options.size_um, options.mpp, level0)  # (pixels, um/px) of each size
    largest_um = max(px * px_mpp for px, px_mpp in scales)

    table = sdata.tables[f"{options.labels_key}_patches"]
    classes = {str(k): int(v) for k, v in rule["classes"].items()}
    targets = _class_indices(table.obs["label"].to_numpy(), classes)
    centres = np.asarray(table.obsm["spatial"], dtype=float)
    inside = _inside(centres, largest_um / 2, options.region, level0)
    seed = resolve_seed(options.seed)
    if options.val_block_um is None:
        train_idx, val_idx = _stripe_split(centres, inside, options.val_fraction,
                                           largest_um / 2, seed)
    else:
        train_idx, val_idx = _block_split(centres, inside, float(options.val_block_um),
                                          options.val_fraction, largest_um / 2, seed)
    _check_split(targets, train_idx, val_idx, classes)

    networks, histories, reports, val_probabilities = [], {}, [], []
    val_targets = np.tile(targets[val_idx], len(image_keys))  # the order of the ConcatDataset
    for size_px, read_mpp in scales:
        size_um = size_px * read_mpp
        datasets = [ConcatDataset([_patch_dataset(sdata, key, centres[idx], targets[idx],
                                                  size_px, read_mpp) for key in image_keys])
                    for idx in (train_idx, val_idx)]
        if options.cache:
            datasets = [CachedDataset(d) for d in datasets]
            if not resolve_workers(resolve_device(options.device)):  # read in this process
                for cached in datasets:  # in order: a shuffled epoch decodes chunks again
                    cached.fill(desc=f"reading {size_um:g} um patches")
        network, history = _train_one(datasets, targets[train_idx], len(classes), size_px,
                                      width=options.width, dropout=options.dropout,
                                      augment=options.augment, epochs=options.epochs,
                                      batch_size=options.batch_size, lr=options.lr,
                                      weight_decay=options.weight_decay,
                                      patience=options.patience, device=options.device,
                                      seed=seed, desc=f"{size_um:g} um patches")
        probabilities = _probabilities(network, datasets[1], options.batch_size, options.device)
        val_probabilities.append(probabilities)
        networks.append(network)
        histories[f"{size_um:g}"] = history
        reports.append(_report(f"{size_um:g} um", probabilities, val_targets, classes,
                               size_um=size_um, patch_px=size_px, history=history))
    if len(networks) > 1:
        reports.append(_report("ensemble", np.mean(val_probabilities, axis=0), val_targets,
                               classes, size_um=None, patch_px=None, history=None))
    chosen = _choose(reports, options.combine)
    calibration = None
    if options.calibrate:
        prior = _class_prior(sdata, options.labels_key, classes, options.region)
        probabilities, calibration_targets = np.mean(
            [val_probabilities[i] for i in chosen], axis=0), val_targets
        per_cell = rule.get("cells") is not None
        if per_cell:  # as predict(cells=...) does: each cell's mean over its patches
            probabilities, calibration_targets = _cell_means(
                sdata, rule, options.labels_key, np.tile(centres[val_idx], (len(image_keys), 1)),
                probabilities, val_targets)
        calibration = fit_calibration(probabilities, calibration_targets, classes, prior,
                                      cells=per_cell)
    model = PatchEnsemble.of([networks[i] for i in chosen])
    model.metadata = {
        "model": MODEL_NAME, "classes": classes, "genes": list(rule["genes"]),
        "mpp": min(scales[i][1] for i in chosen), "member_mpp": [scales[i][1] for i in chosen],
        "image_mpp": level0.mpp, "size_um": [scales[i][0] * scales[i][1] for i in chosen],
        "image_key": image_keys[0], "image_keys": image_keys, "labels_key": options.labels_key,
        "grid_um": float(rule["grid_um"]),
        "in_channels": model.in_channels, "history": histories, "report": reports,
        "combine": options.combine, "seed": seed,
        "region": None if options.region is None else [float(v) for v in options.region],
        "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
        "val_block_um": options.val_block_um, "calibration": calibration,
        "val_regions": _val_boxes(centres[val_idx], centres[inside], options.val_block_um,
                                  float(rule["grid_um"])),
    }
    logger.info("Validation mean Dice per patch size: %s; kept %s.", ", ".join(
        f"{r['name']} {r['mean_dice']:.3f}" for r in reports),
        [f"{scales[i][0] * scales[i][1]:g} um" for i in chosen])
    return model


def predict(
    model: PatchEnsemble,
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    region: Sequence[float] | None = None,
    stride_um: float | None = None,
    cells: str | None = None,
    smooth_um: float | None = None,
    batch_size: int = 256,
    calibrate: bool = True,
    device: str | None = None,
    key_added: str = "pred_labels",
    overwrite: bool = False,
) -> AnnData | DataArray:
    """Slide a trained patch classifier over a section: a dense map of class probabilities.

    A patch of each member's size is centred on every cell of a grid of ``stride_um`` over
    ``region`` and classified; the image is read in strips of rows at the model's pixel size
    (an image of another pixel size is rescaled as it is read, and this is logged), and patches
    are classified in batches, so memory grows with the width of the section, not its area.

    Parameters
    ----------
    model
        A model returned by ``hx.tl.fit(..., model="patch_classifier")`` or loaded from a file.
    sdata
        The section.
    image_key
        Image to classify; defaults to the one the model was trained on. It must have the
        channels the model was trained on.
    region
        ``(x_min, y_min, x_max, y_max)`` in um to map; defaults to the whole image.
    stride_um
        Grid step of the map (its pixel size) in um; defaults to the training labels' grid. It is
        rounded to a whole number of the model's pixels. The map's memory is estimated before
        any patch is read: a :class:`MemoryError` names a larger stride or a smaller ``region``
        when it exceeds ``hx.settings.max_memory`` (by default the memory available now).
    cells
        Key of cell polygons (``sdata.shapes``) or a cell label image (``sdata.labels``): make
        the map per cell, for labels made with ``transcript_labels(..., cells=...)``. Each
        cell's probabilities are the mean of the dense map over its pixels, the background
        class excluded (a cell is not background), and places outside every cell are
        background. ``None`` keeps the dense map.
    smooth_um
        Smooth the probabilities over space with a Gaussian of this width (sigma, um), for
        labels that are themselves smooth (windowed counts) or tissue-scale structures; with
        ``cells``, each cell's probabilities are averaged with its neighbours', weighted by a
        Gaussian of the distance between centroids. ``None`` does not smooth.
    batch_size
        Patches per forward pass.
    calibrate
        Apply the calibration fitted by :func:`fit` (``metadata["calibration"]``: class-prior
        correction and temperature), after the per-cell mean and the smoothing; ``False`` maps
        the network's own probabilities. A model without a calibration is not changed.
    device
        Torch device; ``None`` uses ``hx.settings.device``.
    key_added
        Key of the predicted label map in ``sdata.labels``; the probabilities go to
        ``sdata.images[f"{key_added}_probabilities"]``.
    overwrite
        Replace existing elements of those names that an earlier ``predict`` of a patch
        classifier wrote under this ``key_added`` (never an element of another origin, nor one of
        another kind of model); the new map is made before anything is replaced.

    Returns
    -------
    What it wrote: the per-cell table with ``cells``, else the label map. It adds
    ``sdata.labels[key_added]`` (the most probable class's label value, 0 outside
    ``region``, ``attrs["classes"]``) and ``sdata.images[f"{key_added}_probabilities"]``
    (float32, one channel per class, named after it), both with pixel size ``stride_um``; with
    ``cells``, also ``sdata.tables[f"{key_added}_cells"]``: one row per cell (index: the cell's
    id; cells too small to cover a pixel centre of the map included), ``X`` the probabilities
    (one column per class), ``obs["label"]``, ``obs["class"]`` and ``obsm["spatial"]`` (the
    centroid in um). :func:`histoexpr.tl.evaluate` scores that table per cell.

    Examples
    --------
    >>> hx.tl.predict(model, sdata, region=(0, 225, 500, 450), cells="cells",
    ...               key_added="pred_cells")
    >>> hx.tl.evaluate(sdata, "pred_cells", "tx_labels", region=(0, 225, 500, 450))

    """
    predict_map(model, sdata, image_key=image_key, region=region, stride_um=stride_um,
                cells=cells, smooth_um=smooth_um, calibrate=calibrate, batch_size=batch_size,
                device=device, key_added=key_added, overwrite=overwrite)
    return sdata.tables[f"{key_added}_cells"] if cells is not None else sdata.labels[key_added]


# ---------------------------------------------------------------------------------------------
# patches and the split
