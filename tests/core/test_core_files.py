"""The one rule of replacing files: seals, links, leftovers of killed writes, folder listings."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _catalogue import bad_input

from histoexpr._core.files import (
    BLANK_SEAL,
    bytes_found,
    changed_in_folder,
    check_replaceable,
    content_digest,
    folder_listing,
    partial_path,
    remove_leftovers,
    seal_bytes,
    written_beside,
)

MARKED = b"histoexpr text"


def _write_sealed(path: Path) -> bytes:
    """A text file 'written by histoexpr': the mark, its seal, then its content."""
    with written_beside(path) as partial:
        partial.write_bytes(MARKED + b" " + BLANK_SEAL.encode() + b"\nline one\n")
        seal_bytes(partial, path)
    return path.read_bytes()


def _ours(path: Path):
    return bytes_found(path) if path.read_bytes().startswith(MARKED) else None


def _replace(path: Path) -> None:
    check_replaceable(path, written_by="the test's writer", ours=_ours)
    _write_sealed(path)


def test_a_file_is_replaced_while_unchanged_since_it_was_written(tmp_path):
    path = tmp_path / "out.txt"
    _write_sealed(path)
    _replace(path)  # as written: replaced, again and again
    _replace(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@bad_input("data lost", "a file histoexpr wrote (with its mark) that the user edited, appended to "
           "or annotated since, at a path a later write of the same step replaces: the mark "
           "alone made it histoexpr's, so it was replaced",
           says="FileExistsError: ... is a file that the test's writer wrote, but it changed "
           "since histoexpr wrote it",
           fix="move the edited file away, or write to another path")
def test_an_edited_file_keeps_its_mark_and_is_refused(tmp_path):
    path = tmp_path / "out.txt"
    _write_sealed(path)
    edited = path.read_bytes() + b"the user's own line\n"
    path.write_bytes(edited)
    with pytest.raises(FileExistsError, match="changed since histoexpr wrote it"):
        _replace(path)
    assert path.read_bytes() == edited
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@bad_input("data lost", "a file histoexpr wrote, copied (`cp -a`) by the user to another name "
           "that the same step then writes to: the copy carried the mark, so it was replaced",
           says="FileExistsError: ... is a file that the test's writer wrote, but it was written "
           "at another path: this one is a copy of it",
           fix="write to another path, or move the copy away")
def test_a_copy_or_a_moved_file_is_refused(tmp_path):
    path = tmp_path / "out.txt"
    _write_sealed(path)
    copy = tmp_path / "final.txt"
    shutil.copy2(path, copy)
    with pytest.raises(FileExistsError, match="written at another path: this one is a copy"):
        _replace(copy)
    assert copy.read_bytes() == path.read_bytes()


def test_a_file_marked_without_a_seal_is_refused_as_of_an_earlier_version(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes(MARKED + b" of an earlier version\n")
    with pytest.raises(FileExistsError, match="holds no digest of what was written"):
        _replace(path)
    assert path.read_bytes() == MARKED + b" of an earlier version\n"


def test_the_content_digest_is_that_of_the_content_not_of_its_form():
    torch = pytest.importorskip("torch")
    a = {"b": [1, 2.5, "x"], "a": torch.arange(6).reshape(2, 3), "c": np.ones(3)}
    b = {"c": np.ones(3), "a": torch.arange(6).reshape(2, 3).clone(), "b": [1, 2.5, "x"]}
    assert content_digest(a) == content_digest(b)
    assert content_digest(a) != content_digest({**b, "c": np.ones(3) * 2})
    assert content_digest({"t": torch.ones(2)}) != content_digest({"t": torch.ones(2).double()})


@bad_input("data lost", "a write of histoexpr whose target is a symbolic link (e.g. "
           "`pretrain(..., resume=True)` where the checkpoint links to a shared one): the link "
           "was replaced by a plain file and what it pointed to silently stopped being updated",
           says="FileExistsError: ... is a symbolic link (to ...); histoexpr does not replace "
           "links",
           fix="write to the path the link points to, or remove the link yourself")
def test_a_link_is_never_replaced(tmp_path):
    shared = tmp_path / "shared.txt"
    shared.write_text("shared")
    link = tmp_path / "link.txt"
    link.symlink_to(shared)
    with pytest.raises(FileExistsError, match="is a symbolic link"), written_beside(link) as p:
        p.write_text("new")  # never reached
    assert link.is_symlink() and shared.read_text() == "shared"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "shared.txt"]


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def _leftover(target: Path, pid: int, what: str = "new", *, host: str | None = None) -> Path:
    name = partial_path(target, what).name
    head, tail = name.split("partial-", 1)
    this_host, _, rest = tail.split("-", 2)
    path = target.parent / f"{head}partial-{host or this_host}-{pid}-{rest}"
    path.write_bytes(b"half a file")
    return path


@bad_input("data lost", "a write killed midway (SIGKILL, out of memory): its hidden partial file "
           "beside the target stayed for ever, never reported",
           says="log: Removed .<name>.new.partial-<host>-<pid>-..., left beside <name> by a "
           "write of process <pid> of this machine that was killed midway",
           fix="nothing: the next write of the same file removes it")
def test_leftovers_of_dead_processes_alone_are_removed(tmp_path, caplog):
    target = tmp_path / "model.pt"
    name = partial_path(target).name
    assert f"-{os.getpid()}-" in name and name.startswith(".model.pt.new.partial-")
    dead = _dead_pid()
    removed = [_leftover(target, dead), _leftover(target, dead, "old")]
    kept = [_leftover(target, os.getpid()),  # this process's own write in progress
            _leftover(target, os.getppid()),  # a process that still runs
            _leftover(target, dead, host="elsewhere0000"),  # another machine's
            _leftover(tmp_path / "model.pt.bak", dead),  # another target's
            _leftover(tmp_path / "other.pt", dead)]
    user = tmp_path / ".model.pt.new.partial-notes.txt"
    user.write_text("the user's")
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        with written_beside(target) as partial:
            partial.write_bytes(b"model")
    assert target.read_bytes() == b"model"
    assert not any(p.exists() for p in removed)
    assert all(p.read_bytes() == b"half a file" for p in kept) and user.read_text() == "the user's"
    logged = caplog.text
    assert all(p.name in logged for p in removed) and not any(p.name in logged for p in kept)
    assert remove_leftovers(target) == []


def test_a_listing_holds_folders_and_an_old_one_is_read_by_its_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    listing = folder_listing(tmp_path)
    assert listing["."] == "folder" and listing["sub"] == "folder"
    assert changed_in_folder(tmp_path, listing) == []
    (tmp_path / "sub" / "my_empty_folder").mkdir()
    assert changed_in_folder(tmp_path, listing) == ["sub/my_empty_folder/"]
    earlier = {k: v for k, v in listing.items() if v != "folder"}  # an earlier version's
    assert changed_in_folder(tmp_path, earlier) == []
    (tmp_path / "sub" / "a.txt").write_text("the user's")
    assert changed_in_folder(tmp_path, earlier) == ["sub/a.txt"]
