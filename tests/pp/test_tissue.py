"""Tissue detection against what a pathologist (or the data authors) call tissue.

Real sections: the spot-selection criterion of ``_tissue_criterion.py`` on her2st (the data
authors' own call of the spots under the tissue vs every other array position on the image).
Synthetic slides: tissue with the artefacts of real glass (an eosin halo, pen marks, bubbles,
dust) whose pixels are known, so the mask's overlap with the true tissue is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from _catalogue import bad_input
from _tissue_criterion import CHANGES, agreement, array_positions, changed, section_agreement

import histoexpr as hx

HER2ST_SECTIONS = ("C2", "C3", "C4")


def read_her2st(data_dir, section: str):
    root = data_dir / "her2st"
    image = next((root / "images").glob(f"{section}_*.jpg"))
    sdata = hx.io.read_st(root / "counts" / f"{section}.tsv.gz",
                          root / "spots" / f"{section}_selection.tsv", image)
    level = hx.io.image_levels(sdata, "he")[0]
    positions = array_positions(root / "spots" / f"{section}_selection.tsv", level.shape_yx)
    return sdata, positions


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("section", HER2ST_SECTIONS)
def test_tissue_matches_the_authors_spot_selection(data_dir, section):
    """Sensitivity >= 0.98 on the spots the authors kept, specificity >= 0.99 on the other array
    positions on the image (the eosin halo beside C3 and C4 among them)."""
    sdata, positions = read_her2st(data_dir, section)
    assert len(positions) > 900 and positions["selected"].sum() >= 180  # the whole 33 x 35 array
    hx.pp.detect_tissue(sdata, "he")
    result = section_agreement(sdata, positions)
    assert result.sensitivity >= 0.98, result.missed
    assert result.specificity >= 0.99, result.false


@pytest.fixture(scope="module")
def c3_level(data_dir):
    """C3's pyramid level at about 2.8 um/px (pixels, pixel size), and its array positions."""
    sdata, positions = read_her2st(data_dir, "C3")
    levels = hx.io.image_levels(sdata, "he")
    index, level = next((i, lv) for i, lv in enumerate(levels) if lv.mpp > 2.5)
    pixels = np.asarray(sdata.images["he"][f"scale{index}"]["image"].values)
    return pixels, level.mpp, levels[0].mpp, positions


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("change", [c for c in CHANGES if c != "none"])
def test_tissue_criterion_holds_when_staining_and_scanning_change(c3_level, change):
    """The criterion still holds on C3 (the section with the eosin halo and the most positions
    near the edge) after the changes another lab or scanner brings: staining 0.3-2x as strong,
    haematoxylin or eosin dominant, yellow light, under-exposure, blur."""
    from spatialdata import SpatialData

    from histoexpr.io._elements import image_element

    pixels, mpp, image_mpp, positions = c3_level
    alone = SpatialData(images={"he": image_element(changed(pixels, change), mpp=mpp)})
    hx.pp.detect_tissue(alone, "he")
    found = hx.io.image_levels(alone, "he_tissue")[0]
    result = agreement(np.asarray(alone.labels["he_tissue"]), found.mpp, positions, image_mpp,
                       found.offset)
    assert result.sensitivity >= 0.98, result.missed
    assert result.specificity >= 0.99, result.false


@pytest.fixture(scope="module")
def artefact_slide():
    return hx.datasets.synthetic_artefact_slide(seed=0)


def truth_on(sdata, key: str, mask: np.ndarray) -> np.ndarray:
    """A truth label map of the slide sampled on the detected map's grid (nearest pixel)."""
    level = hx.io.image_levels(sdata, "he_tissue")[0]
    height, width = mask.shape
    return hx.io.read_region(sdata, key, (0, 0, width * level.mpp, height * level.mpp),
                             mpp=level.mpp, outside="fill")


@pytest.mark.parametrize("mpp", [4.0, 8.0])
def test_halo_pen_bubbles_and_dust_are_not_tissue(artefact_slide, mpp):
    from histoexpr.datasets._artefacts import ARTEFACT_CODES

    hx.pp.detect_tissue(artefact_slide, "he", mpp=mpp, overwrite=True)
    mask = np.asarray(artefact_slide.labels["he_tissue"]) > 0
    tissue = truth_on(artefact_slide, "tissue", mask) > 0
    artefacts = truth_on(artefact_slide, "artefacts", mask)
    assert (mask & tissue).sum() / (mask | tissue).sum() > 0.95
    for name, code in ARTEFACT_CODES.items():
        drawn = artefacts == code
        assert drawn.sum() > 10, name
        assert mask[drawn].mean() < 0.01, name  # (the halo touches the tissue: its edge may blur)


def test_artefact_slide_draws_what_it_is_asked(artefact_slide):
    assert set(np.unique(np.asarray(artefact_slide.labels["artefacts"]))) == {0, 1, 2, 3, 4}
    plain = hx.datasets.synthetic_artefact_slide(seed=0, artefacts=("pen",))
    assert set(np.unique(np.asarray(plain.labels["artefacts"]))) == {0, 2}
    # the tissue is the same section either way, and the images agree off the artefacts
    np.testing.assert_array_equal(np.asarray(plain.labels["tissue"]),
                                  np.asarray(artefact_slide.labels["tissue"]))
    with pytest.raises(ValueError, match="Unknown artefact"):
        hx.datasets.synthetic_artefact_slide(artefacts=("coffee",))


def test_min_od_overrides_the_threshold(artefact_slide):
    hx.pp.detect_tissue(artefact_slide, "he", key_added="found")
    hx.pp.detect_tissue(artefact_slide, "he", min_od=0.2, key_added="dense")
    found = np.asarray(artefact_slide.labels["found"]) > 0
    dense = np.asarray(artefact_slide.labels["dense"]) > 0
    assert 0 < dense.sum() < 0.9 * found.sum()
    with pytest.raises(ValueError, match="min_od must be a positive"):
        hx.pp.detect_tissue(artefact_slide, "he", min_od=0, key_added="none")


def with_pixels(pixels: np.ndarray, dims=("c", "y", "x")):
    """A section whose image 'he' holds ``pixels`` (at 2 um/px)."""
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, Image3DModel
    from spatialdata.transformations import Scale

    model = Image3DModel if "z" in dims else Image2DModel
    scale = Scale([2.0] * (len(dims) - 1), axes=tuple(d for d in dims if d != "c"))
    return SpatialData(images={"he": model.parse(pixels, dims=dims,
                                                 transformations={"global": scale})})


def disk_pixels() -> np.ndarray:
    from conftest import make_disk_section

    return np.asarray(make_disk_section(200, mpp=2.0).images["he"].data)


@bad_input(
    "silently wrong",
    "`hx.pp.detect_tissue` (and `hx.tl.predict`, `hx.pp.tile` that run it) on an all-white, "
    "all-black or constant image (an empty pyramid level, a placeholder)",
    says="ValueError: sdata.images['he'] is blank: every pixel is 255 (as read), so there is "
    "nothing on it to find ... Check the image (before: 'No tissue was found ... lower "
    "min_area_um2 or mpp', a fix that cannot help)",
    fix="check the image and give the slide's own",
)
def test_a_blank_image_is_named_as_blank():
    for value in (255, 0, 128):
        sdata = with_pixels(np.full((3, 100, 100), value, dtype=np.uint8))
        with pytest.raises(ValueError, match=f"is blank: every pixel is {value} "):
            hx.pp.detect_tissue(sdata)
        assert not sdata.labels


@bad_input(
    "silently wrong",
    "`hx.pp.detect_tissue` on a float image with NaN (or infinite) pixels, a part masked out",
    says="ValueError: sdata.images['he'] holds NaN or infinite pixels ... Replace them by a "
    "value (before: 'No tissue was found' on the whole image: the NaN spread through the "
    "threshold)",
    fix="replace the NaN pixels (e.g. np.nan_to_num with the glass colour) or crop them away",
)
def test_nan_pixels_are_refused_not_taken_for_no_tissue():
    pixels = disk_pixels().astype(np.float32) / 255
    found = with_pixels(pixels.copy())
    hx.pp.detect_tissue(found)  # the same image without NaN: its disk is found
    assert (np.asarray(found.labels["he_tissue"]) > 0).mean() > 0.3
    pixels[:, :20, :20] = np.nan
    sdata = with_pixels(pixels)
    with pytest.raises(ValueError, match="holds NaN or infinite pixels"):
        hx.pp.detect_tissue(sdata)
    assert not sdata.labels


@bad_input(
    "silently wrong",
    "`hx.pp.detect_tissue` on a signed image with negative pixels (an int16 image centred on its "
    "mean), a boolean or a complex image",
    says="ValueError: sdata.images['he'] holds negative pixels (down to ...; TypeError: "
    "sdata.images['he'] holds bool pixels, not intensities (a mask? ...) (before: a tissue map "
    "of half the image, or 'No tissue was found')",
    fix="give the image as read from its file (integers from 0, or floats from 0 to 1); store a "
    "mask as a label map",
)
def test_pixels_that_are_not_intensities_are_refused():
    pixels = disk_pixels()
    for bad, error, said in (
        (pixels.astype(np.int16) - int(pixels.mean()), ValueError, "holds negative pixels"),
        (pixels > 128, TypeError, "holds bool pixels, not intensities \\(a mask"),
        (pixels.astype(np.complex64), TypeError, "holds complex64 pixels"),
    ):
        sdata = with_pixels(bad)
        with pytest.raises(error, match=said):
            hx.pp.detect_tissue(sdata)
        assert not sdata.labels


@bad_input(
    "obscure error",
    "`hx.pp.detect_tissue` (or `hx.tl.predict`) on a 3D image (dims c, z, y, x), or on an "
    "image a few pixels across",
    says="ValueError: 'he' is a 3D image (dims c, z, y, x); histoexpr works on 2D sections "
    "(before: RuntimeError: sequence argument must have length equal to input rank; a 240 x 1 "
    "px image asked for a finer mpp than the image has)",
    fix="store the plane to use as a 2D image; give the section's image",
)
def test_a_3d_or_tiny_image_is_refused_with_what_to_give():
    pixels = disk_pixels()
    sdata = with_pixels(np.stack([pixels, pixels], axis=1), dims=("c", "z", "y", "x"))
    with pytest.raises(ValueError, match="is a 3D image.*isel\\(z=k\\)"):
        hx.pp.detect_tissue(sdata)
    sdata = with_pixels(pixels[:, :1, :])
    with pytest.raises(ValueError, match="The image is 200 x 1 px: too small"):
        hx.pp.detect_tissue(sdata, mpp=2.0)
    assert not sdata.labels


@bad_input(
    "silently wrong",
    "`hx.pp.detect_tissue(sdata, min_od=0.05)` on an image detected as fluorescence, or "
    "`fill_holes='no'`",
    says="ValueError: min_od=0.05 thresholds the optical density of a brightfield image, but "
    "'he' is detected as fluorescence (before: min_od ignored; any non-empty string filled "
    "the holes)",
    fix="pass kind='brightfield' for a stained image, or drop min_od; fill_holes=True or False",
)
def test_options_that_would_be_ignored_are_refused():
    dark = 255 - disk_pixels()  # a bright disk on a dark background: fluorescence
    sdata = with_pixels(dark)
    with pytest.raises(ValueError, match="min_od=0.05 thresholds.*detected as fluorescence"):
        hx.pp.detect_tissue(sdata, min_od=0.05)
    with pytest.raises(TypeError, match="fill_holes must be True or False"):
        hx.pp.detect_tissue(sdata, fill_holes="no")
    assert not sdata.labels
    hx.pp.detect_tissue(sdata)
    assert (np.asarray(sdata.labels["he_tissue"]) > 0).mean() > 0.3
