"""Training data of the patch classifier: labelled patches, validation splits, training runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..._core.devices import loader_options
from ..._core.image import image_levels
from ..._core.logs import logger
from ..._core.ownership import require_element
from ..._core.seeds import resolve_device, seed_everything

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ...models import PatchClassifier

#: default pixel size (um/px) of the patches; an image coarser than this is read at its own
DEFAULT_MPP = 0.5
_NORMALISATION_PATCHES = 256


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


def _patch_scales(size_um, mpp, level0) -> list[tuple[int, float]]:
    """Each patch's side in pixels (even, so that every size shares its centre) and um/px."""
    sizes = [size_um] if np.isscalar(size_um) else list(size_um)
    if not sizes or any(not s > 0 for s in sizes):
        raise ValueError(f"size_um must be positive sizes in um, got {size_um!r}.")
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
                         f"{height_um:.1f} um); use a smaller size_um.")
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
                         "widen the region or use a smaller size_um.")
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

    from ..._core.elements import square_shapes, tile_table
    from ..._core.records import TileRecord
    from ...pp import TileDataset

    size_um = size_px * mpp
    ids = np.arange(len(centres))
    boxes = np.column_stack([centres - size_um / 2, centres + size_um / 2])
    obs = pd.DataFrame({"tile_id": ids, "target": targets}, index=pd.Index(ids.astype(str)))
    record = TileRecord(image_key=image_key, size_px=size_px, mpp=mpp, size_um=size_um)
    patches = SpatialData(images={image_key: sdata.images[image_key]},
                          shapes={"patches": square_shapes(boxes, ids)},
                          tables={"patches_table": tile_table(obs, centres, "patches", record)})
    return TileDataset(patches, "patches", obs_keys=["target"])


# ---------------------------------------------------------------------------------------------
# training one patch size


def _train_one(datasets, train_targets: np.ndarray, n_classes: int, size_px: int, *,
               width: int, dropout: float, augment: bool, epochs: int, batch_size: int,
               lr: float, weight_decay: float, patience: int | None, device: str | None,
               seed: int, desc: str) -> tuple[PatchClassifier, dict[str, Any]]:
    from torch.utils.data import DataLoader

    from ...models import PatchClassifier
    from .._train import train

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
    from .._features._embed import encode

    logits = encode(network, dataset, batch_size=batch_size, device=resolve_device(device),
                    normalisation=None, desc="validation")
    network.cpu()
    return torch.from_numpy(logits).softmax(dim=1).numpy()


# ---------------------------------------------------------------------------------------------
# calibration


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
