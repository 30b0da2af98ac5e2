"""Parts of a slide store (:class:`histoexpr.io.SlideStore`).

Its tables of predictions, what a rewrite of the whole store would lose, and the helpers its
writes share.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._core.files import changed_in_folder, folder_listing
from .._core.logs import shown
from .._core.validate import check_bool

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._slide_store import SlideStore

FORMAT = "histoexpr-slide-store"
VERSION = 1
#: the folder of a store's tables of per-tile predictions
PREDICTIONS = "predictions"
#: the attribute of a prediction table's group holding how it was made
_PREDICTION_RECORD = "histoexpr_prediction"
#: the attribute of a prediction table's group listing every file written in it (size, time)
_PREDICTION_FILES = "histoexpr_prediction_files"
#: the names of zarr's metadata files (v3, and v2 for tables of older zarr)
_ZARR_METADATA = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def store_prediction_records(store: SlideStore) -> dict[str, dict[str, Any]]:
    """The body of :meth:`SlideStore.prediction_records`."""
    import zarr

    folder = store._path / PREDICTIONS
    if not store.is_histoexpr or not folder.is_dir():
        return {}
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            record = dict(zarr.open_group(sub, mode="r").attrs).get(_PREDICTION_RECORD)
        except Exception:  # noqa: BLE001 (a folder that is no zarr group holds no table)
            continue
        if isinstance(record, dict) and record.get("complete") is True:
            out[sub.name] = {k: v for k, v in record.items() if k != "complete"}
    return out


def store_prediction(store: SlideStore, key: str):
    """The body of :meth:`SlideStore.prediction`."""
    import anndata as ad

    store._prediction_path(key)  # the key is checked before any path is made of it
    records = store.prediction_records()
    if key not in records:
        raise KeyError(f"The store {store._path.name} holds no predictions {key!r} (it holds "
                       f"{sorted(records)}); predict them with hx.tl.predict(model, cohort).")
    return ad.read_zarr(store._path / PREDICTIONS / key)


def store_write_prediction(store: SlideStore, key: str, table, *, record: dict[str, Any],
                     slide: dict[str, Any], overwrite: bool = False) -> None:
    """The body of :meth:`SlideStore.write_prediction`."""
    check_bool("overwrite", overwrite)
    import zarr

    target = store._prediction_path(key)
    store.check_ours()
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise KeyError(f"The store of {store.info.get('slide_id')!r} already holds "
                           f"predictions {key!r}; pass overwrite=True or choose another "
                           "key_added.")
        if key not in store.prediction_records():
            raise FileExistsError(
                f"{target} is not a table of predictions written by histoexpr (it has no "
                "record of how it was made), so overwrite=True does not replace it. Move "
                "it away, or choose another key_added.")
        store_check_prediction_replaceable(store, key)
    partial = store._partial_path(f"prediction-{key}")
    try:
        import anndata as ad

        with ad.settings.override(zarr_write_format=3), warnings.catch_warnings():
            # the store's own zarr format; anndata consolidates the table's metadata, which
            # zarr 3 warns is not part of its specification (it reads it all the same)
            warnings.filterwarnings("ignore", message="Consolidated metadata",
                                    category=UserWarning)
            table.write_zarr(partial / "x")
        # every file written, so that a later overwrite=True replaces the table only as
        # written: never with a file of the user's added inside it since
        listing = folder_listing(partial / "x", leave_out=["zarr.json"])
        zarr.open_group(partial / "x", mode="a").attrs.update({
            _PREDICTION_RECORD: {**_jsonable(record), "complete": True},
            _PREDICTION_FILES: listing})
        if not store.is_histoexpr:  # a slide predicted before (or without) embed_cohort
            root = zarr.open_group(store._path, mode="a")
            root.attrs["histoexpr"] = {"format": FORMAT, "version": VERSION,
                                       **_jsonable(slide), "complete": False}
        _ensure_group(target.parent, store._path)
        if target.exists() or target.is_symlink():  # again: nothing may have been added since
            store_check_prediction_replaceable(store, key)
        store._move_into_place(partial / "x", target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def store_check_prediction_replaceable(store: SlideStore, key: str) -> None:
    """The body of :meth:`SlideStore.check_prediction_replaceable`."""
    target = store._prediction_path(key)
    if not (target.exists() or target.is_symlink()):
        return
    if target.is_symlink() or not target.is_dir():
        found, how = [target.name], "it is a link or a file, not the folder histoexpr wrote"
    else:
        listing = _attributes(target).get(_PREDICTION_FILES)
        if isinstance(listing, dict):
            found = changed_in_folder(target, listing, leave_out=["zarr.json"])
            added = sum(name not in listing for name in found)
            how = ("added since hx.tl.predict wrote the table" if added == len(found) else
                   "changed since hx.tl.predict wrote the table" if not added else
                   "added or changed since hx.tl.predict wrote the table")
        else:  # a table of an earlier version, which kept no list of its files: every file
            # must be a part of the zarr table it wrote (anything else is someone else's)
            found = _not_zarr_parts(target)
            how = ("not part of the zarr table hx.tl.predict writes (the table was written by "
                   "an earlier version, which kept no list of its files)")
    if found:
        slide = store.info.get("slide_id") or store._path.stem
        raise ValueError(
            f"The predictions {key!r} in the store of {slide!r} ({target}) hold files that "
            f"histoexpr did not write there: {shown(found, 5)} ({how}). overwrite=True "
            "(--overwrite on the command line) replaces only what hx.tl.predict wrote, never a "
            f"file of yours, so nothing was deleted. Move those files out of {target} (or move "
            "the whole folder away, to keep the table as it is) and run again; or keep it and "
            "predict into another key_added, or another store_dir (--store-dir on the command "
            "line).")


def _not_zarr_parts(folder: Path) -> list[str]:
    """The files and links under ``folder`` that are no part of a zarr hierarchy, by path.

    A part is a metadata file (``zarr.json``; ``.zarray``, ``.zattrs``... of zarr v2) or a
    chunk of an array: under the array's folder, ``c/<i>/<j>...`` (the default chunk keys of
    zarr v3) or ``<i>.<j>...`` / ``<i>/<j>...`` (those of zarr v2), each index a whole number.
    Folders are not listed, but for an empty one (``name/``): zarr makes none.
    """
    out = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                out.append(f"{name}/")
            continue
        if path.is_symlink() or not (path.name in _ZARR_METADATA or _is_chunk(folder, path)):
            out.append(name)
    return out


def _everything(folder: Path) -> list[str]:
    """Every file and link under ``folder`` (and every empty folder, as ``name/``), by path."""
    out = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink() or not path.is_dir():
            out.append(name)
        elif not any(path.iterdir()):
            out.append(f"{name}/")
    return out


def _is_chunk(folder: Path, path: Path) -> bool:
    """Whether ``path`` is a chunk of an array whose folder lies inside ``folder``."""
    parts = path.relative_to(folder).parts
    for n in range(len(parts) - 1, 0, -1):  # the nearest folder above with zarr metadata
        array = folder.joinpath(*parts[:n])
        if (array / "zarr.json").is_file() or (array / ".zarray").is_file():
            break
    else:
        return False
    if (array / "zarr.json").is_file() and _node_type(array) != "array":
        return False
    keys = list(parts[n:])
    if keys[0] == "c":  # zarr v3's default keys (a 0-d array's one chunk is "c" alone)
        keys = keys[1:]
    elif len(keys) == 1:  # zarr v2's: "0.1"
        keys = keys[0].split(".")
    return all(key.isdigit() for key in keys)


def _node_type(folder: Path) -> str | None:
    """``"array"`` or ``"group"``: the node type its ``zarr.json`` gives (``None``: unread)."""
    try:
        return json.loads((folder / "zarr.json").read_text()).get("node_type")
    except (OSError, ValueError, AttributeError):
        return None


#: the attribute each kind of node of a store's layout carries where histoexpr wrote it
_NODE_ATTRIBUTE = {"tissue": "mpp", "tile set": "obs_columns", "features": "record",
                   "results": "columns"}


def _layout(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """What histoexpr writes at ``parts`` (a path inside a store): ``(node type, kind)``.

    ``None`` where it writes nothing (the tables of predictions, checked on their own, aside).
    """
    n, head = len(parts), parts[0] if parts else ""
    if n == 0:
        return "group", "store"
    if head == "labels" and n <= 2:
        return ("group", "labels") if n == 1 else ("array", "tissue")
    if head != "tiles" or n == 1:
        return ("group", "tiles") if parts == ("tiles",) else None
    if n == 2:
        return "group", "tile set"
    sub = parts[2]
    if n == 3:
        kinds = {"boxes": "array", "obs": "group", "features": "group", "results": "group"}
        return (kinds[sub], f"{sub} of a tile set") if sub in kinds else None
    if n == 4 and sub in ("obs", "features", "results"):
        return ("group", "results") if sub == "results" else (
            "array", "obs column" if sub == "obs" else "features")
    if n == 5 and sub == "results" and parts[4] in ("outputs", "attention"):
        return "array", parts[4]
    return None


def _written_here(store: Path, parts: tuple[str, ...]) -> bool:
    """Whether the folder at ``parts`` is the zarr node histoexpr writes there (type, record)."""
    layout = _layout(parts)
    meta = store.joinpath(*parts) / "zarr.json"
    if layout is None or not meta.is_file() or _node_type(meta.parent) != layout[0]:
        return False
    attrs, kind = _attributes(meta.parent), layout[1]
    if kind == "store":
        return isinstance(attrs.get("histoexpr"), dict)
    if kind == "obs column":  # one of the columns its tile set lists
        return parts[3] in (_attributes(store.joinpath(*parts[:2])).get("obs_columns") or [])
    return kind not in _NODE_ATTRIBUTE or _NODE_ATTRIBUTE[kind] in attrs


def store_foreign_parts(store: Path, node: str = "") -> list[str]:
    """What lies at or under ``node`` of a store that histoexpr did not write, by path in it.

    The layout of the store (module :mod:`histoexpr.io._slide_store`) says which zarr node
    histoexpr writes where, of which type and with which record: a folder that is not such a
    node (a folder of the user's, with or without a ``zarr.json``) is listed by every file in
    it (or as ``name/`` when empty); inside a node of the layout, every file that is not part
    of it (metadata, chunks of an array; :func:`_not_zarr_parts`) and every entry that is no
    node of the layout is listed. The tables of predictions are left out (they record their
    own files: :func:`store_check_prediction_replaceable`). Nothing there: ``[]``.
    """
    parts = tuple(Path(node).parts) if node else ()
    start = store.joinpath(*parts)
    if not (start.exists() or start.is_symlink()):
        return []
    out: list[str] = []
    pending = [parts]
    while pending:
        here = pending.pop()
        folder = store.joinpath(*here)
        name = "/".join(here)
        inside = f"{name}/" if name else ""
        if folder.is_symlink() or not folder.is_dir():
            out.append(name)
        elif not _written_here(store, here):
            out += [inside + one for one in _everything(folder)] or [inside]
        elif _layout(here)[0] == "array":  # its zarr.json, its chunks c/<i>/<j>...: no more
            out += [inside + one for one in _everything(folder) if not (
                one == "zarr.json" or one.split("/")[0] == "c" and all(
                    key.isdigit() for key in one.split("/")[1:]))]
        else:
            pending += [(*here, entry.name) for entry in _entries(folder)
                        if here or entry.name != PREDICTIONS]
    return sorted(out)


def store_check_node(store: SlideStore, node: str, *, what: str, fix: str) -> None:
    """Refuse to replace the node ``node`` of a store unless histoexpr wrote all of it.

    Every write that replaces (or removes) a node of a slide store asks this first, while
    planning and again just before its swap: the node must be the zarr node histoexpr writes
    there and hold nothing else (:func:`store_foreign_parts`). Otherwise a ``FileExistsError``
    names the files and says ``fix``; nothing is written.
    """
    found = store_foreign_parts(store._path, node)
    if found:
        slide = store.info.get("slide_id") or store._path.stem
        raise FileExistsError(
            f"{what} in the store of {slide!r} ({store._path / node}) holds what histoexpr did "
            f"not write there: {shown(found, 5)}. histoexpr replaces only the zarr nodes it "
            f"wrote itself, never a file or folder of yours, so nothing was written or "
            f"deleted. {fix}")


def zarr_children(folder: Path, node_type: str) -> list[str]:
    """The names of the zarr arrays (or groups) right inside ``folder``, by their zarr.json.

    Read from the folders themselves, not through zarr, which warns of every folder that is no
    zarr node (a folder of the user's): those are left out, as are links.
    """
    if not folder.is_dir():
        return []
    return sorted(sub.name for sub in folder.iterdir() if sub.is_dir() and not sub.is_symlink()
                  and _node_type(sub) == node_type)


def store_results_model(folder: Path) -> dict[str, Any] | None:
    """The body of :meth:`SlideStore.results_model`: read from the results' ``zarr.json``."""
    if not (folder / "zarr.json").is_file():
        return None
    model = _attributes(folder).get("model")
    return model if isinstance(model, dict) else {}


def store_add_predictions_to(store: SlideStore, sdata: SpatialData) -> SpatialData:
    """The body of :meth:`SlideStore.add_predictions_to`."""
    from .._core.elements import square_shapes

    records = store.prediction_records()
    wanted = [("tables", key) for key in records]
    tiles_keys = {str(record.get("tiles_key")) for record in records.values()}
    wanted += [("shapes", key) for key in sorted(tiles_keys) if key not in sdata.shapes]
    _check_keys_free(sdata, wanted, store._path.name, "add_predictions_to")
    added = []  # every table is read before any is added to sdata
    new_tiles = set()
    for key, record in records.items():
        table = store.prediction(key)
        tiles_key = str(record.get("tiles_key"))
        if tiles_key not in sdata.shapes and tiles_key not in new_tiles:
            centres = np.asarray(table.obsm["spatial"], dtype=float)
            half = float(table.uns["tiles"]["size_um"]) / 2
            boxes = np.hstack([centres - half, centres + half])
            added.append(("shapes", tiles_key,
                          square_shapes(boxes, table.obs["tile_id"].to_numpy())))
            new_tiles.add(tiles_key)
        added.append(("tables", key, table))
    for kind, key, element in added:
        getattr(sdata, kind)[key] = element
    return sdata


def store_items(path: Path) -> list[str]:
    """Everything a store holds that a rewrite of it could lose, as paths inside the store.

    ``labels/<key>``, ``tiles/<tiles_key>`` (its boxes and obs), ``tiles/<tiles_key>/features/
    <key>`` and ``tiles/<tiles_key>/results/<key>``, and whatever else lies in the store's
    folders (a file of the user's, say) by its own path. The tables of predictions are left
    out: a rewrite keeps them. The folders are read as they are, finished or not.
    """
    if not path.is_dir():
        return []
    items = []
    for entry in _entries(path, keep={"predictions"}):
        if entry.name not in ("labels", "tiles") or not entry.is_dir():
            items.append(entry.name)
            continue
        for sub in _entries(entry):
            items.append(f"{entry.name}/{sub.name}")
            if entry.name == "tiles" and sub.is_dir():
                items += _tile_set_items(sub)
    return items


def _tile_set_items(folder: Path) -> list[str]:
    """The items of :func:`store_items` inside a tile set (but the tile set itself)."""
    items = []
    for part in _entries(folder, keep={"boxes", "obs"}):
        if part.name in ("features", "results") and part.is_dir():
            items += [f"tiles/{folder.name}/{part.name}/{one.name}" for one in _entries(part)]
        else:
            items.append(f"tiles/{folder.name}/{part.name}")
    return items


def _entries(folder: Path, keep: set[str] = frozenset()) -> list[Path]:
    """A folder's entries but its ``zarr.json`` (and the names in ``keep``), by name."""
    return sorted(p for p in folder.iterdir() if p.name != "zarr.json" and p.name not in keep)


def describe_item(store: Path, item: str) -> str:
    """An item of :func:`store_items` in words, naming its key (and the step that wrote it)."""
    parts = item.split("/")
    if parts[0] == "labels" and len(parts) == 2:
        return f"the tissue map {parts[1]!r}"
    if parts[0] != "tiles" or len(parts) not in (2, 4) or parts[2:3] not in (
            [], ["features"], ["results"]):
        return f"{item!r}"
    if len(parts) == 2:
        return f"the tiles {parts[1]!r}"
    said = f"the {parts[2]} {parts[3]!r} of the tiles {parts[1]!r}"
    writer = _attributes(store / item).get("writer")
    if isinstance(writer, dict) and writer.get("step"):
        said += f" (written by {writer['step']}" + (
            f" within {writer['within']})" if writer.get("within") else ")")
    return said


def _attributes(folder: Path) -> dict[str, Any]:
    """The attributes of a zarr group or array, read from its ``zarr.json`` (``{}``: none)."""
    try:
        attrs = json.loads((folder / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return attrs if isinstance(attrs, dict) else {}


def _check_keys_free(sdata: SpatialData, wanted: list[tuple[str, str]], store: str,
                     method: str) -> None:
    """Refuse, before anything is added, a name ``sdata`` already uses for an element."""
    from .._core.ownership import element_kind

    taken = [(element_kind(sdata, key), key) for _, key in wanted
             if element_kind(sdata, key) is not None]
    if taken:
        listed = ", ".join(f"sdata.{kind}[{key!r}]" for kind, key in taken)
        verb = "exists" if len(taken) == 1 else "exist"
        raise KeyError(
            f"{listed} already {verb}: SlideStore.{method} would put the elements of the store "
            f"{store} under those names, and it never replaces an element of the section. Add "
            "them to the slide as read afresh (hx.io.read_wsi(path), or cohort[slide_id]), or "
            "rename or delete those elements first. Nothing was added.")


def _write_features(group, key: str, values: np.ndarray, record: dict) -> None:
    array = group.create_array(key, data=values,
                               chunks=(max(1, min(len(values), 4096)), values.shape[1] or 1))
    array.attrs.update({"record": record, "complete": True})


def _ensure_group(path: Path, store: Path) -> None:
    """Make the zarr groups on the way to ``path`` (zarr.json files) where missing.

    ``path`` lies inside the store ``store`` (whose root group exists): the walk up stops there.
    """
    import zarr

    if store not in path.parents and path != store:
        raise ValueError(f"{path} is not inside the slide store {store}.")
    parts = []
    while path != store and not (path / "zarr.json").is_file():
        parts.append(path)
        path = path.parent
    for folder in reversed(parts):
        zarr.open_group(folder, mode="a")


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars and arrays, tuples and paths converted)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
