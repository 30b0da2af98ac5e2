"""Bounds checked before work is spent: memory estimates and the content of files.

Every step that allocates in proportion to an argument (a pixel size, a stride, a window, a
network's configuration) estimates the bytes first with :func:`check_memory`, which refuses
with the estimate and the fix when they exceed the limit (``hx.settings.max_memory``, by default
the memory the machine has available now). :func:`file_fingerprint` identifies a file by its
content, cheaply, so that a file replaced by another of the same size is told apart.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .._settings import settings

#: files up to this size are hashed whole; larger ones by their head, tail and sampled blocks
WHOLE_FILE_BYTES = 64 * 2**20
_HEAD_BYTES = 4 * 2**20
_BLOCK_BYTES = 256 * 2**10
_N_BLOCKS = 64
#: without ``hx.settings.max_memory``, requests below this are not checked against the memory
#: available now (read tile by tile, the system's answer cost more than the reads)
UNCHECKED_BYTES = 2**20


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``"27.9 GiB"``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def available_memory() -> int:
    """The memory a step may allocate: ``hx.settings.max_memory``, else what is available now."""
    if settings.max_memory is not None:
        return int(settings.max_memory)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of most scientific stacks
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 2**63 - 1


def check_memory(n_bytes: float, what: str, fix: str) -> None:
    """Refuse, before allocating, a step that would need more than the memory limit.

    Parameters
    ----------
    n_bytes
        The estimate of what the step would allocate.
    what
        What would be allocated (``"detect_tissue on a 200000 x 200000 px image"``).
    fix
        What to do instead, named in the error.
    """
    if settings.max_memory is None and n_bytes < UNCHECKED_BYTES:
        return  # a tile's worth: asking the system would cost more than the allocation
    limit = available_memory()
    if n_bytes > limit:
        source = ("hx.settings.max_memory" if settings.max_memory is not None
                  else "the memory available now")
        raise MemoryError(
            f"{what} would allocate {format_bytes(n_bytes)}, more than the "
            f"{format_bytes(limit)} allowed ({source}). {fix}")


def file_fingerprint(path: str | Path) -> dict:
    """What identifies a file's content: its size and a BLAKE2 digest of its bytes.

    Files up to 64 MiB are hashed whole. Larger ones (slides of GiB) are hashed on their first
    and last 4 MiB (the TIFF headers, image descriptions and directories) and 64 blocks of 256
    KiB spread evenly over the rest, about 24 MiB read, so that a slide replaced by another of
    the same size (or re-scanned) is told apart without reading it all.
    """
    path = Path(path)
    stat = path.stat()
    size = stat.st_size
    # a file unchanged on disk since it was last hashed here is not read again
    key = (str(path.resolve()), size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
    if key in _FINGERPRINTS:
        return dict(_FINGERPRINTS[key])
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            how = "whole"
        else:
            step = (size - 2 * _HEAD_BYTES) // (_N_BLOCKS + 1)
            offsets = [0, *(_HEAD_BYTES + step * (i + 1) for i in range(_N_BLOCKS)),
                       size - _HEAD_BYTES]
            for offset in offsets:
                handle.seek(offset)
                digest.update(handle.read(_HEAD_BYTES if offset in (0, size - _HEAD_BYTES)
                                          else _BLOCK_BYTES))
            how = "sampled"
    result = {"bytes": size, "blake2b": digest.hexdigest(), "hashed": how}
    if len(_FINGERPRINTS) > 4096:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[key] = result
    return dict(result)


#: fingerprints of the files hashed in this process, by path and what ``stat`` says of them
_FINGERPRINTS: dict[tuple, dict] = {}
