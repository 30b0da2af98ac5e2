"""The parameters every plotting function shares: their descriptions, written once, and checks."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

F = TypeVar("F", bound=Callable)

SHARED_PARAMETERS = {
    "max_side": "Longest side of the image drawn, in pixels (a pyramid level close to it is read).",
    "title": "Title of the axes; defaults to what is drawn.",
    "ax": "Axes to draw into; a new figure when ``None``.",
    "save": "File to save the figure to; its folder must exist (it is not created).",
}


def shared_docs(function: F) -> F:
    """Append the shared parameters ``function`` takes to its docstring's ``Parameters``.

    Only parameters the function does not describe itself are added.
    """
    doc = function.__doc__ or ""
    names = [name for name in SHARED_PARAMETERS
             if name in inspect.signature(function).parameters and f"\n    {name}\n" not in doc]
    entries = "".join(f"    {name}\n        {SHARED_PARAMETERS[name]}\n" for name in names)
    marker = "\n\n    Returns\n"
    if entries and marker in doc:
        function.__doc__ = doc.replace(marker, "\n" + entries.rstrip("\n") + marker, 1)
    return function


def check_save(save: str | Path | None) -> None:
    """Raise a clear error, before anything is drawn, when ``save``'s folder does not exist."""
    if save is None:
        return
    folder = Path(save).expanduser().absolute().parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(
            f"Cannot save the figure to {str(save)!r}: the folder {str(folder)!r} {what} (it is "
            "not created for you). Create it first (e.g. Path(folder).mkdir(parents=True)) or "
            "give save= a path in an existing folder.")
