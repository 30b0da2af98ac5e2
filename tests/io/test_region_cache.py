"""The chunk cache behind read_region: exact reads across chunk borders, within its budget."""

from __future__ import annotations

import dask.array as da
import numpy as np

from histoexpr._core.image import ChunkCache


def test_windows_across_chunks_equal_direct_reads():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, 130, 170), dtype=np.uint8)
    array = da.from_array(data, chunks=(3, 32, 45))
    cache = ChunkCache(max_bytes=10**8)
    for _ in range(50):
        r0, c0 = rng.integers(0, 120), rng.integers(0, 160)
        r1, c1 = r0 + rng.integers(1, 130 - r0 + 1), c0 + rng.integers(1, 170 - c0 + 1)
        np.testing.assert_array_equal(cache.read(array, r0, r1, c0, c1), data[:, r0:r1, c0:c1])


def test_budget_bounds_memory_and_evicts_oldest_chunks():
    data = np.arange(200 * 200, dtype=np.uint16).reshape(200, 200)
    array = da.from_array(data, chunks=(50, 50))  # 16 chunks of 5 kB
    cache = ChunkCache(max_bytes=4 * 50 * 50 * 2)  # room for 4 chunks
    for r in range(0, 200, 50):
        for c in range(0, 200, 50):
            cache.read(array, r, r + 10, c, c + 10)
            assert cache.store.nbytes <= cache.max_bytes
    assert len(cache.store) == 4
    assert (array.name, 3, 3) in cache.store and (array.name, 0, 0) not in cache.store
    np.testing.assert_array_equal(cache.read(array, 0, 60, 0, 60), data[:60, :60])


def test_chunks_too_big_for_the_budget_are_read_directly():
    data = np.ones((3, 100, 100), dtype=np.uint8)
    cache = ChunkCache(max_bytes=1000)
    np.testing.assert_array_equal(cache.read(da.from_array(data), 5, 9, 5, 9), data[:, 5:9, 5:9])
    assert not len(cache.store)


def _levels(seed: int = 0, mpp: float = 0.5):
    import xarray as xr

    from histoexpr._core.image import ImageLevel

    data = np.random.default_rng(seed).integers(0, 255, (3, 200, 200), dtype=np.uint8)
    array = xr.DataArray(da.from_array(data, chunks=(3, 64, 64)), dims=("c", "y", "x"))
    return [ImageLevel(array, mpp, (0.0, 0.0))], data


def test_regions_read_again_come_from_memory_only_inside_kept(monkeypatch):
    from histoexpr._core import image as image_module
    from histoexpr._core.image import REGIONS, read_levels

    levels, _ = _levels()
    other, _ = _levels(seed=1)
    reads = []
    original = image_module._read_box
    monkeypatch.setattr(image_module, "_read_box",
                        lambda *a, **k: reads.append(a[1]) or original(*a, **k))
    box = (10.0, 12.0, 40.0, 42.0)
    outside = [read_levels(levels, box, mpp=0.55) for _ in range(2)]
    assert len(reads) == 2  # off by default: every read reads
    with REGIONS.kept():
        first = read_levels(levels, box, mpp=0.55)
        again = read_levels(levels, box, mpp=0.55)
        assert len(reads) == 3  # the second came from memory
        np.testing.assert_array_equal(first, outside[0])
        np.testing.assert_array_equal(again, outside[0])
        again[:] = 0  # a copy: what is kept does not change
        np.testing.assert_array_equal(read_levels(levels, box, mpp=0.55), outside[0])
        # another image, box, pixel size or fill is read, never taken for the kept one
        read_levels(other, box, mpp=0.55)
        read_levels(levels, (10.0, 12.0, 40.0, 43.0), mpp=0.55)
        read_levels(levels, box, mpp=0.6)
        read_levels(levels, box, mpp=0.55, fill=255)
        assert len(reads) == 7
        different = read_levels(other, box, mpp=0.55)
        assert not np.array_equal(different, first)
    assert REGIONS.key(levels[0], box, (60, 60), 0) is None  # off again, emptied
    assert not len(REGIONS.store) and REGIONS.store.nbytes == 0
    read_levels(levels, box, mpp=0.55)
    assert len(reads) == 8


def test_kept_regions_stay_within_their_budget():
    from histoexpr._core.image import REGIONS, read_levels

    levels, _ = _levels()
    with REGIONS.kept(max_bytes=8 * 3 * 20 * 20):  # room for 8 regions of 20 x 20 px
        for i in range(30):
            read_levels(levels, (float(i), 0.0, i + 10.0, 10.0), mpp=0.5)
            assert REGIONS.store.nbytes <= 8 * 3 * 20 * 20
        assert len(REGIONS.store) == 8


def test_the_store_counts_a_replaced_array_once_and_can_keep_the_new_ones():
    from histoexpr._core.image import ArrayLRU

    store = ArrayLRU(max_bytes=300)
    store.put({("a",): np.zeros(100, np.uint8)})
    store.put({("a",): np.zeros(100, np.uint8)})  # the same key again (two readers raced)
    assert store.nbytes == 100 and len(store) == 1
    store.put({("b",): np.zeros(100, np.uint8), ("c",): np.zeros(100, np.uint8)})
    assert store.get(("a",)) is not None  # now the most recently used
    store.put({("d",): np.zeros(100, np.uint8)})  # over budget: the oldest (b) goes
    assert ("b",) not in store and ("a",) in store and store.nbytes == 300
    store.put({("e",): np.zeros(200, np.uint8), ("f",): np.zeros(200, np.uint8)}, keep_new=True)
    assert len(store) == 2 and ("e",) in store and ("f",) in store  # both kept, over budget
    assert store.nbytes == 400
    store.clear()
    assert not len(store) and store.nbytes == 0
