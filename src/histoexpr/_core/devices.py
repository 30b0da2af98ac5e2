"""How work runs on a device: mixed precision, data-loader options, memory format.

A small internal API shared by the rooms that run networks (``tl`` trains, embeds and
predicts; ``pp`` builds the datasets). Everything here follows ``hx.settings`` and is chosen so
that a CPU run with the default settings is what it was before GPUs were considered: fp32,
tiles read in the main process. Inference (:func:`inference_network`) folds batch
normalisation into the convolutions before it and runs CNNs in channels-last layout on every
device: the features equal those of the network as it is to float32 rounding, about twice as
fast on a CPU.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .._settings import settings
from .logs import logger

#: most loader workers chosen automatically for one GPU (more rarely helps reading tiles)
MAX_AUTO_WORKERS = 8


@dataclass
class Precision:
    """The arithmetic of a run: an autocast type (``None``: fp32) and, for fp16, a grad scaler."""

    name: str
    device_type: str
    dtype: torch.dtype | None
    scaler: Any = None


def resolve_precision(device: str, precision: str | None = None) -> Precision:
    """What ``precision`` (``None``: ``hx.settings.precision``) means on ``device``.

    ``"auto"`` is bf16 autocast on a CUDA device that supports it, fp16 autocast with a gradient
    scaler on older CUDA devices, and fp32 elsewhere (CPU, MPS).
    """
    name = settings.precision if precision is None else precision
    device_type = torch.device(device).type
    if name == "auto":
        if device_type != "cuda":
            name = "fp32"
        else:
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif name == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16' but {device} does not support bfloat16; set "
                         "hx.settings.precision = 'fp16' (or 'auto', which picks it).")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    scaler = None
    if name == "fp16":
        scaler = torch.amp.GradScaler(device_type)
    return Precision(name=name, device_type=device_type, dtype=dtype, scaler=scaler)


@contextlib.contextmanager
def autocast(precision: Precision | None) -> Iterator[None]:
    """Autocast to ``precision.dtype`` (nothing for fp32 or ``None``)."""
    if precision is None or precision.dtype is None:
        yield
        return
    with torch.autocast(precision.device_type, dtype=precision.dtype):
        yield


#: while a CPU trains or embeds, glibc's malloc serves blocks up to this size from its heap
#: and keeps up to this much free at its top (mallopt takes a C int: at most 2**31 - 1)
HEAP_BLOCK_BYTES = 2**30
#: glibc's M_MMAP_THRESHOLD grows by itself up to this (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
_GLIBC_MAX_DYNAMIC_THRESHOLD = 32 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP = {"depth": 0, "libc": None}
_HEAP_LOCK = threading.Lock()


@contextlib.contextmanager
def reused_host_memory(device: str) -> Iterator[None]:
    """Keep large freed blocks in the process's heap while a CPU trains or embeds.

    glibc's ``malloc`` maps every block above 32 MiB afresh from the kernel and unmaps it when
    it is freed, so a network whose activations are that large (the small CNN's first block on
    a batch of 128 views of 48 px is 38 MiB) has the kernel fault in and zero its pages again at
    every step: on that SimCLR step, about 18,000 page faults and 0.04 CPU s of system time, a
    tenth of the step. Inside this context, blocks up to :data:`HEAP_BLOCK_BYTES` come from the
    heap and stay there for reuse (glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``); on
    leaving the outermost one, they are set to where glibc's own adjustment takes them in a
    process that has freed such blocks (32 MiB and 64 MiB: setting them stops that adjustment,
    and leaving them at their starting 128 KiB would map every block above it afresh) and the
    freed memory is returned to the system (``malloc_trim``). The numbers computed do not
    change, only where their memory comes from. Nothing is changed on other devices or on other
    C libraries (macOS, Windows, musl).
    """
    if torch.device(device).type != "cpu" or not _enter_heap():
        yield
        return
    try:
        yield
    finally:
        _leave_heap()


def _glibc():
    """The C library's ``mallopt`` and ``malloc_trim`` where it is glibc, else ``None``."""
    if _HEAP["libc"] is None:
        _HEAP["libc"] = False
        try:
            import ctypes
            import platform

            if platform.libc_ver()[0] == "glibc":
                libc = ctypes.CDLL("libc.so.6")
                _HEAP["libc"] = libc if hasattr(libc, "mallopt") else False
        except (OSError, AttributeError):  # pragma: no cover - no glibc here
            pass
    return _HEAP["libc"] or None


def _enter_heap() -> bool:
    libc = _glibc()
    if libc is None:
        return False
    with _HEAP_LOCK:
        if _HEAP["depth"] == 0:
            if not (libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)
                    and libc.mallopt(_M_TRIM_THRESHOLD, HEAP_BLOCK_BYTES)):
                _restore_glibc(libc)  # refused (an older glibc): set back as on leaving
                return False
        _HEAP["depth"] += 1
    return True


def _leave_heap() -> None:
    libc = _glibc()
    with _HEAP_LOCK:
        _HEAP["depth"] -= 1
        if _HEAP["depth"] == 0:
            _restore_glibc(libc)


def _restore_glibc(libc) -> None:
    libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MAX_DYNAMIC_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_MAX_DYNAMIC_THRESHOLD)
    libc.malloc_trim(0)


def backward_and_step(loss: torch.Tensor, optimiser: torch.optim.Optimizer,
                      precision: Precision | None) -> None:
    """Back-propagate ``loss`` and step the optimiser (through the grad scaler for fp16)."""
    scaler = None if precision is None else precision.scaler
    if scaler is None:
        loss.backward()
        optimiser.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimiser)
    scaler.update()


def resolve_workers(device: str) -> int:
    """Loader worker processes for ``device``.

    ``hx.settings.n_workers``, or when it is ``None`` (automatic) none on a CPU (reading in the
    main process keeps CPU runs as they were) and, on a GPU, one fewer than this process's share
    of the CPUs, at most :data:`MAX_AUTO_WORKERS`. None at all in a daemonic process (a dask
    worker, a worker of a ``multiprocessing`` pool): it may not start processes of its own, so
    a DataLoader with workers would fail there ("daemonic processes are not allowed to have
    children"); the tiles are read in the process itself.
    """
    if settings.n_workers is not None:
        workers = settings.n_workers
    elif torch.device(device).type != "cuda":
        workers = 0
    else:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        share = (os.cpu_count() or 1) // max(1, local_processes)
        workers = int(min(MAX_AUTO_WORKERS, max(0, share - 1)))
    if workers and multiprocessing.current_process().daemon:
        logger.debug("Reading tiles in this process, not in %d loader workers: it is a daemonic "
                     "process (a dask worker?), which cannot start processes.", workers)
        return 0
    return workers


def loader_options(device: str, *, reads_images: bool = True) -> dict[str, Any]:
    """Keyword arguments of a :class:`~torch.utils.data.DataLoader` feeding ``device``.

    Page-locked (pinned) batches when the device is a GPU, so that copies overlap compute; worker
    processes (:func:`resolve_workers`) only for datasets that read images (arrays already in
    memory gain nothing from workers).
    """
    workers = resolve_workers(device) if reads_images else 0
    return {"num_workers": workers, "persistent_workers": workers > 0,
            "pin_memory": torch.device(device).type == "cuda"}


def use_channels_last(network: torch.nn.Module, device: str) -> bool:
    """Whether to run ``network`` in channels-last memory format.

    CNNs on CUDA only (tensor cores read NHWC directly); on a CPU the default layout is kept, so
    results stay the same.
    """
    if torch.device(device).type != "cuda":
        return False
    return any(isinstance(module, torch.nn.Conv2d) for module in network.modules())


def inference_network(network: torch.nn.Module, device: str) -> tuple[torch.nn.Module, bool]:
    """``network`` on ``device`` ready for inference, and whether it runs channels-last.

    A CNN with batch normalisation (a ``Conv2d`` directly followed by a ``BatchNorm2d`` inside
    an ``nn.Sequential``, as in ``TileEncoder(arch="small_cnn")``) is copied, each such pair
    becomes one convolution (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`: the running
    statistics and affine parameters folded into the weights and bias) and the copy runs in
    channels-last layout on every device: its outputs equal the network's in eval mode to
    float32 rounding, about twice as fast on a CPU. The caller's network is then not changed.
    Any other network is moved to ``device`` and put in eval mode as it is (channels-last on a
    GPU only, :func:`use_channels_last`), without a copy (a foundation model is not duplicated
    in memory); the caller restores its layout after.
    """
    if not _conv_bn_pairs(network):
        network = network.to(device).eval()
        channels_last = use_channels_last(network, device)
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        return network, channels_last
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    copied = copy.deepcopy(network).eval()
    for sequence, first, second in _conv_bn_pairs(copied):
        sequence._modules[first] = fuse_conv_bn_eval(sequence._modules[first],
                                                     sequence._modules[second])
        sequence._modules[second] = torch.nn.Identity()
    return copied.to(device).to(memory_format=torch.channels_last), True


def _conv_bn_pairs(network: torch.nn.Module) -> list[tuple[torch.nn.Sequential, str, str]]:
    """(sequence, convolution's name, batch normalisation's name) of every foldable pair."""
    pairs = []
    for module in network.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if (isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d)
                    and norm.track_running_stats and norm.running_mean is not None
                    and norm.num_features == conv.out_channels):
                pairs.append((module, first, second))
    return pairs


#: tiles per forward pass when ``batch_size=None`` and the device is not a CUDA GPU
DEFAULT_BATCH_SIZE = 64
#: largest batch chosen from a GPU's memory (larger batches no longer speed up inference, and
#: every pinned batch in flight takes host memory too)
MAX_AUTO_BATCH_SIZE = 512
#: share of the GPU's free memory a chosen batch may take (the rest: the allocator's caching,
#: other processes, fragmentation)
AUTO_MEMORY_SHARE = 0.5
#: tiles of the probe batch that measures the memory a tile takes
PROBE_TILES = 8


def batch_size_for_memory(free_bytes: float, bytes_per_tile: float) -> int:
    """The rule of ``batch_size=None`` on a GPU, given free memory and the memory of one tile.

    ``AUTO_MEMORY_SHARE`` (half) of the free memory divided by the bytes one tile takes in a
    forward pass, rounded down to a multiple of 8 (at least 1; from 8 up) and at most
    ``MAX_AUTO_BATCH_SIZE`` (512).

    Examples
    --------
    >>> batch_size_for_memory(80e9, 40e6)  # 80 GB free, 40 MB a tile: capped
    512
    >>> batch_size_for_memory(2e9, 40e6)
    24
    """
    fits = int(AUTO_MEMORY_SHARE * free_bytes // max(1.0, bytes_per_tile))
    if fits >= 8:
        fits -= fits % 8
    return int(min(MAX_AUTO_BATCH_SIZE, max(1, fits)))


def auto_batch_size(network: torch.nn.Module, tile_shape: tuple[int, ...], device: str,
                    precision: Precision | None = None) -> int:
    """Tiles per forward pass of ``network`` (already on ``device``) for ``batch_size=None``.

    Not a CUDA GPU: :data:`DEFAULT_BATCH_SIZE` (64). A CUDA GPU: one probe batch of
    :data:`PROBE_TILES` zero tiles of ``tile_shape`` runs through the network (inference mode,
    in ``precision``) to measure the peak memory a tile takes (activations and input), and
    :func:`batch_size_for_memory` divides half the GPU's free memory
    (:func:`torch.cuda.mem_get_info`) by it, capped at 512.
    """
    if torch.device(device).type != "cuda":
        return DEFAULT_BATCH_SIZE
    per_tile = _cuda_bytes_per_tile(network, tile_shape, device, precision)
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return batch_size_for_memory(free, per_tile)


def _cuda_bytes_per_tile(network: torch.nn.Module, tile_shape: tuple[int, ...], device: str,
                         precision: Precision | None) -> float:
    """Peak memory of one tile's forward pass, measured on a probe batch."""
    cuda = torch.device(device)
    torch.cuda.synchronize(cuda)
    base = torch.cuda.memory_allocated(cuda)
    torch.cuda.reset_peak_memory_stats(cuda)
    probe = torch.zeros((PROBE_TILES, *tile_shape), device=cuda)
    if use_channels_last(network, device) and probe.ndim == 4:
        probe = probe.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(precision):
        network(probe)
    torch.cuda.synchronize(cuda)
    peak = torch.cuda.max_memory_allocated(cuda)
    del probe
    return max(1.0, (peak - base) / PROBE_TILES)
