"""The parameters every plotting function shares: their descriptions, written once, and checks."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .._core.files import (
    BLANK_SEAL,
    Found,
    bytes_found,
    check_replaceable,
    seal_bytes,
    written_beside,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

F = TypeVar("F", bound=Callable)

#: the mark every figure saved by histoexpr carries (PNG ``Software``, PDF/SVG/PS ``Creator``)
FIGURE_MARK = "histoexpr figure"
#: the metadata key of each format that can carry the mark; other formats cannot carry it
_MARK_KEYS = {"png": "Software", "pdf": "Creator", "svg": "Creator", "ps": "Creator",
              "eps": "Creator"}
_WRITTEN_BY = "histoexpr's plotting functions"

SHARED_PARAMETERS = {
    "max_side": "Longest side of the image drawn, in pixels (a pyramid level close to it is read).",
    "title": "Title of the axes; defaults to what is drawn.",
    "ax": "Axes to draw into; a new figure when ``None``.",
    "save": ("File to save the figure to (its format from the suffix, PNG without one); its "
             "folder must exist (it is not created). A file there is replaced only if it is a "
             "figure histoexpr saved there (PNG, PDF, SVG, PS and EPS carry that mark and a "
             "digest of the figure), unchanged since; any other file, or a figure edited, "
             "copied or moved there since, is refused with an error before anything is "
             "drawn."),
}


def shared_docs(function: F) -> F:
    """Add the shared parameters ``function`` takes to its docstring's ``Parameters``.

    Only parameters the function does not describe itself are added, each where the signature
    has it (after the entry of the parameter before it).
    """
    doc = function.__doc__ or ""
    lines = doc.split("\n")
    parameters = list(inspect.signature(function).parameters)
    for position, name in enumerate(parameters):
        if name not in SHARED_PARAMETERS or f"    {name}" in lines:
            continue
        entry = [f"    {name}", f"        {SHARED_PARAMETERS[name]}"]
        before = [p for p in parameters[:position] if f"    {p}" in lines]
        if not before:
            continue
        at = lines.index(f"    {before[-1]}") + 1
        while at < len(lines) and lines[at].startswith("        "):
            at += 1  # past the description of the parameter before
        lines[at:at] = entry
    function.__doc__ = "\n".join(lines)
    return function


def check_save(save: str | Path | None) -> None:
    """Raise a clear error, before anything is drawn, when ``save`` cannot be written.

    Its folder must exist, its format must be one matplotlib writes, and a file already there
    must be a figure histoexpr saved there, unchanged since (nothing else is ever replaced).
    """
    if save is None:
        return
    folder = Path(save).expanduser().absolute().parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(
            f"Cannot save the figure to {str(save)!r}: the folder {str(folder)!r} {what} (it is "
            "not created for you). Create it first (e.g. Path(folder).mkdir(parents=True)) or "
            "give save= a path in an existing folder.")
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    if _figure_format(save) not in supported:
        raise ValueError(
            f"Cannot save the figure to {str(save)!r}: matplotlib does not write the format "
            f"{_figure_format(save)!r}. Give save= a file name ending in one of "
            f"{', '.join('.' + name for name in sorted(supported))}.")
    check_replaceable(_figure_path(save), written_by=_WRITTEN_BY, ours=_our_figure)


def save_figure(figure: Figure, save: str | Path | None) -> None:
    """Save ``figure`` to ``save`` (checked by :func:`check_save`), marked as histoexpr's.

    Written beside the target and swapped in when complete; the mark (a metadata entry where
    the format has one) and the seal in it (the digest of the figure's bytes and of its path,
    :func:`~histoexpr._core.files.seal_bytes`) let a later call replace it while it is as
    saved, and nothing else.
    """
    if save is None:
        return
    check_save(save)  # again: a file of the user's may have arrived while drawing
    target, fmt = _figure_path(save), _figure_format(save)
    metadata = {_MARK_KEYS[fmt]: f"{FIGURE_MARK} {BLANK_SEAL}"} if fmt in _MARK_KEYS else None
    if fmt in ("ps", "eps"):
        metadata["Title"] = target.name  # else the temporary file's name
    with written_beside(target) as partial:
        figure.savefig(partial, format=fmt, dpi=150, bbox_inches="tight", metadata=metadata)
        if metadata is not None:
            seal_bytes(partial, target, fix=_png_crc if fmt == "png" else None)


def _figure_format(save: str | Path) -> str:
    import matplotlib as mpl

    suffix = Path(save).suffix
    return suffix[1:].lower() if suffix else str(mpl.rcParams["savefig.format"]).lower()


def _figure_path(save: str | Path) -> Path:
    """Where the figure lands: ``save``, with the format's suffix added when it has none."""
    path = Path(save).expanduser()
    return path if path.suffix else path.with_name(f"{path.name}.{_figure_format(save)}")


def _our_figure(path: Path) -> Found | None:
    """What a figure histoexpr saved says of itself (:class:`~histoexpr._core.files.Found`).

    ``None`` where the file at ``path`` does not carry :data:`FIGURE_MARK`.
    """
    fmt = path.suffix[1:].lower()
    if fmt == "png":
        from PIL import Image

        with Image.open(path) as image:
            software = str(getattr(image, "text", {}).get("Software", ""))
        if software.split(" ")[0:2] != FIGURE_MARK.split(" "):
            return None
        return bytes_found(path, fix=_png_crc)
    signatures = {"pdf": f"/Creator ({FIGURE_MARK}", "svg": f"<dc:title>{FIGURE_MARK}",
                  "ps": f"%%Creator: {FIGURE_MARK}", "eps": f"%%Creator: {FIGURE_MARK}"}
    if fmt not in signatures or signatures[fmt].encode() not in path.read_bytes():
        return None
    return bytes_found(path)


def _png_crc(data: bytearray, at: int) -> None:
    """Mend the CRC of the PNG chunk holding offset ``at`` (its text was changed in place)."""
    import struct
    import zlib

    start = 8  # past the signature: chunks of length, type, data, CRC
    while start + 12 <= len(data):
        (length,) = struct.unpack(">I", data[start:start + 4])
        end = start + 8 + length
        if start + 8 <= at < end:
            data[end:end + 4] = struct.pack(">I", zlib.crc32(data[start + 4:end]) & 0xFFFFFFFF)
            return
        start = end + 4
