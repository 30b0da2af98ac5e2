"""Self-supervised pretraining of tile encoders on unlabelled tiles: SimCLR and MoCo-v2.

Trained by the one training loop, :func:`histoexpr.tl._train.train`, without a validation set (a
contrastive loss has none to stop on), with a :mod:`torch.optim.lr_scheduler` schedule stepped
every batch, a checkpoint after every epoch and resuming from it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..._core import distributed as _distributed
from ..._core.devices import loader_options
from ..._core.files import (
    Found,
    check_replaceable,
    content_digest,
    left_here,
    payload_found,
    seal_of,
    written_beside,
)
from ..._core.logs import logged_step, logger
from ..._core.seeds import resolve_device, resolve_seed, seed_everything
from ..._core.validate import check_bool
from ..._settings import settings
from .._sections import as_sections
from .._train import train

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ...models import TileEncoder

CHECKPOINT_FORMAT = "histoexpr-pretrain-checkpoint"
CHECKPOINT_NAME = "pretrain_checkpoint.pt"
SCHEDULES = ("cosine", "constant")
_NORMALISATION_SAMPLE = 256  # tiles read to estimate the per-channel mean and spread
#: the learner's weights and the augmented views in channels-last layout while training: oneDNN's
#: convolutions, batch normalisation and max pooling are ~1.2-1.8x faster on a CPU in that
#: layout (``benchmarks/README.md``); the sums are the same up to float rounding
_CHANNELS_LAST = True


@logged_step("pretraining a tile encoder")
def pretrain(
    data: SpatialData | Sequence[SpatialData] | Mapping[str, SpatialData],
    tiles_key: str = "he_tiles",
    *,
    method: str = "simclr",
    encoder: str | Path | TileEncoder = "small_cnn",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    schedule: str = "cosine",
    warmup: float = 0.1,
    weight_decay: float = 1e-4,
    temperature: float = 0.2,
    queue_size: int = 4096,
    momentum: float = 0.99,
    projection_dim: int = 64,
    augment: str | torch.nn.Module | None = None,
    image_key: str | None = None,
    cache: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    seed: int | None = None,
) -> TileEncoder:
    """Pretrain a tile encoder by contrastive self-supervised learning on unlabelled tiles.

    Two random views of every tile (:func:`histoexpr.pp.augmentations`, suited to the stain) are
    made on the device, and the encoder learns to tell the views of one tile apart from those
    of other tiles: SimCLR (NT-Xent over the batch) or MoCo-v2 (momentum encoder and a queue of
    negatives, which suits the small batches of a CPU). Tiles are streamed from one or many
    sections through :class:`histoexpr.pp.TileDataset`.

    With ``checkpoint_dir``, the run is saved after every epoch; ``resume=True`` continues from
    the last saved epoch (a run stopped mid-epoch loses only that epoch) and gives the same
    result as an uninterrupted run.

    Launched by ``torchrun`` on several processes (GPUs, or CPUs on the gloo backend), the
    encoder is trained with :class:`~torch.nn.parallel.DistributedDataParallel` by the same
    training loop as supervised models: each process reads its share of every batch of
    ``batch_size`` tiles, and the contrastive loss gathers the projections of all processes
    (see Notes), so that two processes train the model that one trains on the same batches.

    Parameters
    ----------
    data
        A section, a list of sections, or a mapping of them (a :class:`histoexpr.io.Cohort`),
        each tiled by :func:`histoexpr.pp.tile` under ``tiles_key`` with the same tile size, um/px
        and channels.
    tiles_key
        Key of the tiles in every section.
    method
        ``"simclr"`` or ``"moco"``.
    encoder
        An architecture of :class:`histoexpr.models.TileEncoder` (``"small_cnn"``,
        ``"resnet18"``...; built for the image's channels), a :class:`~histoexpr.models.TileEncoder`
        to start from, or a histoexpr model file holding one.
    epochs
        Passes over all tiles (counting the epochs of a resumed run).
    batch_size
        Tiles per step; the last incomplete batch of an epoch is skipped. Under ``torchrun``,
        the global batch: split among the processes, so a multiple of their number.
    lr
        Peak learning rate of AdamW.
    schedule
        ``"cosine"``: the learning rate rises linearly over the first ``warmup`` share of the
        steps, then decays to zero along a half cosine by the last step; ``"constant"``: ``lr``
        throughout.
    warmup
        Share of all steps spent warming up (``"cosine"``), in [0, 1).
    weight_decay
        Weight decay of AdamW.
    temperature
        Temperature of the contrastive softmax.
    queue_size
        Negatives kept by MoCo (at least ``batch_size``); unused by SimCLR.
    momentum
        Momentum of MoCo's key encoder; unused by SimCLR.
    projection_dim
        Size of the projection head's output.
    augment
        ``None`` chooses the augmentations from the image's channels (``r, g, b``, or 3
        channels without names: ``"he"``; named stains such as ``DAPI, CD3, CD8``, or another
        number: ``"fluorescence"``); a stain name; or a module from
        :func:`histoexpr.pp.augmentations`.
    image_key
        Image to read the tiles from; defaults to the one they were cut from.
    cache
        Keep every tile in memory (float16), so that later epochs read no image (about
        ``6 * size_px**2`` bytes per tile for RGB); the tiles are then read once before the first
        epoch, in their order on the slide. ``False`` reads them every epoch. Their memory is
        estimated first: a :class:`MemoryError` before any tile is kept when it exceeds
        ``hx.settings.max_memory`` (by default the memory available now).
        With ``hx.settings.n_workers > 0`` each loader worker keeps its own copy for one epoch
        only, so pass ``False`` there.
    checkpoint_dir
        Folder for the checkpoint written after every epoch (``pretrain_checkpoint.pt``; by
        the first process only under ``torchrun``); ``None`` writes none.
    resume
        Continue from the checkpoint in ``checkpoint_dir`` (start afresh where there is none).
        The checkpoint records what defines the run: the tiles (key, um/px, size, channels,
        number, and a digest of their centres and image), the starting encoder, the
        augmentations, ``cache``, ``seed`` and every training option but ``epochs``. A resume
        asking for others is refused with a :class:`ValueError` naming each (saved and asked),
        before anything is trained or written; so is a checkpoint of an earlier histoexpr,
        which lacks that record.
    overwrite
        Start afresh even though ``checkpoint_dir`` holds a checkpoint, replacing it (only a
        checkpoint written there by :func:`pretrain` and unchanged since: each records the
        digest of its contents and path; any other file there, a link, or a checkpoint
        changed, copied or moved there since is never replaced, nor resumed).
    device
        Torch device; ``None`` uses ``hx.settings.device``.
    seed
        Random seed; ``None`` uses ``hx.settings.seed``.

    Returns
    -------
    The pretrained :class:`~histoexpr.models.TileEncoder` in evaluation mode. Its ``metadata``
    holds ``mpp``, ``size_px``, ``channels``, ``stain``, ``normalisation``, ``augmentations``
    (the pipeline's spec), ``method`` and ``pretraining`` (options, loss per epoch, seconds);
    save it with :func:`histoexpr.io.save_model` and use it with :func:`histoexpr.tl.embed`.

    Notes
    -----
    The encoders end in a global average, so the tiles they describe may be larger than those
    they were pretrained on, as long as the pixel size is the same. On her2st, pretraining on
    48 um tiles at 1 um/px and describing each spot by a 192 um tile at 1 um/px beat both the
    same setting at 3 um/px and squidpy's features (``benchmarks/README.md``).

    Several processes (``torchrun --nproc_per_node=4 script.py``, the script calling
    ``hx.tl.pretrain``): a contrastive loss depends on the whole batch, since the other tiles
    of the batch are the negatives. Each process therefore gathers the projections of every
    process (:func:`torch.distributed.nn.functional.all_gather`, which keeps the gradients),
    as SimCLR implementations do: SimCLR compares its views with all ``2 * batch_size`` views,
    MoCo enqueues the keys of the whole batch. With deterministic views and without batch
    normalisation statistics, two gloo processes give the weights of one process to float
    rounding (``tests/test_pretrain.py`` asserts ``rtol=1e-4``). Two things still differ from
    one process: the random views are drawn by each process from its own random stream
    (``seed`` plus the process's rank), and on CPUs batch normalisation computes statistics
    over the process's share of the batch; on GPUs the learner's batch normalisation layers
    become :class:`torch.nn.SyncBatchNorm`, whose statistics cover the global batch (the
    returned encoder has plain batch normalisation again).

    """
    check_bool("overwrite", overwrite)
    check_bool("cache", cache)
    check_bool("resume", resume)
    if checkpoint_dir is not None:
        _check_checkpoint_dir(checkpoint_dir)
    from torch.utils.data import ConcatDataset

    from ..._core.image_facts import stain_of
    from ...models import ContrastiveLearner
    from ...pp import CachedDataset, TileDataset, augmentations

    sections = list(as_sections(data).values())
    datasets = [TileDataset(sdata, tiles_key, image_key=image_key) for sdata in sections]
    geometry = _common_geometry(sections, datasets)
    tiles = CachedDataset(ConcatDataset(datasets)) if cache else ConcatDataset(datasets)
    _check_options(len(tiles), method, epochs, batch_size, queue_size, schedule, warmup)
    device = resolve_device(device)
    ctx = _distributed.context(device)  # a torchrun process group, if any
    world = 1 if ctx is None else ctx.world_size
    if batch_size % world:
        raise ValueError(
            f"batch_size ({batch_size}) is split among {world} processes, so it must be a "
            f"multiple of {world}: pass batch_size={batch_size - batch_size % world or world}.")
    if ctx is not None:
        device = _distributed.process_device(device, ctx)
    seed = resolve_seed(seed)
    seed_everything(seed)
    start = _starting_encoder(encoder, geometry["channels"])
    learner = ContrastiveLearner(
        encoder=start.get_config(), method=method, projection_dim=projection_dim,
        temperature=temperature, queue_size=queue_size, momentum=momentum)
    for part in (learner.encoder, getattr(learner, "key_encoder", None)):
        if part is not None:
            part.load_state_dict(start.state_dict())
    stain = augment if isinstance(augment, str) else stain_of(geometry["channels"])
    if augment is None or isinstance(augment, str):
        views = augmentations(stain, size_px=geometry["size_px"])
    else:
        views = augment
    learner.to(device)
    if _CHANNELS_LAST:
        learner.to(memory_format=torch.channels_last)
    views.to(device)
    if ctx is not None and torch.device(device).type == "cuda":
        # batch statistics over the global batch, as SimCLR's global batch normalisation
        learner = torch.nn.SyncBatchNorm.convert_sync_batchnorm(learner)
    optimiser = torch.optim.AdamW([p for p in learner.parameters() if p.requires_grad],
                                  lr=lr, weight_decay=weight_decay)
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    # what defines the run, recorded in its checkpoint and checked before it is resumed
    run = None if path is None else _run_record(
        encoder=encoder, method=method, tiles_key=tiles_key, sections=sections,
        datasets=datasets, geometry=geometry, n_tiles=len(tiles), batch_size=batch_size, lr=lr,
        schedule=schedule, warmup=warmup, weight_decay=weight_decay, temperature=temperature,
        queue_size=queue_size, momentum=momentum, projection_dim=projection_dim, seed=seed,
        augmentations=getattr(views, "spec", [{"name": type(views).__name__}]), cache=cache)
    state = _restore_or_start(path, learner, optimiser, resume=resume, overwrite=overwrite,
                              run=run)
    if cache and ctx is None and not settings.n_workers and state["epoch"] < epochs:
        # read here, not by loader workers, in the tiles' order (a shuffled first epoch decodes
        # the slides' chunks again and again); the memory of keeping them is checked first
        tiles.fill(desc="reading pretraining tiles")
    if state["normalisation"] is None:
        state["normalisation"] = _estimate_normalisation(tiles, seed)
    mean, std = (torch.as_tensor(state["normalisation"][k], device=device).reshape(1, -1, 1, 1)
                 for k in ("mean", "std"))
    if ctx is not None and ctx.rank > 0:  # views of this process's tiles: its own random stream
        torch.manual_seed(seed + 1_000_003 * ctx.rank + state["epoch"])

    steps_per_epoch = len(tiles) // batch_size
    scheduler = _scheduler(optimiser, epochs * steps_per_epoch, schedule, warmup,
                           done=state["epoch"] * steps_per_epoch)

    def contrastive_loss(network, batch: dict[str, Any]) -> torch.Tensor:
        images = batch["image"]
        pairs = (views(torch.cat([images, images])) - mean) / std  # views drawn independently
        if _CHANNELS_LAST:
            pairs = pairs.contiguous(memory_format=torch.channels_last)
        return network(*pairs.chunk(2))

    clock = [time.perf_counter()]

    def after_epoch(epoch: int, history: dict[str, Any]) -> None:
        now = time.perf_counter()
        state["epoch"], state["seconds"] = epoch + 1, state["seconds"] + now - clock[0]
        state["loss"].append(history["train_loss"][-1])
        if ctx is None or ctx.is_main:
            logger.info("pretrain (%s): epoch %d/%d, loss %.4f", method, epoch + 1, epochs,
                        state["loss"][-1])
        if path is not None and (ctx is None or ctx.is_main):
            _save_checkpoint(path, learner, optimiser, state, run)
        clock[0] = time.perf_counter()

    # the generators were seeded above (or restored from the checkpoint): train keeps them
    train(learner, _EpochBatches(tiles, batch_size, seed, state["epoch"], device, cache), None,
          contrastive_loss, epochs=epochs, patience=None, device=device, seed=seed,
          desc=f"pretrain ({method})", optimiser=optimiser, scheduler=scheduler,
          first_epoch=state["epoch"], on_epoch=after_epoch, reseed=False)

    network = learner.encoder.eval()
    if _CHANNELS_LAST:  # the encoder is handed back in the usual layout
        network.to(memory_format=torch.contiguous_format)
    if ctx is not None and torch.device(device).type == "cuda":  # plain batch normalisation
        plain = type(network)(**network.get_config())
        plain.load_state_dict(network.state_dict())
        network = plain.to(device).eval()
    network.metadata = {
        **{key: geometry[key] for key in ("mpp", "size_px", "size_um", "channels")},
        "stain": stain,
        "normalisation": state["normalisation"],
        "augmentations": getattr(views, "spec", [{"name": type(views).__name__}]),
        "method": method,
        "pretraining": {
            "tiles_key": tiles_key, "n_sections": len(sections), "n_tiles": len(tiles),
            "epochs": state["epoch"], "batch_size": batch_size, "lr": lr,
            "schedule": schedule, "warmup": warmup if schedule == "cosine" else None,
            "weight_decay": weight_decay, "temperature": temperature,
            "queue_size": queue_size if method == "moco" else None,
            "momentum": momentum if method == "moco" else None,
            "projection_dim": projection_dim, "seed": seed, "loss": state["loss"],
            "processes": world,
            "seconds": round(state["seconds"], 3),
        },
    }
    return network


def _check_checkpoint_dir(checkpoint_dir: Any) -> None:
    """Refuse, before any training, a ``checkpoint_dir`` that is not a folder and cannot be one.

    It is a folder, or it can be made: the nearest part of it that exists is a folder this
    process may write in. Nothing is made here (the first checkpoint makes the folder).
    """
    import os

    if not isinstance(checkpoint_dir, str | Path):
        raise TypeError(f"checkpoint_dir must be a folder (a str or Path), got "
                        f"{checkpoint_dir!r} ({type(checkpoint_dir).__name__}); pass a folder, "
                        "or None to write no checkpoint.")
    folder = Path(checkpoint_dir).expanduser()
    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "is a file" if existing == folder else f"lies under the file {existing}"
        raise NotADirectoryError(
            f"checkpoint_dir={str(checkpoint_dir)!r} {what}, not a folder: the checkpoint "
            f"({CHECKPOINT_NAME}) is written into a folder. Pass a folder (it is made if "
            "absent), or None to write no checkpoint. Nothing was trained or written.")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"checkpoint_dir={str(checkpoint_dir)!r} cannot be written: this process may not "
            f"write in {existing}. Pass a folder you may write in, or None to write no "
            "checkpoint. Nothing was trained or written.")


def _scheduler(optimiser, total: int, schedule: str, warmup: float, *, done: int = 0):
    """The learning-rate schedule from :mod:`torch.optim.lr_scheduler`, ``done`` steps in.

    ``"cosine"``: the share of the peak rate rises linearly as ``(step + 1) / (warm + 1)`` over
    the ``warm = int(warmup * total)`` first steps (:class:`~torch.optim.lr_scheduler.LinearLR`),
    then follows a half cosine to zero by the last step
    (:class:`~torch.optim.lr_scheduler.CosineAnnealingLR`). ``"constant"``: no schedule.
    """
    import warnings

    from torch.optim import lr_scheduler

    if schedule == "constant":
        return None
    warm = int(warmup * total)
    for group in optimiser.param_groups:  # a restored optimiser holds its last rate: restart
        group["lr"] = group.get("initial_lr", group["lr"])
    cosine = lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, total - warm), eta_min=0.0)
    if warm == 0:
        scheduler = cosine
    else:
        linear = lr_scheduler.LinearLR(optimiser, start_factor=1 / (warm + 1), end_factor=1.0,
                                       total_iters=warm)
        scheduler = lr_scheduler.SequentialLR(optimiser, [linear, cosine], milestones=[warm])
    with warnings.catch_warnings():  # a resumed run replays its steps without optimiser steps
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done):
            scheduler.step()
    return scheduler


class _EpochBatches:
    """Re-iterable batches: each pass is the next epoch's loader, in the order of its seed."""

    def __init__(self, tiles, batch_size: int, seed: int, first_epoch: int, device: str,
                 cache: bool) -> None:
        self.tiles, self.batch_size, self.seed, self.device, self.cache = (
            tiles, batch_size, seed, device, cache)
        self.epoch = first_epoch

    def __len__(self) -> int:
        return len(self.tiles) // self.batch_size

    def next_loader(self):
        """The next epoch's DataLoader.

        Under DDP the training loop splits it among the processes, so that each process reads
        only its share of every batch.
        """
        loader = _loader(self.tiles, self.batch_size, self.seed + self.epoch, self.device,
                         self.cache)
        self.epoch += 1
        return loader

    def __iter__(self):
        return iter(self.next_loader())


def _loader(tiles, batch_size: int, seed: int, device: str, cache: bool):
    """Shuffled batches in an order fixed by the epoch's seed (a resumed run repeats it).

    Cached tiles are read in the main process unless ``hx.settings.n_workers`` asks for workers
    (each worker would keep its own cache, for one epoch only).
    """
    from torch.utils.data import DataLoader

    options = loader_options(device)
    if cache and settings.n_workers is None:
        options.update(num_workers=0, persistent_workers=False)
    return DataLoader(tiles, batch_size=batch_size, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(seed), **options)


def _common_geometry(sections: list, datasets: list) -> dict[str, Any]:
    """Tile size, um/px and channel names, which every section must share."""
    from ..._core.image import image_levels

    geometries = []
    for sdata, dataset in zip(sections, datasets, strict=True):
        channels = image_levels(sdata, dataset.image_key)[0].data.coords["c"].values
        geometries.append({"mpp": dataset.mpp, "size_px": dataset.size_px,
                           "size_um": dataset.size_um, "channels": [str(c) for c in channels]})
    for i, other in enumerate(geometries[1:], start=1):
        differing = [k for k in ("mpp", "size_px") if not np.isclose(other[k], geometries[0][k])]
        if differing or len(other["channels"]) != len(geometries[0]["channels"]):
            raise ValueError(
                f"Section {i} has tiles of another kind than section 0 ({other} vs "
                f"{geometries[0]}); tile every section with the same size and mpp, from images "
                "with the same channels.")
    return geometries[0]


def _starting_encoder(encoder: Any, channels: list[str]):
    from ...io import load_model
    from ...models import TileEncoder

    if isinstance(encoder, str) and not encoder.endswith(".pt"):
        return TileEncoder(arch=encoder, in_channels=len(channels))
    network = load_model(encoder, device="cpu") if isinstance(encoder, (str, Path)) else encoder
    if not isinstance(network, TileEncoder):
        raise TypeError(f"encoder must be a TileEncoder architecture name, a TileEncoder or its "
                        f"model file, got {type(network).__name__}.")
    if network.in_channels != len(channels):
        raise ValueError(
            f"The encoder takes {network.in_channels}-channel tiles, but the image has "
            f"{len(channels)} channel(s) {channels}. Pass encoder='small_cnn' (or another "
            "architecture) to build one for this image, or tile an image with "
            f"{network.in_channels} channels.")
    return network


def _check_options(n_tiles: int, method: str, epochs: int, batch_size: int,
                   queue_size: int, schedule: str, warmup: float) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; choose one of {SCHEDULES}.")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup is a share of the steps, in [0, 1); got {warmup}.")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (contrastive pairs need negatives), "
                         f"got {batch_size}.")
    if n_tiles < batch_size:
        raise ValueError(
            f"Only {n_tiles} tiles for a batch of {batch_size}: lower batch_size, cut smaller "
            "tiles (hx.pp.tile) or add sections.")
    if method == "moco" and queue_size < batch_size:
        raise ValueError(f"queue_size ({queue_size}) must be at least batch_size ({batch_size}).")


def _estimate_normalisation(tiles, seed: int) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of the pixels of a random sample of tiles."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(tiles), size=min(len(tiles), _NORMALISATION_SAMPLE), replace=False)
    images = torch.stack([tiles[int(i)]["image"] for i in picked])
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp(min=0.02)
    return {"mean": [round(float(v), 5) for v in mean], "std": [round(float(v), 5) for v in std]}


def _run_record(*, encoder: Any, method: str, tiles_key: str, sections: list, datasets: list,
                geometry: dict[str, Any], n_tiles: int, batch_size: int, lr: float,
                schedule: str, warmup: float, weight_decay: float, temperature: float,
                queue_size: int, momentum: float, projection_dim: int, seed: int,
                augmentations: Any, cache: bool) -> dict[str, Any]:
    """The options that define a pretraining run, as its checkpoint records them (plain values).

    A resumed run must ask for the same ones (:func:`_check_run`); only ``epochs`` may differ
    (resuming to more epochs is the point). The tiles are identified by their key, geometry and
    number, and a digest of every section's tile centres, image key and image
    (:func:`_tiles_digest`); the starting encoder by its name, or the digest of its file or
    weights (:func:`histoexpr.tl._features._embed.encoder_fingerprint`). Options a method or a
    schedule does not use (MoCo's queue and momentum under SimCLR, the warmup of a constant
    schedule) are recorded as ``None``. ``cache`` is recorded because cached tiles are kept in
    float16, which rounds their pixels.
    """
    import json

    from ._embed import encoder_fingerprint

    record = {
        "method": method, "encoder": encoder_fingerprint(encoder),
        "tiles_key": tiles_key, "n_sections": len(sections), "n_tiles": int(n_tiles),
        "tiles_digest": _tiles_digest(sections, datasets, tiles_key),
        **{key: geometry[key] for key in ("mpp", "size_px", "size_um", "channels")},
        "batch_size": batch_size, "lr": lr, "schedule": schedule,
        "warmup": warmup if schedule == "cosine" else None, "weight_decay": weight_decay,
        "temperature": temperature, "queue_size": queue_size if method == "moco" else None,
        "momentum": momentum if method == "moco" else None, "projection_dim": projection_dim,
        "seed": seed, "augmentations": augmentations, "cache": bool(cache),
    }
    return json.loads(json.dumps(record, default=str))  # as stored, so that equal compares equal


def _tiles_digest(sections: list, datasets: list, tiles_key: str) -> str:
    """A digest (16 hex digits) of which tiles a run reads, in their order, without reading any.

    Per section: the image key, its :func:`histoexpr._core.image_facts.image_fingerprint` (shape,
    pixel size, offset and sampled pixels) and the tile centres (``obsm["spatial"]``).
    """
    import hashlib

    from ..._core.image_facts import image_fingerprint

    digest = hashlib.sha256()
    for sdata, dataset in zip(sections, datasets, strict=True):
        centres = np.ascontiguousarray(sdata.tables[f"{tiles_key}_table"].obsm["spatial"],
                                       dtype=np.float64)
        digest.update(f"{dataset.image_key}\0{image_fingerprint(sdata, dataset.image_key)}\0"
                      f"{centres.shape}\0".encode())
        digest.update(centres.tobytes())
    return digest.hexdigest()[:16]


def _check_run(path: Path, saved: Any, run: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint made by another run, naming each option that differs."""
    again = ("Pass the same options (and tiles) to continue it, or overwrite=True (or another "
             "checkpoint_dir) to start afresh.")
    if not isinstance(saved, dict):
        raise ValueError(
            f"The checkpoint {path} does not record the options and tiles it was made with "
            "(written by an earlier histoexpr), so histoexpr cannot check that this run "
            "continues it and does not resume it. Pass overwrite=True (or another "
            "checkpoint_dir) to start afresh.")
    differing = [f"{key}: saved {saved.get(key)!r}, asked {run.get(key)!r}"
                 for key in sorted(set(saved) | set(run)) if saved.get(key) != run.get(key)]
    if differing:
        raise ValueError(
            f"The checkpoint in {path.parent} was made by another run than the one asked now "
            f"({'; '.join(differing)}); only epochs may differ. {again}")


def _save_checkpoint(path: Path, learner, optimiser, state: dict[str, Any],
                     run: dict[str, Any] | None = None) -> None:
    """Write the checkpoint whole or not at all (a run killed while writing keeps the last one).

    ``run`` (:func:`_run_record`) is what made it, checked before it is resumed.
    """
    if not left_here(path):  # as the last epoch left it, or checked
        check_replaceable(path, written_by="hx.tl.pretrain",
                          ours=lambda p: payload_found(p, CHECKPOINT_FORMAT))
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT, "learner_config": learner.get_config(), "run": run,
        "learner": learner.state_dict(), "optimiser": optimiser.state_dict(),
        "state": state, "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    payload["seal"] = seal_of(content_digest(payload), path)
    with written_beside(path) as partial:
        torch.save(payload, partial)


def _restore_or_start(path: Path | None, learner, optimiser, *, resume: bool,
                      overwrite: bool, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The state to start from: afresh, or the checkpoint's (after checking it is this run's).

    A checkpoint is resumed only when it was made by the same ``run`` (:func:`_check_run`,
    before anything is loaded, trained or written); one without that record (an earlier
    histoexpr's) is refused.
    """
    fresh = {"epoch": 0, "loss": [], "seconds": 0.0, "normalisation": None}
    if path is None:
        if resume:
            raise ValueError("resume=True needs the checkpoint_dir of the run to continue.")
        return fresh
    if not path.exists():
        if resume:
            logger.info("No checkpoint in %s yet: pretraining starts afresh.", path.parent)
        return fresh
    if not resume:
        if not overwrite:
            raise FileExistsError(
                f"{path} holds a pretraining checkpoint. Pass resume=True to continue it, "
                "overwrite=True to start afresh, or another checkpoint_dir.")
        check_replaceable(path, written_by="hx.tl.pretrain",
                          ours=lambda p: payload_found(p, CHECKPOINT_FORMAT))
        return fresh
    from ..._core.torch_files import load_weights_only

    if path.is_symlink():  # resumed, it would be replaced by a file after the first epoch
        check_replaceable(path, written_by="hx.tl.pretrain", ours=lambda p: None)
    # torch's own errors (with their advice to load with weights_only=False) never reach users
    payload = load_weights_only(path, what="pretraining checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a histoexpr pretraining checkpoint.")
    found = Found(payload.pop("seal", None), content_digest(payload))
    check_replaceable(path, written_by="hx.tl.pretrain", ours=lambda p: found)  # as written
    saved, wanted = payload["learner_config"], learner.get_config()
    if saved["method"] != wanted["method"]:
        raise ValueError(
            f"The checkpoint in {path.parent} is from method={saved['method']!r}, but this run "
            f"asks for method={wanted['method']!r}. Pass method={saved['method']!r} to continue "
            "it, or another checkpoint_dir.")
    if saved["encoder"] != wanted["encoder"]:
        raise ValueError(
            f"The checkpoint in {path.parent} trains a {saved['encoder']} encoder, but this run "
            f"builds a {wanted['encoder']} one. Pass the same encoder to continue it, or "
            "another checkpoint_dir.")
    _check_run(path, payload.get("run"), run)
    differing = {k: (saved[k], wanted[k]) for k in wanted if saved.get(k) != wanted[k]}
    if differing:
        raise ValueError(f"The checkpoint in {path.parent} was made with other options "
                         f"(saved, asked): {differing}. Pass the same ones to continue it.")
    learner.load_state_dict(payload["learner"])
    optimiser.load_state_dict(payload["optimiser"])
    torch.set_rng_state(payload["rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    logger.info("Resuming pretraining from epoch %d (%s).", payload["state"]["epoch"], path)
    return payload["state"]
