"""One slide's results on disk: a small zarr store of its tissue map, tiles, features and results.

A cohort read with :func:`histoexpr.io.read_cohort` keeps the pixels in the slide files and
everything computed from them in one store per slide (``<store_dir>/<slide_id>.zarr``), so that
memory does not grow with the cohort and a later session reopens the results. The layout, plain
zarr (v3) that any zarr reader opens::

    <slide_id>.zarr/                     attrs["histoexpr"]: format, slide, params, complete
      labels/<tissue_key>                tissue label map; attrs: mpp, offset
      tiles/<tiles_key>/boxes            tiles x (x_min, y_min, x_max, y_max), um
      tiles/<tiles_key>/obs/<column>     the tile table's obs columns
      tiles/<tiles_key>/features/<key>   tiles x features (float32); attrs: record, complete
      tiles/<tiles_key>/results/<key>/   per-tile outputs and attention of a slide-level model;
                                         attrs: columns, branches, writer (step, key, within),
                                         model (fingerprint, run)
      predictions/<key>/                 a table of per-tile predictions (an AnnData, as
                                         anndata writes it); attrs: record (model, slide,
                                         options), complete, files (every file written,
                                         its size and time)

Every write goes to a temporary folder beside the store and is moved into place with one
rename, so a killed run leaves either the old content or the new one, never half of it. A
rewrite of the whole store (:meth:`SlideStore.write_slide`) keeps its tables of predictions and
never loses what another step wrote there (results, other tile sets): it refuses first
(:meth:`SlideStore.check_rewritable`). Every node replaced (features, results, the whole store)
must be the zarr node histoexpr writes at its place of this layout and hold nothing else: a
folder or a file of the user's in the store is named, never deleted (:meth:`SlideStore.
check_node`, asked while planning and again at the swap).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._core.files import PARTIAL as _PARTIAL
from .._core.files import partial_path, restore_swaps, swap_into_place
from .._core.logs import logger, shown
from .._core.validate import check_bool, check_store_name
from ._store_parts import (
    FORMAT,
    PREDICTIONS,
    VERSION,
    _attributes,
    _check_keys_free,
    _ensure_group,
    _jsonable,
    _write_features,
    describe_item,
    store_add_predictions_to,
    store_check_node,
    store_check_prediction_replaceable,
    store_foreign_parts,
    store_items,
    store_prediction,
    store_prediction_records,
    store_results_model,
    store_write_prediction,
    zarr_children,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from .._core.records import WriterRecord



class SlideStore:
    """The results of one slide, in a zarr folder written only by histoexpr.

    Parameters
    ----------
    path
        The store's folder (``<slide_id>.zarr``); it need not exist yet.

    Examples
    --------
    >>> import histoexpr as hx
    >>> store = cohort.store("slide_00")  # doctest: +SKIP
    >>> store.features("he_tiles", "X_handcrafted").shape  # doctest: +SKIP

    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)

    def _node(self, tiles_key: str, kind: str | None = None, key: str | None = None) -> Path:
        """The folder of a tile set (or of its features / results ``key``), inside the store.

        Every key that becomes part of a path goes through :func:`check_store_name` here,
        before anything is read or written: a key can never name a place outside the store.
        """
        check_store_name("tiles_key", tiles_key, what="tile set in a slide store")
        path = self._path / "tiles" / tiles_key
        if kind is None:
            return path
        what = "features" if kind == "features" else "results"
        check_store_name("key_added" if kind == "results" else "key", key,
                         what=f"set of {what} in a slide store")
        return path / kind / key

    def _prediction_path(self, key: str) -> Path:
        """The folder of the predictions ``key``, its key checked as :meth:`_node` checks keys."""
        check_store_name("key", key, what="table of predictions in a slide store")
        return self._path / PREDICTIONS / key

    @property
    def path(self) -> Path:
        """The store's folder."""
        return self._path

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete" if self.exists else "absent"
        return f"SlideStore({str(self._path)!r}, {state})"

    # ---------------------------------------------------------------------------------- state
    @property
    def exists(self) -> bool:
        """Whether the folder exists (whoever wrote it)."""
        return self._path.exists()

    @property
    def info(self) -> dict[str, Any]:
        """What histoexpr recorded about the store (empty if it is not a histoexpr store)."""
        meta = self._path / "zarr.json"
        if not meta.is_file():
            return {}
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError):
            return {}
        info = attrs.get("histoexpr", {})
        return info if isinstance(info, dict) and info.get("format") == FORMAT else {}

    @property
    def is_histoexpr(self) -> bool:
        """Whether histoexpr wrote the store (so that it may replace it)."""
        return bool(self.info)

    @property
    def complete(self) -> bool:
        """Whether the store holds a finished slide (its tissue map, tiles and features)."""
        return self.info.get("complete") is True

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that made the tissue map and the tiles."""
        return self.info.get("params", {})

    def check_ours(self) -> None:
        """Refuse to touch a folder that histoexpr did not write."""
        if self.exists and not self.is_histoexpr:
            raise FileExistsError(
                f"{self._path} exists but is not a histoexpr slide store; histoexpr never "
                "replaces what it did not write. Move it away, or give read_cohort another "
                "store_dir (--store-dir on the command line)."
            )

    # ---------------------------------------------------------------------------------- reading
    def _group(self):
        import zarr

        if not self.complete:
            raise FileNotFoundError(
                f"{self._path} holds no finished slide; compute it first with "
                "hx.tl.embed_cohort(cohort, ...)."
            )
        return zarr.open_group(self._path, mode="r")

    def tiles_keys(self) -> list[str]:
        """Keys of the tile sets in the store."""
        group = self._group()
        return zarr_children(self._path / "tiles", "group") if "tiles" in group else []

    def n_tiles(self, tiles_key: str) -> int:
        """Number of tiles of a tile set."""
        return int(self._tiles(tiles_key)["boxes"].shape[0])

    def _tiles(self, tiles_key: str):
        self._node(tiles_key)
        group = self._group()
        if f"tiles/{tiles_key}" not in group:
            raise KeyError(f"The store of {self.info.get('slide_id')!r} has no tiles "
                           f"{tiles_key!r} (it has {self.tiles_keys()}).")
        return group[f"tiles/{tiles_key}"]

    def feature_records(self, tiles_key: str) -> dict[str, dict]:
        """Complete feature sets of a tile set: key -> how they were made."""
        self._tiles(tiles_key)
        out = {}
        for key in zarr_children(self._node(tiles_key) / "features", "array"):
            attrs = _attributes(self._node(tiles_key, "features", key))
            if attrs.get("complete") is True:
                out[key] = attrs.get("record", {})
        return out

    def features(self, tiles_key: str, key: str) -> np.ndarray:
        """Tile features (tiles x features, float32) of one feature set."""
        import zarr

        folder = self._node(tiles_key, "features", key)
        array = zarr.open_array(folder, mode="r") if (folder / "zarr.json").is_file() else None
        if array is None or array.attrs.get("complete") is not True:
            raise KeyError(f"The store of {self.info.get('slide_id')!r} has no features {key!r} "
                           f"of {tiles_key!r} (it has {sorted(self.feature_records(tiles_key))}); "
                           "embed them with hx.tl.embed_cohort.")
        return np.asarray(array[:], dtype=np.float32)

    def results_keys(self, tiles_key: str) -> list[str]:
        """Keys of the per-tile results (predictions, attention) of a tile set."""
        self._tiles(tiles_key)
        return zarr_children(self._node(tiles_key) / "results", "group")

    def results_writer(self, tiles_key: str, key: str) -> WriterRecord | None:
        """Which step wrote the results ``key`` (``None``: no record, e.g. an earlier version).

        Parameters
        ----------
        tiles_key
            The tile set.
        key
            Key of the results.

        Returns
        -------
        The writer record stored with the results, or ``None``.

        """
        from .._core.records import WriterRecord

        tiles = self._tiles(tiles_key)
        if f"results/{key}" not in tiles:
            return None
        return WriterRecord.from_uns(dict(tiles[f"results/{key}"].attrs).get("writer"))

    def check_results_writable(self, tiles_key: str, key: str, *, writer: WriterRecord,
                               overwrite: bool = False) -> None:
        """Raise a ``KeyError`` where ``writer`` may not write the results ``key``.

        Results already stored under ``key`` are replaced only with ``overwrite=True`` and only
        where their record says the same ``writer`` (step, key and the step it was made within)
        wrote them: results of another step, or of an earlier version with no record, never.

        Parameters
        ----------
        tiles_key
            The tile set.
        key
            Key of the results.
        writer
            The step that would write them.
        overwrite
            Whether that step replaces results it wrote before.

        Returns
        -------
        Nothing.

        """
        check_bool("overwrite", overwrite)
        self.check_node(self._node(tiles_key, "results", key), what=f"The results {key!r}",
                        fix="Move them out of the store, or choose another key_added.")
        if key not in self.results_keys(tiles_key):
            return
        slide = self.info.get("slide_id")
        if not overwrite:
            raise KeyError(f"The store of {slide!r} already holds results {key!r}; pass "
                           "overwrite=True or choose another key_added.")
        theirs = self.results_writer(tiles_key, key)
        if theirs == writer:
            return
        if theirs is None:
            who = "with no record of the step that wrote them (an earlier version)"
        else:
            who = f"written by {theirs.step}" + (f" within {theirs.within}" if theirs.within
                                                 else "")
        mine = writer.step + (f" within {writer.within}" if writer.within else "")
        raise KeyError(f"The store of {slide!r} holds results {key!r} {who}; {mine} replaces "
                       "only the results it wrote itself, even with overwrite=True. Choose "
                       "another key_added.")

    def results_model(self, tiles_key: str, key: str) -> dict[str, Any] | None:
        """Which model made the results ``key``, and in which run.

        Parameters
        ----------
        tiles_key
            The tile set.
        key
            Key of the results.

        Returns
        -------
        ``{"fingerprint": ..., "run": ...}`` as :meth:`write_results` recorded it; ``{}``
        for results with no such record (an earlier version's); ``None`` where the store holds
        no results ``key``.

        """
        return store_results_model(self._node(tiles_key, "results", key))

    def check_node(self, node: Path, *, what: str, fix: str) -> None:
        """Refuse to replace a node of the store unless histoexpr wrote all of it.

        The one check of every write that replaces a node (features, results, the whole
        store's content): the node must be the zarr node histoexpr writes there and hold
        nothing else; otherwise a ``FileExistsError`` names the files found and says ``fix``.

        Parameters
        ----------
        node
            The node's folder, inside the store.
        what
            The node in words, for the message (``"The features 'X_uni'"``).
        fix
            What to do about it, for the message.

        Returns
        -------
        Nothing; also where nothing is there.

        """
        store_check_node(self, node.relative_to(self._path).as_posix(), what=what, fix=fix)

    def add_to(self, sdata: SpatialData, *, tiles_key: str | None = None) -> SpatialData:
        """Add the stored tissue map, tiles and their table (features, results) to a section.

        Parameters
        ----------
        sdata
            The slide, as :func:`histoexpr.io.read_wsi` reads it.
        tiles_key
            Only this tile set; ``None`` adds every one.

        Returns
        -------
        ``sdata``, with ``labels[<tissue_key>]``, ``shapes[<tiles_key>]`` and
        ``tables[f"{tiles_key}_table"]`` as :func:`histoexpr.pp.tile` and
        :func:`histoexpr.tl.embed` made them. An element ``sdata`` holds under one of those
        names is never replaced: a ``KeyError`` names it before anything is added.

        """
        import pandas as pd
        from spatialdata.models import Labels2DModel

        from .._core.elements import scale_to_global, square_shapes, tile_table
        from .._core.records import BAG_OUTPUTS, TileRecord, bag_outputs_record

        group = self._group()
        label_keys = zarr_children(self._path / "labels", "array")
        keys = self.tiles_keys() if tiles_key is None else [tiles_key]
        _check_keys_free(sdata, [("labels", key) for key in label_keys]
                         + [(kind, name) for key in keys
                            for kind, name in (("shapes", key), ("tables", f"{key}_table"))],
                         self._path.name, "add_to")
        added = []  # every element is read before any is added to sdata
        for key in label_keys:
            array = group["labels"][key]
            attrs = dict(array.attrs)
            added.append(("labels", key, Labels2DModel.parse(
                np.asarray(array[:]), dims=("y", "x"),
                transformations=scale_to_global(attrs["mpp"], *attrs["offset"]))))
        for key in keys:
            tiles = self._tiles(key)
            attrs = dict(tiles.attrs)
            boxes = np.asarray(tiles["boxes"][:], dtype=float)
            obs = pd.DataFrame({name: np.asarray(tiles["obs"][name][:]) for name in
                                zarr_children(self._node(key) / "obs", "array")})
            obs = obs[[c for c in attrs["obs_columns"] if c in obs.columns]]
            obs.index = pd.Index(obs["tile_id"].astype(str).to_numpy())
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            table = tile_table(obs, centres, key, TileRecord.from_uns(attrs["uns"]))
            embeddings = {}
            for name, record in self.feature_records(key).items():
                table.obsm[name] = np.asarray(tiles[f"features/{name}"][:], dtype=np.float32)
                embeddings[name] = record
            if embeddings:
                table.uns["embeddings"] = embeddings
            for name in self.results_keys(key):
                result = tiles[f"results/{name}"]
                meta = dict(result.attrs)
                table.obsm[name] = pd.DataFrame(np.asarray(result["outputs"][:]),
                                                index=table.obs_names, columns=meta["columns"])
                attention = np.asarray(result["attention"][:])
                table.obsm[f"{name}_attention"] = pd.DataFrame(
                    attention, index=table.obs_names, columns=meta["branches"])
                table.obs[f"{name}_attention"] = attention.mean(axis=1)
                writer = self.results_writer(key, name)
                if writer is not None:  # so that the step that wrote them may replace them
                    table.uns.setdefault(BAG_OUTPUTS, {})[name] = bag_outputs_record(writer, name)
            added.append(("shapes", key, square_shapes(boxes, obs["tile_id"].to_numpy())))
            added.append(("tables", f"{key}_table", table))
        for kind, key, element in added:
            getattr(sdata, kind)[key] = element
        return sdata

    def check_slide(self, path: str | Path, *, predictions: bool = True) -> None:
        """Raise a ``ValueError`` where what the store holds was made from another slide file.

        The tiles and features (:func:`histoexpr.tl.embed_cohort`) and each table of
        predictions (:func:`histoexpr.tl.predict` on a cohort) record the content of the slide
        file they were made from (its size and a digest, :func:`histoexpr._core.memory.
        file_fingerprint`); a file replaced since (re-scanned, another slide copied over it) no
        longer matches, and what the store holds is not that slide's. Records of an earlier
        version, which lack the digest, cannot be checked and are refused the same way.

        Parameters
        ----------
        path
            The slide file as it is now.
        predictions
            Check the tables of predictions too (not only the tiles and features).

        Returns
        -------
        Nothing.

        """
        from .._core.memory import file_fingerprint

        made = []
        if self.complete:
            made.append(("tiles and features", self.params.get("slide_content"),
                         "hx.tl.embed_cohort(cohort, ..., overwrite=True)"))
        if predictions:
            for key, record in self.prediction_records().items():
                slide = record.get("slide")
                made.append((f"predictions {key!r}",
                             slide.get("content") if isinstance(slide, dict) else None,
                             "hx.tl.predict(model, cohort, overwrite=True)"))
        if not made:
            return
        now = _jsonable(file_fingerprint(path))
        for what, content, fix in made:
            if content == now:
                continue
            was = ("does not record the content of its slide file (an earlier version)"
                   if content is None else f"was made from other content ({content})")
            raise ValueError(
                f"The slide file {path} is not the one the {what} of its store ({self._path}) "
                f"were made from: the store {was}; the file now is {now}. They would not be "
                f"this slide's. Compute them anew with {fix}, or read the cohort with another "
                "store_dir.")

    # ---------------------------------------------------------------------------------- writing
    def check_rewritable(self, *, tissue_key: str, tiles_key: str,
                         feature_keys: Sequence[str] = (),
                         drop_features: Sequence[str] = ()) -> list[str]:
        """Raise a ``ValueError`` where rewriting the store would lose what another step wrote.

        A rewrite (:meth:`write_slide`) writes the tissue map ``tissue_key``, the tiles
        ``tiles_key`` and their features ``feature_keys`` anew and keeps the tables of
        predictions. Everything else the store holds would be lost: other tile sets and tissue
        maps, the results of the slide-level models (``hx.tl.fit``, ``predict``,
        ``cross_validate``), other features, whatever a user put there. Only the features
        ``drop_features`` of ``tiles_key`` may go (they were made from the tiles replaced);
        anything else is refused, naming it.

        Parameters
        ----------
        tissue_key
            The tissue map written anew.
        tiles_key
            The tile set written anew.
        feature_keys
            Its features written anew.
        drop_features
            Other features of ``tiles_key`` that may be dropped with the old tiles.

        Returns
        -------
        The keys of ``drop_features`` the store holds (those the rewrite drops).

        """
        items = store_items(self._path)
        tiles = f"tiles/{tiles_key}"
        own = {f"labels/{tissue_key}", tiles,
               *(f"{tiles}/features/{key}" for key in [*feature_keys, *drop_features])}
        lost = [item for item in items if item not in own]
        strays = [part for part in store_foreign_parts(self._path)  # files of the user's
                  if not any(part == item or part.startswith(f"{item}/") for item in lost)]
        if lost or strays:
            slide = self.info.get("slide_id") or self._path.stem
            listed = "; ".join([describe_item(self._path, item) for item in lost] + (
                [f"files histoexpr did not write ({shown(strays, 5)})"] if strays else []))
            raise ValueError(
                f"Recomputing the store of {slide!r} ({self._path}) would lose what it holds "
                f"beside the tissue map {tissue_key!r}, the tiles {tiles_key!r} and their "
                f"features: {listed}. overwrite=True replaces only what hx.tl.embed_cohort "
                "wrote there itself, never what another step or you wrote; nothing was written. "
                "To keep them, read the cohort with another store_dir (hx.io.read_cohort(..., "
                "store_dir=...)) and compute the slides there; if they may go, remove them from "
                f"the store first (e.g. {self._path / (lost or strays)[0]}).")
        return [key for key in drop_features if f"{tiles}/features/{key}" in items
                and key not in feature_keys]

    def write_slide(self, sdata: SpatialData, *, tissue_key: str, tiles_key: str,
                    slide: dict[str, Any], params: dict[str, Any],
                    feature_keys: Sequence[str] = (), drop_features: Sequence[str] = ()) -> None:
        """Write a processed slide as a new store, replacing (atomically) an older one.

        An older store is replaced only where that loses nothing but what is written anew
        (and ``drop_features``): :meth:`check_rewritable` refuses otherwise, before anything
        is written. Its tables of predictions are kept.

        Parameters
        ----------
        sdata
            The slide with its tissue map, tiles and embedded tile table.
        tissue_key
            Key of the tissue map in ``sdata.labels``.
        tiles_key
            Key of the tiles in ``sdata.shapes``.
        slide
            What identifies the slide (id, path, file size and time).
        params
            The parameters that made the tissue map and the tiles.
        feature_keys
            Keys of the tile table's ``obsm`` to store as features.
        drop_features
            Keys of other features of ``tiles_key`` in the older store that may go with its
            tiles (made by the same step from the tiles replaced).

        Returns
        -------
        Nothing; the store is complete once this returns.

        """
        import zarr

        from .._core.image import image_levels

        check_store_name("tissue_key", tissue_key, what="tissue map in a slide store")
        for key in [*feature_keys, *drop_features]:
            self._node(tiles_key, "features", key)
        self._node(tiles_key)
        self.check_ours()
        dropped = self.check_rewritable(tissue_key=tissue_key, tiles_key=tiles_key,
                                        feature_keys=feature_keys, drop_features=drop_features)
        if dropped:
            logger.warning("%s: the features %s of %r were made from the tiles now replaced and "
                           "go with them; embed them again with hx.tl.embed_cohort if needed.",
                           self._path.name, dropped, tiles_key)
        partial = self._partial_path("slide")
        try:
            root = zarr.open_group(partial, mode="w")
            level = image_levels(sdata, tissue_key)[0]
            tissue = np.asarray(level.data.values).squeeze()
            array = root.create_array(f"labels/{tissue_key}", data=tissue)
            array.attrs.update({"mpp": float(level.mpp),
                                "offset": [float(v) for v in level.offset]})
            table = sdata.tables[f"{tiles_key}_table"]
            shapes = sdata.shapes[tiles_key]
            tiles = root.create_group(f"tiles/{tiles_key}")
            order = shapes.index.get_indexer(table.obs["tile_id"].to_numpy())
            tiles.create_array("boxes", data=np.asarray(shapes.geometry.bounds, float)[order])
            columns = [c for c in table.obs.columns if c != "region"]
            for column in columns:
                values = table.obs[column].to_numpy()
                if values.dtype.kind not in "biuf":
                    raise TypeError(f"The tile table column {column!r} is not numeric; slide "
                                    "stores hold numeric tile annotations only.")
                tiles.create_array(f"obs/{column}", data=values)
            tiles.attrs.update({"uns": _jsonable(dict(table.uns.get("tiles", {}))),
                                "obs_columns": columns})
            for key in feature_keys:
                record = _jsonable(dict(table.uns.get("embeddings", {}).get(key, {})))
                _write_features(tiles, f"features/{key}",
                                np.asarray(table.obsm[key], dtype=np.float32), record)
            root.attrs["histoexpr"] = {"format": FORMAT, "version": VERSION, **_jsonable(slide),
                                       "params": _jsonable(params), "complete": True}
            if (self._path / PREDICTIONS).is_dir():  # tables of predictions stay with the slide
                shutil.copytree(self._path / PREDICTIONS, partial / PREDICTIONS)
            self.check_rewritable(tissue_key=tissue_key, tiles_key=tiles_key,  # again, now
                                  feature_keys=feature_keys, drop_features=drop_features)
            self._move_into_place(partial, self._path)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def write_features(self, tiles_key: str, key: str, values: np.ndarray,
                       record: dict[str, Any]) -> None:
        """Add (or replace) one feature set, atomically.

        Parameters
        ----------
        tiles_key
            The tile set.
        key
            Key of the features.
        values
            Tiles x features.
        record
            How they were made (encoder, parameters).

        Returns
        -------
        Nothing.

        """
        import zarr

        target = self._node(tiles_key, "features", key)
        values = np.asarray(values, dtype=np.float32)
        if values.shape[0] != self.n_tiles(tiles_key):
            raise ValueError(f"{values.shape[0]} rows of features for {self.n_tiles(tiles_key)} "
                             "tiles.")
        self.check_node(target, what=f"The features {key!r}",
                        fix="Move them out of the store, or choose another key_added.")
        partial = self._partial_path(key)
        try:
            group = zarr.open_group(partial, mode="w")
            _write_features(group, "x", values, _jsonable(record))
            _ensure_group(target.parent, self._path)
            self._move_into_place(partial / "x", target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def write_results(self, tiles_key: str, key: str, outputs: np.ndarray,
                      attention: np.ndarray, *, columns: list[str], branches: list[str],
                      writer: WriterRecord, overwrite: bool = False,
                      model: dict[str, Any] | None = None) -> None:
        """Write per-tile outputs and attention of a slide-level model, atomically.

        Parameters
        ----------
        tiles_key
            The tile set.
        key
            Key of the results (the model's ``key_added``).
        outputs
            Tiles x outputs.
        attention
            Tiles x attention branches.
        columns
            Names of the outputs.
        branches
            Names of the attention branches.
        writer
            The step writing them (recorded with them).
        overwrite
            Replace results already stored under ``key``, only where the same ``writer`` (step,
            key and the step it was made within) wrote them.
        model
            Which model made them (its ``fingerprint``) and in which ``run`` (the model's
            fingerprint, or one cross-validation's): results of one key from different runs
            are refused where a cohort reads them (:meth:`results_model`).

        Returns
        -------
        Nothing.

        """
        check_bool("overwrite", overwrite)
        import zarr

        target = self._node(tiles_key, "results", key)
        n = self.n_tiles(tiles_key)
        if len(outputs) != n or len(attention) != n:
            raise ValueError(f"Per-tile results of {len(outputs)} tiles for {n} tiles.")
        self.check_results_writable(tiles_key, key, writer=writer, overwrite=overwrite)
        partial = self._partial_path(key)
        try:
            group = zarr.open_group(partial, mode="w")
            result = group.create_group("x")
            result.create_array("outputs", data=np.asarray(outputs, dtype=np.float32))
            result.create_array("attention", data=np.asarray(attention, dtype=np.float32))
            result.attrs.update({"columns": [str(c) for c in columns],
                                 "branches": [str(b) for b in branches],
                                 "writer": writer.to_uns(), "complete": True,
                                 **({"model": _jsonable(model)} if model else {})})
            _ensure_group(target.parent, self._path)
            self._move_into_place(partial / "x", target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    # ---------------------------------------------------------------------------- predictions
    def prediction_records(self) -> dict[str, dict[str, Any]]:
        """Finished tables of per-tile predictions: key -> how each was made.

        Returns
        -------
        The record of every complete prediction table (model, slide file, options), by key.

        """
        return store_prediction_records(self)

    def prediction(self, key: str):
        """One table of per-tile predictions, as ``hx.tl.predict`` made it (an AnnData).

        Parameters
        ----------
        key
            Its key (the ``key_added`` of the prediction).

        Returns
        -------
        The AnnData: tiles x genes, ``obsm["spatial"]`` and ``uns["spatial"]`` for scanpy.

        """
        return store_prediction(self, key)

    def write_prediction(self, key: str, table, *, record: dict[str, Any],
                         slide: dict[str, Any], overwrite: bool = False) -> None:
        """Write a table of per-tile predictions with how it was made, atomically.

        Parameters
        ----------
        key
            Its key.
        table
            The AnnData that ``hx.tl.predict`` returned for the slide.
        record
            How it was made (model fingerprint, slide file, options), checked before reuse.
        slide
            What identifies the slide (id, path), recorded in a store made here.
        overwrite
            Replace a table already stored under ``key``, only as histoexpr wrote it
            (:meth:`check_prediction_replaceable`).

        Returns
        -------
        Nothing.

        """
        store_write_prediction(self, key, table, record=record, slide=slide,
                               overwrite=overwrite)

    def check_prediction_replaceable(self, key: str) -> None:
        """Raise a ``ValueError`` where replacing the predictions ``key`` would delete a file.

        A table of predictions records every file it was written with (size and time);
        ``overwrite=True`` replaces it only where it holds nothing else and nothing changed
        since: a file added inside it (notes of the user's), or one changed, is named and
        nothing is deleted. A table of an earlier version, which has no such list, is replaced
        only where every file in it is a part of a zarr table (metadata or chunks).

        Parameters
        ----------
        key
            Its key.

        Returns
        -------
        Nothing; also where the store holds no table ``key``.

        """
        store_check_prediction_replaceable(self, key)

    def add_predictions_to(self, sdata: SpatialData) -> SpatialData:
        """Add every stored table of predictions (and its tiles, where absent) to a section.

        Parameters
        ----------
        sdata
            The slide, as :func:`histoexpr.io.read_wsi` reads it (or with :meth:`add_to`'s
            elements).

        Returns
        -------
        ``sdata`` with ``tables[<key>]`` and the tile squares ``shapes[<tiles_key>]``. An
        element ``sdata`` holds under the name of a table is never replaced (tile squares
        already there are kept): a ``KeyError`` names it before anything is added.

        """
        return store_add_predictions_to(self, sdata)

    def remove_partials(self) -> int:
        """Remove temporary folders that an interrupted write of this store left behind.

        A replacement killed between moving the old content aside and renaming the new one
        into place is undone first (:func:`~histoexpr._core.files.restore_swaps`): the old
        content goes back, and only then are the leftovers removed.
        """
        leftovers = sorted(self._path.parent.glob(f".{self._path.name}.*{_PARTIAL}*"))
        restored = restore_swaps(leftovers, inside=self._path)
        if restored:
            logger.warning("Put back %d folder(s) of %s that an interrupted write had moved "
                           "aside.", restored, self._path.name)
        removed = 0
        for path in self._path.parent.glob(f".{self._path.name}.*{_PARTIAL}*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.info("Removed %d unfinished write(s) of %s.", removed, self._path.name)
        return removed

    def _partial_path(self, what: str) -> Path:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        return partial_path(self._path, what)

    def _move_into_place(self, source: Path, target: Path) -> None:
        """Rename ``source`` to ``target``; an older ``target`` is moved aside first.

        The last guard of every replacement in the store, at write time: an older ``target``
        must be all histoexpr's (:meth:`check_node`; a table of predictions is checked against
        its own list of files before, :meth:`check_prediction_replaceable`).
        """
        if target.relative_to(self._path).parts[:1] != (PREDICTIONS,):
            self.check_node(target, what="What this write replaces", fix="Move those files out "
                            "of the store (or the store away), and run again.")
        swap_into_place(source, target, aside=self._partial_path("old"))
