"""Fitting the three routes of the spot regressor (ridge, MLP head, end-to-end CNN)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..._core.logs import logger, progress
from ..._core.seeds import resolve_seed, seed_everything
from .._metrics._expression_metrics import column_pearson

#: copies of the spot patches that route "cnn" holds at once (chunks, pooled, training subset)
_PATCH_COPIES = 3


def fit_ridge(features: Sequence[np.ndarray], targets: Sequence[np.ndarray], *,
              alphas: Sequence[float], n_components: int | None):
    """Standardise, optionally PCA, ridge; alpha by inner CV on the mean Pearson over genes.

    scikit-learn's ``StandardScaler``, ``PCA`` and ``Ridge`` in a pipeline, its ``alpha`` chosen
    by inner folds that leave one section out when there are several sections, else are 5
    random folds of the spots (every step fitted inside the folds: :func:`_grid_scores`). The
    fitted steps are folded into one :class:`~histoexpr.models.LinearHead`.
    """
    from ...models import LinearHead

    alphas = np.asarray(sorted(float(a) for a in alphas))
    if alphas.size == 0 or (alphas <= 0).any():
        raise ValueError(f"alphas must be positive penalties, got {list(alphas)}.")
    x, y = np.vstack(features).astype(np.float64), np.vstack(targets).astype(np.float64)
    groups = np.repeat(np.arange(len(features)), [len(f) for f in features])
    if n_components is not None and not 1 <= n_components <= min(x.shape):
        raise ValueError(f"n_components must lie between 1 and {min(x.shape)}, got "
                         f"{n_components}.")
    splits = list(_inner_splits(groups))
    scores = _grid_scores(x, y, alphas, n_components, splits)
    best = _first_best(scores) if np.isfinite(scores).any() else len(alphas) // 2
    alpha = float(alphas[best])
    if not np.isfinite(scores).any():
        logger.warning("No inner fold could score the ridge penalties (%d spots: too few, or "
                       "flat expression); alpha %g, the middle of alphas, was used. Train on more "
                       "spots, or pass alphas=[...] with the one penalty to use.", len(x), alpha)
    if best in (0, len(alphas) - 1):
        logger.info("The chosen ridge alpha %g lies at the end of the alphas tried; consider "
                    "a wider range.", alpha)
    weight, bias = _affine(_ridge_pipeline(n_components).set_params(ridge__alpha=alpha).fit(x, y))
    network = LinearHead(n_features=x.shape[1], n_genes=y.shape[1])
    network.weight.copy_(torch.from_numpy(weight).float())
    network.bias.copy_(torch.from_numpy(bias).float())
    logger.info("Ridge alpha %g chosen by %d inner folds (mean Pearson %.3f).", alpha,
                len(splits), scores[best])
    return network, {"alpha": alpha, "n_components": n_components,
                     "history": {"alphas": alphas.tolist(), "inner_pearson": scores.tolist()}}


def fit_mlp(features: Sequence[np.ndarray], targets: Sequence[np.ndarray], *, hidden: int,
            n_members: int, epochs: int, lr: float, batch_size: int, val_fraction: float,
            device: str | None, seed: int | None):
    """Train ``n_members`` small MLPs on standardised features with the one training loop.

    Member ``i`` is trained alone with seed ``seed + i`` (its own initialisation and
    validation split); the returned :class:`~histoexpr.models.MLPHead` averages them.
    """
    from ...models import MLPHead

    x, y = np.vstack(features).astype(np.float32), np.vstack(targets).astype(np.float32)
    ensemble = MLPHead(n_features=x.shape[1], n_genes=y.shape[1], hidden=hidden,
                       n_members=n_members)
    scale = x.std(axis=0)
    ensemble.mean.copy_(torch.from_numpy(x.mean(axis=0)))
    ensemble.scale.copy_(torch.from_numpy(np.where(scale > 0, scale, 1)))
    histories = {}
    for index, member in enumerate(ensemble.members):
        member_seed = resolve_seed(seed) + index
        seed_everything(member_seed)  # the member's initial weights follow its seed
        single = MLPHead(n_features=x.shape[1], n_genes=y.shape[1], hidden=hidden)
        single.mean.copy_(ensemble.mean)
        single.scale.copy_(ensemble.scale)
        histories[f"seed {member_seed}"] = _train_regressor(
            single, single.members[0][-1], x, y, epochs=epochs, lr=lr, batch_size=batch_size,
            val_fraction=val_fraction, device=device, seed=member_seed,
            desc=f"spot regressor (mlp {index + 1}/{n_members})", augment=False)
        member.load_state_dict(single.members[0].state_dict())
    history = next(iter(histories.values())) if n_members == 1 else histories
    return ensemble.eval(), {"history": history, "hidden": hidden, "n_members": n_members}


def fit_cnn(sections: Sequence[Any], *, tiles_key: str, image_key: str, n_genes: int,
            arch: str, epochs: int, lr: float, batch_size: int, val_fraction: float,
            device: str | None, seed: int | None):
    """Train a :class:`~histoexpr.models.SpotCNN` end to end on the spot patches.

    The patches are read once (uint8, in memory) and augmented on the fly. Their memory, about
    three copies of them (the read chunks, the pooled array, the training subset), ``n_spots x
    channels x size_px**2 x 3`` bytes, is estimated before any patch is read.
    """
    from ...models import SpotCNN

    _check_patch_memory(sections, tiles_key=tiles_key, image_key=image_key)
    patches = np.concatenate([_read_patches(s.sdata, tiles_key, image_key, s.tile_rows)
                              for s in sections])
    y = np.vstack([s.targets for s in sections]).astype(np.float32)
    network = SpotCNN(n_genes=n_genes, arch=arch, in_channels=patches.shape[1])
    history = _train_regressor(network, network.head[-1], patches, y, epochs=epochs, lr=lr,
                               batch_size=batch_size, val_fraction=val_fraction, device=device,
                               seed=seed, desc=f"spot regressor (cnn, {arch})", augment=True)
    return network, {"history": history, "arch": arch, "size_px": int(patches.shape[-1])}


def _check_patch_memory(sections: Sequence[Any], *, tiles_key: str, image_key: str) -> None:
    """Refuse, before any patch is read, patches of every spot that would exceed the memory."""
    from ..._core.image import image_levels
    from ..._core.memory import check_memory

    n_spots = sum(len(s.tile_rows) for s in sections)
    if not n_spots:
        return
    size_px = max(int(s.sdata.tables[f"{tiles_key}_table"].uns["tiles"]["size_px"])
                  for s in sections)
    channels = max(int(image_levels(s.sdata, image_key)[0].data.sizes["c"]) for s in sections)
    check_memory(
        float(n_spots) * channels * size_px**2 * _PATCH_COPIES,
        f"The patches of {n_spots:,} spots ({channels} x {size_px} x {size_px} px, uint8, "
        f"{_PATCH_COPIES} copies while they are read, pooled and split) of {len(sections)} "
        "section(s) for route='cnn'",
        "Train route='ridge' or route='mlp', which read the patches in batches (as tile "
        "embeddings), or train on fewer sections, or on smaller patches (a smaller size_um or a "
        "coarser mpp).")


def _train_regressor(network, last_layer, x: np.ndarray, y: np.ndarray, *, epochs: int,
                     lr: float, batch_size: int, val_fraction: float, device: str | None,
                     seed: int | None, desc: str, augment: bool) -> dict[str, Any]:
    """Mean squared error of per-gene standardised targets, early stopping on a random split."""
    from .._train import train

    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}.")
    rng = np.random.default_rng(resolve_seed(seed))
    order = rng.permutation(len(y))
    n_val = max(1, round(val_fraction * len(y)))
    if len(y) - n_val < 2:
        raise ValueError(f"Only {len(y)} spots: too few to train and validate a network.")
    val, fit = order[:n_val], order[n_val:]
    mean, scale = y[fit].mean(axis=0), y[fit].std(axis=0)
    scale = torch.from_numpy(np.where(scale > 0, scale, 1).astype(np.float32))
    with torch.no_grad():
        last_layer.bias.copy_(torch.from_numpy(mean))

    def loss(net, batch):
        inputs = batch["x"]
        if inputs.dtype == torch.uint8:
            inputs = _prepare_patches(inputs, augment=augment and net.training)
        error = (net(inputs) - batch["y"]) / scale.to(inputs.device)
        return error.pow(2).mean()

    generator = torch.Generator().manual_seed(resolve_seed(seed))
    loader = DataLoader(_Arrays(x[fit], y[fit]), batch_size=batch_size, shuffle=True,
                        generator=generator, drop_last=len(fit) > batch_size)
    val_loader = DataLoader(_Arrays(x[val], y[val]), batch_size=batch_size * 2)
    return train(network, loader, val_loader, loss, epochs=epochs, lr=lr, weight_decay=1e-3,
                 patience=max(3, epochs // 4), device=device, seed=seed, desc=desc)


def _prepare_patches(patches: torch.Tensor, *, augment: bool) -> torch.Tensor:
    """uint8 patches to normalised floats; random dihedral turns and colour jitter if asked."""
    from ._spot_inputs import CNN_NORMALISATION

    x = patches.float() / 255
    if augment:
        n = len(x)
        k = int(torch.randint(4, (1,)))
        x = torch.rot90(x, k, dims=(2, 3))
        flip = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        gain = 1 + 0.1 * (torch.rand(n, x.shape[1], 1, 1, device=x.device) - 0.5)
        shift = 0.05 * (torch.rand(n, 1, 1, 1, device=x.device) - 0.5)
        x = (x * gain + shift).clamp(0, 1)
    return (x - CNN_NORMALISATION["mean"]) / CNN_NORMALISATION["std"]


def _read_patches(sdata, tiles_key: str, image_key: str, rows: np.ndarray) -> np.ndarray:
    from ..._core.devices import resolve_workers
    from ..._settings import settings
    from ...pp import TileDataset

    dataset = torch.utils.data.Subset(TileDataset(sdata, tiles_key, image_key=image_key),
                                      rows.tolist())
    loader = DataLoader(dataset, batch_size=64, num_workers=resolve_workers(settings.device))
    chunks = [(batch["image"] * 255).round().to(torch.uint8).numpy()
              for batch in progress(loader, desc="read patches", total=len(loader))]
    return np.concatenate(chunks)


class _Arrays(Dataset):
    """Paired inputs and targets as dict items ``{"x", "y"}`` for the training loop."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


def _grid_scores(x: np.ndarray, y: np.ndarray, alphas: np.ndarray, n_components: int | None,
                 splits: list) -> np.ndarray:
    """Mean inner Pearson of every ``alpha``: the pipeline's steps on each split, as a grid search.

    What ``GridSearchCV(_ridge_pipeline(...), {"ridge__alpha": alphas}, scoring=_mean_pearson,
    error_score=nan)`` computes, to the last bit, with each split's scaling (and PCA) fitted once
    for all penalties instead of once per penalty. A fit that fails on a split (its scaling or
    PCA, e.g. fewer training spots than ``n_components``, or one penalty's ridge) scores NaN
    there; when every fit fails, the last error is raised.
    """
    from sklearn.base import clone

    template = _ridge_pipeline(n_components)
    scores = np.full((len(alphas), len(splits)), np.nan)
    error, fitted = None, 0
    for j, (train, test) in enumerate(splits):
        x_fit, x_test = x[train], x[test]
        try:
            for _, step in template.steps[:-1]:  # as Pipeline.fit and .predict run them
                step = clone(step)
                x_fit = step.fit_transform(x_fit, y[train])
                x_test = step.transform(x_test)
        except Exception as failure:  # noqa: BLE001 - GridSearchCV's error_score=nan
            error = failure
            continue
        for i, alpha in enumerate(alphas):
            ridge = clone(template.steps[-1][1]).set_params(alpha=float(alpha))
            try:
                ridge.fit(x_fit, y[train])
            except Exception as failure:  # noqa: BLE001 - GridSearchCV's error_score=nan
                error = failure
                continue
            fitted += 1
            scores[i, j] = _mean_pearson(ridge, x_test, y[test])
    if not fitted and error is not None:
        raise error
    return np.average(scores, axis=1)


def _inner_splits(groups: np.ndarray):
    from sklearn.model_selection import KFold, LeaveOneGroupOut

    if len(np.unique(groups)) >= 2:
        yield from LeaveOneGroupOut().split(groups, groups=groups)
    else:
        yield from KFold(n_splits=min(5, len(groups)), shuffle=True,
                         random_state=0).split(groups)


def _first_best(scores: np.ndarray, tolerance: float = 1e-9) -> int:
    """Index of the first score within ``tolerance`` of the best (NaN scores never win).

    Scores equal but for rounding are ties (a fold of two spots scores exactly +-1, so several
    penalties often score the same): the smallest penalty among them is taken, whatever the
    last bits of the arithmetic say.
    """
    finite = np.isfinite(scores)
    return int(np.flatnonzero(finite & (scores >= np.nanmax(scores) - tolerance))[0])


def _ridge_pipeline(n_components: int | None):
    """Standardise (constant features keep a scale of 1) -> PCA (optional) -> ridge."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [("scale", StandardScaler())]
    if n_components is not None:
        steps.append(("pca", PCA(n_components=n_components, svd_solver="full")))
    return Pipeline([*steps, ("ridge", Ridge())])


def _mean_pearson(estimator, x: np.ndarray, y: np.ndarray) -> float:
    """Mean Pearson over genes of the predictions on ``x`` (NaN for a fold too small)."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(column_pearson(estimator.predict(x), y)))


def _affine(pipeline) -> tuple[np.ndarray, np.ndarray]:
    """Weight ``(features, genes)`` and bias of a fitted pipeline as one map of raw features."""
    scaler, ridge = pipeline.named_steps["scale"], pipeline.named_steps["ridge"]
    # (components, genes), (genes,); one gene's ridge keeps 1-d coefficients
    coef, intercept = np.atleast_2d(ridge.coef_).T, np.atleast_1d(ridge.intercept_)
    if "pca" in pipeline.named_steps:
        pca = pipeline.named_steps["pca"]
        intercept = intercept - pca.mean_ @ pca.components_.T @ coef
        coef = pca.components_.T @ coef
    weight = coef / scaler.scale_[:, None]
    return weight, intercept - scaler.mean_ @ weight
