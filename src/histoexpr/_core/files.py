"""Writes that replace something: written beside the target, swapped in at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

#: the name part of a temporary file or folder written beside what it will replace
PARTIAL = "partial-"


def partial_path(target: str | Path, what: str = "new") -> Path:
    """A fresh hidden name beside ``target`` (same folder, so the final rename is atomic).

    It ends in ``target``'s suffix, for writers that choose the format by it. ``what`` (a
    label) is cut to 40 characters: the name adds at most 80 bytes to ``target``'s.
    """
    import uuid

    target = Path(target)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in what)[:40]
    return target.parent / (f".{target.name}.{safe}.{PARTIAL}{uuid.uuid4().hex[:12]}"
                            f"{target.suffix}")


def check_replaceable(target: str | Path, *, ours: Callable[[Path], bool], written_by: str,
                      overwrite: bool = True, option: str = "overwrite=True") -> None:
    """Refuse, before anything is written, to replace what histoexpr did not write itself.

    Every write of histoexpr that may land on an existing file or folder asks this first.
    Nothing at ``target``: nothing to check. Something there: it is replaced only when
    ``overwrite`` is true *and* ``ours(target)`` says it carries the mark of ``written_by``
    (the step that writes it: a model file's format, a figure's metadata...); otherwise a
    :class:`FileExistsError` names the path, what is there, and what to do.

    Parameters
    ----------
    target
        The path about to be written.
    ours
        Whether what is at ``target`` was written by the same step (never raises: a file it
        cannot read is not ours).
    written_by
        The step, in words, for the messages (``"hx.io.save_model"``).
    overwrite
        The caller's ``overwrite`` option (``True`` where replacing its own output is the
        step's normal behaviour, as for figures).
    option
        How the user asks for a replacement, for the message.
    """
    from .validate import check_bool

    check_bool(option.split("=")[0], overwrite)
    target = Path(target)
    restore_swap_of(target)
    if not (target.exists() or target.is_symlink()):
        return
    kind = "folder" if target.is_dir() else "file"
    if not overwrite:
        raise FileExistsError(f"{target} already exists. Pass {option} to replace it (only "
                              f"if {written_by} wrote it), or choose another path.")
    try:
        mine = not target.is_symlink() and bool(ours(target))
    except Exception:  # noqa: BLE001 - a file that cannot be read is not ours
        mine = False
    if not mine:
        raise FileExistsError(
            f"{target} is a {kind} that {written_by} did not write (it does not carry its "
            "mark), so histoexpr will not replace it. Choose another path, or move it away "
            "yourself if it is no longer needed.")


def swap_into_place(source: Path, target: Path, *, aside: Path | None = None) -> None:
    """Rename ``source`` to ``target``; an older ``target`` is moved aside first, then deleted.

    A file is replaced by one ``os.replace``. A folder (which ``os.replace`` cannot replace
    when it holds anything) is moved aside to ``aside``, the new one renamed into place and the
    old one deleted; if the second rename fails, the old one is put back. A note beside the
    aside folder (``<aside>.target``, written before the first rename) names ``target``, so
    that a run killed between the two renames, which leaves ``target`` missing and the old
    content aside, is undone by :func:`restore_swaps` before the partial writes are cleaned
    up: the old content or the new one is under ``target`` again.
    """
    import os
    import shutil

    source, target = Path(source), Path(target)
    if not target.is_dir() or target.is_symlink():
        os.replace(source, target)
        return
    old = partial_path(target, "old") if aside is None else aside
    note = _swap_note(old)
    note.write_text(str(target.absolute()), encoding="utf-8")
    os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        if not target.exists():
            os.replace(old, target)
        raise
    finally:
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            note.unlink(missing_ok=True)


def restore_swaps(paths: Iterable[Path], *, inside: Path) -> int:
    """Put back what a swap killed between its two renames left aside; return how many.

    ``paths`` are leftovers of partial writes (hidden names beside their targets); among them,
    each note of :func:`swap_into_place` names a target under ``inside``: where that target is
    missing and the old content still lies aside, the old content is renamed back into place.
    The notes are then removed; everything else is left to the caller.
    """
    import os

    inside = Path(inside).absolute()
    restored = 0
    for note in [Path(p) for p in paths if str(p).endswith(_NOTE_SUFFIX)]:
        old = note.with_name(note.name[: -len(_NOTE_SUFFIX)])
        try:
            target = Path(note.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        if inside in target.parents and old.is_dir() and not (
                target.exists() or target.is_symlink()):
            os.replace(old, target)
            restored += 1
        note.unlink(missing_ok=True)
    return restored


_NOTE_SUFFIX = ".target"


def restore_swap_of(target: str | Path) -> bool:
    """Put ``target`` back where a swap into it was killed between its two renames.

    Such a kill leaves ``target`` missing, its old content aside under a hidden name beside it
    and the swap's note naming ``target`` (:func:`swap_into_place`). Every write that may
    replace ``target`` calls this first (:func:`check_replaceable`, :func:`written_beside`), so
    the old content is under ``target`` again before anything is checked or written, wherever
    ``target`` lies. Returns whether something was put back.
    """
    import glob

    target = Path(target)
    if target.exists() or target.is_symlink() or not target.parent.is_dir():
        return False
    notes = target.parent.glob(f".{glob.escape(target.name)}.old.{PARTIAL}*{_NOTE_SUFFIX}")
    restored = restore_swaps(sorted(notes), inside=target.parent) > 0
    if restored:
        from .logs import logger

        logger.warning("Put back %s, which an interrupted write had moved aside.", target)
    return restored


def _swap_note(aside: Path) -> Path:
    return aside.with_name(aside.name + _NOTE_SUFFIX)


@contextlib.contextmanager
def written_beside(target: str | Path) -> Iterator[Path]:
    """Write what replaces ``target`` beside it, and swap it in only when the write succeeded.

    Every write of histoexpr that replaces a file or folder goes through this: the ``with``
    block writes to the path it is given (a hidden name in ``target``'s folder); when the block
    ends without an error, that path replaces ``target`` (:func:`swap_into_place`). An error or
    a kill inside the block leaves ``target`` as it was, and the partial write is removed.
    """
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_swap_of(target)
    temporary = partial_path(target)
    try:
        yield temporary
        swap_into_place(temporary, target)
    finally:
        if temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists() or temporary.is_symlink():
            temporary.unlink()


def folder_listing(folder: str | Path, *, leave_out: Iterable[str] = ()) -> dict[str, list[int]]:
    """Every file under ``folder``: its path relative to it -> ``[size, modification time]``.

    What a step that writes a whole folder records of it when done, so that a later
    replacement can tell whether anything in it was added or changed since
    (:func:`changed_in_folder`). ``leave_out``: relative paths not listed (the record itself).
    """
    folder = Path(folder)
    skip = set(leave_out)
    out = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if name in skip or path.is_dir() and not path.is_symlink():
            continue
        out[name] = file_facts(path)
    return out


def file_facts(path: str | Path) -> list[int]:
    """What tells a file as written from the same file changed since: its size and time."""
    stat = Path(path).lstat()
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def changed_in_folder(folder: str | Path, listing: dict, *,
                      leave_out: Iterable[str] = ()) -> list[str]:
    """The files under ``folder`` that ``listing`` does not hold as they are now.

    Those added since :func:`folder_listing` made ``listing``, or changed in size or time.
    Files of the listing that are gone are not counted (nothing of them is left to lose).
    """
    now = folder_listing(folder, leave_out=leave_out)
    return sorted(name for name, facts in now.items()
                  if [int(v) for v in (listing.get(name) or [])] != facts)

