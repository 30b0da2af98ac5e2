"""A fluorescence image of three stains is no H&E: the steps decide by the channels' names.

The same synthetic section is stored as fluorescence (channels ``DAPI, CD3, CD8``: bright nuclei
on a dark background, on the left half) and, for contrast, an H&E (channels ``r, g, b``: stained
tissue on white glass, on the left half). Tissue detection, the tissue test of the transcript
labels and the pretraining augmentations treat each as what its channels say.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input
from spatialdata import SpatialData

import histoexpr as hx
from histoexpr._core.image import read_region
from histoexpr.io._elements import image_element
from histoexpr.pp import _tissue

SIDE = 400  # px at 1 um/px; the tissue is the left half
STAINS = ["DAPI", "CD3", "CD8"]


def _nuclei(rng) -> np.ndarray:
    """Masks of round nuclei (radius 4 px) every 12 px over the left half."""
    rows, cols = np.mgrid[:SIDE, :SIDE]
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    for cy in range(6, SIDE - 6, 12):
        for cx in range(6, SIDE // 2 - 6, 12):
            y, x = cy + rng.integers(-2, 3), cx + rng.integers(-2, 3)
            mask |= (rows - y) ** 2 + (cols - x) ** 2 <= 16
    return mask


def fluorescence(*, filled: bool = False, seed: int = 0) -> np.ndarray:
    """Bright DAPI nuclei (some CD3+ or CD8+) on a dark background; ``filled``: on a dim glow."""
    rng = np.random.default_rng(seed)
    nuclei = _nuclei(rng)
    pixels = np.full((3, SIDE, SIDE), 40.0 if filled else 4.0, dtype=np.float32)
    pixels[0][nuclei] = 220
    pixels[1][nuclei & (rng.random((SIDE, SIDE)) < 0.5)] = 120
    pixels[2][nuclei & (rng.random((SIDE, SIDE)) < 0.3)] = 90
    pixels += rng.normal(0, 2, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def he(seed: int = 0) -> np.ndarray:
    """Pink stroma with purple nuclei on the left half, white glass on the right."""
    rng = np.random.default_rng(seed)
    nuclei = _nuclei(rng)
    pixels = np.full((3, SIDE, SIDE), 238.0, dtype=np.float32)
    pixels[:, :, : SIDE // 2] = np.array([225.0, 150.0, 195.0])[:, None, None]
    pixels[:, nuclei] = np.array([95.0, 60.0, 150.0])[:, None]
    pixels += rng.normal(0, 3, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def section(pixels: np.ndarray, channels: list[str], key: str = "image") -> SpatialData:
    return SpatialData(images={key: image_element(pixels, mpp=1.0, channels=channels)})


def halves(mask: np.ndarray) -> tuple[float, float]:
    """Share of the left (tissue) and the right (background) half where ``mask`` holds."""
    half = mask.shape[1] // 2
    return float(mask[:, :half].mean()), float(mask[:, half:].mean())


# ----------------------------------------------------------------------------- detect_tissue


def test_tissue_on_three_stains_is_their_bright_nuclei_and_on_he_the_stained_half():
    fluo = section(fluorescence(), STAINS)
    hx.pp.detect_tissue(fluo, "image", mpp=4.0)
    assert fluo.labels["image_tissue"].attrs["tissue"]["kind"] == "fluorescence"
    left, right = halves(np.asarray(fluo.labels["image_tissue"].values) > 0)
    assert left > 0.9 and right < 0.02, (left, right)  # the nuclei, not the dark background

    stained = section(he(), ["r", "g", "b"])
    hx.pp.detect_tissue(stained, "image", mpp=4.0)
    assert stained.labels["image_tissue"].attrs["tissue"]["kind"] == "brightfield"
    left, right = halves(np.asarray(stained.labels["image_tissue"].values) > 0)
    assert left > 0.9 and right < 0.02, (left, right)  # the stain, not the glass


@bad_input("silently wrong", "a fluorescence image of three stains (channels `DAPI, CD3, CD8`, "
           "as `hx.io.read_wsi` names them from an OME-TIFF) in `hx.pp.detect_tissue`, "
           "`hx.pp.transcript_labels` (`tissue='image'`) or `hx.tl.pretrain`",
           says="treated as fluorescence by its channel names (before: as an RGB H&E, by its "
                "count of 3 channels: optical density, H&E augmentations)",
           fix="nothing; an image whose channels are unnamed (`c0, c1, c2`) is still taken for "
               "RGB when it has 3: name its channels (or pass kind= / augment=)")
def test_named_stains_are_fluorescence_where_the_pixels_alone_would_say_brightfield():
    """A crop filled with tissue has no dark background: the pixels alone say brightfield."""
    pixels = fluorescence(filled=True)
    named, unnamed = section(pixels, STAINS), section(pixels, ["c0", "c1", "c2"])
    hx.pp.detect_tissue(named, "image", mpp=4.0)
    hx.pp.detect_tissue(unnamed, "image", mpp=4.0)
    assert named.labels["image_tissue"].attrs["tissue"]["kind"] == "fluorescence"
    assert unnamed.labels["image_tissue"].attrs["tissue"]["kind"] == "brightfield"  # as before
    left, right = halves(np.asarray(named.labels["image_tissue"].values) > 0)
    assert left > 0.9 and right < 0.02, (left, right)


# ----------------------------------------------------------------------------- transcript_labels


def _labelled(pixels: np.ndarray, channels: list[str], monkeypatch) -> tuple[np.ndarray, int]:
    """The transcript labels (2 um grid) of a section, and how often H&E's test was run."""
    places = [(100.5, 100.5, "A"), (100.5, 300.5, "B"), (300.5, 300.5, "A"), (300.5, 100.5, "B")]
    table = pd.DataFrame([p for p in places for _ in range(5)], columns=["x", "y", "gene"])
    sdata = hx.io.read_transcripts(table)
    sdata.images["image"] = image_element(pixels, mpp=1.0, channels=channels)
    calls = []
    stained = _tissue._stained
    monkeypatch.setattr(_tissue, "_stained", lambda *a, **k: calls.append(1) or stained(*a, **k))
    hx.pp.transcript_labels(sdata, image_key="image", genes=("A", "B"), min_per_class=1)
    return read_region(sdata, "tx_labels", (0, 0, SIDE, SIDE), mpp=2.0), len(calls)


@pytest.mark.parametrize("kind", ["fluorescence", "he"])
def test_transcript_labels_find_tissue_as_the_channels_say(kind, monkeypatch):
    pixels, channels = (fluorescence(), STAINS) if kind == "fluorescence" else (he(), list("rgb"))
    labels, he_tests = _labelled(pixels, channels, monkeypatch)
    assert he_tests == (kind == "he")  # the optical density of H&E, or bright nuclei
    tissue_left, tissue_right = halves(labels == 2)
    background_left, background_right = halves(labels == 1)
    # the window (10 um) reaches a few um past the edge of the tissue
    assert tissue_left > 0.75 and tissue_right < 0.05, (tissue_left, tissue_right)
    assert background_right > 0.95 and background_left < 0.2, (background_left, background_right)


# ----------------------------------------------------------------------------- pretrain


@pytest.mark.parametrize(("channels", "stain"), [(STAINS, "fluorescence"), (list("rgb"), "he")])
def test_pretraining_augments_three_stains_as_fluorescence(channels, stain):
    pixels = fluorescence() if stain == "fluorescence" else he()
    sdata = section(pixels, channels)
    hx.pp.tile(sdata, "image", size_px=16, mpp=2.0, min_tissue=0.5)
    encoder = hx.tl.pretrain(sdata, "image_tiles", encoder="small_cnn", batch_size=16,
                             projection_dim=8, epochs=1, seed=0)
    assert encoder.metadata["stain"] == stain
    names = [step["name"] for step in encoder.metadata["augmentations"]]
    assert any("hed" in name.lower() for name in names) == (stain == "he"), names
