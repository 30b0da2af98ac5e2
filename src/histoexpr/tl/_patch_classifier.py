"""The patch classifier: CNNs learn transcript-defined classes from the image alone.

``hx.tl.fit(sdata, model="patch_classifier", ...)`` trains one
:class:`~histoexpr.models.PatchClassifier` per patch size on the patches chosen by
:func:`histoexpr.pp.transcript_labels`, validates them on a spatially disjoint part of the
section, and returns them as a :class:`~histoexpr.models.PatchEnsemble` (all sizes, or the best
one). ``hx.tl.predict(model, sdata)`` slides it over a section (see ``_dense_map.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .._devices import loader_options
from .._utils import logger, require_element, resolve_device, resolve_seed, seed_everything
from ..io._image import image_levels
from ._dense_map import predict_map

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ..models import PatchClassifier, PatchEnsemble

MODEL_NAME = "patch_classifier"
DEFAULT_MPP = 0.5
_NORMALISATION_PATCHES = 256


def fit(
    sdata: SpatialData,
    *,
    labels_key: str = "tx_labels",
    image_key: str | Sequence[str] | None = None,
    patch_size_um: float | Sequence[float] = (16.0, 32.0),
    mpp: float | Sequence[float] | None = None,
    region: Sequence[float] | None = None,
    val_fraction: float = 0.2,
    val_block_um: float | None = None,
    combine: Literal["auto", "ensemble", "best"] = "auto",
    width: int = 16,
    dropout: float = 0.2,
    augment: bool = True,
    cache: bool = True,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    patience: int | None = 4,
    calibrate: bool = True,
    device: str | None = None,
    seed: int | None = None,
) -> PatchEnsemble:
    """Train CNN patch classifiers of one or several patch sizes on transcript-defined classes.

    The patches are the centres that :func:`histoexpr.pp.transcript_labels` wrote to
    ``sdata.tables[f"{labels_key}_patches"]``, read lazily from the image through
    :class:`histoexpr.pp.TileDataset` at ``mpp``. Validation uses a spatially disjoint part of
    the section: a stripe along its longer side (or random square blocks of ``val_block_um``)
    holding ``val_fraction`` of the patches, and training patches whose largest window reaches
    into it are dropped (neighbouring patches overlap, so a random split would leak).
    Classes are balanced by weighting the cross-entropy by inverse class frequency; training
    patches are augmented on the fly with kornia (flips, 90-degree rotations, brightness,
    contrast and gamma jitter). Each size is trained by :func:`histoexpr.tl._train.train` (AdamW,
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
    labels_key
        Key of the label map written by :func:`histoexpr.pp.transcript_labels`.
    image_key
        Image to learn from; defaults to the one the labels were made on. Several images of the
        section on the same coordinates and with the same channels (e.g. focal planes) pool
        their patches: every patch centre is read from each image, for training and for
        validation.
    patch_size_um
        Side of the patches in um; several sizes train one classifier each.
    mpp
        Pixel size at which patches are read, in um/px; defaults to the image's own pixel size
        or 0.5 um/px, whichever is coarser. Patch sides are rounded to an even number of pixels.
        One value per patch size makes a multi-scale model: e.g. ``patch_size_um=(12, 64)``
        with ``mpp=(0.25, 1.0)`` sees a nucleus in detail and the tissue around it coarsely.
    region
        ``(x_min, y_min, x_max, y_max)`` in um: only patches whose largest window lies inside it
        are used (train on one part of a section, test on another).
    val_fraction
        Share of the patches used for validation.
    val_block_um
        ``None`` validates on a stripe along the longer side of the training area (at a random
        end, holding ``val_fraction`` of the patches); a side in um validates on random square
        blocks of that side instead.
    combine
        What to return: ``"ensemble"`` (every size, probabilities averaged), ``"best"`` (the size
        with the best validation mean Dice) or ``"auto"`` (the ensemble if it validates at least
        as well as the best size, else that size).
    width
        Channels of the first convolution block of each classifier.
    dropout
        Dropout before each classifier's last layer.
    augment
        Augment the training patches.
    cache
        Keep each patch in memory after its first read (2 bytes per pixel and channel), so
        that later epochs do not read the image again; ``False`` reads every patch every epoch.
    epochs
        Maximum number of epochs per patch size.
    batch_size
        Patches per batch.
    lr
        Learning rate.
    weight_decay
        Weight decay of AdamW.
    patience
        Epochs without a better validation loss before stopping; ``None`` never stops early.
    calibrate
        Fit the class-prior correction and temperature on the validation patches (see above);
        ``False`` stores none, so that :func:`predict` gives the network's own probabilities.
    device
        Torch device; ``None`` uses ``hx.settings.device``.
    seed
        Random seed (split, initialisation, batches, augmentation); ``None`` uses
        ``hx.settings.seed``.

    Returns
    -------
    A :class:`~histoexpr.models.PatchEnsemble` whose ``metadata`` holds ``model``, ``classes``
    (``{name: label value}``), ``genes``, ``mpp``, ``patch_size_um`` (of its members),
    ``image_key`` (the first image, the default of :func:`predict`), ``image_keys``,
    ``grid_um`` (the label map's pixel size, the default stride of
    :func:`predict`), ``history`` (per patch size), ``report`` (one record per size and one for
    the ensemble: patches, epochs, validation loss, accuracy and Dice per class), the split
    (``val_regions``: boxes ``[x0, y0, x1, y1]`` in um holding the validation patches, never
    trained on) and ``calibration`` (``prior``, ``exponent``, ``temperature`` and the weighted
    validation mean Dice before and after; ``None`` with ``calibrate=False``).

    Examples
    --------
    >>> model = hx.tl.fit(sdata, model="patch_classifier", patch_size_um=(16, 32), mpp=1.0,
    ...                   region=(0, 0, 500, 225))
    >>> model.metadata["calibration"]["exponent"]

    """
    from torch.utils.data import ConcatDataset

    from ..models import PatchEnsemble
    from ..pp import CachedDataset

    rule = _labelling_rule(sdata, labels_key)
    image_keys = _image_keys(sdata, rule["image_key"] if image_key is None else image_key)
    level0 = image_levels(sdata, image_keys[0])[0]
    scales = _patch_scales(patch_size_um, mpp, level0)  # (pixels, um/px) of each size
    largest_um = max(px * px_mpp for px, px_mpp in scales)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie between 0 and 1, got {val_fraction!r}.")
    if combine not in ("auto", "ensemble", "best"):
        raise ValueError(f"combine must be 'auto', 'ensemble' or 'best', got {combine!r}.")

    table = sdata.tables[f"{labels_key}_patches"]
    classes = {str(k): int(v) for k, v in rule["classes"].items()}
    targets = _class_indices(table.obs["label"].to_numpy(), classes)
    centres = np.asarray(table.obsm["spatial"], dtype=float)
    inside = _inside(centres, largest_um / 2, region, level0)
    seed = resolve_seed(seed)
    if val_block_um is None:
        train_idx, val_idx = _stripe_split(centres, inside, val_fraction, largest_um / 2, seed)
    else:
        train_idx, val_idx = _block_split(centres, inside, float(val_block_um), val_fraction,
                                          largest_um / 2, seed)
    _check_split(targets, train_idx, val_idx, classes)

    networks, histories, reports, val_probabilities = [], {}, [], []
    val_targets = np.tile(targets[val_idx], len(image_keys))  # the order of the ConcatDataset
    for size_px, read_mpp in scales:
        size_um = size_px * read_mpp
        datasets = [ConcatDataset([_patch_dataset(sdata, key, centres[idx], targets[idx],
                                                  size_px, read_mpp) for key in image_keys])
                    for idx in (train_idx, val_idx)]
        datasets = [CachedDataset(d) for d in datasets] if cache else datasets
        network, history = _train_one(datasets, targets[train_idx], len(classes), size_px,
                                      width=width, dropout=dropout, augment=augment,
                                      epochs=epochs, batch_size=batch_size, lr=lr,
                                      weight_decay=weight_decay, patience=patience,
                                      device=device, seed=seed, desc=f"{size_um:g} um patches")
        probabilities = _probabilities(network, datasets[1], batch_size, device)
        val_probabilities.append(probabilities)
        networks.append(network)
        histories[f"{size_um:g}"] = history
        reports.append(_report(f"{size_um:g} um", probabilities, val_targets, classes,
                               size_um=size_um, patch_px=size_px, history=history))
    if len(networks) > 1:
        reports.append(_report("ensemble", np.mean(val_probabilities, axis=0), val_targets,
                               classes, size_um=None, patch_px=None, history=None))
    chosen = _choose(reports, combine)
    calibration = None
    if calibrate:
        prior = _class_prior(sdata, labels_key, classes, region)
        probabilities, calibration_targets = np.mean(
            [val_probabilities[i] for i in chosen], axis=0), val_targets
        per_cell = rule.get("cells") is not None
        if per_cell:  # as predict(cells=...) does: each cell's mean over its patches
            probabilities, calibration_targets = _cell_means(
                sdata, rule, labels_key, np.tile(centres[val_idx], (len(image_keys), 1)),
                probabilities, val_targets)
        calibration = fit_calibration(probabilities, calibration_targets, classes, prior,
                                      cells=per_cell)
    model = PatchEnsemble.of([networks[i] for i in chosen])
    model.metadata = {
        "model": MODEL_NAME, "classes": classes, "genes": list(rule["genes"]),
        "mpp": min(scales[i][1] for i in chosen), "member_mpp": [scales[i][1] for i in chosen],
        "image_mpp": level0.mpp, "patch_size_um": [scales[i][0] * scales[i][1] for i in chosen],
        "image_key": image_keys[0], "image_keys": image_keys, "labels_key": labels_key,
        "grid_um": float(rule["grid_um"]),
        "in_channels": model.in_channels, "history": histories, "report": reports,
        "combine": combine, "seed": seed, "region": None if region is None else
        [float(v) for v in region], "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
        "val_block_um": val_block_um, "calibration": calibration,
        "val_regions": _val_boxes(centres[val_idx], centres[inside], val_block_um,
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
) -> None:
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
        rounded to a whole number of the model's pixels.
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
    calibrate
        Apply the calibration fitted by :func:`fit` (``metadata["calibration"]``: class-prior
        correction and temperature), after the per-cell mean and the smoothing; ``False`` maps
        the network's own probabilities. A model without a calibration is not changed.
    batch_size
        Patches per forward pass.
    device
        Torch device; ``None`` uses ``hx.settings.device``.
    key_added
        Key of the predicted label map in ``sdata.labels``; the probabilities go to
        ``sdata.images[f"{key_added}_probabilities"]``.
    overwrite
        Replace existing elements of those names that an earlier ``predict`` wrote (never an
        element of another origin).

    Returns
    -------
    Nothing; adds ``sdata.labels[key_added]`` (the most probable class's label value, 0 outside
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
    return predict_map(model, sdata, image_key=image_key, region=region, stride_um=stride_um,
                       cells=cells, smooth_um=smooth_um, calibrate=calibrate,
                       batch_size=batch_size,
                       device=device, key_added=key_added, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# patches and the split


def _labelling_rule(sdata: SpatialData, labels_key: str) -> dict[str, Any]:
    require_element(sdata, labels_key, "labels")
    table_key = f"{labels_key}_patches"
    if table_key not in sdata.tables or "transcript_labels" not in sdata.tables[table_key].uns:
        raise KeyError(f"No patch table {table_key!r} for the label map {labels_key!r}; make the "
                       "labels with hx.pp.transcript_labels(..., key_added=labels_key).")
    return sdata.tables[table_key].uns["transcript_labels"]


def _image_keys(sdata: SpatialData, image_key: str | Sequence[str]) -> list[str]:
    """The images to learn from, checked to exist and to share their channel count."""
    keys = [image_key] if isinstance(image_key, str) else list(image_key)
    if not keys:
        raise ValueError("image_key must name at least one image.")
    channels = {}
    for key in keys:
        require_element(sdata, key, "images")
        channels[key] = int(image_levels(sdata, key)[0].data.sizes.get("c", 1))
    if len(set(channels.values())) > 1:
        raise ValueError(f"The images to learn from differ in their channel count ({channels}); "
                         "pass images with the same channels.")
    return keys


def _patch_scales(patch_size_um, mpp, level0) -> list[tuple[int, float]]:
    """Each patch's side in pixels (even, so that every size shares its centre) and um/px."""
    sizes = [patch_size_um] if np.isscalar(patch_size_um) else list(patch_size_um)
    if not sizes or any(not s > 0 for s in sizes):
        raise ValueError(f"patch_size_um must be positive sizes in um, got {patch_size_um!r}.")
    if mpp is None:
        mpps = [max(level0.mpp, DEFAULT_MPP)] * len(sizes)
    elif np.isscalar(mpp):
        mpps = [float(mpp)] * len(sizes)
    else:
        mpps = [float(m) for m in mpp]
        if len(mpps) != len(sizes):
            raise ValueError(f"mpp needs one pixel size per patch size ({len(sizes)}), got "
                             f"{mpp!r}.")
    if any(not m > 0 for m in mpps):
        raise ValueError(f"mpp must be positive pixel sizes in um/px, got {mpp!r}.")
    height_um, width_um = (n * level0.mpp for n in level0.shape_yx)
    too_big = [s for s in sizes if s > min(height_um, width_um)]
    if too_big:
        raise ValueError(f"Patches of {too_big} um are larger than the image ({width_um:.1f} x "
                         f"{height_um:.1f} um); use smaller patch_size_um.")
    scales = {(max(8, 2 * round(s / m / 2)), m) for s, m in zip(sizes, mpps, strict=True)}
    return sorted(scales, key=lambda scale: (scale[0] * scale[1], scale[1]))


def _class_indices(labels: np.ndarray, classes: dict[str, int]) -> np.ndarray:
    """Label values -> class indices 0..K-1 in the order of ``classes``."""
    lookup = {value: i for i, value in enumerate(classes.values())}
    return np.array([lookup[int(v)] for v in labels], dtype=np.int64)


def _inside(centres: np.ndarray, half: float, region, level0) -> np.ndarray:
    """Whether each patch (of half-side ``half``) lies inside ``region`` (default: anywhere)."""
    if region is None:
        return np.ones(len(centres), dtype=bool)
    x0, y0, x1, y1 = (float(v) for v in region)
    inside = ((centres[:, 0] - half >= x0) & (centres[:, 0] + half <= x1)
              & (centres[:, 1] - half >= y0) & (centres[:, 1] + half <= y1))
    if not inside.any():
        raise ValueError(f"No patch of the largest size lies wholly inside region={region}; "
                         "widen the region or use smaller patch_size_um.")
    logger.info("Using %d of %d patch centres whose patches lie inside the region.",
                int(inside.sum()), len(inside))
    return inside


def _stripe_split(centres: np.ndarray, usable: np.ndarray, fraction: float, half: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation on a stripe along the longer side, at a random end, with a gap of ``half``."""
    span = np.ptp(centres[usable], axis=0)
    across = centres[:, 1] if span[0] >= span[1] else centres[:, 0]
    low_end = np.random.default_rng(seed).random() < 0.5
    if not low_end:
        across = -across
    edge = np.quantile(across[usable], fraction)
    is_val = usable & (across <= edge)
    is_train = usable & (across > edge + half)
    logger.info("Spatial split: %d training and %d validation patches (a stripe along the "
                "longer side); %d patches dropped as the gap between them.", int(is_train.sum()),
                int(is_val.sum()), int((usable & ~is_val & ~is_train).sum()))
    return np.flatnonzero(is_train), np.flatnonzero(is_val)


def _block_split(centres: np.ndarray, usable: np.ndarray, block: float, fraction: float,
                   half: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices from random square blocks, with a gap of ``half``."""
    rng = np.random.default_rng(seed)
    origin = centres[usable].min(axis=0)
    cell = np.floor((centres - origin) / block).astype(int)
    ids = cell[:, 1] * 1_000_003 + cell[:, 0]
    blocks, counts = np.unique(ids[usable], return_counts=True)
    order = rng.permutation(len(blocks))
    cumulative = np.cumsum(counts[order]) / counts.sum()
    n_val = min(len(blocks) - 1, int(np.searchsorted(cumulative, fraction)) + 1)
    if n_val < 1:
        raise ValueError("The patches fall in a single validation block; lower val_block_um.")
    val_blocks = set(blocks[order[:n_val]].tolist())
    is_val = usable & np.isin(ids, list(val_blocks))
    # a training patch is dropped when its window touches a validation block
    touches = np.zeros(len(centres), dtype=bool)
    for dx in (-half, half):
        for dy in (-half, half):
            corner = np.floor((centres + [dx, dy] - origin) / block).astype(int)
            touches |= np.isin(corner[:, 1] * 1_000_003 + corner[:, 0], list(val_blocks))
    is_train = usable & ~is_val & ~touches
    logger.info("Spatial split: %d training and %d validation patches in %d blocks of %g um; "
                "%d patches dropped as the gap between them.", int(is_train.sum()),
                int(is_val.sum()), n_val, block, int((usable & ~is_val & touches).sum()))
    return np.flatnonzero(is_train), np.flatnonzero(is_val)


def _check_split(targets, train_idx, val_idx, classes: dict[str, int]) -> None:
    names = list(classes)
    for idx, what in ((train_idx, "training"), (val_idx, "validation")):
        counts = np.bincount(targets[idx], minlength=len(names))
        missing = [names[i] for i in np.flatnonzero(counts == 0)]
        if missing and what == "training":
            raise ValueError(f"No training patch of class(es) {missing}: the region or the "
                             "split leaves them out. Widen region or lower val_fraction.")
        if missing:
            logger.warning("No validation patch of class(es) %s; try another seed or "
                           "val_block_um.", missing)


def _patch_dataset(sdata, image_key: str, centres: np.ndarray, targets: np.ndarray,
                   size_px: int, mpp: float):
    """A :class:`~histoexpr.pp.TileDataset` of square patches centred on ``centres``."""
    import pandas as pd
    from spatialdata import SpatialData

    from ..io._elements import square_shapes, tile_table
    from ..pp import TileDataset

    size_um = size_px * mpp
    ids = np.arange(len(centres))
    boxes = np.column_stack([centres - size_um / 2, centres + size_um / 2])
    obs = pd.DataFrame({"tile_id": ids, "target": targets}, index=pd.Index(ids.astype(str)))
    uns = {"image_key": image_key, "size_px": size_px, "mpp": mpp, "size_um": size_um,
           "stride_um": None}
    patches = SpatialData(images={image_key: sdata.images[image_key]},
                          shapes={"patches": square_shapes(boxes, ids)},
                          tables={"patches_table": tile_table(obs, centres, "patches", uns)})
    return TileDataset(patches, "patches", obs_keys=["target"])


# ---------------------------------------------------------------------------------------------
# training one patch size


def _train_one(datasets, train_targets: np.ndarray, n_classes: int, size_px: int, *,
               width: int, dropout: float, augment: bool, epochs: int, batch_size: int,
               lr: float, weight_decay: float, patience: int | None, device: str | None,
               seed: int, desc: str) -> tuple[PatchClassifier, dict[str, Any]]:
    from torch.utils.data import DataLoader

    from ..models import PatchClassifier
    from ._train import train

    seed_everything(seed)
    train_set, val_set = datasets
    mean, std = _normalisation(train_set, seed)
    depth = int(np.clip(math.floor(math.log2(size_px / 4)), 2, 5))
    network = PatchClassifier(in_channels=len(mean), n_classes=n_classes, patch_px=size_px,
                              width=width, depth=depth, dropout=dropout, mean=mean, std=std)
    counts = np.bincount(train_targets, minlength=n_classes).astype(np.float32)
    weights = torch.tensor(counts.sum() / (n_classes * np.maximum(counts, 1)))
    augmentation = _augmentation() if augment else None
    device = resolve_device(device)

    def loss(net, batch):
        images = batch["image"]
        if net.training and augmentation is not None:
            images = augmentation(images)
        return torch.nn.functional.cross_entropy(net(images), batch["target"],
                                                 weight=weights.to(images.device))

    generator = torch.Generator().manual_seed(seed)
    loaders = [DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          **loader_options(device))
               for dataset, shuffle in ((train_set, True), (val_set, False))]
    history = train(network, loaders[0], loaders[1], loss, epochs=epochs, lr=lr,
                    weight_decay=weight_decay, patience=patience, device=device, seed=seed,
                    desc=desc)
    return network.cpu(), history


def _normalisation(dataset, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of a sample of patches."""
    rng = np.random.default_rng(seed)
    n = min(len(dataset), _NORMALISATION_PATCHES)
    sample = torch.stack([dataset[int(i)]["image"]
                          for i in rng.choice(len(dataset), size=n, replace=False)])
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def _augmentation():
    """Flips, 90-degree rotations and intensity jitter, batched on the device (kornia)."""
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomHorizontalFlip(), K.RandomVerticalFlip(), K.RandomRotation90(times=(0, 3), p=1.0),
        K.RandomBrightness((0.85, 1.15), p=0.8), K.RandomContrast((0.8, 1.25), p=0.8),
        K.RandomGamma((0.8, 1.25), p=0.5))


def _probabilities(network, dataset, batch_size: int, device: str | None) -> np.ndarray:
    """Softmax probabilities of every patch of a dataset, in order."""
    from ._embed import encode

    logits = encode(network, dataset, batch_size=batch_size, device=resolve_device(device),
                    normalisation=None, desc="validation")
    network.cpu()
    return torch.from_numpy(logits).softmax(dim=1).numpy()


# ---------------------------------------------------------------------------------------------
# calibration

#: exponents of the class-prior correction tried (0: none, 1: the full Bayes correction)
_PRIOR_EXPONENTS = np.round(np.arange(0.0, 1.501, 0.05), 2)
#: temperatures tried
_TEMPERATURES = np.exp(np.linspace(np.log(0.2), np.log(5.0), 41))


def _class_prior(sdata, labels_key: str, classes: dict[str, int], region) -> dict[str, float]:
    """Share of each class among the labelled pixels of the label map inside ``region``."""
    from ..io._image import read_region

    level = image_levels(sdata, labels_key)[0]
    (x0, y0), (h, w) = level.offset, level.shape_yx
    box = (x0, y0, x0 + w * level.mpp, y0 + h * level.mpp) if region is None else region
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


def _cell_means(sdata, rule: dict, labels_key: str, centres: np.ndarray,
                probabilities: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The validation patches grouped by the cell their centre lies in: mean probabilities."""
    from ._dense_map import cells_on_grid

    level = image_levels(sdata, labels_key)[0]
    ids, _, _ = cells_on_grid(sdata, str(rule["cells"]), level.offset, level.mpp,
                              level.shape_yx)
    cols = np.floor((centres[:, 0] - level.offset[0]) / level.mpp).astype(int)
    rows = np.floor((centres[:, 1] - level.offset[1]) / level.mpp).astype(int)
    inside = (rows >= 0) & (cols >= 0) & (rows < ids.shape[0]) & (cols < ids.shape[1])
    cell = np.zeros(len(centres), dtype=np.int64)
    cell[inside] = ids[rows[inside], cols[inside]]
    keep = cell > 0
    unique, inverse = np.unique(cell[keep], return_inverse=True)
    counts = np.bincount(inverse, minlength=len(unique))[:, None]
    means = np.column_stack([np.bincount(inverse, weights=channel, minlength=len(unique))
                             for channel in probabilities[keep].T]) / counts
    labels = np.zeros(len(unique), dtype=np.int64)
    labels[inverse] = targets[keep]  # every patch of a cell has the cell's class
    logger.info("Calibration on the %d validation cells (mean over each cell's %.1f patches on "
                "average).", len(unique), float(counts.mean()) if len(unique) else 0.0)
    return means, labels


def _val_boxes(val_centres: np.ndarray, usable_centres: np.ndarray, block: float | None,
               grid_um: float) -> list[list[float]]:
    """Boxes ``[x0, y0, x1, y1]`` (um) around the validation patch centres (one per block)."""
    if not len(val_centres):
        return []
    if block is None:
        groups = [val_centres]
    else:
        cell = np.floor((val_centres - usable_centres.min(axis=0)) / block).astype(int)
        _, inverse = np.unique(cell, axis=0, return_inverse=True)
        groups = [val_centres[inverse.ravel() == i] for i in range(inverse.max() + 1)]
    half = grid_um / 2
    return [[*(g.min(axis=0) - half).tolist(), *(g.max(axis=0) + half).tolist()] for g in groups]


# ---------------------------------------------------------------------------------------------
# the per-size report


def _report(name: str, probabilities: np.ndarray, targets: np.ndarray, classes: dict[str, int],
            *, size_um: float | None, patch_px: int | None, history: dict | None) -> dict:
    """Validation metrics of one classifier (plain values, for the model's metadata)."""
    predicted = probabilities.argmax(axis=1)
    eps = 1e-12
    chosen = np.clip(probabilities[np.arange(len(targets)), targets], eps, 1)
    record: dict[str, Any] = {
        "name": name, "patch_size_um": size_um, "patch_px": patch_px,
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

