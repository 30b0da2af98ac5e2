"""``histoexpr demo --overwrite`` replaces only its report, where it wrote it, as written."""

from __future__ import annotations

import shutil

from _catalogue import bad_input
from conftest import tree_digest

from histoexpr._cli import EXIT_BAD_INPUT, main


@bad_input("data lost", "`histoexpr demo --out COPY --overwrite` where COPY is a demo report the "
           "user copied with `cp -a` (times kept) to keep it: its marker listed the same files, "
           "so it was replaced",
           says="refuses: COPY is a demo report, but the demo wrote it at another path (a copy "
           "or a move); nothing is deleted",
           fix="choose another --out")
def test_a_copied_report_is_not_replaced(tmp_path, tiny_demo, capsys):
    report = tmp_path / "report"
    assert main(["demo", "--out", str(report)]) == 0
    archive = tmp_path / "my_archive_2024"
    shutil.copytree(report, archive, copy_function=shutil.copy2)
    before = tree_digest(archive)
    assert main(["demo", "--out", str(archive), "--overwrite"]) == EXIT_BAD_INPUT
    assert "the demo wrote it at" in capsys.readouterr().err
    assert tree_digest(archive) == before
    assert main(["demo", "--out", str(report), "--overwrite"]) == 0  # its own: replaced


@bad_input("data lost", "`histoexpr demo --overwrite` on its own report after the user made an "
           "empty folder inside it: only files were listed, so the folder was deleted",
           says="refuses: the report also holds file(s) or folder(s) the demo did not write "
           "(named, e.g. my_empty_project_dir/)",
           fix="move the folder out of the report, or choose another --out")
def test_an_empty_folder_made_inside_a_report_is_kept(tmp_path, tiny_demo, capsys):
    report = tmp_path / "report"
    assert main(["demo", "--out", str(report)]) == 0
    (report / "my_empty_project_dir").mkdir()
    assert main(["demo", "--out", str(report), "--overwrite"]) == EXIT_BAD_INPUT
    assert "my_empty_project_dir/" in capsys.readouterr().err
    assert (report / "my_empty_project_dir").is_dir()
    (report / "my_empty_project_dir").rmdir()
    assert main(["demo", "--out", str(report), "--overwrite"]) == 0
