"""Which elements of a SpatialData histoexpr wrote: writer records, key checks, replacing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

from .logs import logger
from .records import WRITER_KEY, WriterRecord

if TYPE_CHECKING:
    from spatialdata import SpatialData


_ELEMENT_KINDS = ("images", "labels", "points", "shapes", "tables")


def element_kind(sdata: SpatialData, key: str) -> str | None:
    """Name of the SpatialData attribute (``"images"``, ``"shapes"``...) that holds ``key``."""
    for kind in _ELEMENT_KINDS:
        if key in getattr(sdata, kind):
            return kind
    return None


def require_element(sdata: SpatialData, key: str, kind: str) -> None:
    """Raise a clear ``KeyError`` when ``sdata.<kind>[key]`` does not exist.

    Something that is not a SpatialData (a numpy array, a path, an AnnData) is a
    ``TypeError`` naming what to pass instead.
    """
    require_spatialdata(sdata)
    container = getattr(sdata, kind)
    if key not in container:
        available = ", ".join(repr(k) for k in container.keys()) or "none"
        raise KeyError(f"sdata.{kind} has no element {key!r}; available: {available}.")


def require_spatialdata(sdata: object, name: str = "sdata") -> None:
    """Raise a ``TypeError`` naming what to pass when ``sdata`` is not a SpatialData."""
    from spatialdata import SpatialData

    if isinstance(sdata, SpatialData):
        return
    kind = type(sdata).__name__
    hint = ""
    if kind == "ndarray":
        hint = (" For an image array, wrap it first: hx.io.read_wsi(path) reads a slide file, "
                "or make one with spatialdata.SpatialData(images={'he': "
                "spatialdata.models.Image2DModel.parse(array, dims=('c', 'y', 'x'), "
                "transformations={'global': spatialdata.transformations.Scale([mpp, mpp], "
                "axes=('y', 'x'))})}), its pixel size in um/px stated.")
    elif isinstance(sdata, str) or kind.endswith("Path"):
        hint = " Read the file first: hx.io.read_wsi(path) or spatialdata.read_zarr(path)."
    raise TypeError(f"{name} must be a SpatialData (a section or slide), got a {kind}.{hint}")


#: the kinds of element whose own ``attrs`` a .zarr store does not keep: only their writer's
#: record in ``sdata.attrs`` (with a digest of their content) can say histoexpr wrote them
_ATTRS_LOST_ON_WRITE = ("images", "labels", "points")
#: rasters of up to this many values are digested whole; larger ones by a few windows
_WHOLE_RASTER = 1 << 22
#: side (px) of each window, and windows per side of the grid of windows, of a large raster
_WINDOW_PX, _WINDOWS_PER_SIDE = 32, 3
#: rows of a table, shapes or points digested (spread evenly over them)
_SAMPLED_ROWS = 1000
#: the form of a fingerprint (an earlier version recorded a list: a shape or a row count)
_FINGERPRINT_FORM = "v2"


def _fingerprint(element) -> str:
    """A digest of an element's content, cheap on large elements.

    A raster: its shape, type and values (whole up to :data:`_WHOLE_RASTER` values, else a grid
    of small windows of the full-resolution level and, for a multiscale image, its coarsest
    level). A table: its size and (a sample of) its row and column names; shapes: their number,
    (a sample of) their index and coordinates; points: their columns and first rows. What a step
    adds to an element later (a column, a matrix of features) is not part of it.
    """
    import hashlib

    from anndata import AnnData

    digest = hashlib.sha1()

    def add(*parts) -> None:
        for part in parts:
            digest.update(part if isinstance(part, bytes) else str(part).encode())
            digest.update(b"\0")

    if isinstance(element, AnnData):
        add("table", element.n_obs, element.n_vars)
        add(*_sampled(element.obs_names.to_numpy()), "|", *_sampled(element.var_names.to_numpy()))
    elif _raster_levels(element):
        levels = _raster_levels(element)
        add("raster", tuple(int(n) for n in levels[0].shape), levels[0].dtype)
        _add_raster(add, levels[0])
        if len(levels) > 1 and levels[-1].size <= _WHOLE_RASTER:
            add(np.ascontiguousarray(np.asarray(levels[-1])).tobytes())
    elif hasattr(element, "geometry"):
        import shapely

        rows = _rows(len(element))
        add("shapes", len(element), *(str(v) for v in element.index.to_numpy()[rows]))
        coordinates = shapely.get_coordinates(np.asarray(element.geometry.to_numpy())[rows])
        add(np.ascontiguousarray(coordinates, dtype=np.float64).tobytes())
        if "radius" in element.columns:
            add(np.ascontiguousarray(element["radius"].to_numpy()[rows], dtype=np.float64)
                .tobytes())
    else:
        columns = [str(c) for c in getattr(element, "columns", [])]
        add("points", *columns)
        try:  # the first rows (one partition of a dask frame is read)
            import pandas as pd

            head = element.head(100) if not hasattr(element, "npartitions") else element.head(
                100, npartitions=1)
            add(pd.util.hash_pandas_object(head, index=False).to_numpy().tobytes())
        except Exception:  # noqa: BLE001 (a frame that cannot be read: its columns alone)
            pass
    return f"{_FINGERPRINT_FORM}:{digest.hexdigest()}"


def _rows(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, max(n - 1, 0), min(n, _SAMPLED_ROWS)).astype(np.int64))


def _sampled(values: np.ndarray) -> list[str]:
    return [str(v) for v in np.asarray(values)[_rows(len(values))]] if len(values) else []


def _raster_levels(element) -> list:
    """The arrays of a raster element, full resolution first (``[]``: not a raster)."""
    children = getattr(element, "children", None)
    if children is not None and "scale0" in children:
        levels = []
        for name in sorted(children, key=lambda n: int(n[5:]) if n[5:].isdigit() else 0):
            variables = list(element[name].data_vars.values())
            if variables:
                levels.append(variables[0].data)
        return levels
    if hasattr(element, "dims") and hasattr(element, "shape") and hasattr(element, "data"):
        return [element.data]
    return []


def _add_raster(add, array) -> None:
    """Digest a raster's values: whole when small, else a grid of windows (a few chunks read)."""
    if array.size <= _WHOLE_RASTER or array.ndim < 2:
        add(np.ascontiguousarray(np.asarray(array)).tobytes())
        return
    height, width = int(array.shape[-2]), int(array.shape[-1])
    half = _WINDOW_PX // 2
    for i in range(_WINDOWS_PER_SIDE):
        y0 = min(max(int((i + 0.5) * height / _WINDOWS_PER_SIDE) - half, 0),
                 max(height - _WINDOW_PX, 0))
        for j in range(_WINDOWS_PER_SIDE):
            x0 = min(max(int((j + 0.5) * width / _WINDOWS_PER_SIDE) - half, 0),
                     max(width - _WINDOW_PX, 0))
            window = array[..., y0 : y0 + _WINDOW_PX, x0 : x0 + _WINDOW_PX]
            add(np.ascontiguousarray(np.asarray(window)).tobytes())


def _own_record(element) -> WriterRecord | None:
    raw = _own_raw(element)
    return None if raw is None else WriterRecord.from_uns(raw)


def _own_raw(element) -> dict | None:
    """The writer record an element carries itself (its ``attrs``, a table's ``uns``), as stored."""
    from anndata import AnnData

    holder = element.uns if isinstance(element, AnnData) else getattr(element, "attrs", {})
    value = holder.get(WRITER_KEY) if hasattr(holder, "get") else None
    return dict(value) if isinstance(value, Mapping) and "step" in value else None


def _written(sdata: SpatialData, key: str, kind: str) -> dict | None:
    """The record of ``key`` in ``sdata.attrs["histoexpr"]["written"]``, if it is of this kind."""
    attrs = getattr(sdata, "attrs", None) or {}
    mine = attrs.get(WRITER_KEY)
    written = mine.get("written") if isinstance(mine, Mapping) else None
    record = written.get(key) if isinstance(written, Mapping) else None
    return dict(record) if isinstance(record, Mapping) and record.get("kind") == kind else None


def _writer_record(sdata: SpatialData, key: str) -> dict | None:
    """What histoexpr recorded about the element ``key`` it wrote, or ``None`` (not its own).

    A dict with ``step`` and, where recorded, ``key``, ``within``, ``model`` (the kind of
    model a prediction came from) and ``group`` (the ``key_added`` of the call that wrote it).
    """
    kind = element_kind(sdata, key)
    if kind is None:
        return None
    element = getattr(sdata, kind)[key]
    written = _written(sdata, key, kind)
    content = written.get("fingerprint") if written is not None else None
    own = _own_raw(element)
    if own is not None:
        if own.get("key") is not None and str(own["key"]) != key:
            return None  # a copy, put under another name by the user: the user's element
        if isinstance(content, str) and content != _fingerprint(element):
            return None  # another element, put under the key of the one histoexpr wrote
        extra = {k: written[k] for k in ("model", "group") if written is not None and k in written
                 and written.get("step") == own.get("step")}
        return {**extra, **own}
    if kind not in _ATTRS_LOST_ON_WRITE or not isinstance(content, str):
        return None
    return written if content == _fingerprint(element) else None


def _unconfirmed_step(sdata: SpatialData, key: str) -> str | None:
    """The step an earlier version recorded for ``key`` where that record cannot be confirmed.

    Its fingerprint (a shape or a row count) cannot tell the element histoexpr wrote from
    another put under that key since; ``None`` where there is no such record.
    """
    kind = element_kind(sdata, key)
    written = None if kind is None else _written(sdata, key, kind)
    if written is None or isinstance(written.get("fingerprint"), str):
        return None
    if _own_raw(getattr(sdata, kind)[key]) is not None:
        return None
    return str(written.get("step"))


def _describe(step: str | None, model: str | None = None, group: str | None = None) -> str:
    """A writer in words: ``hx.tl.predict (a spot_regressor model, key_added='pred')``."""
    if step is None:
        return "a histoexpr step"
    details = [f"a {model} model"] if model is not None else []
    if group is not None:
        details.append(f"key_added={group!r}")
    return step + (f" ({', '.join(details)})" if details else "")


def writer_of(sdata: SpatialData, key: str) -> str | None:
    """The histoexpr step that wrote the element ``key`` (e.g. ``"hx.pp.tile"``), or ``None``.

    An element records its writer in its own ``attrs`` (``uns`` for tables) and in
    ``sdata.attrs["histoexpr"]["written"]`` (which, unlike the attrs of images, labels and points,
    is kept in a .zarr store), with its kind and a digest of its content (see
    :func:`_fingerprint`), so that an element put under that name later is not taken for
    histoexpr's: not one of another content (the record outlives ``del``), nor, for images,
    labels and points read from a store, one of the same shape. The element's own record names
    the key it was written under: a copy of it that the user stores under another name (e.g.
    ``sdata["mine"] = sdata["he_tiles"].copy()``) is the user's. Only images, labels and points
    are taken for histoexpr's on the record in ``sdata.attrs`` alone (their own is lost on
    write); a table or shapes without a record of their own are not histoexpr's.
    """
    record = _writer_record(sdata, key)
    return None if record is None else str(record["step"])


def store_element(sdata: SpatialData, kind: str, key: str, element, *, step: str,
                  model: str | None = None, group: str | None = None) -> None:
    """Put ``element`` at ``sdata.<kind>[key]``, recording that histoexpr's ``step`` wrote it.

    The record lets a later ``overwrite=True`` of the same step replace it (and nothing else):
    see :func:`check_keys_writable` and :func:`replace_elements` (which calls this). Inside
    ``_core.records.made_within(name)`` the record also says ``within=name``. ``model`` (the
    kind of model, for ``hx.tl.predict``) and ``group`` (the ``key_added`` of the call, which
    may write several elements) are recorded too where given: only a call of the same kind of
    model and the same ``key_added`` replaces them.
    """
    from anndata import AnnData

    writer = WriterRecord.now(step, key)
    record = writer.to_uns()
    details = {name: value for name, value in (("model", model), ("group", group))
               if value is not None}
    record.update(details)
    if isinstance(element, AnnData):
        element.uns[WRITER_KEY] = record
    else:
        element.attrs[WRITER_KEY] = record
    getattr(sdata, kind)[key] = element
    attrs = sdata.attrs
    mine = dict(attrs.get(WRITER_KEY) or {})
    written = dict(mine.get("written") or {})
    written[key] = {"kind": kind, "step": step, "fingerprint": _fingerprint(element), **details}
    if kind in _ATTRS_LOST_ON_WRITE and (kept := _records_in_attrs(element)):
        written[key]["attrs"] = kept
    if writer.within is not None:
        written[key]["within"] = writer.within
    mine["written"] = written
    attrs[WRITER_KEY] = mine


def _records_in_attrs(element) -> dict:
    """The records histoexpr put in an element's ``attrs`` (plain mappings), bar its writer's."""
    import json

    kept = {}
    for name, value in getattr(element, "attrs", {}).items():
        if name in (WRITER_KEY, "transform") or not isinstance(value, Mapping):
            continue
        try:
            kept[name] = json.loads(json.dumps(dict(value)))
        except (TypeError, ValueError):
            continue  # not a record a .zarr store could keep
    return kept


def element_record(sdata: SpatialData, key: str, name: str) -> dict | None:
    """The record ``name`` a histoexpr step put in the ``attrs`` of element ``key``, or ``None``.

    An image, label map or points element read from a .zarr store has lost its ``attrs``; its
    records are then taken from the copy :func:`store_element` kept in ``sdata.attrs``, only
    while the element still holds the content they were made with (its digest): an element
    put under that key since has no record.
    """
    kind = element_kind(sdata, key)
    if kind is None:
        return None
    element = getattr(sdata, kind)[key]
    own = getattr(element, "attrs", {}).get(name)
    if isinstance(own, Mapping):
        return dict(own)
    written = _written(sdata, key, kind)
    if kind not in _ATTRS_LOST_ON_WRITE or written is None:
        return None
    kept = (written.get("attrs") or {}).get(name)
    if not isinstance(kept, Mapping) or written.get("fingerprint") != _fingerprint(element):
        return None
    return dict(kept)


def check_key_writable(sdata: SpatialData, key: str, *, overwrite: bool,
                       step: str | None = None, name: str = "key_added",
                       model: str | None = None, group: str | None = None) -> bool:
    """Raise unless ``key`` is free, or ``overwrite`` and it holds what ``step`` wrote before.

    Returns whether an element would be replaced. Nothing is deleted: call this (or
    :func:`check_keys_writable`) before any work, so that a bad key fails at once, and
    :func:`replace_elements` at the end. A key SpatialData would refuse as a name fails here too
    (``name``: the parameter that gave it, for the message). ``step=None`` (older callers)
    accepts an element written by any histoexpr step. With ``model`` (the kind of model of a
    prediction) and ``group`` (the call's ``key_added``), only an element recorded with the
    same ones is replaced; one an earlier version recorded without them is refused, naming the
    fix.
    """
    from .validate import check_bool, check_element_name

    check_bool("overwrite", overwrite)
    check_element_name(name, key)
    kind = element_kind(sdata, key)
    if kind is None:
        return False
    record = _writer_record(sdata, key)
    other = f"Choose another key_added, e.g. {_free_name(sdata, key)!r}."
    if record is None:
        earlier = _unconfirmed_step(sdata, key)
        if earlier is not None:
            raise KeyError(
                f"sdata.{kind}[{key!r}] already exists, and the record an earlier version of "
                f"histoexpr made of it (written by {earlier}) cannot tell it from an element put "
                f"under that name since: it is not replaced, even with overwrite=True. If it is "
                f"the one {earlier} wrote, delete it first (del sdata.{kind}[{key!r}]); else "
                f"{other[0].lower()}{other[1:]}")
        raise KeyError(
            f"sdata.{kind}[{key!r}] already exists and it was not written by histoexpr, not by "
            f"{_describe(step, model, group)}: it is not replaced, even with overwrite=True "
            f"(which only replaces what the same step wrote). {other}")
    theirs = str(record["step"])
    if step is not None and theirs != step:
        raise KeyError(
            f"sdata.{kind}[{key!r}] already exists and it was written by {theirs}, not by "
            f"{step}: it is not replaced, even with overwrite=True (which only replaces what the "
            f"same step wrote). {other}")
    their_model, their_group = record.get("model"), record.get("group")
    if step is not None and model is not None and their_model is None:
        raise KeyError(
            f"sdata.{kind}[{key!r}] already exists and it was written by {theirs} of an earlier "
            f"version of histoexpr, which did not record the kind of model: it may be the output "
            f"of another kind of model than this {model}, so it is not replaced, even with "
            f"overwrite=True. If it is this model's output, delete it first (del "
            f"sdata.{kind}[{key!r}]); else {other[0].lower()}{other[1:]}")
    if step is not None and ((model is not None and their_model != model)
                             or (group is not None and their_group is not None
                                 and their_group != group)):
        raise KeyError(
            f"sdata.{kind}[{key!r}] already exists and it was written by "
            f"{_describe(theirs, their_model, their_group)}, not by "
            f"{_describe(step, model, group)}: it is not replaced, even with overwrite=True "
            f"(which only replaces what the same step wrote, for the same kind of model and "
            f"key_added). {other}")
    if not overwrite:
        raise KeyError(
            f"sdata.{kind}[{key!r}] already exists (written by "
            f"{_describe(theirs, their_model, their_group)}). Pass overwrite=True to replace it, "
            "or choose another key_added."
        )
    return True


def check_keys_writable(sdata: SpatialData, keys, *, overwrite: bool, step: str,
                        model: str | None = None, group: str | None = None,
                        name: str = "key_added") -> list[str]:
    """Check every key a call will write (see :func:`check_key_writable`); delete nothing.

    Call it first, whatever ``overwrite`` is, before any work; raises at the first key that may
    not be written. Returns the keys that hold an element the call would replace.
    """
    replaced = []
    for key in dict.fromkeys(keys):
        if check_key_writable(sdata, key, overwrite=overwrite, step=step, name=name,
                              model=model, group=group):
            replaced.append(key)
    return replaced


def replace_elements(sdata: SpatialData, elements, *, overwrite: bool, step: str,
                     model: str | None = None, group: str | None = None) -> None:
    """Store the elements a call made, replacing (only) what the same step wrote before.

    ``elements``: ``(kind, key, element)`` triples, made in full before this is called. Every
    key is checked again (:func:`check_keys_writable`) before anything is deleted or stored, so
    that a refused call leaves ``sdata`` as it was; then each existing element is deleted and the
    new one stored (:func:`store_element`). Call :func:`check_keys_writable` at the start of the
    call too, so that a bad key fails before any work.
    """
    elements = list(elements)
    replaced = set(check_keys_writable(sdata, [key for _, key, _ in elements],
                                       overwrite=overwrite, step=step, model=model, group=group))
    for kind, key, element in elements:
        if key in replaced:
            old = element_kind(sdata, key)
            logger.info("Overwriting `sdata.%s[%r]` (written by %s)", old, key,
                        writer_of(sdata, key))
            del getattr(sdata, old)[key]
        store_element(sdata, kind, key, element, step=step, model=model, group=group)


def discard_element(sdata: SpatialData, key: str) -> None:
    """Remove the element ``key`` that the running call itself has just stored, and its record.

    For a call that refuses after one of its steps stored an element (e.g. ``hx.pp.tile``
    detecting the tissue map and then finding no tile on tissue): the refused call leaves
    ``sdata`` as it found it. Only for an element stored in this same call.
    """
    kind = element_kind(sdata, key)
    if kind is None:
        return
    del getattr(sdata, kind)[key]
    mine = dict(sdata.attrs.get(WRITER_KEY) or {})
    written = dict(mine.get("written") or {})
    if written.pop(key, None) is not None:
        mine["written"] = written
        if written or set(mine) != {"written"}:
            sdata.attrs[WRITER_KEY] = mine
        else:
            del sdata.attrs[WRITER_KEY]
    logger.info("Removed `sdata.%s[%r]`, written by this refused call.", kind, key)


@contextlib.contextmanager
def undone_on_error(sdata: SpatialData) -> Iterator[None]:
    """Elements added inside the block are removed again if the block raises.

    For a step that runs other steps (tissue detection, tiling) before a check that can only be
    made on their results: a refused (or interrupted) call leaves ``sdata`` as it found it.
    Elements that existed before the block are never touched.
    """
    before = {(kind, key) for kind in _ELEMENT_KINDS for key in getattr(sdata, kind).keys()}
    try:
        yield
    except BaseException:
        for kind in _ELEMENT_KINDS:
            for key in [k for k in getattr(sdata, kind).keys() if (kind, k) not in before]:
                discard_element(sdata, key)
        raise


def _free_name(sdata: SpatialData, key: str) -> str:
    for i in range(2, 1000):
        name = f"{key}_{i}"
        if element_kind(sdata, name) is None:
            return name
    return f"{key}_new"
