"""Property-based tests (hypothesis) of the readers and of tile/read_region geometry.

Random tables with NaN, infinite, negative, duplicated, shuffled and out-of-image rows, written to
files and read back, never crash with a foreign exception (only histoexpr's ``ValueError`` or
``KeyError`` that names the fix) and never return silently changed data. Examples are few, so
the module runs in seconds.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_disk_section
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import histoexpr as hx

FEW = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow])
#: words by which histoexpr's messages say what to do
FIX_WORDS = ("pass", "check", "fix", "fill", "remove", "choose", "sum or drop", "copy", "use")


def _clear(error: Exception) -> bool:
    """Whether ``error`` is histoexpr's kind of error: a ValueError/KeyError naming a fix."""
    message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    return isinstance(error, ValueError | KeyError) and any(w in message.lower()
                                                           for w in FIX_WORDS)


coordinate = st.one_of(st.floats(-30, 50, allow_nan=False), st.just(np.nan), st.just(np.inf),
                       st.just(-np.inf), st.integers(-5, 25).map(float))
gene = st.one_of(st.sampled_from(["A", "B", "C"]), st.none())


@FEW
@given(rows=st.lists(st.tuples(coordinate, coordinate, gene), min_size=1, max_size=25),
       duplicate=st.booleans())
def test_read_transcripts_keeps_exactly_the_valid_rows(rows, duplicate):
    frame = pd.DataFrame(rows, columns=["x", "y", "gene"])
    if duplicate:
        frame = pd.concat([frame, frame.iloc[::2]]).sample(frac=1.0, random_state=0)
    valid = (np.isfinite(frame[["x", "y"]].to_numpy()).all(axis=1) & frame["gene"].notna()
             & (frame["x"] >= 0) & (frame["y"] >= 0) & (frame["x"] < 20) & (frame["y"] < 20))
    expected = sorted(zip(frame["x"][valid], frame["y"][valid], frame["gene"][valid],
                          strict=True))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "transcripts.csv"
        frame.to_csv(path, index=False)
        try:
            sdata = hx.io.read_transcripts(path, pixel_size=1.0, outside="drop",
                                           image=np.zeros((20, 20), dtype=np.uint8))
        except Exception as error:  # noqa: BLE001 (the property: only histoexpr's errors)
            assert _clear(error), repr(error)
            assert not expected, "refused a table with valid rows"
            return
    points = sdata.points["transcripts"].compute()
    got = sorted(zip(points["x"], points["y"], points["gene"].astype(str), strict=True))
    assert got == expected


def _st_table(rng: np.random.Generator, n_x: int = 6, n_y: int = 5):
    xs, ys = np.meshgrid(np.arange(1, n_x + 1), np.arange(1, n_y + 1))
    xs, ys = xs.ravel(), ys.ravel()
    spots = pd.DataFrame({"x": xs, "y": ys, "pixel_x": 25 + (xs - 1) * 50.0,
                          "pixel_y": 25 + (ys - 1) * 50.0, "selected": 1})
    counts = pd.DataFrame(rng.integers(0, 9, (len(xs), 3)).astype(object),
                          index=[f"{x}x{y}" for x, y in zip(xs, ys, strict=True)],
                          columns=["A", "B", "C"])
    return counts, spots


bad_value = st.sampled_from([None, "nan", "-3", "x7", "dup", "shuffle", "inf"])


@FEW
@given(changes=st.lists(st.tuples(bad_value, st.integers(0, 29), st.integers(0, 2)),
                        max_size=3), seed=st.integers(0, 1000))
def test_read_st_never_changes_counts_silently(changes, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    counts, spots = _st_table(rng)
    refused = False
    for what, row, column in changes:
        if what == "dup":
            counts = pd.concat([counts, counts.iloc[[row]]])
            refused = True
        elif what == "shuffle":
            counts = counts.sample(frac=1.0, random_state=seed)
            spots = spots.sample(frac=1.0, random_state=seed + 1)
        elif what is not None:
            counts.iloc[row, column] = {"nan": np.nan, "-3": -3, "x7": "x7",
                                        "inf": np.inf}[what]
            refused = True
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        counts.to_csv(folder / "counts.tsv", sep="\t")
        spots.to_csv(folder / "spots.tsv", sep="\t", index=False)
        Image.fromarray(np.full((260, 310, 3), 240, np.uint8)).save(folder / "he.png")
        try:
            sdata = hx.io.read_st(folder / "counts.tsv", folder / "spots.tsv",
                                  folder / "he.png")
        except Exception as error:  # noqa: BLE001
            assert _clear(error), repr(error)
            assert refused, f"refused clean input: {error}"
            return
    assert not refused, "accepted NaN, negative, text or repeated counts"
    table = sdata.tables["table"]
    expected = counts.loc[table.obs_names].to_numpy(dtype=float)
    np.testing.assert_array_equal(table.X.toarray(), expected)
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(4.0, rel=1e-6)
    # every spot sits where its spot file says, in um
    spots = spots.set_index(spots["x"].astype(str) + "x" + spots["y"].astype(str))
    np.testing.assert_allclose(table.obsm["spatial"],
                               spots.loc[table.obs_names, ["pixel_x", "pixel_y"]] * 4.0)


SECTION = make_disk_section()  # 400 x 400 px at 0.5 um/px: 200 x 200 um
PIXELS = np.asarray(SECTION.images["he"].values)
half_um = st.integers(-200, 600).map(lambda n: n / 2)  # on the 0.5 um pixel grid


@FEW
@given(x0=half_um, y0=half_um, width=st.integers(1, 300).map(lambda n: n / 2),
       height=st.integers(1, 300).map(lambda n: n / 2))
def test_read_region_returns_the_pixels_or_says_why_not(x0, y0, width, height):
    bounds = (x0, y0, x0 + width, y0 + height)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            region = hx.io.read_region(SECTION, "he", bounds, fill=0)
        except ValueError as error:
            assert "wholly outside" in str(error)
            assert x0 >= 200 or y0 >= 200 or x0 + width <= 0 or y0 + height <= 0
            return
    assert region.shape == (3, round(height / 0.5), round(width / 0.5))
    c0, r0 = round(x0 / 0.5), round(y0 / 0.5)
    inside = (slice(max(r0, 0), min(r0 + region.shape[1], 400)),
              slice(max(c0, 0), min(c0 + region.shape[2], 400)))
    np.testing.assert_array_equal(
        region[:, inside[0].start - r0:inside[0].stop - r0,
               inside[1].start - c0:inside[1].stop - c0], PIXELS[:, inside[0], inside[1]])
    off = x0 < 0 or y0 < 0 or x0 + width > 200 or y0 + height > 200
    assert bool([w for w in caught if "lies outside" in str(w.message)]) == off


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(size_um=st.integers(10, 120).map(float), stride=st.floats(0.5, 1.0))
def test_tiles_are_squares_of_the_asked_size_centred_on_the_image(size_um, stride):
    sdata = make_disk_section()
    hx.pp.tile(sdata, "he", size_um=size_um, stride_um=stride * size_um, min_tissue=0.0)
    boxes = sdata.shapes["he_tiles"].geometry.bounds.to_numpy()
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], size_um)
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], size_um)
    centres = sdata.tables["he_tiles_table"].obsm["spatial"]
    np.testing.assert_allclose(centres, (boxes[:, :2] + boxes[:, 2:]) / 2)
    assert ((centres >= 0) & (centres <= 200)).all()
    assert sdata.shapes["he_tiles"].index.is_unique
    assert len(sdata.shapes["he_tiles"]) == sdata.tables["he_tiles_table"].n_obs
