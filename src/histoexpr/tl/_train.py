"""The one training loop of histoexpr: every model is trained through :func:`train`.

A model module supplies the network, the data loaders and a ``loss`` callable; the loop does the
rest the same way for all of them: device placement, seeds, AdamW, mixed precision
(``hx.settings.precision``), validation each epoch, early stopping on the validation loss with
the best weights restored, progress bars and a history.

Launched by ``torchrun`` on several processes (GPUs, or CPUs with the gloo backend), the loop
trains one model with :class:`~torch.nn.parallel.DistributedDataParallel`: every global batch
of the caller's loaders is split among the processes, each process weights its loss by its
share of the batch, so the averaged gradient is the one a single process computes on the whole
batch; losses are summed over the processes; only rank 0 shows progress and logs, and
:func:`histoexpr.io.save_model` writes only on rank 0. A deterministic network (no dropout;
batch norm computes statistics per process) therefore trains to the weights of a one-process
run, up to floating-point summation order (``tests/test_train.py`` checks ``rtol=1e-5``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .._core import distributed as _distributed
from .._core.devices import (
    autocast,
    backward_and_step,
    resolve_precision,
    reused_host_memory,
    use_channels_last,
)
from .._core.logs import logger, progress
from .._core.seeds import resolve_device, seed_everything

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
    optimiser: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    first_epoch: int = 0,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    reseed: bool = True,
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
        Torch device; ``None`` uses ``hx.settings.device``. Under ``torchrun`` on GPUs, each
        process uses ``cuda:<LOCAL_RANK>``.
    seed
        Random seed; ``None`` uses ``hx.settings.seed``.
    desc
        Label of the progress bar.
    optimiser
        The optimiser of ``network``'s parameters (e.g. one restored from a checkpoint);
        ``None`` makes AdamW with ``lr`` and ``weight_decay``.
    scheduler
        A :mod:`torch.optim.lr_scheduler` scheduler of ``optimiser``, stepped after every
        training batch; ``None`` keeps the rate.
    first_epoch
        Epochs already run (a resumed run): the loop runs epochs ``first_epoch`` to
        ``epochs - 1``.
    on_epoch
        Called as ``on_epoch(epoch, history)`` after every epoch (e.g. to write a checkpoint).
    reseed
        Seed the random generators from ``seed`` first; ``False`` keeps their state (the caller
        seeded them, or restored them from a checkpoint).

    Returns
    -------
    ``{"train_loss": [...], "val_loss": [...], "best_epoch": int, "epochs_run": int,
    "seconds": float, "device": str}``; the network holds the weights of ``best_epoch``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    if reseed:
        seed_everything(seed)
    device = resolve_device(device)
    ctx = _distributed.context(device)
    if ctx is not None:
        device = _distributed.process_device(device, ctx)
    precision = resolve_precision(device)
    network.to(device)
    if use_channels_last(network, device):
        network.to(memory_format=torch.channels_last)
    model = network
    if ctx is not None:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            network, device_ids=[ctx.local_rank] if device.startswith("cuda") else None)
        train_batches = _distributed.ShardedBatches(train_batches, ctx)
        if val_batches is not None:
            val_batches = _distributed.ShardedBatches(val_batches, ctx)
    if optimiser is None:
        optimiser = torch.optim.AdamW(
            [p for p in network.parameters() if p.requires_grad], lr=lr,
            weight_decay=weight_decay)
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "best_epoch": 0,
                               "epochs_run": first_epoch, "device": device,
                               "precision": precision.name,
                               "world_size": 1 if ctx is None else ctx.world_size}
    best_loss, best_state, since_best = math.inf, None, 0
    start = time.perf_counter()
    main = ctx is None or ctx.is_main
    bar = progress(range(first_epoch, epochs), desc=desc, total=max(0, epochs - first_epoch),
                   show=None if main else False)
    with reused_host_memory(device):  # large activations: no page faults at every step
        for epoch in bar:
            network.train()
            history["train_loss"].append(
                _run_epoch(model, train_batches, loss, device, optimiser, precision, ctx,
                           scheduler))
            history["epochs_run"] = epoch + 1
            if val_batches is None:
                bar.set_postfix(train=f"{history['train_loss'][-1]:.4g}")
                if on_epoch is not None:
                    on_epoch(epoch, history)
                continue
            network.eval()
            with torch.no_grad():  # the bare network: no gradients to synchronise
                val_loss = _run_epoch(network, val_batches, loss, device, None, precision, ctx)
            history["val_loss"].append(val_loss)
            bar.set_postfix(train=f"{history['train_loss'][-1]:.4g}", val=f"{val_loss:.4g}")
            if on_epoch is not None:
                on_epoch(epoch, history)
            if val_loss < best_loss:
                best_loss, since_best, history["best_epoch"] = val_loss, 0, epoch
                best_state = copy.deepcopy(network.state_dict())
            else:
                since_best += 1
                if patience is not None and since_best >= patience:
                    if main:
                        logger.info("%s: stopped early after epoch %d (best: epoch %d, val loss "
                                    "%.4g)", desc, epoch + 1, history["best_epoch"] + 1, best_loss)
                    break
    if best_state is not None:
        network.load_state_dict(best_state)
    else:
        history["best_epoch"] = history["epochs_run"] - 1
    history["seconds"] = round(time.perf_counter() - start, 3)
    if use_channels_last(network, device):
        network.to(memory_format=torch.contiguous_format)
    network.eval()
    return history


def _run_epoch(model, batches, loss: LossFunction, device: str, optimiser, precision,
               ctx, scheduler=None) -> float:
    """Mean loss over one pass, weighted by batch size; a training step when ``optimiser``.

    Under DDP each process's loss is weighted by its share of the global batch (times the number
    of processes, as DDP averages gradients), and the epoch's sums are added over processes.
    """
    total, count = 0.0, 0
    for step, batch in enumerate(batches):
        batch = to_device(batch, device)
        with autocast(precision):
            value = loss(model, batch)
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"The training loss became {value.item()}; lower the learning rate (lr) or "
                "check the inputs for NaN values."
            )
        size = _batch_size(batch)
        if ctx is not None:
            global_size, counts = batches.shares[step]
            size = size if counts else 0  # a stand-in share: the process only takes the step
        if optimiser is not None:
            optimiser.zero_grad(set_to_none=True)
            weighted = value
            if ctx is not None:  # DDP averages over processes: weight by the share of the batch
                weighted = value * (size * ctx.world_size / global_size)
            backward_and_step(weighted, optimiser, precision)
            if scheduler is not None:
                scheduler.step()
        total += float(value.detach()) * size
        count += size
    if ctx is not None:
        total, count = _distributed.all_sum([total, count], device)
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
