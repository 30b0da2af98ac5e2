"""Bags of tile features for slide-level models: slides of a cohort, or pseudo-bulk bags.

A *bag* is a set of tiles with one target: a slide of a :class:`~histoexpr.io.Cohort` (all of its
tiles, the slide's bulk expression and labels) or a bag made by :func:`histoexpr.pp.pseudobulk`
(its tiles, its summed counts). Every slide-level model reads its data through
:func:`collect_bags`; predictions go back through :func:`._bag_outputs.write_predictions`.

The slides of a cohort on disk (:func:`histoexpr.io.read_cohort`) are streamed: a bag's features
are read from its slide's store when the bag is used, and per-tile results are written back to
the stores, so no step holds every slide's features at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core.image_facts import check_same_pixels
from ..._core.logs import logger
from ..._core.records import EmbeddingRecord, canonical, shared_transform
from .._sections import as_sections

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from spatialdata import SpatialData

    from ...io import SlideStore

#: how expression targets are made from the bulk table


@dataclass
class Bags:
    """Tile features of every bag, where the tiles come from, and the bags' bulk table."""

    sections: dict[str, SpatialData]
    tiles_key: str
    features_key: str
    bulk: AnnData  # bags x genes, obs: section, n_tiles, labels
    rows: list[np.ndarray]  # tile-table rows of each bag
    stores: Mapping[str, SlideStore] | None = None  # a cohort on disk: each slide's store

    def features(self, i: int) -> np.ndarray:
        name = self.bulk.obs["section"].iloc[i]
        if self.stores is not None:
            return self.stores[name].features(self.tiles_key, self.features_key)[self.rows[i]]
        return tile_features(self.sections[name], self.tiles_key, self.features_key)[self.rows[i]]

    def subset(self, mask: np.ndarray) -> Bags:
        index = np.flatnonzero(mask)
        bulk = self.bulk[index].copy()
        kept = set(bulk.obs["section"])
        if self.stores is not None:
            sections = self.sections.subset([k for k in self.sections if k in kept])
            stores = {k: v for k, v in self.stores.items() if k in kept}
        else:
            sections, stores = {k: v for k, v in self.sections.items() if k in kept}, None
        return Bags(sections, self.tiles_key, self.features_key, bulk,
                    [self.rows[i] for i in index], stores)


class StoredSections(Mapping):
    """The slides of a cohort on disk as bags see them.

    Each slide's store, with the slide itself opened (the last one kept) only when something
    other than its features is asked for.
    """

    def __init__(self, slides: Mapping, stores: Mapping[str, SlideStore]) -> None:
        self._slides, self._stores = slides, dict(stores)
        self._last: tuple[str, Any] | None = None

    def open(self, slide_id: str) -> SpatialData:
        if self._last is None or self._last[0] != slide_id:
            self._last = (slide_id, self._slides[slide_id])
        return self._last[1]

    def forget(self) -> None:
        """Drop the opened slide (its store changed)."""
        self._last = None

    def subset(self, ids: list[str]) -> StoredSections:
        return StoredSections(self._slides, {i: self._stores[i] for i in ids})

    def __getitem__(self, slide_id: str) -> StoredSection:
        if slide_id not in self._stores:
            raise KeyError(slide_id)
        return StoredSection(self, slide_id, self._stores[slide_id])

    def __iter__(self):
        return iter(self._stores)

    def __len__(self) -> int:
        return len(self._stores)


class StoredSection:
    """One slide of a cohort on disk.

    Features come from its store; any other attribute (``tables``, ``shapes``, ``images``...)
    from the slide, opened when first asked for.
    """

    def __init__(self, sections: StoredSections, slide_id: str, store: SlideStore) -> None:
        self._sections, self.slide_id, self.store = sections, slide_id, store

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._sections.open(self.slide_id), name)


#: bytes of standardised bag features kept in memory while streaming bags from slide stores
STREAM_CACHE_BYTES = 256 * 2**20


class StandardisedFeatures(Sequence):
    """Every bag's standardised tile features, read from its store when the bag is used.

    The most recently used bags are kept up to ``cache_bytes`` (least recently used dropped
    first), so a small cohort is read once while a large one streams with bounded memory.
    """

    def __init__(self, bags: Bags, mean: np.ndarray, std: np.ndarray, *,
                 cache_bytes: int = STREAM_CACHE_BYTES) -> None:
        from collections import OrderedDict

        self.bags, self.mean, self.std = bags, mean, std
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self.bags.bulk.n_obs

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = int(i) % len(self)
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        values = (self.bags.features(i) - self.mean) / self.std
        if values.nbytes <= self.cache_bytes:
            self._cache[i] = values
            self._size += values.nbytes
            while self._size > self.cache_bytes:
                _, dropped = self._cache.popitem(last=False)
                self._size -= dropped.nbytes
        return values


def feature_statistics(bags: Bags) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and standard deviation of the tile features over every bag's tiles, and their count.

    Accumulated bag by bag (float64 sums), so that no more than one bag is in memory.
    """
    total = squares = None
    n = 0
    for i in range(bags.bulk.n_obs):
        values = bags.features(i).astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"The tile features {bags.features_key!r} hold NaN or infinite "
                             f"values (bag {bags.bulk.obs_names[i]!r}).")
        if total is None:
            total, squares = np.zeros(values.shape[1]), np.zeros(values.shape[1])
        total += values.sum(axis=0)
        squares += (values ** 2).sum(axis=0)
        n += len(values)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
    return mean, std, n


def bag_tiles(
    data: Any,
    *,
    tiles_key: str = "he_tiles",
    features_key: str | None = None,
    bags_key: str = "bags",
) -> pd.DataFrame:
    """The tiles of every bag a slide-level model sees: which section, which tile rows.

    A bag is a slide of a cohort or a pseudo-bulk bag of a section (``bags_key``), as
    :func:`histoexpr.tl.fit` with ``model="abmil"`` (or another bag model) gathers them. Bags
    without tissue tiles are left out, as in training.

    Parameters
    ----------
    data
        A :class:`histoexpr.io.Cohort`, a section with pseudo-bulk bags, or a mapping (or list)
        of such sections.
    tiles_key
        Key of the tiles.
    features_key
        Key of the tile features; ``None`` takes the only one (needed for a cohort on disk).
    bags_key
        Key of the pseudo-bulk bags of a section.

    Returns
    -------
    One row per tile of a bag (a tile of overlapping bags appears once per bag): ``bag`` (the
    bag's name, the ``obs_names`` of the predicted table), ``section`` (the section's name, as
    :func:`histoexpr.tl.predict` writes it) and ``tile`` (the row in the tile table
    ``f"{tiles_key}_table"``).

    Examples
    --------
    >>> import histoexpr as hx
    >>> cohort = hx.datasets.synthetic_cohort(2, seed=0)  # doctest: +SKIP
    >>> hx.tl.bag_tiles(cohort).groupby("bag").size()  # doctest: +SKIP

    """
    import pandas as pd

    bags = collect_bags(data, tiles_key=tiles_key, features_key=features_key, bags_key=bags_key)
    sections = bags.bulk.obs["section"].astype(str).to_numpy()
    return pd.DataFrame({
        "bag": np.repeat(bags.bulk.obs_names.to_numpy(), [len(r) for r in bags.rows]),
        "section": np.repeat(sections, [len(r) for r in bags.rows]),
        "tile": np.concatenate(bags.rows).astype(int) if bags.rows else np.zeros(0, int),
    })


def collect_bags(data: Any, *, tiles_key: str, features_key: str | None,
                 bags_key: str = "bags") -> Bags:
    """The bags of a Cohort, of one pseudo-bulked section, or of a mapping of them."""
    from ...io import Cohort

    stores = None
    if isinstance(data, Cohort) and data.on_disk:
        sections, bulk, rows, stores = _stored_bags(data, tiles_key)
    elif isinstance(data, Cohort):
        sections, bulk, rows = _cohort_bags(data, tiles_key)
    else:
        sections = as_sections(data)
        sections, bulk, rows = _pseudobulk_bags(sections, tiles_key, bags_key)
    empty = np.array([len(r) == 0 for r in rows])
    if empty.any():
        logger.warning("Left out %d bags without tissue tiles: %s", int(empty.sum()),
                       list(bulk.obs_names[empty][:5]))
        bulk, rows = bulk[~empty].copy(), [r for r in rows if len(r)]
    if bulk.n_obs == 0:
        raise ValueError("No bag has tiles; tile the sections with hx.pp.tile first.")
    if stores is not None:
        features_key = _stored_features_key(stores, tiles_key, features_key)
    else:
        features_key = _features_key(sections, tiles_key, features_key)
    return Bags(sections, tiles_key, features_key, bulk, rows, stores)


def _stored_bags(cohort, tiles_key: str):
    """The slides of a cohort on disk: one bag per slide, sized from its store."""
    stores = {i: cohort.store(i) for i in cohort.ids}
    missing = [i for i, store in stores.items() if not store.complete
               or tiles_key not in store.tiles_keys()]
    if missing:
        raise KeyError(f"{len(missing)} slides have no finished store with tiles {tiles_key!r} "
                       f"(e.g. {missing[:3]}); process them with hx.tl.embed_cohort(cohort, "
                       "...).")
    for i, store in stores.items():  # features of another file than the slide's are refused
        store.check_slide(cohort.path(i), predictions=False)
    bulk = cohort.bulk.copy()
    bulk.obs["section"] = bulk.obs_names.to_numpy()
    rows = [np.arange(stores[i].n_tiles(tiles_key)) for i in bulk.obs_names]
    return StoredSections(cohort.slides, stores), bulk, rows, stores


def _stored_features_key(stores: Mapping, tiles_key: str, features_key: str | None) -> str:
    records = [store.feature_records(tiles_key) for store in stores.values()]
    if features_key is None:
        found = sorted(records[0])
        if len(found) != 1:
            raise ValueError(f"Say which tile features to use with features_key= (the stores "
                             f"hold {found or 'none: run hx.tl.embed_cohort first'}).")
        features_key = found[0]
    lacking = [name for name, record in zip(stores, records, strict=True)
               if features_key not in record]
    if lacking:
        raise KeyError(f"{len(lacking)} slides have no features {features_key!r} in their store "
                       f"(e.g. {lacking[:3]}); embed them with hx.tl.embed_cohort(cohort, "
                       f"key_added={features_key!r}, ...).")
    widths = {record[features_key].get("n_features") for record in records}
    if len(widths) > 1:
        raise ValueError(f"The slides hold {features_key!r} of different widths {widths}; "
                         "embed them all with the same encoder.")
    return features_key


def _cohort_bags(cohort, tiles_key: str):
    table_key = f"{tiles_key}_table"
    missing = [i for i, s in cohort.items() if table_key not in s.tables]
    if missing:
        raise KeyError(f"{len(missing)} slides have no tile table {table_key!r} (e.g. "
                       f"{missing[:3]}); tile every slide with hx.pp.tile and embed the tiles "
                       "with hx.tl.embed.")
    bulk = cohort.bulk.copy()
    bulk.obs["section"] = bulk.obs_names.to_numpy()
    rows = [np.arange(cohort[i].tables[table_key].n_obs) for i in bulk.obs_names]
    return dict(cohort.items()), bulk, rows


def _pseudobulk_bags(sections: dict[str, SpatialData], tiles_key: str, bags_key: str):
    import anndata as ad

    tables, rows = [], []
    for name, sdata in sections.items():
        key = f"{bags_key}_table"
        if key not in sdata.tables:
            raise KeyError(f"Section {name!r} has no bag table {key!r}; make bags with "
                           "hx.pp.pseudobulk(sdata, ...) or pass a Cohort.")
        table = sdata.tables[key]
        if table.uns["bags"]["tiles_key"] != tiles_key:
            raise ValueError(f"The bags of {name!r} group the tiles "
                             f"{table.uns['bags']['tiles_key']!r}, not tiles_key={tiles_key!r}.")
        bags = ad.AnnData(X=table.layers.get("counts", table.X), obs=table.obs.copy(),
                          var=table.var[[]].copy())
        bags.layers["counts"] = bags.X
        bags.obs["section"] = name
        bags.obs_names = [f"{name}/{bag}" for bag in table.obs_names]
        tables.append(bags)
        membership = table.obsm["tiles"].tocsr()
        rows.extend(membership[i].indices for i in range(membership.shape[0]))
    bulk = ad.concat(tables, join="inner", merge="same") if len(tables) > 1 else tables[0]
    if len(tables) > 1 and bulk.n_vars < max(t.n_vars for t in tables):
        logger.info("The sections share %d genes; the others are left out.", bulk.n_vars)
    return sections, bulk, rows


def tile_features(sdata: SpatialData, tiles_key: str, features_key: str) -> np.ndarray:
    """The features of every tile of a section, as float32."""
    if isinstance(sdata, StoredSection):  # a slide on disk: read them from its store
        return sdata.store.features(tiles_key, features_key)
    table = sdata.tables[f"{tiles_key}_table"]
    if features_key not in table.obsm:
        raise KeyError(f"The tile table {tiles_key}_table has no obsm[{features_key!r}]; embed "
                       f"the tiles first: hx.tl.embed(sdata, {tiles_key!r}, encoder=...).")
    return np.asarray(table.obsm[features_key], dtype=np.float32)


def _features_key(sections: dict, tiles_key: str, features_key: str | None) -> str:
    tables = [s.tables[f"{tiles_key}_table"] for s in sections.values()
              if f"{tiles_key}_table" in s.tables]
    if features_key is None:
        found = sorted(tables[0].uns.get("embeddings", {})) if tables else []
        if len(found) != 1:
            raise ValueError(f"Say which tile features to use with features_key= (the tile "
                             f"tables hold {found or 'none: run hx.tl.embed first'}).")
        features_key = found[0]
    if any(features_key not in table.obsm for table in tables):
        raise KeyError(f"A tile table lacks obsm[{features_key!r}]; embed every section "
                       "with the same encoder and key_added.")
    widths = {table.obsm[features_key].shape[1] for table in tables}
    if len(widths) > 1:
        raise ValueError(f"The sections hold {features_key!r} of different widths {widths}; "
                         "embed them all with the same encoder.")
    return features_key


#: what tells tile features made alike, across sections and with a model's training features
#: (not the image key: each section has its own image)
MADE_FIELDS = ("encoder", "fingerprint", "mpp", "size_px", "transform")


def _stored_record(bags: Bags, name: str) -> Mapping[str, Any]:
    """The record of how a section's features were made (``{}``: none, e.g. the user's own)."""
    if bags.stores is not None:  # a cohort on disk: the record kept in each slide's store
        return bags.stores[name].feature_records(bags.tiles_key).get(bags.features_key, {})
    return bags.sections[name].tables[f"{bags.tiles_key}_table"].uns.get("embeddings", {}).get(
        bags.features_key, {})


def _recorded(stored: Mapping[str, Any]) -> set[str]:
    """The fields of :data:`MADE_FIELDS` a section's record says (none without a record).

    A record leaves out a transform that was none, so every record says the transform.
    """
    return {k for k in MADE_FIELDS if k in stored} | {"transform"} if stored else set()


def features_made(bags: Bags) -> dict[str, Any]:
    """How the bags' tile features were made: encoder, pixel size, tile size, tile transform.

    The encoder by name and fingerprint; the transform of the tiles is e.g. a stain
    normalisation (its method and target stain). Read from ``uns["embeddings"]`` of every
    section's tile table (or the record in each slide's store); sections whose features were
    made differently are refused (their features would not be comparable). Returned as the
    model's metadata keeps it: the recorded fields of the first section's
    :class:`~histoexpr._core.records.EmbeddingRecord` (``transform`` always, ``None`` for
    none; the others only where known).
    """
    stored = {name: _stored_record(bags, name) for name in bags.sections}
    if bags.stores is None:  # sections in memory: their images may have changed since
        for name, record in stored.items():
            check_same_pixels(
                bags.sections[name], record,
                what=f"Section {name!r}: the tile features obsm[{bags.features_key!r}] of "
                     f"{bags.tiles_key}_table",
                fix=f"Embed its tiles again: hx.tl.embed(sdata, {bags.tiles_key!r}, "
                    f"encoder=..., key_added={bags.features_key!r}, overwrite=True).")
    records = {name: EmbeddingRecord.from_uns(value) for name, value in stored.items()}
    first = next(iter(records))
    for name, record in records.items():
        fields = _recorded(stored[name]) & _recorded(stored[first])
        differ = record.differences(records[first], fields=fields, across_sections=True)
        if differ:
            raise ValueError(
                f"The features {bags.features_key!r} of section {name!r} were made otherwise "
                f"than those of {first!r} ({'; '.join(differ)}); embed every section with the "
                "same encoder, on tiles of the same pixel size and width, with the same stain "
                "normalisation (or none).")
    return made_record(records[first], _recorded(stored[first]))


def made_record(record: EmbeddingRecord, fields: set[str]) -> dict[str, Any]:
    """The ``fields`` of ``record`` as a model's metadata keeps them (plain values only)."""
    made = {k: v for k, v in record.to_uns().items()
            if k in fields and k != "transform" and v is not None}
    if "transform" in fields:  # the part the sections share, as plain values (arrays as lists)
        made["transform"] = json.loads(canonical(shared_transform(record.transform)))
    return made


def encoder_of(bags: Bags) -> str | None:
    """Name of the encoder that made the features (from ``uns['embeddings']``), if recorded."""
    stored = _stored_record(bags, next(iter(bags.sections)))
    return EmbeddingRecord.from_uns(stored).encoder if stored else None
