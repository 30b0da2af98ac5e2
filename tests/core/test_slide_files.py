"""A slide read lazily by read_wsi: its levels travel to other processes (they reopen the
file), a slide's file is closed by path, and a file changed since it was read is refused."""

from __future__ import annotations

import multiprocessing
import os
import pickle

import numpy as np
import pytest
from _catalogue import bad_input

import histoexpr as hx
from histoexpr._core.distributed import close_slide_files
from histoexpr._core.slide_files import open_slide_files


def _slide(path, seed=0, size_px=300):
    import tifffile

    pixels = np.random.default_rng(seed).integers(0, 255, (size_px, size_px, 3), np.uint8)
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(64, 64), resolution=(2.0, 2.0),
                     resolutionunit="MICROMETER")
    return pixels


def _level(sdata):
    return sdata.images["he"]["scale0"]["image"].data


def _read_pickled(blob):
    """In a fresh process: the unpickled lazy level, computed (the file opened there)."""
    return np.asarray(pickle.loads(blob).compute(scheduler="synchronous"))


def test_a_slide_read_lazily_is_read_again_in_another_process(tmp_path):
    pixels = _slide(tmp_path / "slide.tif")
    sdata = hx.io.read_wsi(tmp_path / "slide.tif")
    level = _level(sdata)
    blob = pickle.dumps(level[:, 10:200, 20:250])
    assert len(blob) < 20_000  # the path and the file's identity travel, not pixels nor a handle
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        there = pool.apply(_read_pickled, (blob,))
    np.testing.assert_array_equal(there, pixels[10:200, 20:250].transpose(2, 0, 1))


def test_a_slides_file_is_closed_by_path_and_reopened_when_read_again(tmp_path):
    pixels = _slide(tmp_path / "slide.tif")
    sdata = hx.io.read_wsi(tmp_path / "slide.tif")
    path = os.path.abspath(tmp_path / "slide.tif")
    assert path in open_slide_files()
    close_slide_files(sdata)
    assert path not in open_slide_files()
    np.testing.assert_array_equal(_level(sdata)[:, :50, :50].compute(scheduler="synchronous"),
                                  pixels[:50, :50].transpose(2, 0, 1))
    assert path in open_slide_files()  # opened again by the read
    close_slide_files(sdata)
    assert path not in open_slide_files()


@bad_input("silently wrong", "a slide file replaced (rewritten) after `read_wsi` read it, "
           "then its lazily read pixels computed",
           says="ValueError: `The slide file ... changed since read_wsi read it`",
           fix="read the slide again with `hx.io.read_wsi`")
def test_a_slide_file_changed_after_it_was_read_is_refused(tmp_path):
    _slide(tmp_path / "slide.tif")
    sdata = hx.io.read_wsi(tmp_path / "slide.tif")
    close_slide_files(sdata)  # as a worker elsewhere: it opens the file when it reads
    _slide(tmp_path / "slide.tif", seed=1, size_px=310)  # another image in its place
    with pytest.raises(ValueError, match=r"changed since read_wsi read it.*read_wsi"):
        _level(sdata)[:, :50, :50].compute(scheduler="synchronous")
    assert os.path.abspath(tmp_path / "slide.tif") not in open_slide_files()
    fresh = hx.io.read_wsi(tmp_path / "slide.tif")
    assert _level(fresh).shape == (3, 310, 310)
    close_slide_files(fresh)
