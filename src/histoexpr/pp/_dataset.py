"""The torch dataset of tiles: the one bridge from a SpatialData to torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._core.image import image_levels, read_levels, to_unit_float
from .._core.ownership import require_element

if TYPE_CHECKING:
    from spatialdata import SpatialData

_TILE_KEYS = ("image_key", "size_px", "mpp", "size_um")
_ITEM_KEYS = ("image", "index")
#: what a kept item costs beyond its tensors' bytes (the dict, the tensor objects)
_ITEM_OVERHEAD_BYTES = 512


class TileDataset(Dataset):
    """The tiles of a section as a torch dataset, read lazily one tile at a time.

    Each item is read through :func:`histoexpr.io.read_region` at the tiles' pixel size, from the
    image and with the geometry recorded in the tile table's ``uns["tiles"]`` (written by
    :func:`histoexpr.pp.tile`). Only the image and the table's columns that are asked for are
    kept, so the dataset pickles cheaply and works with a
    :class:`~torch.utils.data.DataLoader` with ``num_workers > 0``.

    Parameters
    ----------
    sdata
        The section.
    tiles_key
        Key of the tiles in ``sdata.shapes``; their table is ``f"{tiles_key}_table"``.
    obs_keys
        Columns of the tile table's ``obs`` to return with each tile: numbers as tensors
        (float32 or int64), booleans as bool tensors, anything else (strings, categories) as it
        is.
    transform
        Applied to each image tensor ``(C, H, W)`` (e.g. augmentations or a normalisation).
    image_key
        Image to read the tiles from; defaults to ``uns["tiles"]["image_key"]``. Another image
        aligned with it in micrometres (e.g. ``"dapi"``) reads the same places.
    table_key
        Key of the tile table in ``sdata.tables``; defaults to ``f"{tiles_key}_table"``.

    Examples
    --------
    >>> hx.pp.tile(sdata, "he", size_px=224)
    >>> dataset = hx.pp.TileDataset(sdata, "he_tiles", obs_keys=["tissue_fraction"])
    >>> loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=2)
    >>> batch = next(iter(loader))
    >>> batch["image"].shape
    torch.Size([32, 3, 224, 224])
    """

    def __init__(
        self,
        sdata: SpatialData,
        tiles_key: str,
        *,
        obs_keys: Sequence[str] = (),
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        image_key: str | None = None,
        table_key: str | None = None,
    ) -> None:
        require_element(sdata, tiles_key, "shapes")
        table_key = f"{tiles_key}_table" if table_key is None else table_key
        require_element(sdata, table_key, "tables")
        table = sdata.tables[table_key]
        info = table.uns.get("tiles")
        if info is None or any(key not in info for key in _TILE_KEYS):
            raise ValueError(
                f"sdata.tables[{table_key!r}].uns['tiles'] must record {_TILE_KEYS}, as "
                "histoexpr.pp.tile writes it; make the tiles with hx.pp.tile."
            )
        if "spatial" not in table.obsm:
            raise ValueError(f"sdata.tables[{table_key!r}] has no obsm['spatial'] (tile centres).")
        if isinstance(obs_keys, str):
            obs_keys = [obs_keys]
        missing = [key for key in obs_keys if key not in table.obs.columns]
        if missing:
            raise KeyError(
                f"obs_keys {missing} are not columns of sdata.tables[{table_key!r}].obs; "
                f"available: {list(table.obs.columns)}."
            )
        clashes = [key for key in obs_keys if key in _ITEM_KEYS]
        if clashes:
            raise ValueError(
                f"obs_keys {clashes} clash with the item's own entries {_ITEM_KEYS}; copy the "
                "column under another name in the tile table's obs."
            )
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}.")

        self.image_key = str(info["image_key"]) if image_key is None else image_key
        require_element(sdata, self.image_key, "images")
        self.size_px = int(info["size_px"])
        self.mpp = float(info["mpp"])
        self.size_um = float(info["size_um"])
        self.obs_keys = tuple(obs_keys)
        self.transform = transform
        centres = np.asarray(table.obsm["spatial"], dtype=float)
        half = self.size_um / 2
        self._bounds = np.column_stack([centres - half, centres + half])
        self._obs = {key: _column(table.obs[key]) for key in self.obs_keys}
        # only the image's levels travel with the dataset (to worker processes, too)
        self._levels = image_levels(sdata, self.image_key)

    def pixels(self, index: int) -> np.ndarray:
        """The raw pixels of one tile.

        Parameters
        ----------
        index
            The tile's position in the dataset.

        Returns
        -------
        Its pixels ``(C, H, W)``, in the image's dtype.

        """
        # chunks are computed with dask's synchronous scheduler (see ChunkCache): a thread pool
        # brings only overhead to small reads, and would hang in forked DataLoader workers
        return read_levels(self._levels, tuple(self._bounds[index]), mpp=self.mpp)

    def __len__(self) -> int:
        return len(self._bounds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"tile index {index} is out of range for {len(self)} tiles.")
        index = int(index) % len(self)
        image = torch.from_numpy(to_unit_float(self.pixels(index)))
        if self.transform is not None:
            image = self.transform(image)
        item: dict[str, Any] = {"image": image, "index": index}
        for key, values in self._obs.items():
            value = values[index]
            item[key] = torch.as_tensor(value) if isinstance(value, np.generic) else value
        return item

    def __repr__(self) -> str:
        return (f"TileDataset({len(self)} tiles of {self.size_px} px at {self.mpp:g} um/px from "
                f"{self.image_key!r}, obs_keys={list(self.obs_keys)})")


class CachedDataset(Dataset):
    """A tile dataset whose items are kept in memory after their first read.

    Training reads every tile once per epoch; wrapping the dataset makes the later epochs read no
    image. Images are kept as float16 (half the memory of float32) and handed out as float32.
    Meant for the tiles of a training run, not a whole slide: memory grows with the tiles read.
    Before the first item is kept, the memory of keeping them all is estimated from that item
    and refused, with a :class:`MemoryError` naming the fix, when it exceeds the limit
    (``hx.settings.max_memory``, by default the memory available now).

    Parameters
    ----------
    dataset
        A dataset of dict items with an ``"image"`` tensor, e.g. a :class:`TileDataset`.

    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.items = dataset, {}
        self._checked = False

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self.items:
            if self._checked:
                self._keep(index)
            else:  # keeps it, then checks the memory of keeping the rest
                self._check_memory(index, len(self.dataset) - len(self.items))
        item = self.items[index]
        return dict(item, image=item["image"].float())

    def fill(self, *, desc: str = "reading tiles") -> None:
        """Read every item not kept yet, in the dataset's order.

        A shuffled first epoch reads the tiles in random order, so a slide's decoded image chunks
        are evicted and decoded again many times; read in order, neighbouring tiles share them
        (about 3x less CPU on her2st sections). The items are the same either way.

        Parameters
        ----------
        desc
            Label of the progress bar.
        """
        from .._core.logs import progress

        missing = [i for i in range(len(self.dataset)) if i not in self.items]
        if missing:
            self._check_memory(missing[0], len(missing))
        for index in progress(missing, desc=desc):
            if index not in self.items:
                self._keep(index)

    def _keep(self, index: int) -> None:
        item = self.dataset[index]
        self.items[index] = dict(item, image=item["image"].half())

    def _check_memory(self, index: int, n_items: int) -> None:
        """Keep item ``index``, then refuse if ``n_items`` such items exceed the memory limit."""
        from .._core.memory import check_memory

        self._keep(index)
        item = self.items[index]
        item_bytes = _ITEM_OVERHEAD_BYTES + sum(
            value.nbytes for value in item.values() if isinstance(value, torch.Tensor))
        check_memory(
            float(n_items) * item_bytes,
            f"Keeping {n_items} tiles of shape {tuple(item['image'].shape)} in memory (float16)",
            "Pass cache=False, which reads the tiles again every epoch instead of keeping "
            "them, or train on fewer tiles (a larger tile stride, fewer sections).")
        self._checked = True


def _column(series) -> np.ndarray:
    """An obs column as an array whose items become tensors (numbers) or stay as they are."""
    values = series.to_numpy()
    if values.dtype.kind == "f":
        return values.astype(np.float32)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "b":
        return values
    return values.astype(object)
