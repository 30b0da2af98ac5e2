"""The fast paths of the readers give the pixels and counts of the general ones, exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import histoexpr as hx
from histoexpr.io import _elements


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(3, 4301, 2100), (1, 2050, 4099)])
def test_pyramid_levels_are_spatialdatas(shape, dtype):
    """The integer pyramid equals spatialdata's own (xarray coarsen mean, cast), odd sides too."""
    import dask

    rng = np.random.default_rng(0)
    image = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    fast = _elements.image_element(image, mpp=0.5)
    lazy = _elements.image_element(_elements.dask_view(image, (shape[0], 1024, 1024)), mpp=0.5)
    assert list(fast) == list(lazy) and len(fast) >= 2
    for name in fast:
        ours = np.asarray(fast[name]["image"].data)
        theirs = dask.compute(lazy[name]["image"].data)[0]
        assert ours.dtype == theirs.dtype == dtype
        np.testing.assert_array_equal(ours, theirs)
        assert fast[name]["image"].data.chunksize == lazy[name]["image"].data.chunksize
        np.testing.assert_array_equal(
            fast[name]["image"].coords["y"], lazy[name]["image"].coords["y"]
        )


def test_dask_view_shares_the_pixels():
    image = np.arange(3 * 50 * 70, dtype=np.uint8).reshape(3, 50, 70)
    view = _elements.dask_view(image, (3, 16, 32))
    assert view.chunks == ((3,), (16, 16, 16, 2), (32, 32, 6))
    np.testing.assert_array_equal(view.compute(), image)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_decoded_as_pil_decodes_it(tmp_path, mode):
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (123, 211, 3), dtype=np.uint8)
    pixels[40:80] = 200
    path = tmp_path / "he.jpg"
    Image.fromarray(pixels).convert(mode).save(path, quality=80)
    with Image.open(path) as image:
        expected = np.asarray(image)
    array = _elements.read_plain_image(path)
    np.testing.assert_array_equal(array, _elements.to_cyx(expected, "yxc"))


def test_st_counts_as_written(tmp_path):
    """Repeated gene names and quoted ones are read as written; values to the last bit."""
    from histoexpr.io._st import _read_counts

    rng = np.random.default_rng(2)
    values = rng.integers(0, 50, (30, 7)).astype(float)
    values[0, 0] = 0.1 + 0.2  # a value that needs every digit
    genes = ["A", "IGKC", "IGKC", "B C", "D", "E", "F"]
    frame = pd.DataFrame(values, index=[f"{i}x{i + 1}" for i in range(30)], columns=genes)
    path = tmp_path / "counts.tsv.gz"
    frame.to_csv(path, sep="\t", float_format="%.17g")
    table = _read_counts(path)
    assert table.columns[:3].tolist() == ["A", "IGKC", "IGKC-1"]
    assert table.columns[3] == "B C"
    assert table.dtypes.unique().tolist() == [np.float64]
    np.testing.assert_array_equal(table.to_numpy(), values)


@pytest.mark.realdata
def test_her2st_section_read_is_unchanged(data_dir):
    """Checksums of C2's pixels (every level) and counts, as read before the fast paths."""
    import hashlib

    root = data_dir / "her2st"
    sdata = hx.io.read_st(
        root / "counts" / "C2.tsv.gz",
        root / "spots" / "C2_selection.tsv",
        root / "images" / "C2_5714_HE_BT_C2.jpg",
    )
    digests = {
        name: hashlib.sha256(np.asarray(node["image"].data).tobytes()).hexdigest()[:16]
        for name, node in sdata.images["he"].items()
    }
    assert digests == {
        "scale0": "3c0fda60420cabe1",
        "scale1": "6370faa1ff8a76ab",
        "scale2": "7d2c15698e8cb8a4",
        "scale3": "e356d68e43ceb636",
    }
    x = sdata.tables["table"].X.toarray()
    assert hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16] == "bb0f940cbaa5496e"
