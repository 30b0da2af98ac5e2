"""The readers' own arguments, checked before any file is read: keys, flags and numbers.

A key that cannot name an element of a SpatialData (``''``, ``'a/b'``) used to reach
spatialdata's own check only once the files were read (its message advises ``sanitize_table``,
about tables); a string given for a flag (``'False'``) was true; a string given for a pixel
size (``'0.5'``) was taken as a number by some readers and refused by others.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from _catalogue import bad_input
from conftest import tree_digest
from test_platform_readers import write_merscope, write_xenium

import histoexpr as hx


def _slide(folder):
    """A small grey-pink RGB TIFF with no pixel size in it."""
    pixels = np.full((64, 64, 3), 230, np.uint8)
    pixels[16:48, 16:48] = (200, 120, 180)
    path = folder / "slide.tif"
    tifffile.imwrite(path, pixels, photometric="rgb")
    return path


def _trident_file(folder):
    """A TRIDENT-like feature file: 4 tiles x 3 features, 0.5 um/px, 32 px patches."""
    path = folder / "slide.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=np.arange(12, dtype=np.float32).reshape(4, 3))
        coords = handle.create_dataset("coords", data=np.array([[0, 0], [32, 0], [0, 32],
                                                                [32, 32]]))
        coords.attrs["patch_size_level0"] = 32
        coords.attrs["mpp"] = 0.5
    return path


def _readers(folder):
    """Each reader (and read_cohort) called on the files of ``folder``, with ``options``."""
    slide, features = folder / "slide.tif", folder / "slide.h5"
    return {
        "read_wsi": lambda **o: hx.io.read_wsi(slide, mpp=0.5, **o),
        "read_trident_h5": lambda **o: hx.io.read_trident_h5(features, **o),
        "read_st": lambda **o: hx.io.read_st(folder / "counts.tsv", folder / "spots.tsv",
                                             slide, **o),
        "read_visium": lambda **o: hx.io.read_visium(folder / "visium", **o),
        "read_hest": lambda **o: hx.io.read_hest(folder / "hest", "S1", **o),
        "read_xenium": lambda **o: hx.io.read_xenium(folder / "outs", **o),
        "read_merscope": lambda **o: hx.io.read_merscope(folder / "region_0", **o),
        "read_cohort": lambda **o: hx.io.read_cohort(folder / "slides.csv", **o),
    }


@bad_input("obscure error", "a reader's key that cannot name an element of a SpatialData "
           "(`hx.io.read_wsi(path, image_key='a/b')`, `image_key=''`, "
           "`read_trident_h5(key_added='a/b', features_key='x/y')`, the image_key of read_st, "
           "read_visium, read_hest, read_xenium, read_merscope and read_cohort)",
           says="ValueError: image_key='a/b' cannot name an element of a SpatialData ... (before: "
                "spatialdata's ValidationError advising sanitize_table, once the files were read; "
                "read_cohort accepted it and failed when a slide was opened)",
           fix="a key of letters, digits, '_', '-' or '.' (e.g. image_key='a_b')")
@pytest.mark.parametrize("reader", ["read_wsi", "read_trident_h5", "read_st", "read_visium",
                                    "read_hest", "read_xenium", "read_merscope", "read_cohort"])
def test_reader_keys_are_checked_before_reading(reader, tmp_path):
    _slide(tmp_path)
    _trident_file(tmp_path)
    call = _readers(tmp_path)[reader]
    before = tree_digest(tmp_path)
    for key in ("a/b", "", "__x"):
        with pytest.raises(ValueError, match=rf"image_key={key!r} cannot name an element of a "
                                             r"SpatialData.*use letters, digits"):
            call(image_key=key)
    assert tree_digest(tmp_path) == before


def test_trident_keys_are_checked_and_valid_ones_read(tmp_path):
    path = _trident_file(tmp_path)
    for name, key in (("key_added", "a/b"), ("features_key", "x/y"), ("key_added", "")):
        with pytest.raises(ValueError, match=rf"{name}={key!r} cannot name an element"):
            hx.io.read_trident_h5(path, **{name: key})
    sdata = hx.io.read_trident_h5(path, key_added="my.tiles", features_key="X_mine")
    assert sdata.tables["my.tiles_table"].obsm["X_mine"].shape == (4, 3)
    with h5py.File(path, "a") as handle:  # an encoder named like a repository: a valid key
        handle["features"].attrs["encoder"] = "MahmoodLab/UNI"
    assert list(hx.io.read_trident_h5(path).tables["tiles_table"].obsm) == \
        ["spatial", "X_MahmoodLab_UNI"]


@bad_input("silently wrong", "a string for a reader's flag: `read_st(selected_only='False')`, "
           "`read_xenium(cells='False')`, `read_merscope(transcripts='no')`, "
           "`read_cosmx(transcripts='False')` ('False' is true in Python: the part was read)",
           says="TypeError: selected_only must be True or False, got 'False' (str) ...",
           fix="pass True or False")
def test_reader_flags_must_be_bools(tmp_path):
    _slide(tmp_path)
    write_xenium(tmp_path / "outs")
    write_merscope(tmp_path / "region_0")
    calls = _readers(tmp_path)
    before = tree_digest(tmp_path)
    with pytest.raises(TypeError, match=r"selected_only must be True or False, got 'False' "
                                        r"\(str\)"):
        calls["read_st"](selected_only="False")
    for reader, flag in (("read_xenium", "cells"), ("read_xenium", "transcripts"),
                         ("read_xenium", "image"), ("read_merscope", "cells"),
                         ("read_merscope", "transcripts"), ("read_merscope", "image")):
        with pytest.raises(TypeError, match=rf"{flag} must be True or False, got 'no'"):
            calls[reader](**{flag: "no"})
    with pytest.raises(TypeError, match="transcripts must be True or False"):
        hx.io.read_cosmx(tmp_path / "outs", transcripts="False")
    with pytest.raises(TypeError, match="z_layer must be an integer, got '3'"):
        calls["read_merscope"](z_layer="3")
    assert tree_digest(tmp_path) == before
    # numpy's bools are bools
    sdata = hx.io.read_xenium(tmp_path / "outs", transcripts=np.bool_(False))
    assert "transcripts" not in sdata.points


@bad_input("silently wrong", "`hx.io.read_wsi(path, mpp='0.5')` (a string pixel size, from a "
           "table or a command line; so too read_st, read_hest, read_cosmx, read_trident_h5 "
           "and read_visium's spot_diameter_um)",
           says="TypeError: mpp must be a positive number in um/px, got '0.5' (str) (before: "
                "read_wsi took the string as a number, while pp.tile refused one)",
           fix="pass the pixel size as a number, e.g. mpp=0.5")
def test_reader_pixel_sizes_must_be_numbers(tmp_path):
    slide = _slide(tmp_path)
    _trident_file(tmp_path)
    calls = _readers(tmp_path)
    before = tree_digest(tmp_path)
    with pytest.raises(TypeError, match=r"mpp must be a positive number in um/px, got '0\.5' "
                                        r"\(str\)"):
        hx.io.read_wsi(slide, mpp="0.5")
    with pytest.raises(ValueError, match=r"mpp must be a positive number in um/px \(mpp > 0\)"):
        hx.io.read_wsi(slide, mpp=-1.0)
    for reader in ("read_st", "read_hest", "read_trident_h5"):
        with pytest.raises(TypeError, match="mpp must be a positive number"):
            calls[reader](mpp="0.5")
    with pytest.raises(TypeError, match="mpp must be a positive number"):
        hx.io.read_cosmx(tmp_path, mpp="0.12")
    with pytest.raises(TypeError, match="spot_diameter_um must be a positive number"):
        calls["read_visium"](spot_diameter_um="55")
    with pytest.raises(TypeError, match="patch_size_level0 must be a positive number"):
        calls["read_trident_h5"](patch_size_level0="32")
    assert tree_digest(tmp_path) == before
    # numbers of any kind are still pixel sizes
    for mpp in (0.5, 1, np.float32(0.5)):
        assert hx.io.get_pixel_size(hx.io.read_wsi(slide, mpp=mpp), "he") == \
            pytest.approx(float(mpp))


@bad_input("silently wrong", "`hx.io.read_xenium(folder, image_key='he')` (the H&E's key, "
           "he_key='he', too) or `read_merscope(image_key='x', stains_key='x')`: one image "
           "stored over the other",
           says="ValueError: image_key and he_key are both 'he': one image would be stored over "
                "the other",
           fix="give the images different keys")
def test_platform_image_keys_must_differ(tmp_path):
    write_xenium(tmp_path / "outs")
    write_merscope(tmp_path / "region_0")
    before = tree_digest(tmp_path)
    with pytest.raises(ValueError, match="image_key and he_key are both 'he': one image would "
                                         "be stored over the other"):
        hx.io.read_xenium(tmp_path / "outs", image_key="he")
    with pytest.raises(ValueError, match="image_key and stains_key are both 'x'"):
        hx.io.read_merscope(tmp_path / "region_0", image_key="x", stains_key="x")
    assert tree_digest(tmp_path) == before
    sdata = hx.io.read_xenium(tmp_path / "outs", image_key="nuclei", stains_key=None)
    assert "nuclei" in sdata.images
