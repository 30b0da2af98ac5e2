"""The one training loop of histoexpr: every model is trained through :func:`train`.

A model module supplies the network, the data loaders and a ``loss`` callable; the loop does the
rest the same way for all of them: device placement, seeds, AdamW, validation each epoch, early
stopping on the validation loss with the best weights restored, progress bars and a history.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .._utils import logger, progress, resolve_device, seed_everything

#: a loss callable: (network, batch moved to the device) -> scalar loss tensor
LossFunction = Callable[[nn.Module, dict[str, Any]], torch.Tensor]


def train(
    network: nn.Module,
    train_batches: Iterable[dict[str, Any]],
    val_batches: Iterable[dict[str, Any]] | None,
    loss: LossFunction,
    *,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    patience: int | None = 5,
    device: str | None = None,
    seed: int | None = None,
    desc: str = "training",
) -> dict[str, Any]:
    """Train ``network`` in place and return its history.

    Parameters
    ----------
    network
        The torch module to train.
    train_batches
        Re-iterable batches (a DataLoader): dicts of tensors and other values.
    val_batches
        Validation batches; ``None`` trains for ``epochs`` without early stopping.
    loss
        ``loss(network, batch)`` -> scalar tensor; the batch's tensors are on the device.
    epochs
        Maximum number of passes over ``train_batches``.
    lr
        Learning rate of AdamW.
    weight_decay
        Weight decay of AdamW.
    patience
        Stop after this many epochs without a better validation loss; ``None`` never stops early.
    device
        Torch device; ``None`` uses ``hx.settings.device``.
    seed
        Random seed; ``None`` uses ``hx.settings.seed``.
    desc
        Label of the progress bar.

    Returns
    -------
    ``{"train_loss": [...], "val_loss": [...], "best_epoch": int, "epochs_run": int,
    "seconds": float, "device": str}``; the network holds the weights of ``best_epoch``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    seed_everything(seed)
    device = resolve_device(device)
    network.to(device)
    optimiser = torch.optim.AdamW(
        [p for p in network.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "best_epoch": 0,
                               "epochs_run": 0, "device": device}
    best_loss, best_state, since_best = math.inf, None, 0
    start = time.perf_counter()
    bar = progress(range(epochs), desc=desc, total=epochs)
    for epoch in bar:
        network.train()
        history["train_loss"].append(_run_epoch(network, train_batches, loss, device, optimiser))
        history["epochs_run"] = epoch + 1
        if val_batches is None:
            continue
        network.eval()
        with torch.no_grad():
            val_loss = _run_epoch(network, val_batches, loss, device, None)
        history["val_loss"].append(val_loss)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(train=f"{history['train_loss'][-1]:.4g}", val=f"{val_loss:.4g}")
        if val_loss < best_loss:
            best_loss, since_best, history["best_epoch"] = val_loss, 0, epoch
            best_state = copy.deepcopy(network.state_dict())
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                logger.info("%s: stopped early after epoch %d (best: epoch %d, val loss %.4g)",
                            desc, epoch + 1, history["best_epoch"] + 1, best_loss)
                break
    if best_state is not None:
        network.load_state_dict(best_state)
    else:
        history["best_epoch"] = history["epochs_run"] - 1
    history["seconds"] = round(time.perf_counter() - start, 3)
    network.eval()
    return history


def _run_epoch(network, batches, loss: LossFunction, device: str, optimiser) -> float:
    """Mean loss over one pass, weighted by batch size; a training step when ``optimiser``."""
    total, count = 0.0, 0
    for batch in batches:
        batch = to_device(batch, device)
        value = loss(network, batch)
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"The training loss became {value.item()}; lower the learning rate (lr) or "
                "check the inputs for NaN values."
            )
        if optimiser is not None:
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
        size = _batch_size(batch)
        total += float(value.detach()) * size
        count += size
    if count == 0:
        raise ValueError("No batches to train or validate on: the data set is empty.")
    return total / count


def to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    """Move every tensor of a batch to ``device``."""
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 1
