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
            assert cache._bytes <= cache.max_bytes
    assert len(cache._blocks) == 4
    assert (array.name, 3, 3) in cache._blocks and (array.name, 0, 0) not in cache._blocks
    np.testing.assert_array_equal(cache.read(array, 0, 60, 0, 60), data[:60, :60])


def test_chunks_too_big_for_the_budget_are_read_directly():
    data = np.ones((3, 100, 100), dtype=np.uint8)
    cache = ChunkCache(max_bytes=1000)
    np.testing.assert_array_equal(cache.read(da.from_array(data), 5, 9, 5, 9), data[:, 5:9, 5:9])
    assert not cache._blocks
