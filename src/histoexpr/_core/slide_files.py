"""Slide files read lazily: a picklable pyramid level that opens (and reopens) its TIFF file.

:func:`histoexpr.io.read_wsi` gives each pyramid level of a TIFF slide as a dask array over a
:class:`TiffLevel`. The level holds the file's path and identity (size and modification time),
not the open file: each process opens the file once, on the first tile it reads, and keeps it
in one table (:func:`close_slide_file` closes it, a later read opens it again). So a lazily read
slide can be computed by dask workers in other processes (a ``distributed.Client``), written
by spatialdata while a cluster is the default scheduler, and closed when a task is done, without
reaching into the reader's internals. A file changed since it was read is refused, not read.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["TiffLevel", "close_slide_file", "file_identity", "open_slide_files"]

#: the TIFF files this process has open: {(path, identity): tifffile.TiffFile}
_OPEN: dict[tuple[str, tuple[int, int]], Any] = {}
_LOCK = threading.Lock()


def file_identity(path: str | Path) -> tuple[int, int]:
    """The file's size and modification time (ns): what tells a changed file apart."""
    stat = os.stat(path)
    return int(stat.st_size), int(stat.st_mtime_ns)


def _register(path: str, identity: tuple[int, int], tif: Any) -> Any:
    """Keep ``tif`` as this process's open copy of ``path`` (an open one is kept instead)."""
    with _LOCK:
        kept = _OPEN.setdefault((path, identity), tif)
    if kept is not tif:
        tif.close()
    return kept


def _open(path: str, identity: tuple[int, int]) -> Any:
    """The ``TiffFile`` of ``path`` open in this process (opened if needed, checked unchanged)."""
    import tifffile

    with _LOCK:
        tif = _OPEN.get((path, identity))
    if tif is not None and not tif.filehandle.closed:
        return tif
    try:
        now = file_identity(path)
    except OSError as error:
        raise FileNotFoundError(
            f"The slide file {path!r} read lazily by read_wsi cannot be opened here ({error}). "
            "Its pixels are read when computed: keep the file where it was (on a path every "
            "dask worker reaches), or read the slide again."
        ) from error
    if now != identity:
        raise ValueError(
            f"The slide file {path!r} changed since read_wsi read it (size and modification "
            "time differ), so its pixels no longer match what was read. Read the slide again "
            "with hx.io.read_wsi."
        )
    tif = tifffile.TiffFile(path)
    if hasattr(tif.filehandle, "set_lock"):
        tif.filehandle.set_lock(True)  # dask reads tiles from several threads
    return _register(path, identity, tif)  # another thread's, where it opened it first


def close_slide_file(path: str | Path) -> None:
    """Close this process's open copy of the slide file ``path`` (a later read reopens it)."""
    key = os.path.abspath(os.fspath(path))
    with _LOCK:
        closing = [k for k in _OPEN if k[0] == key]
        files = [_OPEN.pop(k) for k in closing]
    for tif in files:
        tif.close()


def open_slide_files() -> list[str]:
    """The slide files this process holds open (for tests and checks)."""
    with _LOCK:
        return sorted({path for (path, _), tif in _OPEN.items() if not tif.filehandle.closed})


class TiffLevel:
    """One pyramid level of a TIFF slide as an array dask can read from, tile by tile.

    ``shape``, ``dtype`` and ``chunks`` (the file's tiles) are those of tifffile's zarr view
    of the level; indexing reads the tiles it touches. Pickled, it keeps the path and the
    file's identity only.
    """

    def __init__(self, tif: Any, path: str | Path, *, series: int = 0, level: int = 0) -> None:
        self.path = self.path_of(path)
        self.identity = file_identity(self.path)
        self.series, self.level = int(series), int(level)
        _register(self.path, self.identity, tif)
        array = self._zarr()
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.ndim = len(self.shape)
        self.chunks = tuple(array.chunks)

    @staticmethod
    def path_of(path: str | Path) -> str:
        """The path a level keeps: absolute, so a worker elsewhere finds the same file."""
        return os.path.abspath(os.fspath(path))

    def _zarr(self) -> Any:
        import zarr

        tif = _open(self.path, self.identity)
        cached = self.__dict__.get("_cached")
        if cached is not None and cached[0] is tif:
            return cached[1]
        store = tif.series[self.series].aszarr(level=self.level)
        array = zarr.open(store, mode="r")
        self._cached = (tif, array)  # this process's view; reopened after a close
        return array

    def __getitem__(self, index: Any) -> Any:
        return self._zarr()[index]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cached"}  # no open file

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (f"TiffLevel({Path(self.path).name!r}, series={self.series}, level={self.level}, "
                f"shape={self.shape})")

    def as_dask(self) -> Any:
        """The level as a lazy dask array in the file's tiles, named by file, identity, level."""
        import dask.array as da
        import numpy as np
        from dask.base import tokenize

        name = "tiff-" + tokenize(self.path, self.identity, self.series, self.level)
        return da.from_array(self, chunks=self.chunks, name=name, asarray=True, fancy=False,
                             lock=False,
                             meta=np.empty((0,) * self.ndim, dtype=self.dtype))
