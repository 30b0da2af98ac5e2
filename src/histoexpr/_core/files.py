"""Writes that replace something: written beside the target, swapped in at the end.

And the one rule of what such a write may replace: a file histoexpr wrote, at that path, and
unchanged since. Every file histoexpr may later replace carries a *seal*
(:func:`seal_of`): the digest of its content and of the path it was written at, recorded where
the format allows it (in the file's own metadata, or in the record of the step that wrote a
set of files); :func:`check_replaceable` compares it with the file as it is now.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

#: the name part of a temporary file or folder written beside what it will replace
PARTIAL = "partial-"
#: how a seal starts: the digest of a file's content, then that of the path it was written at
SEAL_PREFIX = "hx-seal1:"
#: the seal's place holder, written into a file before its digest is known (:func:`seal_bytes`)
BLANK_SEAL = f"{SEAL_PREFIX}{'0' * 64}:{'0' * 16}"
_SEALS = re.compile(rb"hx-seal1:[0-9a-f]{64}:[0-9a-f]{16}")


def partial_path(target: str | Path, what: str = "new") -> Path:
    """A fresh hidden name beside ``target`` (same folder, so the final rename is atomic).

    It names the machine and the process writing it (``partial-<host>-<pid>-<random>``), so
    that a later write can tell the leftovers of a process that no longer runs
    (:func:`remove_leftovers`), and ends in ``target``'s suffix, for writers that choose the
    format by it. ``what`` (a label) is cut to 40 characters: the name adds at most 85 bytes
    and the suffix to ``target``'s.
    """
    import secrets

    target = Path(target)
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_"
                   for c in what)[:40]  # 40 bytes: a non-ASCII letter would be up to 4
    return target.parent / (f".{target.name}.{safe}.{PARTIAL}{_host()}-{os.getpid()}-"
                            f"{secrets.token_hex(4)}{target.suffix}")


@functools.cache
def _host() -> str:
    """The machine in a partial name: its name (letters and digits, 12 at most) and a digest.

    The digest, of the full name and of the process-id namespace, tells apart machines (or
    containers) whose names begin alike, where the same process id means another process.
    """
    import socket

    name = socket.gethostname()
    try:
        space = os.readlink("/proc/self/ns/pid")
    except OSError:
        space = ""
    readable = re.sub(r"[^A-Za-z0-9]", "", name)[:12] or "host"
    return readable + hashlib.sha256(f"{name}\0{space}".encode()).hexdigest()[:4]


def location(path: str | Path) -> str:
    """Where ``path`` lies, as one string: its folder's real path (links resolved), its name."""
    path = Path(path).expanduser()
    return os.path.join(os.path.realpath(path.parent), path.name)


def seal_of(content: str, target: str | Path) -> str:
    """The seal of a file of content digest ``content`` written at ``target``."""
    where = hashlib.sha256(location(target).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{SEAL_PREFIX}{content}:{where[:16]}"


class Found(NamedTuple):
    """What a file carrying the mark of a step says of itself (the answer of ``ours``).

    ``seal``: the seal recorded when it was written (:func:`seal_of`), or several accepted
    ones, or ``None`` where none was recorded (an earlier version of histoexpr wrote it);
    ``content``: the digest of its content as it is now, computed as the writer computed it.
    """

    seal: str | Sequence[str] | None
    content: str


def content_digest(value: Any) -> str:
    """The sha256 of ``value``: nested dicts, lists, plain values, numpy arrays, torch tensors.

    The same content gives the same digest whatever the order of a dict's keys, wherever it was
    read from (a tensor in memory and as loaded back from its file). What a writer records of a
    payload a reader can read back (a model file's dictionary, an HDF5 file's datasets).
    """
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:  # noqa: C901 - one case per kind of value
    import numpy as np

    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
        digest.update(b"{%d;" % len(items))
        for key, item in items:
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple):
        digest.update(b"[%d;" % len(value))
        for item in value:
            _feed(digest, item)
    elif isinstance(value, str):
        _feed(digest, value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes | bytearray | memoryview):
        digest.update(b"b%d;" % len(value))
        digest.update(value)
    elif isinstance(value, np.ndarray):
        digest.update(f"a{value.dtype.str}{value.shape};".encode())
        if value.dtype.hasobject:
            _feed(digest, value.ravel().tolist())
        else:
            digest.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    elif type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        tensor = value.detach().cpu()
        tensor = tensor.to_dense() if tensor.is_sparse else tensor
        digest.update(f"t{tensor.dtype}{tuple(tensor.shape)};".encode())
        flat = tensor.contiguous().reshape(-1)
        try:
            import torch

            digest.update(flat.view(torch.uint8).numpy())
        except (RuntimeError, TypeError):
            _feed(digest, repr(flat.tolist()))
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def seal_bytes(written: str | Path, target: str | Path, *,
               fix: Callable[[bytearray, int], None] | None = None) -> str:
    """Seal a file written with :data:`BLANK_SEAL` once in it (at ``written``, for ``target``).

    The place holder is replaced by the seal of the file's bytes as written (with the place
    holder) at ``target``; ``fix(data, at)`` then mends what the format checks about the bytes
    at offset ``at`` (a PNG chunk's CRC). Formats that keep a text field as written (PDF, SVG,
    PS, PNG) carry their seal this way; :func:`bytes_found` reads it back. Returns the seal.
    """
    written = Path(written)
    data = bytearray(written.read_bytes())
    at = data.find(BLANK_SEAL.encode())
    if at < 0 or data.find(BLANK_SEAL.encode(), at + 1) >= 0:
        raise RuntimeError(f"{written} does not hold the seal's place holder once; not sealed.")
    seal = seal_of(hashlib.sha256(data).hexdigest(), target)
    data[at:at + len(seal)] = seal.encode()
    if fix is not None:
        fix(data, at)
    written.write_bytes(bytes(data))
    return seal


def bytes_found(path: str | Path, *,
                fix: Callable[[bytearray, int], None] | None = None) -> Found:
    """The seal a file sealed by :func:`seal_bytes` carries, and the digest of it now.

    The digest is that of its bytes with the seal put back to the place holder (and ``fix``
    applied there): as :func:`seal_bytes` computed it when nothing changed since.
    """
    data = bytearray(Path(path).read_bytes())
    seals = [(found.start(), found.group().decode()) for found in _SEALS.finditer(data)]
    for start, _ in seals:
        data[start:start + len(BLANK_SEAL)] = BLANK_SEAL.encode()
    if seals and fix is not None:
        fix(data, seals[0][0])
    recorded = seals[0][1] if seals else None
    return Found(recorded, hashlib.sha256(data).hexdigest())


def payload_found(path: Path, file_format: str) -> Found | None:
    """What a torch file of histoexpr's ``file_format`` says of itself (its seal, its digest).

    ``None`` where ``path`` is not such a file. The digest is that of the dictionary it holds
    without its ``"seal"`` (:func:`content_digest`), as the writer
    computed it before sealing: a model or checkpoint whose weights or metadata were changed
    since no longer matches.
    """
    from .torch_files import load_weights_only

    try:
        payload = load_weights_only(path)
    except (ValueError, FileNotFoundError, OSError):
        return None
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        return None
    seal = payload.pop("seal", None)
    return Found(seal if isinstance(seal, str) else None, content_digest(payload))


def file_digest(path: str | Path) -> str:
    """The sha256 of the bytes of the file at ``path``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_replaceable(target: str | Path, *, ours: Callable[[Path], Found | None],
                      written_by: str, overwrite: bool = True,
                      option: str = "overwrite=True") -> None:
    """Refuse, before anything is written, to replace what histoexpr did not write itself.

    Every write of histoexpr that may land on an existing file or folder asks this first.
    Nothing at ``target``: nothing to check. Something there: it is replaced only when
    ``overwrite`` is true, ``ours(target)`` finds the mark of ``written_by`` (the step that
    writes it: a model file's format, a figure's metadata...) *and* the seal recorded of it
    when it was written is that of its content now, at this path (:class:`Found`,
    :func:`seal_of`): a file histoexpr wrote and the user edited, added to, copied here or
    moved here since is not replaced. Otherwise a :class:`FileExistsError` names the path,
    what is there, why, and what to do.

    Parameters
    ----------
    target
        The path about to be written.
    ours
        What the file at ``target`` says of itself (:class:`Found`), or ``None`` where it does
        not carry the mark of ``written_by`` (never raises: a file it cannot read is not ours).
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
    if target.is_symlink():
        _refuse_link(target)
    try:
        found = ours(target)
    except Exception:  # noqa: BLE001 - a file that cannot be read is not ours
        found = None
    if found is None or found is False:
        raise FileExistsError(
            f"{target} is a {kind} that {written_by} did not write (it does not carry its "
            "mark), so histoexpr will not replace it. Choose another path, or move it away "
            "yourself if it is no longer needed.")
    why = _unlike_written(found, target)
    if why:
        raise FileExistsError(
            f"{target} is a {kind} that {written_by} wrote, but {why}, so histoexpr will not "
            "replace it. Choose another path, or move it away yourself if it is no longer "
            "needed.")


def _unlike_written(found: Found | bool, target: Path) -> str | None:
    """Why a marked file is not as histoexpr wrote it at ``target``; ``None``: it is."""
    if not isinstance(found, Found):
        found = Found(None, "")
    seals = [found.seal] if isinstance(found.seal, str) else list(found.seal or [])
    if not seals:
        return ("it holds no digest of what was written (an earlier version of histoexpr "
                "wrote it), so whether it changed since histoexpr wrote it cannot be told")
    if seal_of(found.content, target) in seals:
        return None
    if any(str(s).startswith(f"{SEAL_PREFIX}{found.content}:") for s in seals):
        return ("it was written at another path: this one is a copy of it, or it was moved "
                "here since")
    return "it changed since histoexpr wrote it (it no longer matches the digest recorded then)"


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
    each note of :func:`swap_into_place` names a target: ``inside`` itself (a folder replaced
    whole, e.g. a slide store rewritten) or a path under it. Where that target is missing and
    the old content still lies aside, the old content is renamed back into place. The notes
    are then removed; everything else is left to the caller.
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
        if (target == inside or inside in target.parents) and old.is_dir() and not (
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
    block writes to the path it is given (a hidden name in ``target``'s folder,
    :func:`partial_path`); when the block ends without an error, that path replaces ``target``
    (:func:`swap_into_place`). An error inside the block leaves ``target`` as it was, and the
    partial write is removed; what a killed process left beside ``target`` is removed by the
    next write of it (:func:`remove_leftovers`). A symbolic link at ``target`` is refused
    before anything is written: replacing it would put a file of histoexpr's where the link
    was, and what it points to would silently stop being updated.
    """
    import shutil

    target = Path(target)
    if target.is_symlink():
        _refuse_link(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_swap_of(target)
    remove_leftovers(target)
    temporary = partial_path(target)
    try:
        yield temporary
        swap_into_place(temporary, target)
        _LEFT_HERE[location(target)] = _facts(target)
    finally:
        if temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists() or temporary.is_symlink():
            temporary.unlink()


#: what the writes of this process left: each path with its size, time and inode then
_LEFT_HERE: dict[str, tuple[int, ...] | None] = {}


def left_here(target: str | Path) -> bool:
    """Whether ``target`` is a file as a write of this process left it (size, time, inode).

    For a step that rewrites its own file again and again (a checkpoint after every epoch):
    where it is, its seal need not be read again before the next write.
    """
    facts = _facts(Path(target))
    return facts is not None and _LEFT_HERE.get(location(target)) == facts


def _facts(path: Path) -> tuple[int, ...] | None:
    try:
        stat = path.lstat()
    except OSError:
        return None
    return (int(stat.st_size), int(stat.st_mtime_ns), int(stat.st_ino))


def _refuse_link(target: Path) -> None:
    raise FileExistsError(
        f"{target} is a symbolic link (to {os.readlink(target)}); histoexpr does not replace "
        "links: its file would take the link's place and what the link points to would no "
        "longer be updated. Write to the path it points to, or remove the link yourself.")


def remove_leftovers(target: str | Path) -> list[Path]:
    """Remove what writes of ``target`` killed midway left beside it; return what was removed.

    Only partial writes (:func:`partial_path`) of ``target`` itself, made on this machine by a
    process that no longer runs, are removed (each logged): never those of a process still
    running (another write in progress), of this process, or of another machine sharing the
    folder, nor anything else. Where ``target`` is missing and a swap's note says its old
    content lies aside, that is put back first (:func:`restore_swap_of`).
    """
    import shutil

    from .logs import logger

    target = Path(target)
    restore_swap_of(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(
        rf"\.{re.escape(target.name)}\.[A-Za-z0-9_-]*\.{PARTIAL}(?P<host>[A-Za-z0-9]+)-"
        rf"(?P<pid>\d+)-[0-9a-f]{{8}}{re.escape(target.suffix)}(?:{re.escape(_NOTE_SUFFIX)})?")
    removed = []
    with os.scandir(target.parent) as entries:
        names = [entry.name for entry in entries if entry.name.startswith(f".{target.name}.")]
    for name in sorted(names):
        found = pattern.fullmatch(name)
        if found is None or found["host"] != _host() or not _ended(int(found["pid"])):
            continue
        path = target.parent / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        logger.warning("Removed %s, left beside %s by a write of process %s of this machine "
                       "that was killed midway (it no longer runs).", name, target.name,
                       found["pid"])
        removed.append(path)
    return removed


def _ended(pid: int) -> bool:
    """Whether process ``pid`` of this machine no longer runs (never true for this process)."""
    if pid == os.getpid() or os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: it runs
        return False
    return False


#: the listing's entry for a folder (and, under ``"."``, the sign that folders are listed)
FOLDER = "folder"


def folder_listing(folder: str | Path, *, leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """Every file and folder under ``folder``: its path relative to it -> what it is.

    A file: ``[size, modification time]``; a folder: :data:`FOLDER` (``folder`` itself under
    ``"."``). What a step that writes a whole folder records of it when done, so that a later
    replacement can tell whether anything in it was added or changed since
    (:func:`changed_in_folder`). ``leave_out``: relative paths not listed (the record itself).
    """
    folder = Path(folder)
    skip = set(leave_out)
    out: dict[str, Any] = {".": FOLDER}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if name in skip:
            continue
        out[name] = FOLDER if path.is_dir() and not path.is_symlink() else file_facts(path)
    return out


def file_facts(path: str | Path) -> list[int]:
    """What tells a file as written from the same file changed since: its size and time."""
    stat = Path(path).lstat()
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def changed_in_folder(folder: str | Path, listing: dict, *,
                      leave_out: Iterable[str] = ()) -> list[str]:
    """The files and folders under ``folder`` that ``listing`` does not hold as they are now.

    Those added since :func:`folder_listing` made ``listing`` (a folder with a final ``/``),
    or changed in size or time. Files of the listing that are gone are not counted (nothing of
    them is left to lose). A listing of an earlier version (no folders listed) is compared by
    its files alone.
    """
    with_folders = listing.get(".") == FOLDER
    changed = []
    for name, facts in folder_listing(folder, leave_out=leave_out).items():
        recorded = listing.get(name)
        if facts == FOLDER:
            if with_folders and name != "." and recorded != FOLDER:
                changed.append(f"{name}/")
        elif not isinstance(recorded, list) or [int(v) for v in recorded] != facts:
            changed.append(name)
    return sorted(changed)
