"""Training on several processes with torch's DistributedDataParallel (launched by torchrun).

The training loop (:func:`histoexpr.tl._train.train`) asks :func:`context` whether it runs in
a process group: one already initialised by the caller, or the environment that ``torchrun``
sets (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...), from which the group is
initialised here (``nccl`` on GPUs, ``gloo`` on CPUs). Each global batch of the loaders the
caller built is split among the processes (process ``r`` of ``W`` takes items ``r, r + W...``),
so that ``batch_size`` keeps its meaning: the global batch, the same one a single process uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Context:
    """A process's place in a process group."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context(device: str | None = None) -> Context | None:
    """The process group this process trains in, if any.

    Initialised here from torchrun's environment when the caller has not; ``None`` when there is
    no group (or only one process).
    """
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
            return None
        on_gpu = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    if dist.get_world_size() <= 1:
        return None
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def is_main_process() -> bool:
    """Whether this process writes files and logs: rank 0, or the only process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait until every process of the group is here (nothing without a group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def process_device(device: str, ctx: Context) -> str:
    """The device of this process: ``cuda:<local rank>`` for a CUDA run, otherwise ``device``."""
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        return f"cuda:{ctx.local_rank}"
    return device


class _RankSlices:
    """A batch sampler yielding this process's share of each global batch of another one.

    Process 0 draws the epoch's global batches and sends them to the others, so that every
    process splits the same batches even when their random states differ. A global batch with
    fewer items than processes gives the processes left without an item a copy of its first
    one, which the loop weights by zero: every process then takes every optimiser step.
    """

    def __init__(self, batch_sampler: Iterable[list[int]], ctx: Context) -> None:
        self.batch_sampler, self.ctx = batch_sampler, ctx
        self.shares: list[tuple[int, bool]] = []

    def __iter__(self) -> Iterator[list[int]]:
        import torch.distributed as dist

        batches = [list(self.batch_sampler) if self.ctx.is_main else None]
        dist.broadcast_object_list(batches, src=0)
        self.shares = [(len(batch), len(batch) > self.ctx.rank) for batch in batches[0]]
        for batch in batches[0]:
            yield batch[self.ctx.rank:: self.ctx.world_size] or batch[:1]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class ShardedBatches:
    """The share of this process of every global batch of a DataLoader (or a list of batches).

    ``batches`` is a DataLoader (its batch sampler is split: each process reads only its own
    items), an object whose ``next_loader()`` returns the DataLoader of the next pass (a new
    loader every epoch, split the same way), or any other re-iterable of batches (each
    process builds every batch and keeps its share). Once iteration has begun, ``shares[i]``
    is ``(size of the global batch, whether the share counts)`` for the ``i``-th share yielded,
    so that each process can weight its loss by its share of the global batch (and by zero for
    a stand-in share).
    """

    def __init__(self, batches: Iterable[dict[str, Any]], ctx: Context) -> None:
        from torch.utils.data import DataLoader

        self.ctx, self.batches, self._slices = ctx, batches, None
        self.loader: Iterable = batches
        if isinstance(batches, DataLoader):
            self.loader, self._slices = _split_loader(batches, ctx)
        self.shares: list[tuple[int, bool]] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loader, slices = self.loader, self._slices
        if hasattr(self.batches, "next_loader"):
            loader, slices = _split_loader(self.batches.next_loader(), self.ctx)
        if slices is not None:
            iterator = iter(loader)
            first = next(iterator, None)  # the sampler has now received the epoch's batches
            self.shares = slices.shares
            if first is not None:
                yield first
                yield from iterator
            return
        self.shares = []
        for batch in loader:  # batches built in memory: every process slices each one
            size = _size(batch)
            self.shares.append((size, size > self.ctx.rank))
            yield _slice(batch, self.ctx.rank if size > self.ctx.rank else 0,
                         self.ctx.world_size, size)


def _split_loader(batches, ctx: Context):
    """A DataLoader over this process's share of each global batch of ``batches``."""
    from torch.utils.data import DataLoader

    if batches.batch_sampler is None:
        raise ValueError("Distributed training needs DataLoaders with batch_size set "
                         "(they are split into one share per process).")
    slices = _RankSlices(batches.batch_sampler, ctx)
    # the caller's generator, drawn from as by its own loader (a seed per epoch before the
    # sampler's order), so that process 0 draws the batches of a one-process run
    loader = DataLoader(
        batches.dataset, batch_sampler=slices, collate_fn=batches.collate_fn,
        num_workers=batches.num_workers, pin_memory=batches.pin_memory,
        persistent_workers=batches.persistent_workers, generator=batches.generator)
    return loader, slices


def _size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 1


def _slice(batch: dict[str, Any], rank: int, world: int, size: int) -> dict[str, Any]:
    return {key: value[rank::world] if (isinstance(value, torch.Tensor) and value.ndim > 0
                                        and len(value) == size) or
            (isinstance(value, list) and len(value) == size) else value
            for key, value in batch.items()}


def all_sum(values: list[float], device: str) -> list[float]:
    """The sums over all processes of a few numbers."""
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
