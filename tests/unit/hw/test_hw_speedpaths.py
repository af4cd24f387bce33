"""The set-probe and victim helpers of emu.hw.kernels agree with a plain scan at every width.

``_find`` and ``_lru`` have unrolled bodies for 4 and 8 ways (the common L1/L2
geometries) beside the generic loops; every width from 1 to 20 ways must give
what the scan gives: the way holding the tag (or -1), the way with the smallest
stamp.  The fully associative hash index must find every live tag however many
fills, evictions and rebuilds it has seen.
"""

import numpy as np
import pytest

from emu.hw import kernels as K


def scan_find(tag, e0, ways, t):
    for e in range(e0, e0 + ways):
        if tag[e] == t:
            return e
    return -1


def scan_lru(stamp, e0, ways):
    return e0 + int(np.argmin(stamp[e0:e0 + ways]))


@pytest.mark.parametrize("ways", list(range(1, 21)))
def test_find_and_lru_match_scan(ways):
    rng = np.random.default_rng(ways)
    for _ in range(200):
        e0 = int(rng.integers(0, 5)) * ways
        n = e0 + ways + 3
        # Unique tags in the set (a fill reuses the entry holding its tag), some empty.
        tag = rng.choice(np.arange(1, 10 * n, dtype=np.uint64), n, replace=False)
        tag[rng.random(n) < 0.2] = 0
        t = np.uint64(tag[e0 + int(rng.integers(0, ways))]) if rng.random() < 0.7 \
            else np.uint64(10 * n + 1)
        if t == 0:
            t = np.uint64(10 * n + 1)
        assert K._find(tag, e0, ways, t) == scan_find(tag, e0, ways, t)
        stamp = rng.choice(np.arange(-50, 10 * n, dtype=np.int64), n, replace=False)
        assert K._lru(stamp, e0, ways) == scan_lru(stamp, e0, ways)


def test_hash_index_finds_every_live_tag_through_rebuilds():
    ways = 24
    slots = 1 << max(6, (K.HASH_SLOTS_PER_WAY * ways - 1).bit_length())
    ne = ways
    hb = 2 * ne + 3
    fa = np.full(hb + slots, -1, dtype=np.int64)
    fa[2 * ne + 2] = 0                      # used slots
    tag = np.zeros(ways, dtype=np.uint64)
    rng = np.random.default_rng(3)
    rebuilt = 0
    for step in range(5000):
        v = int(rng.integers(0, ways))
        old = tag[v]
        if old != 0:
            K._hdel(fa, hb, slots - 1, old, v)
        t = np.uint64(int(rng.integers(1, 1 << 40)) | (1 << 63))
        while (tag == t).any():
            t = np.uint64(int(t) + 1)
        tag[v] = t
        before = fa[2 * ne + 2]
        K._hinsert(tag, fa, hb, slots - 1, 2 * ne + 2, 0, ways, t, v)
        rebuilt += fa[2 * ne + 2] < before
        assert fa[2 * ne + 2] << K.HASH_REBUILD_SHIFT <= slots
        if step % 97 == 0:
            tag[int(rng.integers(0, ways))] = 0      # a flush: the index is not told
        for e in range(ways):
            if tag[e] != 0:
                assert K._hfind(tag, fa, hb, slots - 1, tag[e]) == e
        assert K._hfind(tag, fa, hb, slots - 1, np.uint64(12345)) == -1
    assert rebuilt > 0
