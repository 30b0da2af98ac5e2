"""Work on several processes: training under torchrun, the slides of a cohort on dask workers.

**Training** with torch's DistributedDataParallel (launched by torchrun).
The training loop (:func:`histoexpr.tl._train.train`) asks :func:`context` whether it runs in
a process group: one already initialised by the caller, or the environment that ``torchrun``
sets (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...), from which the group is
initialised here (``nccl`` on GPUs, ``gloo`` on CPUs). Each global batch of the loaders the
caller built is split among the processes (process ``r`` of ``W`` takes items ``r, r + W...``),
so that ``batch_size`` keeps its meaning: the global batch, the same one a single process uses.

**The slides of a cohort on disk** (:func:`run_slides`, the one runner of the per-slide
pipelines: ``hx.tl.embed_cohort`` and the spot regressor's ``predict`` over a cohort): one after
the other here, or mapped over the workers of a ``dask.distributed`` Client, with the calling
process's settings (:data:`SHIPPED_SETTINGS`) applied on the workers for each slide.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .._settings import settings
from .logs import SlidesFailedError, computed_here, each_item, progress

if TYPE_CHECKING:
    import pandas as pd


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


# --- the slides of a cohort, here or on dask workers ----------------------------------------

#: the options of ``hx.settings`` a dask worker takes from the caller for each slide (device,
#: loader workers, memory and folders are the worker machine's own)
SHIPPED_SETTINGS = ("precision", "verbosity", "seed")


def check_client(client: Any) -> None:
    """Refuse a ``client`` that is not a ``dask.distributed.Client`` (``None`` passes).

    Called before anything is planned or written: an executor of ``concurrent.futures`` (it
    has a ``map`` too) would otherwise fail inside the run, obscurely.
    """
    if client is None:
        return
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - dask[distributed] is a dependency
        Client = None  # noqa: N806 - the class, when it can be imported
    if Client is None or not isinstance(client, Client):
        raise TypeError(
            f"client must be a dask.distributed Client, got {type(client).__name__}. Pass "
            "client=Client(LocalCluster(n_workers=4, threads_per_worker=1)) (from "
            "dask.distributed import Client, LocalCluster), a Client of any other cluster, or "
            "client=None to run the slides here, one after the other.")


def run_slides(tasks: list[dict], work: Callable[..., dict], *, client: Any,
               **shared: Any) -> Iterator[dict]:
    """Run ``work(task, **shared)`` for every slide's task; yield their summaries as they finish.

    Here (``client=None``), one slide after the other, each computed here
    (:func:`~histoexpr._core.logs.computed_here`: with a ``dask.distributed`` Client open in
    the process, the slide's lazy image would be sent to that cluster, which cannot ship an
    open slide file). With a
    ``client``, mapped over its workers (``client.map``; dask schedules them), each slide with the
    caller's :data:`SHIPPED_SETTINGS` (:func:`_on_worker`). Either way a slide's info lines
    are debug lines (:func:`~histoexpr._core.logs.each_item`): the bar shows the slides. ``work``
    is a module-level function (dask pickles it) that writes one slide's results to its store
    and returns a summary dict holding ``slide_id``.
    """
    if client is None:
        for task in progress(tasks, desc="slides", total=len(tasks)):
            with each_item(), computed_here():
                summary = work(task, **shared)
            yield summary
        return
    from distributed import as_completed

    def scattered(value):  # networks travel once to every worker, not once per slide
        if isinstance(value, torch.nn.Module):
            return client.scatter(value, broadcast=True, hash=False)
        if isinstance(value, list):
            return [scattered(one) for one in value]
        return value

    shared = {name: scattered(value) for name, value in shared.items()}
    snapshot = {name: getattr(settings, name) for name in SHIPPED_SETTINGS}
    name = getattr(work, "__name__", "slide").strip("_")
    futures = client.map(_on_worker, tasks, work=work, shipped=snapshot, pure=False,
                         key=[f"{name}-{t['slide_id']}-{time.time_ns()}" for t in tasks],
                         **shared)
    try:
        for future in progress(as_completed(futures), desc="slides", total=len(futures),
                               show=settings.progress_bar):
            yield future.result()
    except BaseException:
        client.cancel(futures)
        raise


def _on_worker(task: dict, work: Callable[..., dict], shipped: dict[str, Any],
               **shared: Any) -> dict:
    """On a dask worker: one slide, with the caller's settings, without progress bars.

    ``shipped`` (the caller's :data:`SHIPPED_SETTINGS`) are set for the slide and the
    worker's own put back after it; progress bars would go to the worker's log, so they are
    off. The slide's info lines are debug lines, as in a run here. Its own lazy arrays (its
    image read from the file) are computed in the worker's thread: inside a task, dask would
    otherwise hand them to the cluster's scheduler, which cannot ship an open slide file.
    """
    import dask

    with _settings_applied({**shipped, "progress_bar": False}), each_item(), \
            dask.config.set(scheduler="synchronous"):
        return work(task, **shared)


@contextlib.contextmanager
def _settings_applied(values: dict[str, Any]) -> Iterator[None]:
    """``hx.settings`` set to ``values`` inside, and put back as they were after."""
    saved = {name: getattr(settings, name) for name in values}
    try:
        for name, value in values.items():
            setattr(settings, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)


def close_slide_files(sdata: Any) -> None:
    """Close the slide files that the lazily read images of ``sdata`` hold open in this process.

    :func:`histoexpr.io.read_wsi` reads a slide's tiles from its file, opened once per process
    (:mod:`histoexpr._core.slide_files`); a slide's task closes it when the slide is done (or
    has failed), not the garbage collector some time later (a ``ResourceWarning``). A later
    read opens the file again.
    """
    from .image_facts import recorded_sources
    from .slide_files import close_slide_file

    for path in recorded_sources(sdata):
        close_slide_file(path)


def report_failures(frame: pd.DataFrame, n_tried: int, step: str, *,
                    stacklevel: int = 2) -> None:
    """Warn of the slides that failed (each one's error), or raise when every one did.

    ``frame`` is a cohort runner's summary (``status`` and ``error`` columns); ``step`` names
    the call in the messages. Raised when every slide tried failed, unless that was one slide of
    a cohort whose other slides are done (a bad slide file, retried by a later run, is warned
    of).
    """
    import warnings

    failed = frame[frame["status"] == "failed"]
    if failed.empty:
        return
    listed = "; ".join(f"{i}: {e}" for i, e in failed["error"].head(5).items())
    more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
    if len(failed) == n_tried and (n_tried > 1 or len(failed) == len(frame)):
        # several slides, every one failed: likely one cause; the only slide(s): no result
        cause = ("The cause is likely common to all: fix it and run again." if n_tried > 1
                 else "Fix the slide file (or the options) and run again.")
        raise SlidesFailedError(f"Every slide {step} tried failed ({len(failed)}): {listed}"
                           f"{more}. {cause}")
    warnings.warn(f"{step}: {len(failed)} of {len(frame)} slides failed and were left "
                  f"out (status 'failed', their error in the 'error' column): {listed}{more}. "
                  f"Fix or replace those slide files and run {step} again: the slides "
                  "done are skipped, the failed ones tried again.", UserWarning,
                  stacklevel=stacklevel + 1)
