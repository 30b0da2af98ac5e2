"""The public data sets: the registry, checksums, offline errors and downloads (no network)."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
from _catalogue import bad_input

import histoexpr as hx
from histoexpr.datasets import _registry

realdata = pytest.mark.realdata


@pytest.fixture
def local_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(hx.settings, "_datasets_dir", tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def fake_source(monkeypatch, tmp_path):
    """A registry of two files served from a folder through file:// URLs."""
    served = tmp_path / "served"
    served.mkdir()
    plain = b"x\ty\n1\t2\n"
    (served / "a.tsv").write_bytes(plain)
    (served / "b.txt").write_bytes(b"hello")
    files = {
        "toy/a.tsv.gz": _registry.DataFile(
            "toy/a.tsv.gz",
            hashlib.sha256(plain).hexdigest(),
            (served / "a.tsv").as_uri(),
            gzip=True,
        ),
        "toy/b.txt": _registry.DataFile(
            "toy/b.txt", hashlib.sha256(b"hello").hexdigest(), (served / "b.txt").as_uri()
        ),
    }
    monkeypatch.setattr(_registry, "registry", lambda: files)
    return served


def test_registry_points_at_pinned_public_sources():
    files = _registry.registry()
    assert len(files) >= 30 and "her2st/counts/C2.tsv.gz" in files
    for entry in files.values():
        assert entry.url.startswith("https://github.com/") and "/raw/" in entry.url
        assert len(entry.sha256) == 64


def test_data_dir_setting_and_environment(monkeypatch, tmp_path):
    monkeypatch.setattr(hx.settings, "_datasets_dir", None)
    monkeypatch.setenv("HISTOEXPR_DATA_DIR", str(tmp_path / "env"))
    assert hx.datasets.data_dir() == tmp_path / "env"
    hx.settings.datasets_dir = tmp_path / "set"
    assert hx.datasets.data_dir() == tmp_path / "set"
    hx.settings.datasets_dir = None
    monkeypatch.delenv("HISTOEXPR_DATA_DIR")
    assert hx.datasets.data_dir().parts[-2:] == ("histoexpr", "data")
    with pytest.raises(ValueError, match="datasets_dir must be a folder"):
        hx.settings.datasets_dir = 3


def test_missing_file_offline_names_file_folder_and_url(local_dir):
    with pytest.raises(FileNotFoundError) as error:
        hx.datasets.her2st("C3", download=False)
    message = str(error.value)
    assert "her2st/counts/C3.tsv.gz" in message and str(local_dir) in message
    assert "https://github.com/almaan/her2st/raw/" in message and "HISTOEXPR_DATA_DIR" in message
    assert not local_dir.exists()  # nothing written


def test_unknown_section_is_refused(local_dir):
    with pytest.raises(ValueError, match=r"section_id='C9'.*\['C2', 'C3', 'C4'\]"):
        hx.datasets.her2st("C9")


@bad_input("obscure error", "`hx.datasets.fetch('unknown')` (a name that is not a registered "
           "file)",
           says="KeyError: 'unknown' is not a registered data file. The known data sets are "
                "['her2st', ... (before: a bare KeyError: 'unknown')",
           fix="pass one of the registered names (close ones are suggested)")
def test_unknown_data_file_names_the_data_sets(local_dir):
    with pytest.raises(KeyError, match=r"'unknown' is not a registered data file\. The known "
                                       r"data sets are \['her2st', .*'mob_st'"):
        hx.datasets.fetch("unknown")
    with pytest.raises(KeyError, match=r"Did you mean 'her2st/counts/C2\.tsv\.gz'"):
        hx.datasets.fetch("her2st/counts/C2.tsv")
    with pytest.raises(TypeError, match="download must be True or False, got 'no'"):
        hx.datasets.fetch("her2st/counts/C2.tsv.gz", download="no")
    assert not local_dir.exists()  # nothing written


def test_download_checks_the_checksum_and_gzips(fake_source, local_dir):
    path = hx.datasets.fetch("toy/a.tsv.gz")
    assert path == local_dir / "toy" / "a.tsv.gz"
    assert gzip.decompress(path.read_bytes()) == (fake_source / "a.tsv").read_bytes()
    assert hx.datasets.fetch("toy/b.txt").read_bytes() == b"hello"
    (fake_source / "a.tsv").write_bytes(b"changed")  # already there: not fetched again
    assert hx.datasets.fetch("toy/a.tsv.gz") == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.tsv.gz", "b.txt"]


def test_a_download_with_the_wrong_checksum_is_not_kept(fake_source, local_dir):
    (fake_source / "b.txt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256.*nothing was kept"):
        hx.datasets.fetch("toy/b.txt")
    assert list((local_dir / "toy").iterdir()) == []


def test_a_local_file_with_the_wrong_checksum_is_refused_and_kept(fake_source, local_dir):
    (local_dir / "toy").mkdir(parents=True)
    (local_dir / "toy" / "b.txt").write_bytes(b"mine")
    with pytest.raises(ValueError, match="is not the registered toy/b.txt"):
        hx.datasets.fetch("toy/b.txt")
    assert (local_dir / "toy" / "b.txt").read_bytes() == b"mine"


def test_a_failed_download_names_the_url(fake_source, local_dir):
    (fake_source / "b.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"download from file://.*b\.txt failed"):
        hx.datasets.fetch("toy/b.txt")


@realdata
def test_every_registered_file_matches_the_shared_folder(data_dir, monkeypatch):
    monkeypatch.setattr(hx.settings, "_datasets_dir", data_dir)
    for name in _registry.registry():
        assert hx.datasets.fetch(name, download=False).is_file()


@realdata
def test_real_data_sets_read_offline(data_dir, monkeypatch):
    monkeypatch.setattr(hx.settings, "_datasets_dir", data_dir)
    her2st = hx.datasets.her2st("C4", download=False)
    assert her2st.tables["table"].n_obs == 184 and "he" in her2st.images
    mob = hx.datasets.mob_st(2, download=False)
    assert mob.tables["table"].var_names[0].startswith("ENSMUSG")
    iss = hx.datasets.iss_mouse_ca1(download=False)
    assert np.asarray(iss.labels["nuclei"].data).shape == (5471, 7602)
    merfish = hx.datasets.merfish_mouse_brain(download=False)
    assert len(merfish.points["transcripts"]) > 70_000 and len(merfish.shapes["cells"]) > 100
    slide = hx.datasets.example_slide(download=False)
    assert hx.io.get_pixel_size(slide, "he") == pytest.approx(0.499, abs=1e-3)
