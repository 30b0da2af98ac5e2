"""Typed records that join the rooms: tiles, embeddings, model metadata and writers.

What a step records about what it made is a frozen dataclass here; it is stored as a plain
dict (in a table's ``uns``, in a slide store's attributes, in a model file's metadata):

- :class:`TileRecord`: ``uns["tiles"]`` of a tile table (how the tiles were made);
- :class:`EmbeddingRecord`: ``uns["embeddings"][key]`` of a tile table (how features were made);
- :class:`ModelMetadata`: the part of a model's ``metadata`` that says which tiles it reads;
- :class:`WriterRecord`: which histoexpr step wrote an element (``attrs``/``uns["histoexpr"]``),
  and on behalf of which step (``within``, see :func:`made_within`).

Each has ``to_uns()`` (the dict stored, in the current form) and ``from_uns()`` (which reads
every form an earlier version stored: e.g. a model file's ``patch_um``, the ``made_by`` stamps);
tiles and embeddings have ``differences(wanted)``, which every reuse check asks, and which names
the field of each difference. This module imports nothing of histoexpr.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from typing import Any

#: where histoexpr records which step wrote an element: ``attrs``/``uns`` key and sdata.attrs key
WRITER_KEY = "histoexpr"
#: relative difference of two pixel sizes or two tile widths below which they count as the same
RELATIVE_TOLERANCE = 0.05
#: names an earlier version gave the tile side in um in model metadata (now ``size_um``)
OLD_SIZE_NAMES = ("patch_um", "tile_um", "patch_size_um")

_WITHIN: ContextVar[str | None] = ContextVar("histoexpr_within", default=None)


@contextmanager
def made_within(name: str) -> Iterator[None]:
    """What histoexpr writes inside is recorded as made on behalf of ``name``.

    E.g. the spot regressor tiles and embeds sections for itself: the writer records of those
    tiles and features say ``within="spot_regressor"``, so that it remakes them (and nothing
    else) when it needs them made otherwise.
    """
    token = _WITHIN.set(name)
    try:
        yield
    finally:
        _WITHIN.reset(token)


def current_within() -> str | None:
    """The name given to the innermost :func:`made_within`, or ``None`` outside one."""
    return _WITHIN.get()


@dataclass(frozen=True)
class WriterRecord:
    """Which histoexpr step wrote an element (``step``), under which key, on whose behalf."""

    step: str
    key: str | None = None
    within: str | None = None

    @classmethod
    def now(cls, step: str, key: str | None) -> WriterRecord:
        """The record of ``step`` writing ``key`` here (inside :func:`made_within` or not)."""
        return cls(step, key, current_within())

    def to_uns(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step}
        if self.key is not None:
            out["key"] = self.key
        if self.within is not None:
            out["within"] = self.within
        return out

    @classmethod
    def from_uns(cls, value: Any) -> WriterRecord | None:
        """The record stored (``None`` for anything that is not one)."""
        if not isinstance(value, Mapping) or "step" not in value:
            return None
        key, within = value.get("key"), value.get("within")
        return cls(
            str(value["step"]),
            None if key is None else str(key),
            None if within is None else str(within),
        )


#: ``uns[BAG_OUTPUTS][key]`` of a tile table: the per-tile outputs a slide-level model's predict
#: wrote under ``key`` (its writer record and the entries it lists)
BAG_OUTPUTS = "bag_outputs"


def bag_output_entries(key: str) -> dict[str, list[str]]:
    """The ``obs`` columns and ``obsm`` keys of a tile table that bag models' predict writes."""
    return {"obs": [f"{key}_attention"],
            "obsm": [key, f"{key}_attention", f"{key}_contribution"]}


def bag_outputs_record(writer: WriterRecord, key: str) -> dict[str, Any]:
    """The ``uns[BAG_OUTPUTS][key]`` entry saying ``writer`` wrote the outputs under ``key``."""
    return {WRITER_KEY: writer.to_uns(), **bag_output_entries(key)}


def within_of(uns: Mapping[str, Any]) -> str | None:
    """On whose behalf the table with this ``uns`` was written (``None``: on no one's).

    Read from its writer record; a table written by an earlier version has it as
    ``uns["tiles"]["made_by"]``.
    """
    writer = WriterRecord.from_uns(uns.get(WRITER_KEY))
    if writer is not None and writer.within is not None:
        return writer.within
    tiles = uns.get("tiles")
    made_by = tiles.get("made_by") if isinstance(tiles, Mapping) else None
    return None if made_by is None else str(made_by)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _close(a: float, b: float) -> bool:
    return math.isfinite(a) and abs(a - b) <= RELATIVE_TOLERANCE * b


@dataclass(frozen=True)
class TileRecord:
    """How tiles were made: ``uns["tiles"]`` of their table.

    ``size_px`` pixels of ``mpp`` um/px cover ``size_um``; ``stride_um`` is ``None`` for tiles
    centred on shapes (``centres``, their key); ``min_tissue`` and ``source`` (a file the tiles
    were read from) where known. ``extra`` keeps other keys found in a stored record.
    """

    image_key: str | None = None
    size_px: int | None = None
    mpp: float | None = None
    size_um: float | None = None
    stride_um: float | None = None
    centres: str | None = None
    min_tissue: float | None = None
    source: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_uns(self) -> dict[str, Any]:
        out = {
            "image_key": self.image_key,
            "size_px": self.size_px,
            "mpp": self.mpp,
            "size_um": self.size_um,
            "stride_um": self.stride_um,
            "centres": self.centres,
            "min_tissue": self.min_tissue,
        }
        if self.source is not None:
            out["source"] = self.source
        return {**out, **self.extra}

    @classmethod
    def from_uns(cls, value: Mapping[str, Any]) -> TileRecord:
        """Read ``uns["tiles"]``, leaving out the ``made_by`` of earlier versions.

        That stamp is read by :func:`within_of`.
        """
        if not isinstance(value, Mapping):
            raise TypeError(f"uns['tiles'] must be a mapping, got {type(value).__name__}.")
        known = {f.name for f in fields(cls)} - {"extra"}
        size_px = value.get("size_px")
        return cls(
            image_key=_text(value.get("image_key")),
            size_px=None if size_px is None else int(size_px),
            mpp=_number(value.get("mpp")),
            size_um=_number(value.get("size_um")),
            stride_um=_number(value.get("stride_um")),
            centres=_text(value.get("centres")),
            min_tissue=_number(value.get("min_tissue")),
            source=_text(value.get("source")),
            extra={k: v for k, v in value.items() if k not in known and k != "made_by"},
        )

    def read_at(self, mpp: float, *, size_um: float | None = None) -> TileRecord:
        """The same tiles read at about ``mpp``: ``size_px`` pixels that cover ``size_um``.

        ``size_um`` defaults to the tiles' own width (a model reads them at its own width).
        """
        width = self.size_um if size_um is None else size_um
        size_px = round(width / mpp)
        return replace(self, mpp=float(width / size_px), size_px=size_px)

    def differences(self, wanted: TileRecord, *, exact: bool = False) -> list[str]:
        """How these tiles differ from ``wanted`` (``[]``: alike), one text per field, naming it.

        Only the fields ``wanted`` sets are compared; widths and pixel sizes within 5 % count
        as the same. An image or centres key this record lacks (an older record) is not held
        against it.

        ``exact=True`` compares two records of tile *options* as they were given (e.g. those a
        slide store was made with and those asked now): every field, ``None`` (the default)
        included, and the keys of ``extra`` too, without tolerance.
        """
        if exact:
            return self._exact_differences(wanted)
        out = []
        if wanted.size_um is not None and not _close(_nan(self.size_um), wanted.size_um):
            out.append(f"size_um: {_fmt(self.size_um)} um wide, not {wanted.size_um:g} um")
        if wanted.mpp is not None and not _close(_nan(self.mpp), wanted.mpp):
            out.append(f"mpp: at {_fmt(self.mpp, '.4g')} um/px, not {wanted.mpp:.4g} um/px")
        if wanted.size_px is not None and self.size_px != wanted.size_px:
            out.append(f"size_px: {self.size_px} px, not {wanted.size_px}")
        for name in ("image_key", "centres"):
            mine, theirs = getattr(self, name), getattr(wanted, name)
            if theirs is not None and mine is not None and mine != theirs:
                out.append(f"{name}: {mine!r}, not {theirs!r}")
        for name in ("stride_um", "min_tissue"):
            mine, theirs = getattr(self, name), getattr(wanted, name)
            if theirs is not None and (mine is None or not math.isclose(mine, theirs)):
                out.append(f"{name}: {mine!r}, not {theirs!r}")
        return out

    def _exact_differences(self, wanted: TileRecord) -> list[str]:
        out = []
        for name in (f.name for f in fields(self) if f.name != "extra"):
            mine, theirs = getattr(self, name), getattr(wanted, name)
            if mine != theirs:
                out.append(f"{name}: {mine!r}, not {theirs!r}")
        for name in sorted(set(self.extra) | set(wanted.extra)):
            mine, theirs = self.extra.get(name), wanted.extra.get(name)
            if canonical(mine) != canonical(theirs):
                out.append(f"{name}: {mine!r}, not {theirs!r}")
        return out


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _fmt(value: float | None, spec: str = "g") -> str:
    return "not recorded" if value is None else format(float(value), spec)


def canonical(value: Any) -> str:
    """A recorded value as text that survives a round trip through ``uns`` (arrays as lists)."""

    def plain(item: Any) -> Any:
        return item.tolist() if hasattr(item, "tolist") else str(item)

    return json.dumps(value, sort_keys=True, default=plain)


_EMBEDDING_ORDER = (
    "encoder",
    "fingerprint",
    "image_key",
    "mpp",
    "size_px",
    "n_off_image",
    "transform",
    "parts",
    "feature_names",
    "source",
    "n_features",
    "params",
    "created",
)


@dataclass(frozen=True)
class EmbeddingRecord:
    """How features of tiles were made: ``uns["embeddings"][key]`` of their table.

    The encoder's name and ``fingerprint`` (a digest of its file or weights), the image, the
    tiles' ``mpp`` and ``size_px``, the ``transform`` applied to tiles first (e.g. a stain
    normalisation's spec), and ``writer``, the step that wrote them (see :class:`WriterRecord`).
    """

    encoder: str | None = None
    fingerprint: str | None = None
    image_key: str | None = None
    mpp: float | None = None
    size_px: int | None = None
    n_off_image: int | None = None
    transform: Any = None
    parts: Mapping[str, int] | None = None
    feature_names: list[str] | None = None
    source: str | None = None
    n_features: int | None = None
    params: Any = None
    created: float | None = None
    writer: WriterRecord | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def within(self) -> str | None:
        """On whose behalf the features were made (see :func:`made_within`)."""
        return None if self.writer is None else self.writer.within

    def to_uns(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _EMBEDDING_ORDER:
            value = getattr(self, name)
            if value is not None or name in (
                "encoder",
                "fingerprint",
                "image_key",
                "mpp",
                "size_px",
            ):
                out[name] = value
        if self.writer is not None:
            out[WRITER_KEY] = self.writer.to_uns()
        return {**out, **self.extra}

    @classmethod
    def from_uns(cls, value: Mapping[str, Any]) -> EmbeddingRecord:
        """Read a record; the ``made_by`` stamp of earlier versions becomes ``writer.within``."""
        if not isinstance(value, Mapping):
            raise TypeError(f"an embedding record must be a mapping, got {type(value).__name__}.")
        writer = WriterRecord.from_uns(value.get(WRITER_KEY))
        if writer is None and value.get("made_by") is not None:
            writer = WriterRecord("hx.tl.embed", None, str(value["made_by"]))
        known = set(_EMBEDDING_ORDER) | {WRITER_KEY, "made_by"}

        def integer(name: str) -> int | None:
            return None if value.get(name) is None else int(value[name])

        return cls(
            encoder=_text(value.get("encoder")),
            fingerprint=_text(value.get("fingerprint")),
            image_key=_text(value.get("image_key")),
            mpp=_number(value.get("mpp")),
            size_px=integer("size_px"),
            n_off_image=integer("n_off_image"),
            transform=value.get("transform"),
            parts=value.get("parts"),
            feature_names=value.get("feature_names"),
            source=_text(value.get("source")),
            n_features=integer("n_features"),
            params=value.get("params"),
            created=_number(value.get("created")),
            writer=writer,
            extra={k: v for k, v in value.items() if k not in known},
        )

    def differences(
        self,
        wanted: EmbeddingRecord,
        *,
        fields: Collection[str] | None = None,
        across_sections: bool = False,
    ) -> list[str]:
        """How these features differ from ``wanted`` (``[]``: alike), naming each field.

        The encoder is compared by ``fingerprint`` where both have one, else by name; pixel
        sizes within 5 % count as the same; the ``transform`` is always compared (none is one).

        ``fields`` restricts the comparison to those of :data:`COMPARED_FIELDS` (e.g. the
        fields a stored record has: one it lacks is not held against it); ``"params"``, the
        parameters a step recorded, is compared only when named here. ``across_sections=True``
        compares features of different sections (the slides of a cohort, or a model's training
        sections and a new one): their image keys are not compared, and of a transform only
        what the sections share (see :func:`shared_transform`).
        """
        chosen = set(DEFAULT_FIELDS if fields is None else fields)
        unknown = chosen - set(COMPARED_FIELDS)
        if unknown:
            raise ValueError(
                f"EmbeddingRecord.differences compares {COMPARED_FIELDS}, not {sorted(unknown)}."
            )
        if across_sections:
            chosen.discard("image_key")
        out = []
        fingerprints = self.fingerprint is not None and wanted.fingerprint is not None
        if "fingerprint" in chosen and fingerprints:
            if self.fingerprint != wanted.fingerprint:
                out.append(f"fingerprint: {self.fingerprint!r}, not {wanted.fingerprint!r}")
        elif {"encoder", "fingerprint"} & chosen and self.encoder != wanted.encoder:
            out.append(f"encoder: {self.encoder!r}, not {wanted.encoder!r}")
        if "image_key" in chosen and self.image_key != wanted.image_key:
            out.append(f"image_key: {self.image_key!r}, not {wanted.image_key!r}")
        if "mpp" in chosen and wanted.mpp is not None and not _close(_nan(self.mpp), wanted.mpp):
            out.append(f"mpp: tiles at {_fmt(self.mpp, '.4g')} um/px, not {wanted.mpp:.4g}")
        if "size_px" in chosen and self.size_px != wanted.size_px:
            out.append(f"size_px: tiles of {self.size_px} px, not {wanted.size_px}")
        if "transform" in chosen:
            mine, theirs = self.transform, wanted.transform
            if across_sections:
                mine, theirs = shared_transform(mine), shared_transform(theirs)
            if canonical(mine) != canonical(theirs):
                out.append(
                    f"transform: {describe_transform(mine)}, not {describe_transform(theirs)}"
                )
        if "params" in chosen and canonical(self.params) != canonical(wanted.params):
            out.extend(_params_differences(self.params, wanted.params))
        return out


#: the fields :meth:`EmbeddingRecord.differences` can compare
COMPARED_FIELDS = ("encoder", "fingerprint", "image_key", "mpp", "size_px", "transform", "params")
#: those it compares unless told otherwise
DEFAULT_FIELDS = ("encoder", "fingerprint", "image_key", "mpp", "size_px", "transform")


def shared_transform(transform: Any) -> Any:
    """The part of a tile transform that tiles of different sections made alike share.

    A stain normalisation maps each section's own stain (its spec's ``source``) onto one target
    (``method`` and ``reference``): sections normalised onto the same target are comparable,
    whatever their own stains. Any other transform is shared whole.
    """
    if isinstance(transform, Mapping) and {"method", "reference", "source"} <= set(transform):
        return {k: v for k, v in transform.items() if k != "source"}
    return transform


def describe_transform(transform: Any) -> str:
    """A short text naming a recorded transform: ``none``, or its method and a digest."""
    import hashlib

    if transform is None:
        return "none"
    digest = hashlib.sha1(canonical(transform).encode()).hexdigest()[:10]
    if isinstance(transform, Mapping) and "method" in transform:
        return f"{transform['method']} ({digest})"
    text = canonical(transform)
    return text if len(text) <= 40 else f"{text[:30]}... ({digest})"


def _params_differences(mine: Any, theirs: Any) -> list[str]:
    if not isinstance(mine, Mapping) or not isinstance(theirs, Mapping):
        return [f"params: {mine!r}, not {theirs!r}"]
    return [
        f"params[{name!r}]: {mine.get(name)!r}, not {theirs.get(name)!r}"
        for name in sorted(set(mine) | set(theirs))
        if canonical(mine.get(name)) != canonical(theirs.get(name))
    ]


@dataclass(frozen=True)
class ModelMetadata:
    """What a model's ``metadata`` says about the tiles it reads, the rest kept as stored.

    ``model`` is the kind (``"spot_regressor"``...), ``image_key`` the training image, ``size_um``
    the tile (patch) side in um (one per member for a patch classifier) and ``mpp`` the pixel
    size. Files of earlier versions named the side ``patch_um``, ``tile_um`` or
    ``patch_size_um`` (and each report of a patch classifier ``patch_size_um``): read as
    ``size_um``.
    """

    model: str | None = None
    image_key: str | None = None
    size_um: float | tuple[float, ...] | None = None
    mpp: float | None = None
    rest: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    _NAMED = ("model", "image_key", "size_um", "mpp")

    def to_uns(self) -> dict[str, Any]:
        """The metadata dict, as a model file stores it (tuples as lists)."""
        out = dict(self.rest)
        for name in self._NAMED:
            value = getattr(self, name)
            if value is not None or name in out:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_uns(cls, value: Mapping[str, Any] | None) -> ModelMetadata:
        """Read a model's metadata, in the current form or an earlier one."""
        value = dict(value or {})
        for old in OLD_SIZE_NAMES:
            if old in value:
                recorded = value.pop(old)
                value.setdefault("size_um", recorded)
        if isinstance(value.get("report"), list):  # a patch classifier's reports
            value["report"] = [_renamed_report(one) for one in value["report"]]
        size = value.pop("size_um", None)
        if isinstance(size, list | tuple):
            size = tuple(float(s) for s in size)
        elif size is not None:
            size = float(size)
        return cls(
            model=_text(value.pop("model", None)),
            image_key=_text(value.pop("image_key", None)),
            size_um=size,
            mpp=_number(value.pop("mpp", None)),
            rest=value,
        )

    def tiles(self) -> TileRecord:
        """The tiles this model reads: its image, tile side and pixel size (the wanted record)."""
        if isinstance(self.size_um, tuple):
            raise ValueError("A model of several patch sizes reads no single kind of tile.")
        return TileRecord(image_key=self.image_key, size_um=self.size_um, mpp=self.mpp)


def _renamed_report(report: Any) -> Any:
    if isinstance(report, Mapping) and "patch_size_um" in report and "size_um" not in report:
        return {("size_um" if k == "patch_size_um" else k): v for k, v in report.items()}
    return report


def migrate_model_metadata(metadata: Any) -> Any:
    """A model file's metadata in the current form (what :func:`histoexpr.io.load_model` keeps).

    Keys keep their order; an old name of the tile side takes the place of ``size_um``.
    """
    if not isinstance(metadata, Mapping):
        return metadata
    if not any(k in metadata for k in OLD_SIZE_NAMES) and not (
        isinstance(metadata.get("report"), list)
        and any(isinstance(r, Mapping) and "patch_size_um" in r for r in metadata["report"])
    ):
        return metadata
    current = ModelMetadata.from_uns(metadata).to_uns()
    ordered = {}
    for key in metadata:
        name = "size_um" if key in OLD_SIZE_NAMES else key
        if name in current and name not in ordered:
            ordered[name] = current[name]
    return {**ordered, **{k: v for k, v in current.items() if k not in ordered}}
