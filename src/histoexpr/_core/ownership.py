"""Which elements of a SpatialData histoexpr wrote: writer records, key checks, replacing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

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


def _fingerprint(element) -> list:
    """What identifies an element's content cheaply: its shape (rasters), rows (shapes, tables)."""
    from anndata import AnnData

    if isinstance(element, AnnData):
        return [int(element.n_obs), int(element.n_vars)]
    if hasattr(element, "children") and "scale0" in getattr(element, "children", {}):
        return [int(n) for n in next(iter(element["scale0"].data_vars.values())).shape]
    if hasattr(element, "geometry"):
        return [len(element)]
    if hasattr(element, "dims") and hasattr(element, "shape"):
        return [int(n) for n in element.shape]
    return sorted(str(c) for c in getattr(element, "columns", []))


def _own_record(element) -> WriterRecord | None:
    from anndata import AnnData

    holder = element.uns if isinstance(element, AnnData) else getattr(element, "attrs", {})
    return WriterRecord.from_uns(holder.get(WRITER_KEY) if hasattr(holder, "get") else None)


def writer_of(sdata: SpatialData, key: str) -> str | None:
    """The histoexpr step that wrote the element ``key`` (e.g. ``"hx.pp.tile"``), or ``None``.

    An element records its writer in its own ``attrs`` (``uns`` for tables) and in
    ``sdata.attrs["histoexpr"]["written"]`` (which, unlike the attrs of images, labels and points,
    is kept in a .zarr store), with the kind and shape it had, so that an element the user put
    under that name later is not taken for histoexpr's. The element's own record names the
    key it was written under: a copy of it that the user stores under another name (e.g.
    ``sdata["mine"] = sdata["he_tiles"].copy()``) is the user's.
    """
    kind = element_kind(sdata, key)
    if kind is None:
        return None
    element = getattr(sdata, kind)[key]
    record = _own_record(element)
    if record is not None:
        if record.key is not None and record.key != key:
            return None  # a copy, put under another name by the user: the user's element
        return record.step
    attrs = getattr(sdata, "attrs", None) or {}
    written = (attrs.get(WRITER_KEY) or {}).get("written") or {}
    record = written.get(key)
    if (isinstance(record, dict) and record.get("kind") == kind
            and list(record.get("fingerprint", [])) == _fingerprint(element)):
        return str(record.get("step"))
    return None


def store_element(sdata: SpatialData, kind: str, key: str, element, *, step: str) -> None:
    """Put ``element`` at ``sdata.<kind>[key]``, recording that histoexpr's ``step`` wrote it.

    The record lets a later ``overwrite=True`` of the same step replace it (and nothing else):
    see :func:`check_key_free`. Call ``check_key_free`` first. Inside
    ``_core.records.made_within(name)`` the record also says ``within=name``.
    """
    from anndata import AnnData

    writer = WriterRecord.now(step, key)
    record = writer.to_uns()
    if isinstance(element, AnnData):
        element.uns[WRITER_KEY] = record
    else:
        element.attrs[WRITER_KEY] = record
    getattr(sdata, kind)[key] = element
    attrs = sdata.attrs
    mine = dict(attrs.get(WRITER_KEY) or {})
    written = dict(mine.get("written") or {})
    written[key] = {"kind": kind, "step": step, "fingerprint": _fingerprint(element)}
    if writer.within is not None:
        written[key]["within"] = writer.within
    mine["written"] = written
    attrs[WRITER_KEY] = mine


def check_key_writable(sdata: SpatialData, key: str, *, overwrite: bool,
                       step: str | None = None, name: str = "key_added") -> bool:
    """Raise unless ``key`` is free, or ``overwrite`` and it holds what ``step`` wrote before.

    Returns whether an element would be replaced. Nothing is deleted (see
    :func:`check_key_free`): call this before any work, so that a bad key fails at once; a
    key SpatialData would refuse as a name fails here too (``name``: the parameter that gave
    it, for the message). ``step=None`` (older callers) accepts an element written by any
    histoexpr step.
    """
    from .validate import check_bool, check_element_name

    check_bool("overwrite", overwrite)
    check_element_name(name, key)
    kind = element_kind(sdata, key)
    if kind is None:
        return False
    writer = writer_of(sdata, key)
    same = writer is not None and (step is None or writer == step)
    if not same:
        origin = (f"it was written by {writer}" if writer is not None
                  else "it was not written by histoexpr")
        doer = step or "a histoexpr step"
        raise KeyError(
            f"sdata.{kind}[{key!r}] already exists and {origin}, not by {doer}: it is not "
            f"replaced, even with overwrite=True (which only replaces what the same step "
            f"wrote). Choose another key_added, e.g. {_free_name(sdata, key)!r}."
        )
    if not overwrite:
        raise KeyError(
            f"sdata.{kind}[{key!r}] already exists (written by {writer}). Pass overwrite=True "
            "to replace it, or choose another key_added."
        )
    return True


def check_key_free(sdata: SpatialData, key: str, *, overwrite: bool,
                   step: str | None = None) -> None:
    """Make ``key`` free for ``step``'s new element, or raise a clear ``KeyError``.

    Element names are unique across all kinds in a SpatialData, so any kind is checked. An
    existing element is deleted only when ``overwrite=True`` and it was written by the same
    ``step`` (see :func:`store_element`); an element of the user's, of a reader or of another
    step is never replaced: the error suggests another key. ``step=None`` (older callers)
    replaces only an element that some histoexpr step wrote.
    """
    if check_key_writable(sdata, key, overwrite=overwrite, step=step):
        kind = element_kind(sdata, key)
        logger.info("Overwriting `sdata.%s[%r]` (written by %s)", kind, key,
                    writer_of(sdata, key))
        del getattr(sdata, kind)[key]


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
